/**
 * The fs core's view of S3 ({@link RemoteSource}): a delimited listing becomes directory
 * entries with POSIX attributes from each object's metadata, and reads go through the
 * persistent chunk cache.
 */
import type { InodeKind, RemoteEntry, SkippedKey } from "../../journal/mod.ts";
import type { RemoteListing, RemoteSource } from "../fs/remote.ts";
import type { RemoteBase } from "../projection/state.ts";
import type { ObjectStore } from "../s3/mod.ts";
import type { ChunkCache } from "./cache.ts";
import { badName, META_DIR, parseMeta } from "./keys.ts";
import type { SnapshotEntry } from "./snapshot.ts";

export interface RemoteSourceOptions {
  readonly store: ObjectStore;
  readonly prefix: string;
  readonly cache: ChunkCache;
  /** Owner of objects without uid/gid metadata. */
  readonly uid: number;
  readonly gid: number;
  /** Servers whose delimited listing drops prefixes (s3rver): group keys here. */
  readonly clientDelimiter?: boolean;
  /** HEAD requests in flight while reading attributes. @default 32 */
  readonly headConcurrency?: number;
  /** Attributes vouched for by snapshots (see snapshot.ts), loaded at the first listing. */
  readonly snapshots?: () => Promise<ReadonlyMap<string, SnapshotEntry>>;
}

type Found = Omit<RemoteEntry, "ino">;

export function makeRemoteSource(options: RemoteSourceOptions): RemoteSource & { readonly counts: { vouched: number; heads: number } } {
  const { store, cache } = options;
  const headConcurrency = options.headConcurrency ?? 32;
  let snapshots: Promise<ReadonlyMap<string, SnapshotEntry>> | undefined;
  const vouched = async (key: string, etag: string) => {
    snapshots ??= (options.snapshots?.() ?? Promise.resolve(new Map())).catch(() => new Map());
    const s = (await snapshots).get(key);
    return s && s.etag === etag ? s : undefined;
  };
  /** HEADs avoided thanks to snapshots, and HEADs made. */
  const counts = { vouched: 0, heads: 0 };

  async function list(prefix: string): Promise<RemoteListing> {
    const files = new Map<string, { key: string; size: number; etag: string; mtime: number }>();
    const dirs = new Map<string, string>();
    const skipped: SkippedKey[] = [];
    for await (const entry of store.list({ prefix, delimiter: "/", clientDelimiter: options.clientDelimiter ?? false })) {
      if (entry.kind === "object") {
        const name = entry.key.slice(prefix.length);
        if (name === "") continue; // the directory's own marker object
        const bad = badName(name);
        if (bad) skipped.push({ key: entry.key, reason: `the key ${bad}` });
        else files.set(name, { key: entry.key, size: entry.size, etag: entry.etag, mtime: entry.lastModified.getTime() });
      } else {
        const name = entry.prefix.slice(prefix.length, -1);
        if (prefix === options.prefix && name === META_DIR) continue; // objectfs's own journal and snapshots
        const bad = badName(name);
        if (bad) skipped.push({ key: entry.prefix, reason: `the prefix ${bad}` });
        else dirs.set(name, entry.prefix);
      }
    }
    for (const name of dirs.keys()) {
      const file = files.get(name);
      if (file) {
        files.delete(name);
        skipped.push({ key: file.key, reason: `the key is both an object and a prefix (${file.key}/); the directory is shown` });
      }
    }
    const jobs: (() => Promise<Found | undefined>)[] = [];
    for (const [name, f] of files) jobs.push(() => fileEntry(name, f));
    for (const [name, p] of dirs) jobs.push(() => dirEntry(name, p));
    const entries = (await pool(jobs, headConcurrency)).filter((e): e is Found => e !== undefined);
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return { entries, skipped };
  }

  async function fileEntry(name: string, f: { key: string; size: number; etag: string; mtime: number }): Promise<Found | undefined> {
    const snap = await vouched(f.key, f.etag);
    if (snap) {
      counts.vouched++;
      const object = { key: f.key, size: f.size, etag: f.etag, mtime: snap.mtime };
      const base: Found = { name, kind: snap.kind, mode: snap.mode, uid: snap.uid, gid: snap.gid, mtime: snap.mtime, object };
      return { ...base, ...(snap.target !== undefined ? { target: snap.target } : {}), ...(snap.rdev !== undefined ? { rdev: snap.rdev } : {}) };
    }
    counts.heads++;
    const head = await store.head(f.key);
    if (!head) return undefined; // deleted since the listing
    const meta = parseMeta(head.metadata);
    const kind: InodeKind = meta.kind && meta.kind !== "dir" ? meta.kind : "file";
    const mtime = meta.mtime ?? head.lastModified.getTime();
    const object = { key: f.key, size: head.size, etag: head.etag, mtime, ...(head.versionId ? { versionId: head.versionId } : {}) };
    const base: Found = { name, kind, mode: meta.mode ?? 0o644, uid: meta.uid ?? options.uid, gid: meta.gid ?? options.gid, mtime };
    if (kind === "symlink") {
      const target = new TextDecoder().decode((await store.get(f.key, { ifMatch: head.etag })).bytes);
      return { ...base, object, target };
    }
    if (kind !== "file") return { ...base, object, ...(meta.rdev !== undefined ? { rdev: meta.rdev } : {}) };
    return { ...base, object };
  }

  async function dirEntry(name: string, prefix: string): Promise<Found> {
    const snap = await vouched(prefix, "");
    if (snap) {
      counts.vouched++;
      return { name, kind: "dir", mode: snap.mode, uid: snap.uid, gid: snap.gid, mtime: snap.mtime, prefix };
    }
    counts.heads++;
    const marker = await store.head(prefix);
    const meta = marker ? parseMeta(marker.metadata) : {};
    return {
      name,
      kind: "dir",
      mode: meta.mode ?? 0o755,
      uid: meta.uid ?? options.uid,
      gid: meta.gid ?? options.gid,
      mtime: meta.mtime ?? marker?.lastModified.getTime() ?? Date.now(),
      prefix,
    };
  }

  return {
    prefix: options.prefix,
    counts,
    list,
    read: (base: RemoteBase, offset: number, length: number, into: Uint8Array, at: number) => cache.read(base, offset, length, into, at),
    view: (base: RemoteBase, offset: number, length: number) => cache.view(base, offset, length),
  };
}

/** Run `jobs` with at most `limit` in flight; results in order. */
export async function pool<T>(jobs: readonly (() => Promise<T>)[], limit: number): Promise<T[]> {
  const out = new Array<T>(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      out[i] = await jobs[i]!();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  return out;
}
