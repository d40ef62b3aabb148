/**
 * Compaction of a client's journal in S3, in levels, under the retention windows.
 *
 * Segments are shipped about once a second (level 0). Compaction merges runs of old level-0
 * segments into level-1 segments (one per hour of upload time, at most `maxSegmentBytes`),
 * and old level-1 segments into level-2 ones (per day), so a long history is a few large
 * objects instead of many small ones. Each rewritten segment follows the checkpoint in force
 * (src/retention): events up to its seq M are left out but for the carriers of bytes still
 * shown at B, and the bytes of every other event up to B are dropped (the event stays, for
 * the audit log). A segment that holds something retention has since dropped is rewritten
 * even when it merges with nothing.
 *
 * Order, so that a reader never misses what it needs: the checkpoint goes up first, then
 * each new segment, and only then are the segments it replaces deleted (a reader that listed
 * them just before gets a clear "try again"). The level-0 chain stays verifiable across
 * levels: a compacted segment carries the chain's checksum before its first seq and at its
 * last (format 3, journal/segment.ts).
 */
import { decodeSegment, sealSegment, segmentName, type JournalEvent } from "../../journal/mod.ts";
import { hasSeq, type Checkpoint } from "../retention/checkpoint.ts";
import type { ObjectStore } from "../s3/mod.ts";
import { checkpointPrefix, listRemoteCheckpoints, putRemoteCheckpoint } from "./checkpoints.ts";
import { coveringChain, journalPrefix, levelDir, listSegments, type RemoteSegment } from "./segments.ts";

export interface CompactionOptions {
  readonly store: ObjectStore;
  readonly prefix: string;
  readonly clientId: string;
  /** The checkpoint in force and its name (`<M>-<B>.ckpt`); none: nothing is dropped, segments only merge. */
  readonly checkpoint?: Checkpoint;
  readonly checkpointName?: string;
  /** Seqs whose copy in S3 must change (sorted): removed or bytes dropped by retention. */
  readonly pending: readonly number[];
  readonly now?: number;
  /** Level-0 segments uploaded longer ago than this merge into level 1. @default 1 h */
  readonly level1AgeMs?: number;
  /** Level-1 segments written longer ago than this merge into level 2. @default 1 day */
  readonly level2AgeMs?: number;
  /** @default 256 MiB */
  readonly maxSegmentBytes?: number;
  readonly log?: (message: string) => void;
}

export interface CompactionResult {
  readonly written: number;
  readonly deleted: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
}

/** Segments rewritten into one, at `level`. */
export interface Group {
  readonly level: number;
  readonly members: readonly RemoteSegment[];
}

export interface PlanOptions {
  readonly now: number;
  readonly level1AgeMs: number;
  readonly level2AgeMs: number;
  readonly maxSegmentBytes: number;
  /** Seqs whose copy must change (sorted); only those up to `dataFrom` can be in old segments. */
  readonly pending: readonly number[];
  readonly dataFrom: number;
}

/**
 * Which segments of a chain to rewrite, and into what: runs of level-0 segments uploaded
 * longer than `level1AgeMs` ago, within one hour of upload time, become one level-1 segment;
 * runs of level-1 segments older than `level2AgeMs`, within one day, one level-2 segment; each
 * at most `maxSegmentBytes` (before what retention drops). A run of one is left alone unless
 * it holds a pending seq; then it is rewritten at its level (a level-0 one as level 1).
 */
export function planCompaction(chain: readonly RemoteSegment[], o: PlanOptions): Group[] {
  const needsRewrite = (s: RemoteSegment) => s.minSeq <= o.dataFrom && anyIn(o.pending, s.minSeq, s.maxSeq);
  const mergesTo = (s: RemoteSegment): { level: number; window: number } | undefined => {
    const age = o.now - s.lastModified.getTime();
    if (s.level === 0 && age >= o.level1AgeMs) return { level: 1, window: Math.floor(s.lastModified.getTime() / 3_600_000) };
    if (s.level === 1 && age >= o.level2AgeMs) return { level: 2, window: Math.floor(s.lastModified.getTime() / 86_400_000) };
    return undefined;
  };
  const groups: Group[] = [];
  let open: { level: number; window: number; members: RemoteSegment[]; bytes: number } | undefined;
  const close = () => {
    if (open && (open.members.length > 1 || open.members.some(needsRewrite))) groups.push({ level: open.level, members: open.members });
    open = undefined;
  };
  for (const s of chain) {
    const to = mergesTo(s);
    if (to && open && open.level === to.level && open.window === to.window && open.bytes + s.size <= o.maxSegmentBytes) {
      open.members.push(s);
      open.bytes += s.size;
      continue;
    }
    close();
    if (to) open = { ...to, members: [s], bytes: s.size };
    else if (needsRewrite(s)) groups.push({ level: Math.max(1, s.level), members: [s] });
  }
  close();
  return groups;
}

