/**
 * Journal segments in S3: `PREFIX/.objectfs/journal/<clientId>/<minSeq>-<maxSeq>.seg`.
 *
 * The shipper seals the events after the last replicated seq (data inline, up to
 * `maxSegmentBytes`) into a segment chained to the previous one, writes it with
 * `If-None-Match: *`, and journals a SegmentReplicated event: that event is the local
 * position. After an error the position is taken from the remote listing instead (the last
 * segment there, verified), so an upload whose acknowledgment was lost is never sent twice
 * and never skipped.
 *
 * Replication facts (the shipper's and materializer's own events) do not by themselves make
 * a segment: they travel in the next one.
 */
import { decodeSegment, JournalError, parseSegmentName, sealSegment, segmentName, type JournalEvent, type Seq } from "../../journal/mod.ts";
import type { Filesystem } from "../fs/filesystem.ts";
import type { Capabilities, ObjectStore } from "../s3/mod.ts";
import { META_DIR } from "./keys.ts";

/** Events that record replication itself: they ride along but never make a segment alone. */
export const BOOKKEEPING = new Set<JournalEvent["type"]>(["SegmentSealed", "SegmentReplicated", "ObjectMaterialized", "ObjectDeleted", "Reconciled", "RemoteListed", "ConflictDetected", "Mounted", "Unmounted"]);

/**
 * Bookkeeping that changes what a replay shows (which object version a file's bytes come
 * from, what a listing found): it is no change to materialize, but it must reach S3, or a
 * restore from S3 alone would pin a file to an object version that was since overwritten.
 */
export const REMOTE_FACTS = new Set<JournalEvent["type"]>(["ObjectMaterialized", "ObjectDeleted", "ConflictDetected", "RemoteListed"]);

export const journalPrefix = (prefix: string, clientId: string) => `${prefix}${META_DIR}/journal/${clientId}/`;

export interface ShipperOptions {
  readonly fs: Filesystem;
  readonly store: ObjectStore;
  readonly prefix: string;
  readonly capabilities: () => Promise<Capabilities>;
  /** @default 16 MiB */
  readonly maxSegmentBytes?: number;
  readonly log: (message: string) => void;
}

export class SegmentShipper {
  readonly totals = { segments: 0, bytes: 0 };
  private verified = false;
  private readonly dir: string;

  constructor(private readonly o: ShipperOptions) {
    this.dir = journalPrefix(o.prefix, o.fs.journal.clientId);
  }

  /** Where replication stands locally: the last replicated seq and its segment checksum. */
  position(): { seq: number; checksum: number } {
    const r = this.o.fs.syncState.replicated;
    return r ? { seq: r.seq, checksum: r.checksum } : { seq: 0, checksum: 0 };
  }

  /** After an error (or at start): adopt the remote listing's position if it is ahead. */
  async resync(): Promise<void> {
    let last: { key: string; maxSeq: number } | undefined;
    for await (const e of this.o.store.list({ prefix: this.dir })) {
      if (e.kind !== "object") continue;
      const r = parseSegmentName(e.key.slice(this.dir.length));
      if (r && (!last || r.maxSeq > last.maxSeq)) last = { key: e.key, maxSeq: r.maxSeq };
    }
    const local = this.position();
    if (last && last.maxSeq > local.seq) {
      const got = await this.o.store.get(last.key);
      const seg = decodeSegment(got.bytes, { name: last.key });
      this.o.log(`objectfs: ${last.key} is in S3 but was not recorded here (an acknowledgment was lost): adopting it`);
      await this.o.fs.record([], () => [{ type: "SegmentReplicated", minSeq: seg.minSeq, maxSeq: seg.maxSeq, key: last!.key, etag: got.head.etag, checksum: seg.checksum }]);
    }
    this.verified = true;
  }

