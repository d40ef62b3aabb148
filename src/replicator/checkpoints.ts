/**
 * Checkpoints in S3: `PREFIX/.objectfs/checkpoints/<clientId>/<M>-<B>.ckpt` (src/retention/checkpoint.ts),
 * written by retention before it compacts the segments they stand for.
 */
import { decodeCheckpoint, encodeCheckpoint, parseCheckpointName, type Checkpoint } from "../retention/checkpoint.ts";
import type { History } from "../retention/history.ts";
import type { ObjectStore } from "../s3/mod.ts";
import { META_DIR } from "./keys.ts";
import { readRemoteJournal, type RemoteSegment } from "./segments.ts";

export const checkpointPrefix = (prefix: string, clientId: string) => `${prefix}${META_DIR}/checkpoints/${clientId}/`;

/** Checkpoints of a client in S3, newest last. */
export async function listRemoteCheckpoints(store: ObjectStore, prefix: string, clientId: string): Promise<{ key: string; seq: number; dataFrom: number }[]> {
  const dir = checkpointPrefix(prefix, clientId);
  const out: { key: string; seq: number; dataFrom: number }[] = [];
  for await (const e of store.list({ prefix: dir })) {
    if (e.kind !== "object") continue;
    const p = parseCheckpointName(e.key.slice(dir.length));
    if (p) out.push({ key: e.key, ...p });
  }
  return out.sort((a, b) => a.seq - b.seq || a.dataFrom - b.dataFrom);
}

/** The newest checkpoint of a client in S3, verified, if retention made one. */
export async function remoteCheckpoint(store: ObjectStore, prefix: string, clientId: string): Promise<Checkpoint | undefined> {
  const all = await listRemoteCheckpoints(store, prefix, clientId);
  const newest = all[all.length - 1];
  if (!newest) return undefined;
  const got = await store.get(newest.key);
  return decodeCheckpoint(got.bytes, newest.key);
}

export async function putRemoteCheckpoint(store: ObjectStore, prefix: string, clientId: string, c: Checkpoint, name: string): Promise<string> {
  const key = checkpointPrefix(prefix, clientId) + name;
  await store.put(key, encodeCheckpoint(c));
  return key;
}

/**
 * One client's history in S3: its newest checkpoint and its segments. `segments`, if given, is
 * a listing just made (see listJournals): the first reading of the events uses it instead of
 * listing again; later ones list afresh.
 */
export async function remoteHistory(store: ObjectStore, prefix: string, clientId: string, segments?: readonly RemoteSegment[]): Promise<History> {
  const checkpoint = await remoteCheckpoint(store, prefix, clientId);
  let listed = segments;
  return {
    ...(checkpoint ? { checkpoint } : {}),
    events: (options) => {
      const given = listed;
      listed = undefined;
      return readRemoteJournal(store, prefix, clientId, { ...(given ? { segments: given } : {}), early: options?.early ?? false });
    },
  };
}
