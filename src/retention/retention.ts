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
 * (DataLog.reclaim). Every step can be repeated, and a pass cut short by a crash is finished
 * at the next mount or pass (see PENDING_FILE). Nothing that a point in the data window needs
 * is touched: the state at any P ≥ B holds only bytes of carriers and of events after B.
 */
import type { JournalEvent } from "../../journal/mod.ts";
import { key, readU64 } from "../../journal/keys.ts";
import { unpackValue } from "../../journal/codec.ts";
import { mergeDataRanges, type ReclaimResult } from "../../journal/data_log.ts";
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
 * A pass removes events, their audit rows and their bytes only after its checkpoint is durable,
 * in steps a kill can come between. Before the checkpoint it writes down (fsynced) which
 * checkpoint it is making (its seq M and data point B), which inodes' audit rows it will trim,
 * and which data log bytes it will record dead; the note is removed once all of that is done.
 * If the note is still there at the next mount or pass, and the newest checkpoint is the one it
 * names, the pass is finished from the checkpoint alone: every event up to M but its carriers
 * is removed, every payload in (M, B] but the carriers' is dropped, the audit rows are trimmed,
 * and the bytes of all of those (the ones still in the journal, and those the note lists, which
 * a killed pass may have removed before recording them dead) are recorded dead. Each step can be
 * repeated. A note whose checkpoint was never written is dropped: nothing was removed then.
 */
const PENDING_FILE = "retention-pending.json";

interface PendingPass {
  readonly seq: number;
  /** The checkpoint's data point (missing in notes of earlier versions, which then only trim the audit rows). */
  readonly dataFrom?: number;
  readonly inodes: readonly number[];
  /** Data log ranges [file, pos, length] the pass records dead, contiguous ones merged. */
  readonly dead?: readonly (readonly [number, number, number])[];
}

