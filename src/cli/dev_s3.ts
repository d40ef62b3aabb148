/**
 * `objectfs dev-s3`: a local S3-compatible server (s3rver, run under Node) on 127.0.0.1 for
 * trying objectfs out; prints the endpoint and the environment to use it.
 */
import { spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { UsageError, type Command } from "./command.ts";
import { alive } from "../fuse/mount.ts";

const SERVER = join(import.meta.dir, "../s3/dev_server.mjs");

export function defaultDevS3Dir(): string {
  return join(process.env.XDG_DATA_HOME || join(homedir(), ".local", "share"), "objectfs", "dev-s3");
}

function instructions(endpoint: string, accessKey: string, secretKey: string, bucket: string): string {
  return `objectfs dev-s3: S3 at ${endpoint}, bucket "${bucket}"

Use it from a shell:
  export AWS_ACCESS_KEY_ID=${accessKey}
  export AWS_SECRET_ACCESS_KEY=${secretKey}
  export AWS_REGION=us-east-1
  export OBJECTFS_ENDPOINT=${endpoint}
  objectfs mount s3://${bucket} /mnt/objectfs --endpoint ${endpoint}`;
}

export const devS3: Command = {
  name: "dev-s3",
  summary: "run a local S3-compatible server (s3rver) on 127.0.0.1 for trying objectfs out",
  usage: `objectfs dev-s3 [--dir DIR] [--port PORT] [--access-key K] [--secret-key S] [--bucket NAME]... [--detach]
objectfs dev-s3 --stop [--dir DIR]

  --dir DIR          where objects are kept (default ~/.local/share/objectfs/dev-s3)
  --port PORT        (default 9000)
  --access-key K     access key id to accept besides S3RVER (default S3RVER)
  --secret-key S     printed with it; s3rver does not verify signatures, so keep this
                     server on loopback and keep nothing secret in it
  --bucket NAME      create this bucket if absent (repeatable; default objectfs)
  --detach           run in the background (log in DIR/dev-s3.log); returns once it answers
  --stop             stop a detached server of DIR

Needs Node (s3rver does not run under Bun): apt-get install nodejs.`,
  async run(args) {
    const { values } = parseArgs({
      args,
      options: {
        dir: { type: "string" },
        port: { type: "string" },
        "access-key": { type: "string" },
        "secret-key": { type: "string" },
        bucket: { type: "string", multiple: true },
        detach: { type: "boolean" },
        stop: { type: "boolean" },
      },
      strict: true,
    });
    const dir = resolve(values.dir ?? defaultDevS3Dir());
    const pidFile = join(dir, "dev-s3.pid");
    if (values.stop) return stop(pidFile);
    const port = Number(values.port ?? 9000);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`--port must be a port number (got ${values.port})`);
    const accessKey = values["access-key"] ?? "S3RVER";
    const secretKey = values["secret-key"] ?? (accessKey === "S3RVER" ? "S3RVER" : accessKey);
    const buckets = values.bucket ?? ["objectfs"];
    for (const b of buckets) if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(b)) throw new UsageError(`bucket name ${JSON.stringify(b)} is not valid: 3-63 lower-case letters, digits, "." and "-"`);
    const node = Bun.which("node");
    if (!node) {
      console.error("objectfs dev-s3: node is not installed, and s3rver needs it (it does not run under Bun); install it with apt-get install nodejs");
      return 1;
    }
    await mkdir(dir, { recursive: true });
    const running = await livePid(pidFile);
    if (running !== undefined) {
      console.error(`objectfs dev-s3: a server for ${dir} already runs (pid ${running}); stop it with "objectfs dev-s3 --stop --dir ${dir}"`);
      return 1;
    }
    const argv = ["--openssl-legacy-provider", SERVER, "--dir", join(dir, "objects"), "--port", String(port), "--access-key", accessKey, "--secret-key", secretKey, ...buckets.flatMap((b) => ["--bucket", b])];
    const logFile = join(dir, "dev-s3.log");
    const log = openSync(logFile, "a");
    const child = spawn(node, argv, { detached: values.detach ?? false, stdio: ["ignore", "pipe", values.detach ? log : "inherit"] });
    closeSync(log);
    const ready = await new Promise<{ endpoint?: string; code?: number | null }>((done) => {
      let out = "";
      child.stdout!.on("data", (b: Buffer) => {
        out += b.toString();
        const nl = out.indexOf("\n");
        if (nl >= 0) done({ endpoint: (JSON.parse(out.slice(0, nl)) as { endpoint: string }).endpoint });
      });
      child.on("exit", (code) => done({ code }));
    });
    if (!ready.endpoint) {
      if (values.detach) {
        const tail = (await readFile(logFile, "utf8").catch(() => "")).trim().split("\n").slice(-1)[0];
        console.error(`objectfs dev-s3: ${tail || `the server exited with code ${ready.code}`}`);
      }
      return 1;
    }
    await writeFile(pidFile, `${child.pid}\n`);
    console.log(instructions(ready.endpoint, accessKey, secretKey, buckets[0]!));
    if (values.detach) {
      child.stdout!.destroy();
      child.unref();
      console.log(`  (running in the background, pid ${child.pid}; stop it with: objectfs dev-s3 --stop --dir ${dir})`);
      return 0;
    }
    const stopChild = () => child.kill("SIGTERM");
    process.on("SIGINT", stopChild);
    process.on("SIGTERM", stopChild);
    const code = await new Promise<number | null>((done) => child.on("exit", done));
    await rm(pidFile, { force: true });
    return code === 0 || code === null ? 0 : 1;
  },
};

async function livePid(pidFile: string): Promise<number | undefined> {
  const pid = Number((await readFile(pidFile, "utf8").catch(() => "")).trim());
  return pid > 0 && alive(pid) ? pid : undefined;
}

async function stop(pidFile: string): Promise<number> {
  const pid = await livePid(pidFile);
  if (pid === undefined) {
    console.error(`objectfs dev-s3: no server is running for ${join(pidFile, "..")}`);
    return 1;
  }
  process.kill(pid, "SIGTERM");
  for (let i = 0; i < 100 && alive(pid); i++) await Bun.sleep(50);
  if (alive(pid)) process.kill(pid, "SIGKILL");
  await rm(pidFile, { force: true });
  console.log(`objectfs dev-s3: stopped (pid ${pid})`);
  return 0;
}
