/**
 * The journal store: events in LevelDB (through `level`), bulk data in the
 * data log, projection rows in sublevels written in the same batch.
 *
 * Appends are group-committed: every append made while a commit is in flight,
 * or in the same turn of the event loop, joins the next one: one LevelDB batch
 * holding the events (one row per group of consecutive events, event_rows.ts),
 * their projection rows and the head row, beside the write of their data to the
 * data log (which mostly happened already: data is written behind the appends).
 * If any of its appends asked for `sync`, the batch is written with sync while
 * the data log is fdatasynced beside it. Seqs are assigned when `append` is
 * called, so callers see their events (and can derive projection rows) at once.
 *
 * Cost per operation is what limits small writes, so the batch is built for it:
 * rows go straight into classic-level's native batch with their sublevel prefix
 * added here, keys and values assembled in one scratch buffer, each event
 * encoded once.
 *
 * Crash safety: the head row records the last synced seq (a commit whose data
 * had to be made durable counts only from the next commit on, as the data is
 * written beside the batch, not before it). Events after it were never promised
 * durable; after an unclean stop their data may be missing while LevelDB kept
 * the event, so on open the data of every
 * event after the last synced seq is checked against its CRC, and the journal
 * is cut back before the first event that fails (`recovery.truncatedFrom`:
 * the projections must then be rebuilt). A crash thus always leaves a prefix
 * of the journal, every event intact, everything synced kept.
 * After a failed commit the store refuses further appends (fail-stop): reopen
 * it to continue from what is on disk.
 */
import type { AbstractSublevel } from "abstract-level";
import { Level } from "level";
import { randomBytes } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { checkEncodable, decodeEvent, decodeEventAt, encodeEvent, packBody, packValue, peekEventType, peekRecordHead, type MutableRecordHead, type RecordHead, SCHEMA_VERSION, unpackValue } from "./codec.ts";
import { GROUP_BYTES, GROUP_EVENTS, groupValue, rowAt, rowCount, rowRecord, rowRecords, forEachRecord, scanRecords, scanRows, writeGroupHeader } from "./event_rows.ts";
import { DataLog } from "./data_log.ts";
import { JournalError } from "./errors.ts";
import { asSeq, type JournalEvent, type NewEvent, type Seq } from "./events.ts";
import { readU64, u64Key, writeU64 } from "./keys.ts";

type Bytes = Buffer;
// biome-ignore lint: the parent type is irrelevant to users of a sublevel
export type Sublevel = AbstractSublevel<any, string | Buffer | Uint8Array, Bytes, Bytes>;

/** A projection row write, applied in the same LevelDB batch as its events. */
export type RowOp =
  | { readonly type: "put"; readonly sublevel: Sublevel; readonly key: Bytes; readonly value: Bytes }
  | { readonly type: "del"; readonly sublevel: Sublevel; readonly key: Bytes };

export interface AppendOptions {
  /** Resolve only once the events are synced to disk. @default false */
  readonly sync?: boolean;
  /**
   * Called synchronously with the events as stored (seq, time, data refs
   * assigned); returns the projection rows to write in the same batch.
   */
  readonly project?: (events: readonly JournalEvent[]) => readonly RowOp[];
}

export interface ReadOptions {
  readonly gte?: number;
  readonly lte?: number;
  readonly limit?: number;
  readonly reverse?: boolean;
  /** Put the bytes of ExtentWritten events back in `data`. @default false */
  readonly data?: boolean;
}

export interface OpenOptions {
  /** Size at which a data log file is closed and the next begun. @default 1 GiB */
  readonly dataFileBytes?: number;
}

interface Head {
  seq: number;
  dataFile: number;
  dataEnd: number;
  /** Last seq whose commit was synced (data and events). */
  synced?: number;
}

/** What opening found after an unclean stop. */
export interface Recovery {
  /** Events after the last synced commit whose data was checked. */
  readonly checked: number;
  /** The first seq removed because its data did not survive, if any. */
  readonly truncatedFrom?: Seq;
}

interface Pending {
  readonly events: readonly JournalEvent[];
  readonly sync: boolean;
  readonly resolve: (events: readonly JournalEvent[]) => void;
  readonly reject: (error: unknown) => void;
}

export type Listener = (events: readonly JournalEvent[]) => void;

const BUF = { keyEncoding: "buffer", valueEncoding: "buffer" } as const;

/**
 * Data bytes, or appends, queued after which a commit starts without waiting for the
 * event loop to turn (a caller that stages without ever waiting for I/O would hold the
 * commit off indefinitely).
 */
const EARLY_COMMIT_BYTES = 1 << 20;
const EARLY_COMMIT_APPENDS = 4096;
/** Data bytes staged after which they are written to the data log ahead of their commit. */
const WRITE_BEHIND_BYTES = 64 << 10;