  /** Ship one segment if there is anything to ship; true if one was shipped. */
  async shipOne(upTo: number): Promise<boolean> {
    if (!this.verified) await this.resync();
    const { fs, store } = this.o;
    const from = this.position();
    const head = Math.min(upTo, fs.journal.head);
    if (head <= from.seq) return false;
    const max = this.o.maxSegmentBytes ?? 16 << 20;
    const events: JournalEvent[] = [];
    let bytes = 0;
    let meaningful = false;
    for await (const e of fs.journal.read({ gte: from.seq + 1, lte: head, data: true })) {
      events.push(e);
      bytes += e.type === "ExtentWritten" ? e.length + 64 : 64;
      if (!BOOKKEEPING.has(e.type) || REMOTE_FACTS.has(e.type)) meaningful = true;
      if (bytes >= max) break;
    }
    if (!meaningful || events.length === 0) return false;
    if (events[0]!.seq !== from.seq + 1) {
      throw new Error(`the local journal no longer holds seq ${from.seq + 1} (retention removed it before it was replicated)`);
    }
    const sealed = sealSegment(events, { prevChecksum: from.checksum });
    const key = this.dir + segmentName(sealed.minSeq, sealed.maxSeq);
    const caps = await this.o.capabilities();
    try {
      let etag: string;
      if (caps.conditionalWrites.ifNoneMatch) {
        const out = await store.putIf(key, sealed.bytes, { ifNoneMatch: "*" });
        if (out._tag === "PreconditionFailed") {
          // Written before, its acknowledgment lost: the listing tells where we are.
          this.verified = false;
          return true;
        }
        etag = out.etag;
      } else {
        etag = (await store.put(key, sealed.bytes)).etag;
      }
      await fs.record([], () => [{ type: "SegmentReplicated", minSeq: sealed.minSeq as Seq, maxSeq: sealed.maxSeq as Seq, key, etag, checksum: sealed.checksum, runs: sealed.runs }]);
    } catch (e) {
      this.verified = false;
      throw e;
    }
    this.totals.segments++;
    this.totals.bytes += sealed.bytes.length;
    return true;
  }
}

/** A segment in S3: its key, level (0 as shipped, 1 and up compacted) and range. */
export interface RemoteSegment {
  readonly key: string;
  readonly level: number;
  readonly minSeq: number;
  readonly maxSeq: number;
  readonly size: number;
  readonly lastModified: Date;
}

/** Level-k segments live under `L<k>/` in the client's journal prefix; level 0 right in it. */
export const levelDir = (level: number) => (level === 0 ? "" : `L${level}/`);

/** Every segment of one client's journal in S3, of every level, by minSeq. */
export async function listSegments(store: ObjectStore, prefix: string, clientId: string): Promise<RemoteSegment[]> {
  const dir = journalPrefix(prefix, clientId);
  const out: RemoteSegment[] = [];
  for await (const e of store.list({ prefix: dir })) {
    if (e.kind !== "object") continue;
    const rel = e.key.slice(dir.length);
    const m = /^(?:L([1-9][0-9]*)\/)?([^/]+)$/.exec(rel);
    const r = m && parseSegmentName(m[2]!);
    if (r) out.push({ key: e.key, level: m[1] ? Number(m[1]) : 0, minSeq: r.minSeq, maxSeq: r.maxSeq, size: e.size, lastModified: e.lastModified });
  }
  return out.sort((a, b) => a.minSeq - b.minSeq || b.maxSeq - a.maxSeq);
}

/**
 * The segments that cover a journal from seq 1 with as few objects as possible: at each
 * position the one reaching furthest (a compacted segment over the level-0 ones it replaced
 * but that are not deleted yet). A gap ends the chain; the reader then reports it.
 */
export function coveringChain(segments: readonly RemoteSegment[]): RemoteSegment[] {
  const chain: RemoteSegment[] = [];
  let next = 1;
  for (;;) {
    let best: RemoteSegment | undefined;
    for (const s of segments) if (s.minSeq === next && (!best || s.maxSeq > best.maxSeq)) best = s;
    if (!best) {
      // Nothing starts here: hand the reader the next segment so that it names the gap.
      const after = segments.find((s) => s.minSeq > next);
      if (after) chain.push(after);
      return chain;
    }
    chain.push(best);
    next = best.maxSeq + 1;
  }
}

/**
 * Every event of one client's journal in S3, in order, each segment verified (checksums,
 * chain, continuity). A corrupt or discontinuous segment throws a JournalError naming it;
 * nothing from it or after it is yielded. Compacted segments may leave out events retention
 * removed (see src/replicator/compaction.ts); readers replay from the checkpoint then.
 *
 * The bytes of each ExtentWritten are a view into its segment's buffer. A reader that is done
 * with every view into a segment may hand the buffer back with {@link releaseSegmentBytes},
 * and a later segment is then read into it instead of into fresh memory; a reader that never
 * does may keep the events as long as it likes.
 */
