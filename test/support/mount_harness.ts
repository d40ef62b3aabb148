/**
 * Test harness for real FUSE mounts: runs `objectfs mount --foreground` as a
 * child process (never in the test process: sync calls on a mount served by
 * the same process deadlock), waits until it is ready, and cleans up.
 */
import { spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const MAIN = join(import.meta.dir, "../../src/main.ts");

export interface MountHandle {
  readonly mnt: string;
  readonly dataDir: string;
  readonly pid: number;
  /** SIGTERM: flush and unmount cleanly. Resolves to the exit code once stderr is read to its end. */
  stop(): Promise<number>;
  /** SIGKILL: a crash. The mount is left stale until the next mount. */
  kill(): Promise<void>;
  /** What the mount process wrote on stderr so far. */
  stderr(): string;
}

export interface MountOptions {
  /** An s3:// source, given before the mountpoint. */
  readonly source?: string;
  readonly mnt?: string;
  readonly dataDir?: string;
  readonly args?: readonly string[];
  /** Extra environment for the mount process. */
  readonly env?: Record<string, string>;
}

/** The environment for objectfs processes: the test's own OBJECTFS_TEST_* settings are not objectfs settings. */
export function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("OBJECTFS_TEST_")) env[k] = v;
  return { ...env, ...extra };
}

/** `bun src/main.ts`, for running objectfs commands in a shell. */
export const OBJECTFS = `${JSON.stringify(process.execPath)} ${JSON.stringify(MAIN)}`;

/** Mount (foreground child) and wait for its ready line. */
export async function startMount(options: MountOptions = {}): Promise<MountHandle> {
  const mnt = options.mnt ?? (await mkdtemp(join(tmpdir(), "objectfs-mnt-")));
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), "objectfs-data-")));
  const proc = Bun.spawn([process.execPath, MAIN, "mount", ...(options.source ? [options.source] : []), mnt, "--data-dir", dataDir, "--foreground", ...(options.args ?? [])], {
    stdout: "pipe",
    stderr: "pipe",
    env: childEnv(options.env),
  });
  const reader = proc.stdout.getReader();
  let out = "";
  const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
  while (!out.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) {
      clearTimeout(timer);
      const err = await new Response(proc.stderr).text();
      throw new Error(`objectfs mount exited (${await proc.exited}) before it was ready: ${err.trim()}`);
    }
    out += new TextDecoder().decode(value);
  }
  clearTimeout(timer);
  reader.releaseLock();
  let stderr = "";
  const drained = drain(proc.stderr, (text) => (stderr += text)).catch(() => {});
  return {
    mnt,
    dataDir,
    pid: proc.pid,
    async stop() {
      proc.kill("SIGTERM");
      const code = await proc.exited;
      await drained;
      return code;
    },
    async kill() {
      proc.kill("SIGKILL");
      await proc.exited;
      await drained;
    },
    stderr: () => stderr,
  };
}

async function drain(stream: ReadableStream<Uint8Array>, collect: (text: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  for await (const chunk of stream) {
    const text = decoder.decode(chunk, { stream: true });
    collect(text);
    if (process.env.OBJECTFS_TEST_VERBOSE) process.stderr.write(text);
  }
}

/** Run a shell command (in a subprocess, as the tests must) and return its output and status. */
export async function sh(command: string, options: { cwd?: string; env?: Record<string, string> } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  // Never pass cwd= inside a mount to Bun.spawn from a process that may serve it: cd in the shell instead.
  const script = options.cwd ? `cd ${JSON.stringify(options.cwd)} && ${command}` : command;
  const proc = Bun.spawn(["bash", "-c", script], { stdout: "pipe", stderr: "pipe", env: childEnv(options.env) });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

/** Unmount anything left at `mnt` and remove the directories. */
export async function cleanup(...dirs: string[]): Promise<void> {
  for (const d of dirs) {
    spawnSync("fusermount", ["-uz", d], { stdio: "ignore" });
    await rm(d, { recursive: true, force: true }).catch(() => {});
  }
}

/** Run `objectfs fsck` on a data directory (not mounted). */
export async function fsckDataDir(dataDir: string): Promise<{ code: number; output: string }> {
  const r = await sh(`${OBJECTFS} fsck --data-dir ${JSON.stringify(dataDir)}`);
  return { code: r.code, output: r.stdout + r.stderr };
}
