/**
 * An S3-backed Filesystem in this process (no FUSE): the fs core with its remote source and
 * replication, as a mount wires them, for tests of listing, reads, materialization, conflicts.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client as MinioClient } from "minio";
import { Filesystem } from "../../src/fs/filesystem.ts";
import { openRemote, Replication, type RemoteSetup } from "../../src/replicator/mod.ts";
import { ROOT_INO, type Ino } from "../../journal/mod.ts";
import type { Ctx } from "../../src/fs/context.ts";
import type { S3Server } from "./s3_servers.ts";

export const ROOT: Ctx = { uid: 0, gid: 0, pid: 1 };

export interface Client {
  readonly fs: Filesystem;
  readonly replication: Replication;
  readonly remote: RemoteSetup;
  readonly dataDir: string;
  readonly logs: string[];
  close(): Promise<void>;
}

export async function openClient(server: S3Server, bucket: string, prefix: string, options: { dataDir?: string; writeBackMs?: number; endpoint?: string; partBytes?: number } = {}): Promise<Client> {
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), "objectfs-client-")));
  const logs: string[] = [];
  const log = (m: string) => logs.push(m);
  const remote = await openRemote({
    bucket, prefix, dataDir, uid: 0, gid: 0,
    store: { endpoint: options.endpoint ?? server.endpoint, region: server.region, forcePathStyle: true, credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey }, maxAttempts: 1 },
  });
  const fs = await Filesystem.open(dataDir, { remote: remote.source, log });
  const replication = new Replication({
    fs, store: remote.store, prefix, cache: remote.cache, lookup: (p) => remote.source.list(p), log,
    writeBackMs: options.writeBackMs ?? 0, sealMs: 100, snapshotMs: 0, ...(options.partBytes ? { partBytes: options.partBytes } : {}),
  });
  await replication.start();
  return {
    fs, replication, remote, dataDir, logs,
    async close() {
      await replication.stop();
      await fs.close();
      remote.store.close();
    },
  };
}

export async function removeClient(c: Client): Promise<void> {
  await c.close().catch(() => {});
  await rm(c.dataDir, { recursive: true, force: true });
}

/** The inode at a path ("a/b/c"). */
export async function resolvePath(fs: Filesystem, path: string): Promise<Ino> {
  let ino = ROOT_INO as Ino;
  for (const name of path.split("/").filter(Boolean)) ino = (await fs.lookup(ROOT, ino, name)).ino;
  return ino;
}

/** Whole contents of the file at `path`. */
export async function readPath(fs: Filesystem, path: string): Promise<Uint8Array> {
  const ino = await resolvePath(fs, path);
  const fh = await fs.open(ROOT, ino, 0);
  try {
    const size = (await fs.getattr(ROOT, ino)).size;
    return await fs.read(ROOT, fh, 0, size);
  } finally {
    await fs.release(ROOT, fh);
  }
}

/** Create (or replace) the file at `path` (parent must exist) with `data`. */
export async function writePath(fs: Filesystem, path: string, data: Uint8Array | string, mode = 0o644): Promise<Ino> {
  const parts = path.split("/");
  const name = parts.pop()!;
  const parent = await resolvePath(fs, parts.join("/"));
  const O_WRONLY = 1, O_CREAT = 0o100, O_TRUNC = 0o1000;
  let fh: number;
  let ino: Ino;
  try {
    ino = (await fs.lookup(ROOT, parent, name)).ino;
    fh = await fs.open(ROOT, ino, O_WRONLY | O_TRUNC);
  } catch {
    const made = await fs.create(ROOT, parent, name, mode, O_WRONLY | O_CREAT);
    fh = made.fh;
    ino = made.attr.ino;
  }
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  if (bytes.length > 0) await fs.write(ROOT, fh, 0, bytes);
  await fs.release(ROOT, fh);
  return ino;
}

/** Names in the directory at `path`, without "." and "..". */
export async function list(fs: Filesystem, path: string): Promise<string[]> {
  const ino = await resolvePath(fs, path);
  return (await fs.readdir(ROOT, ino)).map((e) => e.name).filter((n) => n !== "." && n !== "..").sort();
}

/** Environment for objectfs processes talking to `server` (credentials, control sockets in a temp dir). */
export function s3Env(server: S3Server): Record<string, string> {
  return { AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey, AWS_REGION: server.region, OBJECTFS_RUN_DIR: join(tmpdir(), "objectfs-run") };
}

/** An independent S3 client (the `minio` package), to check what other tools see. */
export function minioFor(server: S3Server): MinioClient {
  const url = new URL(server.endpoint);
  return new MinioClient({
    endPoint: url.hostname, port: Number(url.port), useSSL: false, pathStyle: true,
    accessKey: server.accessKeyId, secretKey: server.secretAccessKey, region: server.region,
  });
}

export async function minioGet(m: MinioClient, bucket: string, key: string): Promise<{ bytes: Buffer; meta: Record<string, string> }> {
  const stat = await m.statObject(bucket, key);
  const stream = await m.getObject(bucket, key);
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return { bytes: Buffer.concat(chunks), meta: stat.metaData as Record<string, string> };
}