async function writePending(dataDir: string, pending: PendingPass): Promise<void> {
  const path = join(dataDir, PENDING_FILE);
  const fh = await open(`${path}.tmp`, "w", 0o600);
  try {
    await fh.writeFile(JSON.stringify(pending));
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

/** Finish a pass that was killed (see {@link PENDING_FILE}); true if a note of one was found. */
export async function finishInterruptedPass(fs: Filesystem, log: (message: string) => void = () => {}, options: Pick<PassOptions, "reclaim"> = {}): Promise<boolean> {
  const dataDir = fs.journal.dir;
  const path = join(dataDir, PENDING_FILE);
  let pending: PendingPass;
  try {
    pending = JSON.parse(await readFile(path, "utf8"));
  } catch {
    return false;
  }
  const c = await localCheckpoint(dataDir);
  // Its checkpoint is not the newest: the pass stopped before it removed anything.
  const ours = c && c.seq === pending.seq && (pending.dataFrom === undefined || c.dataFrom === pending.dataFrom);
  let dead: [number, number, number][] = [];
  if (ours && pending.dataFrom === undefined) {
    await trimAudit(fs, pending.inodes, pending.seq);
    log(`objectfs: finished the audit index trimming of a retention pass that was interrupted (checkpoint seq ${pending.seq})`);
  } else if (ours) {
    const done = await completeTo(fs, c, pending);
    dead = done.dead;
    log(`objectfs: finished a retention pass that was interrupted (checkpoint seq ${c.seq}, restorable from seq ${c.dataFrom}): ${done.removed} more events removed, ${done.dropped} more payloads dropped`);
  }
  await rm(path, { force: true });
  if (dead.length > 0) await reclaimDead(fs, dead, options.reclaim, log);
  return true;
}

/**
 * What a complete pass to checkpoint `c` leaves, from the checkpoint alone: of the events up to
 * its seq only its carriers, and in (seq, dataFrom] no payload but the carriers'; the audit rows
 * of the note's inodes trimmed; every byte of what goes recorded dead.
 */
async function completeTo(fs: Filesystem, c: Checkpoint, pending: PendingPass): Promise<{ removed: number; dropped: number; dead: [number, number, number][] }> {
  const journal = fs.journal;
  const deletes: [number, number][] = [];
  const replacements: JournalEvent[] = [];
  const dead: [number, number, number][] = (pending.dead ?? []).map(([f, p, l]) => [f, p, l]);
  let removed = 0;
  let runStart: number | undefined;
  let runEnd = 0;
  for await (const e of journal.read({ lte: c.dataFrom })) {
    const carrier = e.type === "ExtentWritten" && hasSeq(c.carriers, e.seq);
    if (e.seq <= c.seq) {
      if (carrier) continue;
      if (e.type === "ExtentWritten" && e.ref && !e.dataDropped) dead.push([e.ref.file, e.ref.pos, e.length]);
      if (runStart !== undefined && e.seq === runEnd + 1) runEnd = e.seq;
      else {
        if (runStart !== undefined) deletes.push([runStart, runEnd]);
        runStart = runEnd = e.seq;
      }
      removed++;
      continue;
    }
    if (carrier || e.type !== "ExtentWritten" || e.dataDropped || e.length === 0) continue;
    if (e.ref) dead.push([e.ref.file, e.ref.pos, e.length]);
    const { ref: _ref, data: _data, ...rest } = e;
    replacements.push({ ...rest, dataDropped: true } as JournalEvent);
  }
  if (runStart !== undefined) deletes.push([runStart, runEnd]);
  await journal.retire(deletes, replacements);
  await trimAudit(fs, pending.inodes, c.seq);
  const merged = mergeDataRanges(dead);
  await journal.markDataDead(merged);
  return { removed, dropped: replacements.length, dead: merged };
}

/**
 * Rewrite the data log files that are mostly dead (see DataLog.reclaim); a file still being
 * appended to is closed first if `dead` has bytes in it. Nothing the tree shows now may go: every
 * extent into a file is checked first.
 */
async function reclaimDead(fs: Filesystem, dead: readonly (readonly [number, number, number])[], options: PassOptions["reclaim"], log: (message: string) => void): Promise<ReclaimResult> {
  const journal = fs.journal;
  const backing = backingOf(journal);
  if (dead.some(([file]) => file === journal.activeDataFile)) await journal.rotateData();
  return journal.reclaimData({
    ...options,
    guard: async (file, ranges) => {
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
}

/** One retention pass over a data directory (the filesystem must be open). */
export async function retainLocal(fs: Filesystem, policy: RetentionPolicy, options: PassOptions = {}): Promise<PassResult> {
  if (!(policy.eventsMs >= policy.dataMs)) throw new Error("the events window must be at least as long as the data window (retain-events >= retain-data)");
  const log = options.log ?? (() => {});
  const now = options.now ?? Date.now();
  const journal = fs.journal;
  const dataDir = journal.dir;
  await finishInterruptedPass(fs, log, options);
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
  // Nothing is removed before the checkpoint stands for it, nor before a note says what this
  // pass removes, should it be killed after the checkpoint (see PENDING_FILE).
  const deadRanges = mergeDataRanges(dead);
  await writePending(dataDir, { seq: m, dataFrom: b, inodes: [...auditInodes], dead: deadRanges });
  const name = await writeLocalCheckpoint(dataDir, checkpoint);
  await journal.retire(deletes, replacements);
  // The audit index of the removed events: rows hold several seqs of one inode; keep those after M.
  await trimAudit(fs, auditInodes, m);
  await journal.markDataDead(deadRanges);
  await rm(join(dataDir, PENDING_FILE), { force: true });
  const bytesDead = dead.reduce((n, [, , len]) => n + len, 0);

  const reclaimed = await reclaimDead(fs, deadRanges, options.reclaim, log);
  affected.sort((x, y) => x - y);
  log(`objectfs: retention: checkpoint at seq ${m}, restorable from seq ${b}; ${removed} events removed, ${replacements.length} payloads dropped (${bytesDead} bytes), ${reclaimed.rewritten + reclaimed.removed} data files reclaimed (${reclaimed.bytes} bytes)`);
  return { changed: true, checkpoint, name, eventsRemoved: removed, payloadsDropped: replacements.length, bytesDead, reclaimed, affected };
}

