/**
 * Retention of a data directory: how much history a journal keeps.
 *
 * Two windows, both measured back from now:
 * - `dataMs`: every point in it can be restored (`mount --at`, `restore --at`), so the bytes
 *   it shows are kept; older points cannot;
 * - `eventsMs` (at least `dataMs`): every event in it stays for the audit log (`objectfs log`),
 *   older ones go.
 *
 * A pass finds M (the last event older than the events window) and B (the last older than the
 * data window), folds the history into a checkpoint at M, finds the "carriers" (the events
 * whose bytes the state at B still shows), and then, in this order: writes the checkpoint,
 * removes the events up to M but the carriers (and their audit index rows), drops the bytes
 * of the events in (M, B] that are not carriers (the events stay, marked `dataDropped`),
 * records those bytes as dead in the data log and rewrites mostly dead data log files
 * (DataLog.reclaim). Every step can be repeated, so a pass cut short by a crash is finished
 * by the next. Nothing that a point in the data window needs is touched: the state at any
 * P ≥ B holds only bytes of carriers and of events after B.
 */
import type { JournalEvent } from "../../journal/mod.ts";
import { key, readU64 } from "../../journal/keys.ts";
import { unpackValue } from "../../journal/codec.ts";
import type { ReclaimResult } from "../../journal/data_log.ts";
import { backingOf, type Filesystem } from "../fs/filesystem.ts";
import { inodesTouched } from "../projection/evolve.ts";
import { auditRow, auditSeqs, TreeState } from "../projection/state.ts";
import { evolve } from "../projection/evolve.ts";
import { carriersOf, DataIndex, dataMapOf, hasSeq, type Checkpoint } from "./checkpoint.ts";
import { localCheckpoint, writeLocalCheckpoint } from "./history.ts";
import { packValue } from "../../journal/codec.ts";
import { open, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";

export { DEFAULT_RETENTION, formatDuration, parseDuration, type RetentionPolicy } from "./policy.ts";
import type { RetentionPolicy } from "./policy.ts";

export interface PassOptions {
  /** The time the windows are measured from. @default Date.now() */
  readonly now?: number;
  /** Never treat events after this seq as old (S3 mounts: the last one in S3). */
  readonly maxSeq?: number;
  /** Reclaim thresholds for data log files. */
  readonly reclaim?: { readonly minDeadFraction?: number; readonly minDeadBytes?: number };
  readonly log?: (message: string) => void;
}

export interface PassResult {
  /** False when the windows had not moved: nothing was done. */
  readonly changed: boolean;
  /** The checkpoint now in force (new or previous). */
  readonly checkpoint?: Checkpoint;
  /** The checkpoint's file name. */
  readonly name?: string;
  readonly eventsRemoved: number;
  readonly payloadsDropped: number;
  /** Data log bytes recorded as dead by this pass. */
  readonly bytesDead: number;
  readonly reclaimed?: ReclaimResult;
  /** Seqs whose copy in S3 must change (removed, or bytes dropped). */
  readonly affected: readonly number[];
}

/** The last seq whose event is at or before `time`, searching (after, head]. */
async function seqAtOrBefore(fs: Filesystem, time: number, after: number): Promise<number> {
  let lo = after + 1;
  let hi = fs.journal.head as number;
  if (hi < lo) return after;
  let found = after;
  while (lo <= hi) {
    const mid = Math.floor((lo + hi) / 2);
    const e = await fs.journal.get(mid);
    if (!e) {
      lo = mid + 1; // not expected after the last checkpoint; be safe
      continue;
    }
    if (e.time <= time) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

const deepCopy = <T>(x: T): T => unpackValue<T>(packValue(x));

/**
 * A pass removes events and their audit rows only after its checkpoint is durable, in steps a
 * kill can come between. Before the checkpoint it writes down which inodes' audit rows it will
 * trim up to which seq; the note is removed once they are trimmed. If it is still there at the
 * next mount or pass, and its seq is the checkpoint's, the trimming is done again (it is
 * idempotent): otherwise rows of removed events would stay behind for good, and fsck would
 * report them. Events a killed pass had not removed yet stay (the journal is read from the
 * checkpoint on, so nothing shows them); later passes do not remove them.
 */
const PENDING_FILE = "retention-pending.json";

async function writePending(dataDir: string, seq: number, inodes: Iterable<number>): Promise<void> {
  const path = join(dataDir, PENDING_FILE);
  const fh = await open(`${path}.tmp`, "w", 0o600);
  try {
    await fh.writeFile(JSON.stringify({ seq, inodes: [...inodes] }));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(`${path}.tmp`, path);
}

/** Trim the audit rows of `inodes` to the seqs after `m` (the events up to it are gone). */
async function trimAudit(fs: Filesystem, inodes: Iterable<number>, m: number): Promise<void> {
  const audit = backingOf(fs.journal).audit;
  let ops: { type: "del" | "put"; key: Buffer; value?: Buffer }[] = [];
  for (const ino of inodes) {
    for await (const [k, v] of audit.iterator({ gte: key(ino, 0), lte: key(ino, m) } as never)) {
      const kept = auditSeqs(k as Buffer, v as Buffer).filter((s) => s > m);
      ops.push({ type: "del", key: k as Buffer });
      if (kept.length > 0) ops.push({ type: "put", ...auditRow(ino, kept) });
    }
    if (ops.length >= 1000) {
      await audit.batch(ops as never);
      ops = [];
    }
  }
  if (ops.length > 0) await audit.batch(ops as never);
}

/** Finish the audit trimming of a pass that was killed (see {@link PENDING_FILE}); true if there was one. */
export async function finishInterruptedPass(fs: Filesystem, log: (message: string) => void = () => {}): Promise<boolean> {
  const dataDir = fs.journal.dir;
  const path = join(dataDir, PENDING_FILE);
  let pending: { seq: number; inodes: number[] };
  try {
    pending = JSON.parse(await readFile(path, "utf8"));
  } catch {
    return false;
  }
  // Its checkpoint is not the newest: the pass stopped before it removed anything.
  if ((await localCheckpoint(dataDir))?.seq === pending.seq) {
    await trimAudit(fs, pending.inodes, pending.seq);
    log(`objectfs: finished the audit index trimming of a retention pass that was interrupted (checkpoint seq ${pending.seq})`);
  }
  await rm(path, { force: true });
  return true;
}

/** One retention pass over a data directory (the filesystem must be open). */
export async function retainLocal(fs: Filesystem, policy: RetentionPolicy, options: PassOptions = {}): Promise<PassResult> {
  if (!(policy.eventsMs >= policy.dataMs)) throw new Error("the events window must be at least as long as the data window (retain-events >= retain-data)");
  const log = options.log ?? (() => {});
  const now = options.now ?? Date.now();
  const journal = fs.journal;
  const dataDir = journal.dir;
  await finishInterruptedPass(fs, log);
  const prev = await localCheckpoint(dataDir);
  const mPrev = prev?.seq ?? 0;
  const bPrev = prev?.dataFrom ?? 0;
  const cap = Math.min(journal.head, options.maxSeq ?? Infinity);
  let b = Math.min(cap, await seqAtOrBefore(fs, now - policy.dataMs, mPrev));
  let m = policy.eventsMs === Infinity ? 0 : Math.min(b, await seqAtOrBefore(fs, now - policy.eventsMs, mPrev));
  b = Math.max(b, bPrev);
  m = Math.max(m, mPrev);
  const nothing: PassResult = { changed: false, eventsRemoved: 0, payloadsDropped: 0, bytesDead: 0, affected: [], ...(prev ? { checkpoint: prev } : {}) };
  if (b <= bPrev && m <= mPrev) return nothing;

  // Fold: the state at M (the checkpoint), then on to B (whose extents name the carriers).
  const state = prev ? TreeState.fromDump(deepCopy(prev.dump), { audit: false }) : TreeState.memory({ audit: false });
  const index = new DataIndex();
  for (const [seq, file, pos, length] of prev?.dataMap ?? []) index.add(seq, file, pos, length);
  const fold = async (from: number, to: number) => {
    if (to < from) return;
    for await (const e of journal.read({ gte: from, lte: to })) {
      if (e.type === "ExtentWritten" && e.ref) index.add(e.seq, e.ref.file, e.ref.pos, e.length);
      evolve(state, e);
    }
  };
  await fold(mPrev + 1, m);
  const dumpM = deepCopy(state.dump());
  const dataMap = dataMapOf(state, index);
  await fold(m + 1, b);
  const carriers = carriersOf(state, index);
  const timeOf = async (seq: number) => (seq > 0 ? ((await journal.get(seq))?.time ?? 0) : 0);
  const checkpoint: Checkpoint = { seq: m, time: m === mPrev && prev ? prev.time : await timeOf(m), dataFrom: b, dataFromTime: await timeOf(b), dump: dumpM, dataMap, carriers };

  // Events up to M go, but carriers; bytes of events in (M, B] go, but carriers'.
  const backing = backingOf(journal);
  const deletes: (number | [number, number])[] = [];
  const replacements: JournalEvent[] = [];
  const dead: [number, number, number][] = [];
  const affected: number[] = [];
  const auditInodes = new Set<number>();
  let removed = 0;
  const dropData = (e: JournalEvent): JournalEvent | undefined => {
    if (e.type !== "ExtentWritten" || e.dataDropped || e.length === 0) return undefined;
    if (e.ref) dead.push([e.ref.file, e.ref.pos, e.length]);
    const { ref: _ref, data: _data, ...rest } = e;
    return { ...rest, dataDropped: true } as JournalEvent;
  };
  // (M_prev, M]: read once for the audit rows and to spare the carriers.
  let runStart: number | undefined;
  for await (const e of journal.read({ gte: mPrev + 1, lte: m })) {
    for (const ino of inodesTouched(e)) auditInodes.add(ino);
    if (e.type === "ExtentWritten" && hasSeq(carriers, e.seq)) {
      if (runStart !== undefined) deletes.push([runStart, e.seq - 1]);
      runStart = undefined;
      continue;
    }
    if (e.type === "ExtentWritten" && e.ref && !e.dataDropped) dead.push([e.ref.file, e.ref.pos, e.length]);
    runStart ??= e.seq;
    removed++;
    affected.push(e.seq);
  }
  if (runStart !== undefined) deletes.push([runStart, m]);
  // Carriers of the last pass that no longer carry anything.
  for (const s of prev?.carriers ?? []) {
    if (s > b || hasSeq(carriers, s)) continue;
    if (s <= mPrev) {
      const e = await journal.get(s);
      if (!e) continue;
      if (e.type === "ExtentWritten" && e.ref && !e.dataDropped) dead.push([e.ref.file, e.ref.pos, e.length]);
      deletes.push(s);
      removed++;
      affected.push(s);
    } else if (s > m) {
      const e = await journal.get(s);
      const r = e && dropData(e);
      if (r) {
        replacements.push(r);
        affected.push(s);
      }
    }
  }
  // Events newly in the data window's past.
  for await (const e of journal.read({ gte: Math.max(bPrev, m) + 1, lte: b })) {
    if (hasSeq(carriers, e.seq)) continue;
    const r = dropData(e);
    if (r) {
      replacements.push(r);
      affected.push(e.seq);
    }
  }
  // Nothing is removed before the checkpoint stands for it, nor before a note says which
  // audit rows to trim should this pass be killed after it (see PENDING_FILE).
  await writePending(dataDir, m, auditInodes);
  const name = await writeLocalCheckpoint(dataDir, checkpoint);
  await journal.retire(deletes, replacements);
  // The audit index of the removed events: rows hold several seqs of one inode; keep those after M.
  await trimAudit(fs, auditInodes, m);
  await rm(join(dataDir, PENDING_FILE), { force: true });
  await journal.markDataDead(dead);
  const bytesDead = dead.reduce((n, [, , len]) => n + len, 0);

  // Reclaim: a file still being appended to is closed first if it holds dead bytes.
  if (dead.some(([file]) => file === journal.activeDataFile)) await journal.rotateData();
  const reclaimed = await journal.reclaimData({
    ...options.reclaim,
    guard: async (file, ranges) => {
      // Nothing the tree shows now may be in what goes: check every extent into this file.
      for await (const [k, v] of backing.extents.iterator()) {
        const [length, f, pos] = unpackValue<[number, number, number]>(v as Buffer);
        if (f !== file) continue;
        for (const [p, l] of ranges) {
          if (pos < p + l && p < pos + length) {
            log(`objectfs: retention kept data log file ${file}: inode ${readU64(k as Buffer)} still shows bytes at ${pos} that were recorded dead (a bug; nothing was removed)`);
            return false;
          }
        }
      }
      return true;
    },
  });
  affected.sort((x, y) => x - y);
  log(`objectfs: retention: checkpoint at seq ${m}, restorable from seq ${b}; ${removed} events removed, ${replacements.length} payloads dropped (${bytesDead} bytes), ${reclaimed.rewritten + reclaimed.removed} data files reclaimed (${reclaimed.bytes} bytes)`);
  return { changed: true, checkpoint, name, eventsRemoved: removed, payloadsDropped: replacements.length, bytesDead, reclaimed, affected };
}