/**
 * Receives projection rows for the next commit batch. Keys and values are copied
 * before the call returns, so callers may pass scratch buffers.
 */
export interface RowWriter {
  put(sublevel: Sublevel, key: Uint8Array, value: Uint8Array): void;
  del(sublevel: Sublevel, key: Uint8Array): void;
}

/** Raw keys of the journal's own rows (the "e" and "m" sublevels, see keys.ts). */
const EVENTS_PREFIX = Buffer.from("!e!");
const HEAD_KEY = Buffer.from("!m!head");

/** Each sublevel's prefix as bytes ("!name!"), for writing its rows into a root batch. */
const prefixes = new WeakMap<Sublevel, Bytes>();

function prefixOf(sublevel: Sublevel): Bytes {
  let prefix = prefixes.get(sublevel);
  if (!prefix) prefixes.set(sublevel, (prefix = Buffer.from(sublevel.prefix, "utf8")));
  return prefix;
}

type ChainedBatch = ReturnType<Level<Bytes, Bytes>["batch"]>;

/**
 * A LevelDB batch being formed: rows go into classic-level's native batch as they
 * come, with their sublevel prefix added here (abstract-level's array batch would
 * copy and re-encode every operation, and classic-level then reads each one's
 * properties natively). Keys and values are assembled in one scratch buffer: the
 * native batch copies them at once, and bytes in a buffer that already backs an
 * ArrayBuffer cost Bun's N-API less than many fresh small ones.
 */
class FormingBatch implements RowWriter {
  private readonly scratch: Bytes;
  /** Operations added. */
  size = 0;

  constructor(
    readonly native: ChainedBatch,
    scratch: Bytes,
  ) {
    this.scratch = scratch;
  }

  put(sublevel: Sublevel, key: Uint8Array, value: Uint8Array): void {
    this.putRaw(prefixOf(sublevel), key, value);
  }

  del(sublevel: Sublevel, key: Uint8Array): void {
    const prefix = prefixOf(sublevel);
    const s = this.scratch;
    const kl = prefix.length + key.length;
    this.size++;
    if (kl > s.length) return void this.native.del(Buffer.concat([prefix, key]));
    prefix.copy(s, 0);
    s.set(key, prefix.length);
    this.native.del(s.subarray(0, kl));
  }

  /** Put under `prefix` + `key`; a number key is a seq (u64). */
  putRaw(prefix: Bytes, key: Uint8Array | number, value: Uint8Array): void {
    const s = this.scratch;
    const kl = prefix.length + (typeof key === "number" ? 8 : key.length);
    this.size++;
    if (kl + value.length > s.length) {
      const k = Buffer.allocUnsafe(kl);
      prefix.copy(k, 0);
      if (typeof key === "number") writeU64(k, prefix.length, key);
      else k.set(key, prefix.length);
      return void this.native.put(k, value as Bytes);
    }
    prefix.copy(s, 0);
    if (typeof key === "number") writeU64(s, prefix.length, key);
    else s.set(key, prefix.length);
    s.set(value, kl);
    this.native.put(s.subarray(0, kl), s.subarray(kl, kl + value.length));
  }

  addRows(rows: readonly RowOp[]): void {
    for (const r of rows) {
      if (r.type === "put") this.put(r.sublevel, r.key, r.value);
      else this.del(r.sublevel, r.key);
    }
  }
}

/** Scratch for one key and value; larger rows are passed as they are. */
const SCRATCH_BYTES = 256 << 10;
/** Room for the records of one commit's events (grown when needed, shrunk back after). */
const RECORDS_BYTES = 256 << 10;

export class Journal {
  private nextSeq: number;
  private committedSeq: number;
  private durableSeq: number;
  /** What the last head row written says is synced: recovery on the next open checks every event after it. */
  private recordedSynced: number;
  private queue: Pending[] = [];
  /** A drain is due on the next turn of the event loop (see {@link schedule}). */
  private scheduled = false;
  /** The commit being written: its last seq, whether it syncs, and its end. */
  private running: { readonly last: number; readonly sync: boolean; readonly done: Promise<void> } | undefined;
  /** A drain is due in a microtask: bulk data is waiting. */
  private early = false;
  /** The drain loop is running. */
  private draining = false;
  /** The next commit's LevelDB batch: events and rows go in as they are appended. */
  private forming: FormingBatch | undefined;
  private readonly scratch = Buffer.allocUnsafeSlow(SCRATCH_BYTES);
  /** Codec records of the events appended since the last cut, back to back, and their lengths. */
  private records = Buffer.allocUnsafeSlow(RECORDS_BYTES);
  private recordsEnd = 0;
  private recordLengths: number[] = [];
  private recordsFirst = 0;
  private rowWriter: ((w: RowWriter) => void) | undefined;
  private failed: JournalError | undefined;
  private closed = false;
  private readonly listeners = new Set<Listener>();
  private readonly idle: (() => void)[] = [];
  /** Set when the journal was cut back on open: projections derived from the removed events must be rebuilt. */
  recovery: Recovery | undefined;
  /** Counters for tests and benchmarks: LevelDB batches written, synced, and appends in them. */
  readonly stats = { commits: 0, syncedCommits: 0, appends: 0 };