/** Plan and run one compaction of the client's journal in S3. */
export async function compactRemote(o: CompactionOptions): Promise<CompactionResult> {
  const now = o.now ?? Date.now();
  const l1Age = o.level1AgeMs ?? 3_600_000;
  const l2Age = o.level2AgeMs ?? 86_400_000;
  const maxBytes = o.maxSegmentBytes ?? 256 << 20;
  const log = o.log ?? (() => {});
  const c: Pick<Checkpoint, "seq" | "dataFrom" | "carriers"> = o.checkpoint ?? { seq: 0, dataFrom: 0, carriers: [] };

  // 1. The checkpoint first.
  const have = await listRemoteCheckpoints(o.store, o.prefix, o.clientId);
  if (o.checkpoint && o.checkpointName && !have.some((h) => h.key.endsWith(`/${o.checkpointName}`))) await putRemoteCheckpoint(o.store, o.prefix, o.clientId, o.checkpoint, o.checkpointName);

  // 2. The chain, and what to rewrite.
  const all = await listSegments(o.store, o.prefix, o.clientId);
  const chain = coveringChain(all);
  let expect = 1;
  for (const s of chain) {
    if (s.minSeq !== expect) {
      log(`objectfs: compaction skipped: the journal in S3 has no segment starting at seq ${expect}`);
      return { written: 0, deleted: 0, bytesRead: 0, bytesWritten: 0 };
    }
    expect = s.maxSeq + 1;
  }
  const groups = planCompaction(chain, { now, level1AgeMs: l1Age, level2AgeMs: l2Age, maxSegmentBytes: maxBytes, pending: o.pending, dataFrom: c.dataFrom });

  // 3. Rewrite each group: new segment up, then the replaced ones deleted.
  let written = 0;
  let deleted = 0;
  let bytesRead = 0;
  let bytesWritten = 0;
  const dir = journalPrefix(o.prefix, o.clientId);
  for (const g of groups) {
    const events: JournalEvent[] = [];
    let prevChecksum = 0;
    let tail = 0;
    let after: { maxSeq: number; checksum: number } | undefined;
    for (const m of g.members) {
      const got = await o.store.get(m.key);
      bytesRead += got.bytes.length;
      const seg = decodeSegment(got.bytes, { name: m.key, ...(after ? { after } : {}) });
      if (!after) prevChecksum = seg.prevChecksum;
      after = { maxSeq: seg.maxSeq, checksum: seg.tailChecksum };
      tail = seg.tailChecksum;
      for (const e of seg.events) {
        const kept = retained(e, c);
        if (kept) events.push(kept);
      }
    }
    const first = g.members[0]!;
    const last = g.members[g.members.length - 1]!;
    const sealed = sealSegment(events, { prevChecksum, compacted: { level: g.level, minSeq: first.minSeq, maxSeq: last.maxSeq, tailChecksum: tail } });
    const key = dir + levelDir(g.level) + segmentName(first.minSeq, last.maxSeq);
    await o.store.put(key, sealed.bytes);
    written++;
    bytesWritten += sealed.bytes.length;
    for (const m of g.members) {
      if (m.key === key) continue;
      await o.store.delete(m.key);
      deleted++;
    }
  }
  // Segments a compacted one covers but that an interrupted compaction left behind.
  const chainKeys = new Set(chain.map((s) => s.key));
  for (const s of all) {
    if (chainKeys.has(s.key) || s.maxSeq >= expect) continue;
    if (chain.some((k) => k.minSeq <= s.minSeq && s.maxSeq <= k.maxSeq && k.level > s.level)) {
      await o.store.delete(s.key);
      deleted++;
    }
  }
  // 4. Older checkpoints are of no use once the segments follow the new one.
  if (o.checkpointName) {
    for (const h of have) {
      if (h.key === checkpointPrefix(o.prefix, o.clientId) + o.checkpointName) continue;
      await o.store.delete(h.key);
    }
  }
  if (written > 0) log(`objectfs: compaction: ${written} segments written (${bytesWritten} bytes) in place of ${deleted}, ${bytesRead} bytes read`);
  return { written, deleted, bytesRead, bytesWritten };
}

/** What of an event a compacted segment keeps under a checkpoint (undefined: nothing). */
function retained(e: JournalEvent, c: Pick<Checkpoint, "seq" | "dataFrom" | "carriers">): JournalEvent | undefined {
  if (e.type === "ExtentWritten") {
    const carrier = hasSeq(c.carriers, e.seq);
    if (e.seq <= c.seq && !carrier) return undefined;
    if (e.seq <= c.dataFrom && !carrier && !e.dataDropped) {
      const { data: _data, ref: _ref, ...rest } = e;
      return { ...rest, dataDropped: true } as JournalEvent;
    }
    return e;
  }
  return e.seq <= c.seq ? undefined : e;
}

function anyIn(sorted: readonly number[], from: number, to: number): boolean {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! < from) lo = mid + 1;
    else hi = mid;
  }
  return lo < sorted.length && sorted[lo]! <= to;
}
