/**
 * Real S3 server processes on loopback, for tests: every S3 test runs against both kinds.
 *
 * - `ceph-rgw`: Ceph's RADOS Gateway, a production S3 implementation (single node, memstore,
 *   about 2 s to start) through `scripts/ceph-rgw-up.sh` / `ceph-rgw-down.sh`: the full API
 *   (conditional writes, UploadPartCopy, versioning, abort). Needs the Debian packages in
 *   {@linkcode CEPH_APT_PACKAGES}.
 * - `s3rver`: an S3 emulator run under Node by `src/s3/dev_server.mjs`: the fallbacks
 *   when those are missing.
 *
 * Each server gets its own free ports and directory, so several runs can share a machine;
 * `stop()` ends exactly the processes it started. A Ceph cluster left behind by a killed test
 * run is stopped by its watchdog within a second.
 */
import { CreateBucketCommand, PutBucketVersioningCommand, S3Client } from "@aws-sdk/client-s3";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeObjectStore, type ObjectStore, type ObjectStoreConfig } from "../../src/s3/mod.ts";

export type S3ServerKind = "ceph-rgw" | "s3rver";
export const S3_SERVER_KINDS: readonly S3ServerKind[] = ["ceph-rgw", "s3rver"];

/** What CI must install for the `ceph-rgw` server. */
export const CEPH_APT_PACKAGES = ["ceph-mon", "ceph-osd", "radosgw", "ceph-common"] as const;
const CEPH_APT_COMMAND = `apt-get install -y --no-install-recommends ${CEPH_APT_PACKAGES.join(" ")}`;
const CEPH_COMMANDS = ["ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool"];

const ROOT = join(import.meta.dir, "../..");
const CEPH_UP = join(ROOT, "scripts/ceph-rgw-up.sh");
const CEPH_DOWN = join(ROOT, "scripts/ceph-rgw-down.sh");
const S3RVER_MAIN = join(ROOT, "src/s3/dev_server.mjs");

export interface S3Server {
  readonly kind: S3ServerKind;
  readonly endpoint: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly region: string;
  /** Stop the server and remove its data; safe to call twice. */
  stop(): Promise<void>;
}

export function startS3Server(kind: S3ServerKind): Promise<S3Server> {
  return kind === "ceph-rgw" ? startCephRgw() : startS3rver();
}

/**
 * One server of each kind for a test file, started on first use (call `startAll` in
 * beforeAll to start both together) and stopped by `stopAll` in afterAll.
 */
export function serverPool(): { get(kind: S3ServerKind): Promise<S3Server>; startAll(): Promise<unknown>; stopAll(): Promise<unknown> } {
  const servers = new Map<S3ServerKind, Promise<S3Server>>();
  const get = (kind: S3ServerKind) => {
    let s = servers.get(kind);
    if (!s) servers.set(kind, (s = startS3Server(kind)));
    return s;
  };
  return {
    get,
    startAll: () => Promise.allSettled(S3_SERVER_KINDS.map(get)),
    stopAll: () => Promise.allSettled([...servers.values()].map(async (s) => (await s).stop())),
  };
}

// ---------------------------------------------------------------------------------------------
// Ceph RADOS Gateway

export interface CephRgwOptions {
  /** OSD capacity; RAM is used only by stored data. @default 1 GiB */
  readonly memstoreBytes?: number;
}