  private constructor(
    readonly dir: string,
    private readonly db: Level<Bytes, Bytes>,
    private readonly events: Sublevel,
    private readonly data: DataLog,
    head: Head,
    /** This data directory's client id (segments are stored under it). */
    readonly clientId: string,
  ) {
    this.nextSeq = head.seq + 1;
    this.committedSeq = head.seq;
    this.durableSeq = head.seq;
    this.recordedSynced = head.synced ?? 0;
  }

  /** Open (or create) the journal in `dir`. */
  static async open(dir: string, options: OpenOptions = {}): Promise<Journal> {
    try {
      await mkdir(dir, { recursive: true });
    } catch (cause) {
      throw new JournalError("io", `Cannot create data directory ${dir}: ${(cause as Error).message}`, { cause });
    }
    const db = new Level<Bytes, Bytes>(join(dir, "journal"), {
      ...BUF,
      writeBufferSize: 16 << 20,
      maxFileSize: 8 << 20,
      cacheSize: 32 << 20,
    } as never);
    try {
      await db.open();
    } catch (cause) {
      const code = (cause as { cause?: { code?: string } }).cause?.code ?? (cause as { code?: string }).code;
      if (code === "LEVEL_LOCKED") {
        throw new JournalError("locked", `Cannot open journal at ${dir}: it is in use by another process; stop that process or use another --data-dir`, { cause });
      }
      throw new JournalError("io", `Cannot open journal at ${dir}: ${(cause as Error).message}`, { cause });
    }
    const events = db.sublevel<Bytes, Bytes>("e", BUF) as Sublevel;
    const meta = db.sublevel<Bytes, Bytes>("m", BUF) as Sublevel;
    const rawHead = await meta.get(Buffer.from("head"));
    const head: Head = rawHead ? unpackValue<Head>(rawHead) : { seq: 0, dataFile: 0, dataEnd: 0 };
    let clientId: string;
    const rawClient = await meta.get(Buffer.from("client"));
    if (rawClient) clientId = rawClient.toString("utf8");
    else {
      clientId = randomBytes(8).toString("hex");
      await meta.put(Buffer.from("client"), Buffer.from(clientId), { sync: true } as never);
    }
    let data: DataLog;
    let recovery: Recovery | undefined;
    try {
      if ((head.synced ?? 0) < head.seq) recovery = await Journal.recover(db, events, meta, dir, head);
      data = await DataLog.open(join(dir, "data"), { file: head.dataFile, end: head.dataEnd }, options.dataFileBytes);
    } catch (e) {
      await db.close();
      throw e;
    }
    const journal = new Journal(dir, db, events, data, head, clientId);
    journal.recovery = recovery;
    if (recovery) await journal.settle(); // what survived is now durable; mark it so
    return journal;
  }

  /**
   * After an unclean stop: check the data of every event after the last synced
   * seq; cut the journal back before the first one whose bytes did not survive.
   * Mutates `head` to the position to continue from.
   */
  private static async recover(db: Level<Bytes, Bytes>, events: Sublevel, meta: Sublevel, dir: string, head: Head): Promise<Recovery> {
    const probe = DataLog.checker(join(dir, "data"));
    let checked = 0;
    let bad: { seq: number; ref: { file: number; pos: number } } | undefined;
    // Checked a batch at a time, the reads of a batch in parallel; the first bad one in seq order counts.
    let batch: { seq: number; ref: { file: number; pos: number }; check: Promise<boolean> }[] = [];
    const firstBad = async () => {
      for (const b of batch) if (!(await b.check)) return { seq: b.seq, ref: b.ref };
      batch = [];
      return undefined;
    };
    try {
      for await (const { record } of scanRecords(events, { gte: (head.synced ?? 0) + 1 })) {
        checked++;
        const type = peekEventType(record);
        if (type !== undefined && type !== "ExtentWritten") continue;
        const e = decodeEvent(record);
        if (e.type !== "ExtentWritten" || !e.ref) continue;
        batch.push({ seq: e.seq, ref: e.ref, check: probe.check(e.ref, e.length, e.crc) });
        if (batch.length >= 64 && (bad = await firstBad())) break;
      }
      bad ??= await firstBad();
    } finally {
      await Promise.allSettled(batch.map((b) => b.check));
      await probe.close();
    }
    if (!bad) {
      return { checked };
    }
    // The row holding the first bad event keeps what came before it; later rows go.
    const row = await rowAt(events, bad.seq);
    await events.clear({ gt: u64Key(row?.first ?? bad.seq) } as never);
    if (row) {
      const kept = rowRecords(row.value).slice(0, bad.seq - row.first);
      if (kept.length > 0) await events.put(u64Key(row.first), Buffer.from(groupValue(kept)));
      else await events.del(u64Key(row.first));
    }
    head.seq = bad.seq - 1;
    head.dataFile = bad.ref.file;
    head.dataEnd = bad.ref.pos;
    head.synced = head.seq;
    await db.batch([{ type: "put", sublevel: meta, key: Buffer.from("head"), value: Buffer.from(packValue(head)) }] as never, { sync: true } as never);
    return { checked, truncatedFrom: asSeq(bad.seq) };
  }

