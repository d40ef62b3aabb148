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
import { decodeSegment, JournalError, SegmentCorruptError, parseSegmentName, sealSegment, SegmentIntake, segmentName, type JournalEvent, type Seq } from "../../journal/mod.ts";
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
  return (await listUnder(store, journalPrefix(prefix, clientId), false)).get("") ?? [];
}

/**
 * The journals of every client under the prefix, in one listing: client id → its segments, by
 * minSeq (a client with objects there but no segments has none).
 */
export async function listJournals(store: ObjectStore, prefix: string): Promise<Map<string, RemoteSegment[]>> {
  return listUnder(store, `${prefix}${META_DIR}/journal/`, true);
}

async function listUnder(store: ObjectStore, dir: string, byClient: boolean): Promise<Map<string, RemoteSegment[]>> {
  const out = new Map<string, RemoteSegment[]>();
  // A flat listing: some servers' delimited listings drop prefixes whose keys are all nested deeper.
  for await (const e of store.list({ prefix: dir })) {
    if (e.kind !== "object") continue;
    let rel = e.key.slice(dir.length);
    let id = "";
    if (byClient) {
      const slash = rel.indexOf("/");
      id = slash < 0 ? rel : rel.slice(0, slash);
      if (!id) continue;
      rel = slash < 0 ? "" : rel.slice(slash + 1);
    }
    let l = out.get(id);
    if (!l) out.set(id, (l = []));
    const m = /^(?:L([1-9][0-9]*)\/)?([^/]+)$/.exec(rel);
    const r = m && parseSegmentName(m[2]!);
    if (r) l.push({ key: e.key, level: m[1] ? Number(m[1]) : 0, minSeq: r.minSeq, maxSeq: r.maxSeq, size: e.size, lastModified: e.lastModified });
  }
  for (const l of out.values()) l.sort((a, b) => a.minSeq - b.minSeq || b.maxSeq - a.maxSeq);
  return out;
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
 * The bytes of each ExtentWritten are a view into its segment's buffer. A reader that says how
 * long it holds them past its segment ({@link holdSegmentBytes}) has later segments read into
 * the buffers of those it is done with, instead of into fresh memory; a reader that never
 * does may keep the events as long as it likes.
 *
 * `early`: events are handed out while their segment is still arriving, each as soon as its
 * own checks pass (see SegmentIntake.early), so that the reader's work on a segment overlaps
 * its download. The segment's own checksum is still checked once it is all here, and if that
 * fails the error is thrown after some of its events were yielded: only a reader that throws
 * away everything it did when reading fails (a restore into a work directory) may ask for
 * this. Such an error carries `lastGoodSeq`, the last seq of the segments that were whole.
 * `segments`: the journal's segments as just listed (see {@link listJournals}), instead of a
 * listing of its own.
 */
export async function* readRemoteJournal(
  store: ObjectStore,
  prefix: string,
  clientId: string,
  options: { readonly early?: boolean; readonly segments?: readonly RemoteSegment[] } = {},
): AsyncGenerator<JournalEvent> {
  const names = coveringChain(options.segments ?? (await listSegments(store, prefix, clientId)));
  const pool = new SegmentBuffers();
  let after = { maxSeq: 0, checksum: 0 };
  try {
    // Up to AHEAD segments fetched ahead of the one being decoded.
    const incoming: Incoming[] = [];
    const fetch = (i: number) => {
      incoming[i] = new Incoming(store, names[i]!, pool);
    };
    for (let i = 0; i < Math.min(AHEAD, names.length); i++) fetch(i);
    for (let i = 0; i < names.length; i++) {
      const n = names[i]!;
      const inc = incoming[i]!;
      /** Only the data of ExtentWritten events may stay a view into a buffer that is reused: other bytes are copied out. */
      const own = (e: JournalEvent): JournalEvent => (inc.lease && e.type === "XattrSet" ? { ...e, value: new Uint8Array(e.value) } : e);
      const given: number[] = [];
      if (options.early) {
        for (;;) {
          const changed = inc.changed();
          for (const e of inc.intake?.early(after) ?? []) {
            given.push(e.seq);
            yield own(e);
          }
          if (inc.finished) break;
          await changed;
        }
      }
      let fetched: Fetched;
      try {
        fetched = await inc.result;
      } catch (e) {
        if ((e as { reason?: string }).reason === "not-found") {
          throw new JournalError("discontinuous", `Segment ${n.key} was removed while the journal was read (compaction replaced it); try again`);
        }
        throw e;
      }
      delete incoming[i];
      if (i + AHEAD < names.length) fetch(i + AHEAD);
      const seg = decodeSegment(fetched.bytes, { name: n.key, after, ...(fetched.intake ? { intake: fetched.intake } : {}) });
      for (let k = 0; k < given.length; k++) {
        if (seg.events[k]?.seq !== given[k]) throw new SegmentCorruptError(n.key, 0, `event #${k} read as seq ${seg.events[k]?.seq} once the segment was whole, seq ${given[k]} while it arrived`);
      }
      for (let k = given.length; k < seg.events.length; k++) yield own(seg.events[k]!);
      if (fetched.lease) pool.pass(fetched.lease);
      after = { maxSeq: seg.maxSeq, checksum: seg.tailChecksum };
    }
  } catch (e) {
    if (options.early && e instanceof JournalError) Object.assign(e, { lastGoodSeq: after.maxSeq });
    throw e;
  } finally {
    pool.close();
  }
}

/** Segments fetched ahead of the one being decoded. */
const AHEAD = 4;

/** A pool buffer out for one segment: how many holds it has, whether the reader is past it. */
interface Lease {
  readonly buffer: ArrayBuffer;
  readonly pool: SegmentBuffers;
  holds: number;
  passed: boolean;
}

const leases = new WeakMap<ArrayBufferLike, Lease>();

/**
 * Keep the segment that `view` (an event's data from {@link readRemoteJournal}) is a view into
 * from being reused until the function returned is called. A reader that calls this declares
 * that it reads views into a segment after moving on past it only so: from then on the buffer
 * of each segment it has moved past and holds nothing of is reused for a later segment, and a
 * segment may wait for a buffer to come back. So the function must be called once the work on
 * the bytes is done (a write, say), without waiting for more of the journal to be read. Views
 * of anything else are not tracked (the function does nothing).
 */
export function holdSegmentBytes(view: Uint8Array): () => void {
  const lease = leases.get(view.buffer);
  if (!lease) return () => {};
  lease.pool.reusing = true;
  lease.holds++;
  let done = false;
  return () => {
    if (done) return;
    done = true;
    if (--lease.holds === 0 && lease.passed) lease.pool.back(lease);
  };
}

/** Segments smaller than this are read into memory of their own, not into a pool buffer. */
const POOLED_BYTES = 128 << 10;

/**
 * Buffers that segments are read into, reused when the reader holds them no more (see
 * {@link holdSegmentBytes}): fresh memory costs a page fault per 4 KiB here, ten times the copy
 * into memory already mapped. Once buffers are reused, at most {@link LIMIT} are out at a
 * time: a segment waits for one to come back rather than take fresh memory. That is no
 * deadlock: beyond the AHEAD segments being fetched and the one being read, which need none
 * of the others to finish, a buffer out is only held for work on its bytes that finishes on
 * its own (see {@link holdSegmentBytes}).
 */
class SegmentBuffers {
  /** Whether the reader has said how long it holds views (buffers are reused then). */
  reusing = false;
  private free: ArrayBuffer[] = [];
  private out = 0;
  private closed = false;
  private waiters: (() => void)[] = [];
  static readonly LIMIT = AHEAD + 1;

  /** A buffer of `size` bytes for a segment, and its lease (none for a small one). */
  async take(size: number): Promise<{ bytes: Uint8Array; lease?: Lease }> {
    if (size < POOLED_BYTES) return { bytes: Buffer.allocUnsafe(size) };
    while (this.reusing && !this.closed && this.out >= SegmentBuffers.LIMIT) await new Promise<void>((r) => this.waiters.push(r));
    const i = this.free.findIndex((b) => b.byteLength >= size);
    // Not zero-filled: every byte of it is written before it is read, or the read fails. Rounded
    // up, so that it fits segments a few bytes longer (sizes vary with the events in them).
    const buffer = i >= 0 ? this.free.splice(i, 1)[0]! : (Buffer.allocUnsafeSlow(Math.ceil(size / POOLED_BYTES) * POOLED_BYTES).buffer as ArrayBuffer);
    const lease: Lease = { buffer, pool: this, holds: 0, passed: false };
    leases.set(buffer, lease);
    this.out++;
    return { bytes: new Uint8Array(buffer, 0, size), lease };
  }

  /** The reader is past the lease's segment. */
  pass(lease: Lease): void {
    lease.passed = true;
    if (lease.holds === 0) this.back(lease);
  }

  /** Nothing reads the lease's buffer any more: reuse it, or (if the reader never said how long it holds views) let it go. */
  back(lease: Lease): void {
    if (leases.get(lease.buffer) !== lease) return;
    leases.delete(lease.buffer);
    this.out--;
    if (this.reusing && !this.closed) this.free.push(lease.buffer);
    this.waiters.shift()?.();
  }

  close(): void {
    this.closed = true;
    this.free = [];
    for (const w of this.waiters.splice(0)) w();
  }
}

/**
 * One segment's bytes, read as they arrive into a buffer of the pool, and its checksums
 * worked out piece by piece as they come (see {@link SegmentIntake}); {@link changed} tells a
 * reader that takes events early when more is here.
 */
class Incoming {
  intake: SegmentIntake | undefined;
  lease: Lease | undefined;
  finished = false;
  readonly result: Promise<Fetched>;
  private wake: (() => void) | undefined;

  constructor(store: ObjectStore, n: RemoteSegment, pool: SegmentBuffers) {
    this.result = this.fetch(store, n, pool).finally(() => {
      this.finished = true;
      this.poke();
    });
    this.result.catch(() => {});
  }

  /** Resolves once more bytes are in place, or the fetch is over. */
  changed(): Promise<void> {
    return new Promise<void>((r) => (this.wake = r));
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private async fetch(store: ObjectStore, n: RemoteSegment, pool: SegmentBuffers): Promise<Fetched> {
    const got = await store.getStream(n.key);
    let { bytes: out, lease } = await pool.take(got.head.size);
    this.lease = lease;
    let intake: SegmentIntake | undefined = (this.intake = new SegmentIntake(out));
    let at = 0;
    for await (const piece of got.body) {
      if (at + piece.byteLength > out.length) {
        // Longer than its size said (the store checks bodies against their length, so only if the object changed): keep it all, decodeSegment judges.
        const grown = new Uint8Array(Math.max(at + piece.byteLength, out.length * 2));
        grown.set(out.subarray(0, at));
        // The lease stays until the reader is past this segment: events it took early are views into the pool buffer.
        out = grown;
        this.intake = intake = undefined;
      }
      out.set(piece, at);
      at += piece.byteLength;
      if (intake) {
        intake.advance(at);
        this.poke();
      }
    }
    return { bytes: at === out.length ? out : out.subarray(0, at), ...(intake ? { intake } : {}), ...(lease ? { lease } : {}) };
  }
}

interface Fetched {
  readonly bytes: Uint8Array;
  readonly intake?: SegmentIntake;
  readonly lease?: Lease;
}

/** Client ids with a journal under the prefix. */
export async function remoteClients(store: ObjectStore, prefix: string): Promise<string[]> {
  return [...(await listJournals(store, prefix)).keys()];
}