/** Starts a single-node Ceph cluster with a RADOS Gateway on free loopback ports. */
export async function startCephRgw(options: CephRgwOptions = {}): Promise<S3Server> {
  const missing = CEPH_COMMANDS.filter((c) => Bun.which(c, { PATH: process.env.PATH ?? "" }) === null);
  if (missing.length > 0) {
    throw new Error(`Ceph RADOS Gateway is not installed (missing ${missing.join(", ")}): install it with \`${CEPH_APT_COMMAND}\``);
  }
  let lastError = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    const dir = await mkdtemp(join(tmpdir(), "objectfs-ceph-"));
    // 3 fixed ports and 32 for the daemons' messengers (the OSD binds 8 of them).
    const base = await freePortRange(35);
    const env = {
      ...process.env,
      MON_V2_PORT: String(base),
      MON_V1_PORT: String(base + 1),
      RGW_PORT: String(base + 2),
      MS_PORT_MIN: String(base + 3),
      MS_PORT_MAX: String(base + 34),
      MEMSTORE_BYTES: String(options.memstoreBytes ?? 1024 * 1024 * 1024),
      S3_ACCESS_KEY: "OBJECTFSTESTKEY",
      S3_SECRET_KEY: "objectfs-test-secret",
      WATCH_PID: String(process.pid),
    };
    let code: number, out: string, err: string;
    try {
      const up = Bun.spawn(["bash", CEPH_UP, dir], { env, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
      [code, out, err] = await Promise.all([up.exited, new Response(up.stdout).text(), new Response(up.stderr).text()]);
    } catch (error) {
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
    if (code === 0) {
      const vars = parseEnvFile(out);
      const endpoint = vars.S3_ENDPOINT;
      if (endpoint === undefined) throw new Error(`scripts/ceph-rgw-up.sh printed no S3_ENDPOINT: ${out}`);
      let stopped: Promise<void> | undefined;
      return {
        kind: "ceph-rgw",
        endpoint,
        accessKeyId: vars.AWS_ACCESS_KEY_ID ?? env.S3_ACCESS_KEY,
        secretAccessKey: vars.AWS_SECRET_ACCESS_KEY ?? env.S3_SECRET_KEY,
        region: vars.AWS_REGION ?? "us-east-1",
        stop: () => (stopped ??= cephDown(dir)),
      };
    }
    if (code === 3) await rm(dir, { recursive: true, force: true });
    if (code === 3) throw new Error(err.trim() || `Ceph is not installed: install it with \`${CEPH_APT_COMMAND}\``);
    lastError = `scripts/ceph-rgw-up.sh exited with ${code}: ${err.trim()}\n${await logTail(dir)}`;
    await cephDown(dir).catch(() => {});
    await rm(dir, { recursive: true, force: true });
    if (!/in use|bind|Address already/i.test(lastError)) break;
  }
  throw new Error(lastError);
}

async function cephDown(dir: string): Promise<void> {
  const down = Bun.spawn(["bash", CEPH_DOWN, dir], { stdout: "ignore", stderr: "pipe", stdin: "ignore" });
  const [code, err] = await Promise.all([down.exited, new Response(down.stderr).text()]);
  if (code !== 0 && !err.includes("not a cluster directory")) throw new Error(`scripts/ceph-rgw-down.sh ${dir} exited with ${code}: ${err.trim()}`);
}

async function logTail(dir: string): Promise<string> {
  const parts: string[] = [];
  for (const name of ["mon.a.out", "osd.0.out", "rgw.a.out", "rgw.log"]) {
    const file = Bun.file(join(dir, "log", name));
    if (!(await file.exists())) continue;
    const text = (await file.text()).trim().split("\n").slice(-5).join("\n");
    if (text !== "") parts.push(`--- ${name}\n${text}`);
  }
  return parts.join("\n");
}

function parseEnvFile(text: string): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^export ([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (m !== null) vars[m[1]!] = m[2]!;
  }
  return vars;
}

// ---------------------------------------------------------------------------------------------
// s3rver

/** Starts s3rver under Node on a free loopback port, storing objects in a temp directory. */
export async function startS3rver(): Promise<S3Server> {
  const node = Bun.which("node", { PATH: process.env.PATH ?? "" });
  if (node === null) throw new Error("Node is not installed: s3rver must run under Node (`node --openssl-legacy-provider`), not Bun");
  const dir = await mkdtemp(join(tmpdir(), "objectfs-s3rver-"));
  const proc = Bun.spawn([node, "--openssl-legacy-provider", S3RVER_MAIN, "--dir", dir, "--port", "0", "--rm", "--exit-with-stdin"], {
    cwd: ROOT,
    stdin: "pipe", // kept open: dev_server.mjs exits when it closes (when this process dies)
    stdout: "pipe",
    stderr: "pipe",
  });
  const reader = proc.stdout.getReader();
  let out = "";
  const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
  try {
    while (!out.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) {
        const err = await new Response(proc.stderr).text();
        throw new Error(`s3rver exited (${await proc.exited}) before it listened: ${err.trim()}`);
      }
      out += new TextDecoder().decode(value);
    }
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
  const { endpoint } = JSON.parse(out.slice(0, out.indexOf("\n"))) as { endpoint: string };
  let stopped: Promise<void> | undefined;
  const stop = async () => {
    proc.kill("SIGTERM");
    const killer = setTimeout(() => proc.kill("SIGKILL"), 5_000);
    await proc.exited;
    clearTimeout(killer);
    await rm(dir, { recursive: true, force: true });
  };
  return {
    kind: "s3rver",
    endpoint,
    accessKeyId: "S3RVER",
    secretAccessKey: "S3RVER",
    region: "us-east-1",
    stop: () => (stopped ??= stop()),
  };
}

// ---------------------------------------------------------------------------------------------
// Buckets and stores

/** Object-store config for `bucket` on `server`. */
export function storeConfig(server: S3Server, bucket: string): ObjectStoreConfig {
  return {
    bucket,
    endpoint: server.endpoint,
    region: server.region,
    forcePathStyle: true,
    credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
  };
}

let bucketCounter = 0;

/** Creates a new, empty bucket (versioned if asked) and returns its name. */
export async function createBucket(server: S3Server, options: { readonly versioning?: boolean } = {}): Promise<string> {
  const name = `t${Date.now().toString(36)}-${process.pid}-${++bucketCounter}`;
  const client = new S3Client({
    endpoint: server.endpoint,
    region: server.region,
    forcePathStyle: true,
    credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
  try {
    await client.send(new CreateBucketCommand({ Bucket: name }));
    if (options.versioning === true) {
      await client.send(new PutBucketVersioningCommand({ Bucket: name, VersioningConfiguration: { Status: "Enabled" } }));
    }
  } finally {
    client.destroy();
  }
  return name;
}

/** A new bucket and a store for it. */
export async function makeBucketStore(server: S3Server, options: { readonly versioning?: boolean } = {}): Promise<ObjectStore> {
  return makeObjectStore(storeConfig(server, await createBucket(server, options)));
}

// ---------------------------------------------------------------------------------------------
// Ports

/** A loopback port nothing listens on (it was free a moment ago). */
export async function closedPort(): Promise<number> {
  return freePortRange(1);
}

/**
 * The first of `count` consecutive loopback ports that are free now. Taken below Linux's
 * ephemeral range (32768+), so outgoing connections do not grab them meanwhile.
 */
async function freePortRange(count: number): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * (32_000 - 20_000 - count));
    let free = true;
    for (let port = base; port < base + count && free; port++) free = await portFree(port);
    if (free) return base;
  }
  throw new Error(`No ${count} consecutive free loopback ports found between 20000 and 32000`);
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen({ port, host: "127.0.0.1", exclusive: true }, () => server.close(() => resolve(true)));
  });
}
