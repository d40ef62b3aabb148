/**
 * The journal store: events in LevelDB (through `level`), bulk data in the
 * data log, projection rows in sublevels written in the same batch.
 *
 * Appends are group-committed: every append made while a commit is in flight
 * joins the next one, which writes the data log, then one LevelDB batch
 * holding the events, their projection rows and the head row. If any of its
 * appends asked for `sync`, the batch is written with sync while the data log
 * is fdatasynced beside it. Seqs are assigned when `append` is called,
 * so callers see their events (and can derive projection rows) at once.
 *
 * Crash safety: the head row records the last synced seq. Events after it
 * were never promised durable; after an unclean stop (power loss) their data
 * may be missing while LevelDB kept the event, so on open the data of every
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
import { decodeEvent, encodeEvent, packValue, unpackValue } from "./codec.ts";
import { DataLog } from "./data_log.ts";
import { JournalError } from "./errors.ts";
import { asSeq, type JournalEvent, type NewEvent, type Seq } from "./events.ts";
import { readU64, u64Key } from "./keys.ts";

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
  readonly values: readonly Bytes[];
  readonly rows: readonly RowOp[];
  readonly sync: boolean;
  readonly resolve: (events: readonly JournalEvent[]) => void;
  readonly reject: (error: unknown) => void;
}

export type Listener = (events: readonly JournalEvent[]) => void;

const BUF = { keyEncoding: "buffer", valueEncoding: "buffer" } as const;

export class Journal {
  private nextSeq: number;
  private committedSeq: number;
  private durableSeq: number;
  private queue: Pending[] = [];
  private writing = false;
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
    private readonly meta: Sublevel,
    private readonly data: DataLog,
    head: Head,
    /** This data directory's client id (segments are stored under it). */
    readonly clientId: string,
  ) {
    this.nextSeq = head.seq + 1;
    this.committedSeq = head.seq;
    this.durableSeq = head.seq;
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
    const journal = new Journal(dir, db, events, meta, data, head, clientId);
    journal.recovery = recovery;
    if (recovery) await journal.sync(); // what survived is now durable; mark it so
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
    try {
      for await (const value of events.values({ gt: u64Key(head.synced ?? 0) } as never)) {
        const e = decodeEvent(value as Bytes);
        checked++;
        if (e.type !== "ExtentWritten" || !e.ref) continue;
        const ok = await probe.check(e.ref, e.length, e.crc);
        if (!ok) {
          bad = { seq: e.seq, ref: e.ref };
          break;
        }
      }
    } finally {
      await probe.close();
    }
    if (!bad) {
      return { checked };
    }
    await events.clear({ gte: u64Key(bad.seq) } as never);
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
   * (and synced, with `sync`).
   */
  append(newEvents: readonly NewEvent[], options: AppendOptions = {}): Promise<readonly JournalEvent[]> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(new JournalError("closed", "Cannot append: the journal is closed"));
    const now = Date.now();
    const firstSeq = this.nextSeq;
    const mark = this.data.mark();
    const events: JournalEvent[] = [];
    const values: Bytes[] = [];
    for (const ne of newEvents) {
      let event = { ...ne, seq: asSeq(this.nextSeq++), time: ne.time ?? now } as JournalEvent;
      if (event.type === "ExtentWritten" && event.data) {
        const ref = this.data.reserve(event.data);
        event = { ...event, ref, crc: event.crc || crc32(event.data) };
        const { data: _omit, ...stored } = event;
        values.push(Buffer.from(encodeEvent(stored as JournalEvent)));
      } else {
        values.push(Buffer.from(encodeEvent(event)));
      }
      events.push(event);
    }
    let rows: readonly RowOp[] = [];
    try {
      if (options.project) rows = options.project(events);
    } catch (e) {
      // Nothing was queued: give back the seqs and the data log space.
      this.nextSeq = firstSeq;
      this.data.rollback(mark);
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ events, values, rows, sync: options.sync ?? false, resolve, reject });
      if (!this.writing) {
        this.writing = true;
        queueMicrotask(() => void this.drain());
      }
    });
  }

  /** Make everything appended so far durable. */
  async sync(): Promise<void> {
    if (this.failed) throw this.failed;
    if (this.durableSeq >= this.nextSeq - 1 && this.queue.length === 0 && !this.writing) return;
    await this.append([], { sync: true });
  }

  private rowSource: (() => readonly RowOp[]) | undefined;

  /**
   * Let a projection hand over its rows once per commit instead of once per
   * append: `source` is called when a batch is cut, synchronously, and must
   * return the rows derived from every event appended until then (a row
   * changed by several appends in the batch is then written once).
   */
  setRowSource(source: () => readonly RowOp[]): void {
    this.rowSource = source;
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
    while (this.queue.length > 0 && !this.failed) {
      const batch = this.queue;
      this.queue = [];
      // Rows of everything appended so far, and nothing later: taken before any await.
      const shared = this.rowSource?.() ?? [];
      try {
        await this.commit(batch, shared);
      } catch (cause) {
        const code = (cause as NodeJS.ErrnoException).code ?? (cause as { cause?: NodeJS.ErrnoException }).cause?.code;
        const full = code === "ENOSPC" || /no space left/i.test(String((cause as Error).message));
        this.failed =
          cause instanceof JournalError
            ? cause
            : new JournalError(
                full ? "full" : "io",
                full
                  ? `Cannot commit to journal at ${this.dir}: the disk is full; nothing acknowledged is lost, free space and remount`
                  : `Cannot commit to journal at ${this.dir}: ${(cause as Error).message}; fix the disk, then remount`,
                { cause },
              );
        this.data.discardPending();
        for (const p of batch) p.reject(this.failed);
        for (const p of this.queue) p.reject(this.failed);
        this.queue = [];
        break;
      }
      const all: JournalEvent[] = [];
      for (const p of batch) {
        p.resolve(p.events);
        for (const e of p.events) all.push(e);
      }
      if (all.length > 0) for (const l of this.listeners) l(all);
    }
    this.writing = false;
    for (const r of this.idle.splice(0)) r();
  }

  private async commit(batch: readonly Pending[], shared: readonly RowOp[]): Promise<void> {
    let sync = false;
    for (const p of batch) sync ||= p.sync;
    await this.data.write();
    // A synced commit needs its data durable too. The data's fdatasync runs beside the
    // LevelDB sync (one fsync's latency instead of two); until both are done the head
    // row does not claim this commit synced, so after a power loss recovery checks it.
    const dataSync = sync && this.data.hasUnsynced;
    const ops: unknown[] = [];
    let last = this.committedSeq;
    for (const p of batch) {
      for (let i = 0; i < p.events.length; i++) {
        const seq = p.events[i]!.seq;
        ops.push({ type: "put", sublevel: this.events, key: u64Key(seq), value: p.values[i] });
        last = seq;
      }
      for (const r of p.rows) ops.push(r);
    }
    for (const r of shared) ops.push(r);
    const pos = this.data.position;
    const head: Head = { seq: last, dataFile: pos.file, dataEnd: pos.end, synced: sync && !dataSync ? last : this.durableSeq };
    ops.push({ type: "put", sublevel: this.meta, key: Buffer.from("head"), value: Buffer.from(packValue(head)) });
    await Promise.all([this.db.batch(ops as never, { sync } as never), dataSync ? this.data.sync() : undefined]);
    this.stats.commits++;
    if (sync) this.stats.syncedCommits++;
    this.stats.appends += batch.length;
    this.committedSeq = last;
    if (sync) this.durableSeq = last;
  }

  /** Read committed events in seq order (or reverse). */
  async *read(options: ReadOptions = {}): AsyncGenerator<JournalEvent> {
    const range: Record<string, unknown> = { reverse: options.reverse ?? false };
    if (options.gte !== undefined) range.gte = u64Key(options.gte);
    if (options.lte !== undefined) range.lte = u64Key(options.lte);
    if (options.limit !== undefined) range.limit = options.limit;
    for await (const value of this.events.values(range as never)) {
      const event = decodeEvent(value as Bytes);
      yield options.data ? await this.withData(event) : event;
    }
  }

  /** Read one event by seq. */
  async get(seq: number, withData = false): Promise<JournalEvent | undefined> {
    const value = await this.events.get(u64Key(seq));
    if (!value) return undefined;
    const event = decodeEvent(value);
    return withData ? this.withData(event) : event;
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
    let ops: unknown[] = [];
    const flush = async () => {
      if (ops.length > 0) await this.db.batch(ops as never, { sync: false } as never);
      ops = [];
    };
    for (const d of deletes) {
      if (typeof d === "number") {
        if (d > this.committedSeq) throw new JournalError("unsupported", `Cannot retire seq ${d}: it is not committed`);
        ops.push({ type: "del", sublevel: this.events, key: u64Key(d) });
        if (ops.length >= 1000) await flush();
      } else {
        if (d[1] > this.committedSeq) throw new JournalError("unsupported", `Cannot retire seqs up to ${d[1]}: they are not committed`);
        if (d[1] >= d[0]) await this.events.clear({ gte: u64Key(d[0]), lte: u64Key(d[1]) } as never);
      }
    }
    for (const e of replacements) {
      if (e.seq > this.committedSeq) throw new JournalError("unsupported", `Cannot replace seq ${e.seq}: it is not committed`);
      ops.push({ type: "put", sublevel: this.events, key: u64Key(e.seq), value: Buffer.from(encodeEvent(e)) });
      if (ops.length >= 1000) await flush();
    }
    await flush();
    await this.sync();
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
      if (!this.failed && this.durableSeq < this.committedSeq) await this.append([], { sync: true }).catch(() => {});
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