export async function* readRemoteJournal(store: ObjectStore, prefix: string, clientId: string): AsyncGenerator<JournalEvent> {
  const names = coveringChain(await listSegments(store, prefix, clientId));
  const pool = new SegmentBuffers();
  try {
    let after: { maxSeq: number; checksum: number } | undefined;
    // Up to AHEAD segments fetched ahead of the one being decoded.
    const fetches: Promise<Uint8Array>[] = [];
    const fetch = (i: number) => {
      const p = fetchSegment(store, names[i]!, pool);
      p.catch(() => {});
      fetches[i] = p;
    };
    for (let i = 0; i < Math.min(AHEAD, names.length); i++) fetch(i);
    for (let i = 0; i < names.length; i++) {
      const n = names[i]!;
      let bytes: Uint8Array;
      try {
        bytes = await fetches[i]!;
      } catch (e) {
        if ((e as { reason?: string }).reason === "not-found") {
          throw new JournalError("discontinuous", `Segment ${n.key} was removed while the journal was read (compaction replaced it); try again`);
        }
        throw e;
      }
      delete fetches[i];
      if (i + AHEAD < names.length) fetch(i + AHEAD);
      const seg = decodeSegment(bytes, { name: n.key, after: after ?? { maxSeq: 0, checksum: 0 } });
      yield* seg.events;
      after = { maxSeq: seg.maxSeq, checksum: seg.tailChecksum };
    }
  } finally {
    pool.close();
  }
}

/** Segments fetched ahead of the one being decoded. */
const AHEAD = 4;

/** The pool that lent each buffer still out, by buffer. */
const lentBy = new WeakMap<ArrayBufferLike, SegmentBuffers>();

/**
 * Hand back the buffer of the segment that `view` (an event's data from
 * {@link readRemoteJournal}) is a view into: the caller holds no view into that segment any
 * more, and will not read one. A later segment of the same read may be read into it. Views
 * of anything else are ignored.
 */
export function releaseSegmentBytes(view: Uint8Array): void {
  lentBy.get(view.buffer)?.release(view.buffer);
}

/**
 * Buffers that segments are read into, reused once their reader hands them back: fresh memory
 * costs a page fault per 4 KiB here, several times the copy itself.
 */
class SegmentBuffers {
  private free: ArrayBuffer[] = [];
  private closed = false;

  take(size: number): Uint8Array {
    const i = this.free.findIndex((b) => b.byteLength >= size);
    // Not zero-filled: every byte of it is written before it is read, or the read fails.
    const buffer = i >= 0 ? this.free.splice(i, 1)[0]! : Buffer.allocUnsafeSlow(Math.max(size, 1)).buffer as ArrayBuffer;
    lentBy.set(buffer, this);
    return new Uint8Array(buffer, 0, size);
  }

  release(buffer: ArrayBufferLike): void {
    if (lentBy.get(buffer) !== this) return;
    lentBy.delete(buffer);
    if (!this.closed && this.free.length < AHEAD) this.free.push(buffer as ArrayBuffer);
  }

  close(): void {
    this.closed = true;
    this.free = [];
  }
}

/** One segment's bytes, read as they arrive into a buffer of the pool. */
async function fetchSegment(store: ObjectStore, n: RemoteSegment, pool: SegmentBuffers): Promise<Uint8Array> {
  const got = await store.getStream(n.key);
  let out = pool.take(got.head.size);
  let at = 0;
  for await (const piece of got.body) {
    if (at + piece.byteLength > out.length) {
      // Longer than its size said (the store checks bodies against their length, so only if the object changed): keep it all, decodeSegment judges.
      const grown = new Uint8Array(Math.max(at + piece.byteLength, out.length * 2));
      grown.set(out.subarray(0, at));
      out = grown;
    }
    out.set(piece, at);
    at += piece.byteLength;
  }
  return at === out.length ? out : out.subarray(0, at);
}

/** Client ids with a journal under the prefix. */
export async function remoteClients(store: ObjectStore, prefix: string): Promise<string[]> {
  // A flat listing: some servers' delimited listings drop prefixes whose keys are all nested deeper.
  const base = `${prefix}${META_DIR}/journal/`;
  const out = new Set<string>();
  for await (const e of store.list({ prefix: base })) {
    if (e.kind !== "object") continue;
    const id = e.key.slice(base.length).split("/")[0];
    if (id) out.add(id);
  }
  return [...out];
}
