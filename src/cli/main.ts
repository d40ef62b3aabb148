/** objectfs commands: dispatch, usage errors, and the one-sentence failures (entry: src/main.ts). */
import { JournalError } from "../../journal/mod.ts";
import { UsageError, type Command } from "./command.ts";
import { demo } from "./demo.ts";
import { devS3 } from "./dev_s3.ts";
import { fsckCommand, mount, unmount } from "./mount.ts";
import { status, sync } from "./sync.ts";
import { logCommand } from "./log.ts";
import { restore } from "./restore.ts";
import { compact } from "./compact.ts";
import { FsError } from "../fs/errors.ts";
import { MountError } from "../fuse/mount.ts";
import { RemoteConfigError } from "../replicator/mod.ts";

const COMMANDS: readonly Command[] = [mount, unmount, sync, status, logCommand, restore, compact, fsckCommand, devS3, demo];

const HELP = `objectfs: an S3-backed POSIX filesystem with a local event journal

Usage: objectfs <command> [options]

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`).join("\n")}

Run "objectfs <command> --help" for a command's options.`;

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(HELP);
    return name ? 0 : 2;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    console.error(`objectfs: unknown command "${name}"; run "objectfs --help" for the list`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(`Usage: ${command.usage}`);
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      console.error(`objectfs ${name}: ${(e as Error).message}; see "objectfs ${name} --help"`);
      return 2;
    }
    if (e instanceof JournalError || e instanceof MountError || e instanceof FsError || e instanceof RemoteConfigError) {
      console.error(`objectfs ${name}: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

