/**
 * A journal's history as retention left it: an optional checkpoint at seq M and the events
 * after it (with, up to M, only the carriers whose bytes the checkpoint's files show).
 * Past states, restores and the audit log all read it through {@link historyEvents}.
 */
import { mkdir, open, readdir, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { DROPPED_DATA_REF, JournalError, type DataRef, type Journal, type JournalEvent } from "../../journal/mod.ts";
import { TreeState, type StateDump } from "../projection/state.ts";
import { checkpointName, DataIndex, decodeCheckpoint, encodeCheckpoint, parseCheckpointName, type Checkpoint } from "./checkpoint.ts";

export interface EventsOptions {
  readonly early?: boolean;
}

export interface History {
  /** Stands for every event up to its seq; absent: the events start at seq 1. */
  readonly checkpoint?: Checkpoint;
  /**
   * Events in seq order (bytes inline). Up to the checkpoint's seq, only carriers matter.
   * `early` lets a source hand out events of a part not yet wholly verified, each checked on
   * its own (see readRemoteJournal): for a reader that discards all it did if reading fails.
   */
  readonly events: (options?: EventsOptions) => AsyncIterable<JournalEvent>;
}

/** The oldest point a history can restore, and the oldest seq its audit log still has. */
export function horizons(h: History): { readonly auditFrom: number; readonly dataFrom: number; readonly dataFromTime: number } {
  const c = h.checkpoint;
  return c ? { auditFrom: c.seq + 1, dataFrom: c.dataFrom, dataFromTime: c.dataFromTime } : { auditFrom: 1, dataFrom: 0, dataFromTime: 0 };
}

/** Seqs of the events whose bytes the checkpoint's extents point at. */
export function checkpointCarriers(c: Checkpoint): Set<number> {
  return new Set(c.dataMap.map(([seq]) => seq));
}

/**
 * The events of a history that a replay from its checkpoint needs: the carriers up to the
 * checkpoint's seq (the ExtentWritten events, bytes inline, that the checkpoint's extents
 * point at; a consumer tells them by `seq <= checkpoint.seq`), then every event after it,
 * which must be contiguous (a gap there means the journal was changed while it was read, or
 * is damaged).
 */
export async function* historyEvents(h: History, options: EventsOptions = {}): AsyncGenerator<JournalEvent> {
  const c = h.checkpoint;
  const carriers = c ? checkpointCarriers(c) : undefined;
  let last = c?.seq ?? 0;
  for await (const e of h.events(options)) {
    if (c && e.seq <= c.seq) {
      if (e.type === "ExtentWritten" && carriers!.has(e.seq) && e.data) yield e;
      continue;
    }
    if (e.seq !== last + 1) {
      throw new JournalError(
        "discontinuous",
        last === (c?.seq ?? 0) && c
          ? `The journal after checkpoint ${c.seq} starts at seq ${e.seq} instead of ${c.seq + 1}; it was compacted while being read: try again`
          : `The journal jumps from seq ${last} to ${e.seq}; it cannot be replayed from there`,
      );
    }
    last = e.seq;
    yield e;
  }
}

// ---- checkpoints in a data directory ------------------------------------------

export const checkpointDir = (dataDir: string) => join(dataDir, "checkpoints");

/** The newest checkpoint of a data directory, if retention made one. */
export async function localCheckpoint(dataDir: string): Promise<Checkpoint | undefined> {
  const name = await newestLocalCheckpoint(dataDir);
  if (!name) return undefined;
  const path = join(checkpointDir(dataDir), name);
  return decodeCheckpoint(await readFile(path), path);
}

async function newestLocalCheckpoint(dataDir: string): Promise<string | undefined> {
  let names: string[];
  try {
    names = await readdir(checkpointDir(dataDir));
  } catch {
    return undefined;
  }
  let best: { name: string; seq: number; dataFrom: number } | undefined;
  for (const name of names) {
    const p = parseCheckpointName(name);
    if (p && (!best || p.seq > best.seq || (p.seq === best.seq && p.dataFrom > best.dataFrom))) best = { name, ...p };
  }
  return best?.name;
}

/** Write a checkpoint durably (temp file, fsync, rename, fsync the directory), then remove older ones. */
export async function writeLocalCheckpoint(dataDir: string, c: Checkpoint): Promise<string> {
  const dir = checkpointDir(dataDir);
  await mkdir(dir, { recursive: true });
  const name = checkpointName(c.seq, c.dataFrom);
  const tmp = join(dir, `.${name}.tmp`);
  const fh = await open(tmp, "w", 0o600);
  try {
    await fh.writeFile(encodeCheckpoint(c));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(dir, name));
  const d = await open(dir, "r");
  try {
    await d.sync();
  } finally {
    await d.close();
  }
  for (const other of await readdir(dir)) if (other !== name && (parseCheckpointName(other) || other.endsWith(".tmp"))) await rm(join(dir, other), { force: true });
  return name;
}

/**
 * Where a replay of a local journal starts: its checkpoint (the projection at its seq, extents
 * into this data log as they were) and the seq after it; undefined when retention never ran.
 */
export async function localReplayStart(journal: Journal): Promise<{ initial: TreeState; fromSeq: number } | undefined> {
  const c = await localCheckpoint(journal.dir);
  return c ? { initial: TreeState.fromDump(c.dump), fromSeq: c.seq + 1 } : undefined;
}

/**
 * A checkpoint's dump with extents pointing at where each carrier's bytes are now (`moved`:
 * seq → where that event's bytes start), split where an extent spans several events; bytes of
 * carriers not found point nowhere (retention dropped them: no retained point shows them).
 */
export function remapExtents(c: Checkpoint, moved: ReadonlyMap<number, DataRef>): StateDump {
  const index = new DataIndex();
  for (const [seq, file, pos, length] of c.dataMap) index.add(seq, file, pos, length);
  const extents: [number, number, number, number, number][] = [];
  for (const [ino, offset, length, file, pos] of c.dump.extents) {
    let at = pos;
    const end = pos + length;
    for (const [seq, , epos, elen] of index.overlapping(file, pos, length)) {
      const from = Math.max(at, epos);
      const to = Math.min(end, epos + elen);
      if (to <= from) continue;
      if (from > at) extents.push([ino, offset + (at - pos), from - at, DROPPED_DATA_REF.file, DROPPED_DATA_REF.pos]);
      const r = moved.get(seq);
      extents.push(r ? [ino, offset + (from - pos), to - from, r.file, r.pos + (from - epos)] : [ino, offset + (from - pos), to - from, DROPPED_DATA_REF.file, DROPPED_DATA_REF.pos]);
      at = to;
    }
    if (at < end) extents.push([ino, offset + (at - pos), end - at, DROPPED_DATA_REF.file, DROPPED_DATA_REF.pos]);
  }
  return { ...c.dump, extents };
}