  /** Last seq that was committed (visible to readers). */
  get head(): Seq {
    return asSeq(this.committedSeq);
  }

  /** Last seq assigned: appended, visible to projections, perhaps not committed yet. */
  get staged(): Seq {
    return asSeq(this.nextSeq - 1);
  }

  /** Last seq known to be synced to disk. */
  get durable(): Seq {
    return asSeq(this.durableSeq);
  }

  /** A named sublevel for projection rows. */
  sublevel(name: string): Sublevel {
    if (name === "e" || name === "m") throw new JournalError("unsupported", `Sublevel name ${name} is reserved by the journal`);
    return this.db.sublevel<Bytes, Bytes>(name, BUF) as Sublevel;
  }

  /**
   * Append events (and the projection rows derived from them) atomically.
   * Seqs and times are assigned now; the promise resolves once committed
   * (and synced, with `sync`). The bytes of ExtentWritten events are copied
   * before this returns, so the caller may reuse its buffers; the events handed
   * back carry `ref` (where the bytes are), not `data`.
   */
  append(newEvents: readonly NewEvent[], options: AppendOptions = {}): Promise<readonly JournalEvent[]> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(new JournalError("closed", "Cannot append: the journal is closed"));
    const now = Date.now();
    const firstSeq = this.nextSeq;
    const mark = this.data.mark();
    const events: JournalEvent[] = [];
    let rows: readonly RowOp[];
    try {
      for (const ne of newEvents) {
        const seq = asSeq(this.nextSeq++);
        const time = ne.time ?? now;
        let event: JournalEvent;
        if (ne.type === "ExtentWritten" && ne.data) {
          // The bytes go to the data log (copied there); the event as stored points at them.
          const ref = this.data.reserve(ne.data);
          const crc = ne.crc || crc32(ne.data);
          event = ne.caller
            ? { type: "ExtentWritten", ino: ne.ino, offset: ne.offset, length: ne.length, crc, ref, caller: ne.caller, seq, time }
            : { type: "ExtentWritten", ino: ne.ino, offset: ne.offset, length: ne.length, crc, ref, seq, time };
        } else {
          event = { ...ne, seq, time } as JournalEvent;
        }
        events.push(event);
      }
      for (const e of events) checkEncodable(e);
      rows = options.project ? options.project(events) : [];
    } catch (e) {
      // Nothing was queued: give back the seqs and the data log space.
      this.nextSeq = firstSeq;
      this.data.rollback(mark);
      return Promise.reject(e);
    }
    try {
      // Each event encoded once, into the rows of the next commit (see event_rows.ts).
      for (const e of events) this.stageRecord(e);
      if (rows.length > 0) this.formingBatch().addRows(rows);
    } catch (cause) {
      // Part of it may be in the batch: nothing after this can be trusted (fail-stop).
      this.failWith(new JournalError("io", `Cannot stage events in journal at ${this.dir}: ${(cause as Error).message}; reopen the journal`, { cause }));
      return Promise.reject(this.failed);
    }
    // Data is written behind the appends, so a commit finds most of it in the file already.
    if (this.data.unissuedBytes >= WRITE_BEHIND_BYTES || (this.data.unissuedBytes > 0 && !this.data.writing)) void this.data.write().catch(() => {});
    return new Promise((resolve, reject) => {
      this.queue.push({ events, sync: options.sync ?? false, resolve, reject });
      this.schedule();
    });
  }

  /**
   * Start a commit for what is queued. The batch is cut when the event loop next
   * turns, so every operation that is running now (and all those waiting on the same
   * commit) joins it: one batch and one sync for all of them, however their awaits
   * interleave. Bulk data does not wait that long: once enough is queued the commit
   * starts at once, so that writing it to disk overlaps with staging more; nor do
   * thousands of appends.
   */
  private schedule(): void {
    if (this.draining) return; // the running loop takes the queue next
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        void this.drain();
      });
    }
    if (!this.early && (this.data.pendingBytes >= EARLY_COMMIT_BYTES || this.queue.length >= EARLY_COMMIT_APPENDS)) {
      this.early = true;
      queueMicrotask(() => {
        this.early = false;
        void this.drain();
      });
    }
  }

  /** A commit is scheduled or running. */
  private get writing(): boolean {
    return this.scheduled || this.draining;
  }

  /**
   * Make everything durable and say so in the head row, so the next open checks nothing:
   * a synced commit that carried data records the seq synced before it (its data is
   * fdatasynced beside it), so after one a second, empty synced commit records its own.
   * Cheap when there is nothing to do; a mount calls it every few seconds, so what was
   * written without fsync is on disk soon after anyway and a recovery has little to check.
   */
  async settle(): Promise<void> {
    await this.sync();
    if (this.recordedSynced < this.committedSeq) await this.append([], { sync: true });
  }

  /**
   * Make every event up to `seq` durable, and everything staged before it. A synced
   * commit already under way that holds `seq` is waited for rather than a new one
   * queued behind it (a close then costs one sync, not up to two); nothing is waited
   * for if `seq` is durable already.
   */
  syncTo(seq: number): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.durableSeq >= seq) return Promise.resolve();
    const running = this.running;
    const fresh = () => this.append([], { sync: true }).then(() => {});
    // If that commit fails, a fresh append rejects with the journal's failure (full disk, I/O).
    if (running && running.sync && running.last >= seq) return running.done.then(undefined, fresh);
    return fresh();
  }

  /** Make everything appended so far durable. */
  async sync(): Promise<void> {
    if (this.failed) throw this.failed;
    if (this.durableSeq >= this.nextSeq - 1 && this.queue.length === 0 && !this.writing) return;
    await this.append([], { sync: true });
  }

  /**
   * Let a projection hand over its rows once per commit instead of once per
   * append: `source` is called when a batch is cut, synchronously, and must
   * return the rows derived from every event appended until then (a row
   * changed by several appends in the batch is then written once).
   */
  setRowSource(source: () => readonly RowOp[]): void {
    this.rowWriter = (w) => {
      for (const r of source()) {
        if (r.type === "put") w.put(r.sublevel, r.key, r.value);
        else w.del(r.sublevel, r.key);
      }
    };
  }

  /**
   * Like {@link setRowSource}, without building row objects: `write` is called when a
   * batch is cut and puts the rows of everything appended until then into `w`.
   */
  setRowWriter(write: (w: RowWriter) => void): void {
    this.rowWriter = write;
  }

  private stageRecord(e: JournalEvent): void {
    const packed = packBody(e);
    const need = this.recordsEnd + 1 + packed.length;
    if (need > this.records.length) {
      const grown = Buffer.allocUnsafeSlow(Math.max(need, 2 * this.records.length));
      this.records.copy(grown, 0, 0, this.recordsEnd);
      this.records = grown;
    }
    if (this.recordLengths.length === 0) this.recordsFirst = e.seq;
    else if (e.seq !== this.recordsFirst + this.recordLengths.length) throw new Error(`event ${e.seq} does not follow the staged ones`);
    this.records[this.recordsEnd] = SCHEMA_VERSION;
    this.records.set(packed, this.recordsEnd + 1);
    this.recordsEnd += 1 + packed.length;
    this.recordLengths.push(1 + packed.length);
  }

  /** Put the staged records into `b` as event rows: groups of consecutive events. */
  private putRecords(b: FormingBatch): void {
    const lengths = this.recordLengths;
    let i = 0;
    let at = 0;
    while (i < lengths.length) {
      let j = i;
      let bytes = 0;
      while (j < lengths.length && j - i < GROUP_EVENTS && (j === i || bytes + lengths[j]! <= GROUP_BYTES)) bytes += lengths[j++]!;
      const seq = this.recordsFirst + i;
      if (j - i === 1) b.putRaw(EVENTS_PREFIX, seq, this.records.subarray(at, at + bytes));
      else {
        const slice = lengths.slice(i, j);
        const value = Buffer.allocUnsafe(5 + 4 * slice.length + bytes);
        const h = writeGroupHeader(value, slice);
        this.records.copy(value, h, at, at + bytes);
        b.putRaw(EVENTS_PREFIX, seq, value);
      }
      at += bytes;
      i = j;
    }
    this.recordsEnd = 0;
    this.recordLengths = [];
    if (this.records.length > RECORDS_BYTES) this.records = Buffer.allocUnsafeSlow(RECORDS_BYTES);
  }

  private formingBatch(): FormingBatch {
    return (this.forming ??= new FormingBatch(this.db.batch(), this.scratch));
  }

  /** Bytes appended but not yet durable in the data log (for back-pressure). */
  get pendingDataBytes(): number {
    return this.data.pendingBytes;
  }

  /** Appends waiting for the next commit. */
  get queued(): number {
    return this.queue.length;
  }

  /** Resolve once every append made so far has been committed. */
  flushed(): Promise<void> {
    if (!this.writing) return Promise.resolve();
    return new Promise((r) => this.idle.push(r));
  }

  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    while (this.queue.length > 0 && !this.failed) {
      const batch = this.queue;
      this.queue = [];
      try {
        // Rows of everything appended so far, and nothing later: taken before any await.
        const b = this.formingBatch();
        this.forming = undefined;
        this.putRecords(b);
        this.rowWriter?.(b);
        await this.commit(batch, b);
      } catch (cause) {
        const code = (cause as NodeJS.ErrnoException).code ?? (cause as { cause?: NodeJS.ErrnoException }).cause?.code;
        const full = code === "ENOSPC" || /no space left/i.test(String((cause as Error).message));
        this.failWith(
          cause instanceof JournalError
            ? cause
            : new JournalError(
                full ? "full" : "io",
                full
                  ? `Cannot commit to journal at ${this.dir}: the disk is full; nothing acknowledged is lost, free space and remount`
                  : `Cannot commit to journal at ${this.dir}: ${(cause as Error).message}; fix the disk, then remount`,
                { cause },
              ),
          batch,
        );
        break;
      }
      const all: JournalEvent[] = [];
      for (const p of batch) {
        p.resolve(p.events);
        for (const e of p.events) all.push(e);
      }
      if (all.length > 0) for (const l of this.listeners) l(all);
    }
    this.draining = false;
    if (!this.scheduled || this.failed) for (const r of this.idle.splice(0)) r();
  }

  /** Stop for good: reject every queued append (and `also`), refuse new ones. */
  private failWith(error: JournalError, also: readonly Pending[] = []): void {
    this.failed ??= error;
    this.data.discardPending();
    this.forming = undefined;
    this.recordsEnd = 0;
    this.recordLengths = [];
    for (const p of also) p.reject(this.failed);
    for (const p of this.queue) p.reject(this.failed);
    this.queue = [];
  }

  private async commit(batch: readonly Pending[], b: FormingBatch): Promise<void> {
    let sync = false;
    for (const p of batch) sync ||= p.sync;
    // The data is written beside the LevelDB batch rather than before it. The head row
    // claims a commit synced only when it had no data to make durable; otherwise (and
    // for every unsynced commit) the events after the last synced seq are checked
    // against their data's CRC on the next open, so a batch that reached the disk
    // before its data did is cut back, never trusted (see Journal.recover).
    const pos = this.data.reservedEnd;
    const hasData = this.data.pendingBytes > 0;
    const dataSync = sync && (hasData || this.data.hasUnsynced);
    const written = this.data.write();
    let last = this.committedSeq;
    for (const p of batch) if (p.events.length > 0) last = p.events[p.events.length - 1]!.seq;
    const head: Head = { seq: last, dataFile: pos.file, dataEnd: pos.end, synced: sync && !dataSync ? last : this.durableSeq };
    b.native.put(HEAD_KEY, Buffer.from(packValue(head)));
    // The data's fdatasync runs beside the LevelDB sync: one fsync's latency, not two.
    const done = Promise.all([b.native.write({ sync } as never), dataSync ? written.then(() => this.data.sync()) : written]).then(() => {
      this.committedSeq = last;
      if (sync) this.durableSeq = last;
      this.recordedSynced = head.synced ?? 0;
    });
    done.catch(() => {}); // the drain loop handles a failure; syncTo callers see it too
    this.running = { last, sync, done };
    try {
      await done;
    } finally {
      this.running = undefined;
    }
    this.stats.commits++;
    if (sync) this.stats.syncedCommits++;
    this.stats.appends += batch.length;
  }

  /** Read committed events in seq order (or reverse). */
  async *read(options: ReadOptions = {}): AsyncGenerator<JournalEvent> {
    for await (const { record } of scanRecords(this.events, options)) {
      const event = decodeEvent(record);
      yield options.data ? await this.withData(event) : event;
    }
  }

  /**
   * Committed events in [gte, lte] in seq order, many at a time: for long scans, where a
   * promise per event costs more than decoding it. With `select`, only the events it accepts
   * are decoded and returned; it sees each event's type and caller (read from the record's
   * first bytes, or from the decoded event for records of older shapes); the head it is given
   * is only valid during the call.
   */
  async *readBatches(options: { readonly gte?: number; readonly lte?: number; readonly select?: (head: RecordHead) => boolean } = {}): AsyncGenerator<JournalEvent[]> {
    const select = options.select;
    const gte = options.gte ?? 0;
    const lte = options.lte ?? Number.MAX_SAFE_INTEGER;
    const into = { type: "Mounted", seq: 0, time: 0, uid: undefined, pid: undefined } as MutableRecordHead;
    for await (const rows of scanRows(this.events, { gte, lte })) {
      let batch: JournalEvent[] = [];
      for (const row of rows) {
        // A row holds up to GROUP_EVENTS events: batches stay a few thousand events long.
        if (batch.length >= 4096) {
          yield batch;
          batch = [];
        }
        const v = row.value;
        forEachRecord(row, gte, lte, (_, start, end) => {
          if (!select) {
            batch.push(decodeEventAt(v, start, end));
            return;
          }
          const head = peekRecordHead(v, start, into);
          if (head && !select(head)) return;
          const event = decodeEventAt(v, start, end);
          if (!head && !select({ type: event.type, seq: event.seq, time: event.time, uid: event.caller?.uid, pid: event.caller?.pid })) return;
          batch.push(event);
        });
      }
      if (batch.length > 0) yield batch;
    }
  }

  /** Read one event by seq. */
  async get(seq: number, withData = false): Promise<JournalEvent | undefined> {
    const row = await rowAt(this.events, seq);
    const record = row && rowRecord(row.first, row.value, seq);
    if (!record) return undefined;
    const event = decodeEvent(record);
    return withData ? this.withData(event) : event;
  }

  /**
   * Several events by seq (ascending), each row read once: events committed together are
   * one row. Seqs not held are left out.
   */
  async getMany(seqs: readonly number[]): Promise<JournalEvent[]> {
    const out: JournalEvent[] = [];
    let row: { first: number; value: Uint8Array } | undefined;
    for (const seq of seqs) {
      let record = row && rowRecord(row.first, row.value, seq);
      if (!record) {
        row = await rowAt(this.events, seq);
        record = row && rowRecord(row.first, row.value, seq);
      }
      if (record) out.push(decodeEvent(record));
    }
    return out;
  }

  /** Lowest seq still held (after retention), or head + 1 when empty. */
  async firstSeq(): Promise<Seq> {
    for await (const k of this.events.keys({ limit: 1 } as never)) return asSeq(readU64(k as Bytes));
    return asSeq(this.committedSeq + 1);
  }

  /** Bytes of an ExtentWritten's data, or a slice of them. */
  readData(event: { readonly ref?: import("./events.ts").DataRef; readonly length: number }, offset = 0, length = event.length - offset, into?: Uint8Array, intoOffset = 0): Promise<Uint8Array> {
    if (!event.ref) throw new JournalError("unsupported", "Cannot read data of an event that has no data reference");
    return this.data.read(event.ref, offset, length, into, intoOffset);
  }

  private async withData(event: JournalEvent): Promise<JournalEvent> {
    if (event.type !== "ExtentWritten" || event.data || !event.ref || event.dataDropped) return event;
    const data = await this.data.read(event.ref, 0, event.length);
    const crc = crc32(data);
    if (crc !== event.crc) {
      throw new JournalError("corrupt", `Data of event ${event.seq} fails its checksum (expected ${event.crc}, found ${crc}); the data log is damaged`);
    }
    return { ...event, data };
  }

  /** Called after every commit with the committed events. Returns an unsubscribe function. */
  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Every event from `fromSeq` on: first those already committed, then new
   * ones as they commit, until `signal` aborts.
   */
  async *tail(fromSeq: number, options: { signal?: AbortSignal; data?: boolean } = {}): AsyncGenerator<JournalEvent> {
    let next = fromSeq;
    let wake: (() => void) | undefined;
    const unsubscribe = this.subscribe(() => wake?.());
    const onAbort = () => wake?.();
    options.signal?.addEventListener("abort", onAbort);
    try {
      while (!options.signal?.aborted && !this.closed) {
        const upTo = this.committedSeq;
        if (next <= upTo) {
          for await (const e of this.read({ gte: next, lte: upTo, data: options.data })) {
            yield e;
            next = e.seq + 1;
            if (options.signal?.aborted) return;
          }
          next = Math.max(next, upTo + 1); // events removed by retention are skipped
          continue;
        }
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    } finally {
      unsubscribe();
      options.signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Retention: delete every event with seq < `seq`. Data log files are the caller's to reclaim. */
  async deleteBefore(seq: number): Promise<void> {
    // A group that straddles `seq` is rewritten to hold only the events from `seq` on.
    const row = await rowAt(this.events, seq);
    if (row && row.first < seq) {
      const kept = rowRecords(row.value).slice(seq - row.first);
      await this.db.batch([
        { type: "del", sublevel: this.events, key: u64Key(row.first) },
        { type: "put", sublevel: this.events, key: u64Key(seq), value: Buffer.from(groupValue(kept)) },
      ] as never);
    }
    await this.events.clear({ lt: u64Key(seq) } as never);
  }

  /**
   * Retention: delete events (seqs, or inclusive [from, to] ranges) and store `replacements`
   * in place of theirs (an ExtentWritten whose bytes were dropped: no `data`, no `ref`).
   * Only committed seqs may be touched. The bytes they pointed at are then the data log's to
   * reclaim ({@link markDataDead}).
   */
  async retire(deletes: readonly (number | readonly [number, number])[], replacements: readonly JournalEvent[] = []): Promise<void> {
    if (this.failed) throw this.failed;
    const ranges: [number, number][] = [];
    for (const d of deletes) {
      const [from, to] = typeof d === "number" ? [d, d] : d;
      if (to < from) continue;
      if (to > this.committedSeq) throw new JournalError("unsupported", `Cannot retire seqs up to ${to}: they are not committed`);
      ranges.push([from, to]);
    }
    ranges.sort((x, y) => x[0] - y[0]);
    const merged: [number, number][] = [];
    for (const r of ranges) {
      const last = merged[merged.length - 1];
      if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
      else merged.push([r[0], r[1]]);
    }
    const replace = new Map<number, Uint8Array>();
    for (const e of replacements) {
      if (e.seq > this.committedSeq) throw new JournalError("unsupported", `Cannot replace seq ${e.seq}: it is not committed`);
      replace.set(e.seq, encodeEvent(e));
    }
    const gone = (seq: number) => {
      let lo = 0;
      let hi = merged.length - 1;
      while (lo <= hi) {
        const mid = (lo + hi) >>> 1;
        const [a, z] = merged[mid]!;
        if (seq < a) hi = mid - 1;
        else if (seq > z) lo = mid + 1;
        else return true;
      }
      return false;
    };
    // Every row that holds an affected event: rows wholly deleted need no reading.
    const touched = new Map<number, Uint8Array | null>(); // first seq → value to rewrite (null: delete whole)
    for (const [from, to] of merged) {
      const start = await rowAt(this.events, from);
      const range: Record<string, unknown> = { gte: u64Key(start?.first ?? from), lte: u64Key(to) };
      for await (const [k, v] of this.events.iterator(range as never)) {
        const first = readU64(k as Bytes);
        const count = rowCount(v as Bytes);
        touched.set(first, first >= from && first + count - 1 <= to ? null : (v as Bytes));
      }
    }
    for (const seq of replace.keys()) {
      const row = await rowAt(this.events, seq);
      if (row && !touched.has(row.first)) touched.set(row.first, row.value);
    }
    let ops: unknown[] = [];
    const flush = async () => {
      if (ops.length > 0) await this.db.batch(ops as never, { sync: false } as never);
      ops = [];
    };
    for (const [first, value] of touched) {
      ops.push({ type: "del", sublevel: this.events, key: u64Key(first) });
      if (value) {
        // What is left, as runs of consecutive events (a row's events must be consecutive).
        const records = rowRecords(value);
        let run: Uint8Array[] = [];
        let runFirst = first;
        const close = () => {
          if (run.length > 0) ops.push({ type: "put", sublevel: this.events, key: u64Key(runFirst), value: Buffer.from(groupValue(run)) });
          run = [];
        };
        for (let i = 0; i < records.length; i++) {
          const seq = first + i;
          if (gone(seq)) {
            close();
            continue;
          }
          if (run.length === 0) runFirst = seq;
          run.push(replace.get(seq) ?? records[i]!);
        }
        close();
      }
      if (ops.length >= 1000) await flush();
    }
    await flush();
    // Those batches went straight to LevelDB, unsynced: a synced commit after them makes them
    // durable (sync() would see nothing staged and return).
    await this.append([], { sync: true });
  }

  /** Retention: bytes of the data log (file, pos, length) that nothing retained needs. */
  markDataDead(ranges: readonly (readonly [number, number, number])[]): Promise<void> {
    return this.data.markDead(ranges);
  }

  /** The data log file appends go to now. */
  get activeDataFile(): number {
    return this.data.activeFile;
  }

  /**
   * Retention: start a new data log file, so that the current one can be reclaimed, and
   * commit, so that the head row no longer names the old one (opening checks that file).
   */
  async rotateData(): Promise<void> {
    this.data.rotate();
    await this.append([], { sync: true });
  }

  /** Retention: rewrite data log files that are mostly dead (see DataLog.reclaim). */
  reclaimData(options?: Parameters<DataLog["reclaim"]>[0]): Promise<import("./data_log.ts").ReclaimResult> {
    return this.data.reclaim(options);
  }

  /** Commit pending appends, sync, and close. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (!this.failed) {
      await this.flushed();
      if (!this.failed) await this.settle().catch(() => {});
    }
    this.closed = true;
    await this.data.close();
    if (!this.failed) {
      // Write LevelDB's memtable out now (a compaction of an empty key range does only
      // that), so the next open has no log to replay: reopening stays instant however
      // much was written. After a crash the replay is unavoidable (it is the log).
      const past = Buffer.from([0xff, 0xff, 0xff, 0xff]);
      const native = this.db as unknown as { compactRange(start: Bytes, end: Bytes): Promise<void> }; // classic-level
      await native.compactRange(past, Buffer.concat([past, past])).catch(() => {});
    }
    await this.db.close();
  }
}
