/**
 * Projection snapshots in S3, for a fast start on a new machine:
 * `PREFIX/.objectfs/snapshots/<clientId>.snap` holds, for every key this client has
 * materialized, the attributes the mount shows for it and the ETag they belong to (gzipped
 * MessagePack). A client listing a directory takes an object's attributes (and a symlink's
 * target) from the newest snapshot whose ETag for that key matches the listing, instead of a
 * HEAD (or GET) per object: a directory of N files costs N/1000 LIST requests, not N HEADs.
 * A key whose ETag differs (changed since) is read from S3 as usual, so a stale snapshot can
 * only cost time, never show wrong attributes.
 */
import { gunzipSync, gzipSync } from "node:zlib";
import type { InodeKind } from "../../journal/mod.ts";
import { packValue, unpackValue } from "../../journal/codec.ts";
import type { Filesystem } from "../fs/filesystem.ts";
import type { ObjectStore } from "../s3/mod.ts";
import { keyOf, META_DIR } from "./keys.ts";

export interface SnapshotEntry {
  /** The object's ETag the attributes belong to ("" for a directory's marker, not checked). */
  readonly etag: string;
  readonly kind: InodeKind;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtime: number;
  readonly target?: string;
  readonly rdev?: number;
}

interface SnapshotFile {
  readonly version: 1;
  readonly clientId: string;
  /** The journal seq it reflects, and when it was taken. */
  readonly seq: number;
  readonly time: number;
  readonly keys: Record<string, SnapshotEntry>;
}

export const snapshotPrefix = (prefix: string) => `${prefix}${META_DIR}/snapshots/`;

/** Write this client's snapshot: every materialized key with its attributes. Returns the number of keys. */
export async function writeSnapshot(fs: Filesystem, store: ObjectStore, prefix: string, seq: number): Promise<number> {
  const etags = new Map<string, string>();
  for await (const r of fs.remoteKeys(prefix)) etags.set(r.key, r.etag);
  const keys: Record<string, SnapshotEntry> = {};
  for await (const e of fs.walk()) {
    const i = e.inode;
    const key = keyOf(prefix, e.path) + (i.kind === "dir" ? "/" : "");
    const etag = etags.get(key);
    if (etag === undefined && i.kind !== "dir") continue; // not in S3 (yet): nothing to vouch for
    keys[key] = {
      etag: i.kind === "dir" ? "" : etag!,
      kind: i.kind,
      mode: i.mode & 0o7777,
      uid: i.uid,
      gid: i.gid,
      mtime: i.mtime,
      ...(i.target !== undefined ? { target: i.target } : {}),
      ...(i.rdev ? { rdev: i.rdev } : {}),
    };
  }
  const file: SnapshotFile = { version: 1, clientId: fs.journal.clientId, seq, time: Date.now(), keys };
  await store.put(`${snapshotPrefix(prefix)}${fs.journal.clientId}.snap`, gzipSync(packValue(file)));
  return Object.keys(keys).length;
}

/** Every client's snapshot under the prefix, merged (the newest snapshot wins per key). */
export async function loadSnapshots(store: ObjectStore, prefix: string, log?: (m: string) => void): Promise<Map<string, SnapshotEntry>> {
  const files: SnapshotFile[] = [];
  for await (const e of store.list({ prefix: snapshotPrefix(prefix) })) {
    if (e.kind !== "object" || !e.key.endsWith(".snap")) continue;
    try {
      const f = unpackValue<SnapshotFile>(gunzipSync((await store.get(e.key)).bytes));
      if (f.version === 1) files.push(f);
    } catch (err) {
      log?.(`objectfs: ignoring snapshot ${e.key}: ${(err as Error).message}`);
    }
  }
  files.sort((a, b) => a.time - b.time);
  const out = new Map<string, SnapshotEntry>();
  for (const f of files) for (const [k, v] of Object.entries(f.keys)) out.set(k, v);
  return out;
}
