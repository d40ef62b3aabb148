/**
 * The data log: append-only files that hold the bytes of `ExtentWritten`
 * events, so that bulk data is written to disk once instead of twice (LevelDB
 * would write it to its log and again to a table).
 *
 * Files are `<dir>/<n:08x>.dat`, at most {@link DEFAULT_DATA_FILE_BYTES} each.
 * Space is reserved synchronously (so the event can name its position before
 * the write happens; the bytes are copied into a slab then) and written behind
 * the appends, at the latest by the commit of the events that point at them; a
 * synced commit fdatasyncs every file written since the last one. Bytes not yet
 * in the file are read from the slabs. The journal head row records the end of
 * the log; on open anything past it is cut off: it belongs to a commit that
 * never happened.
 */
import { mkdir, open, readdir, rm, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { JournalError } from "./errors.ts";
import type { DataRef } from "./events.ts";

export const DEFAULT_DATA_FILE_BYTES = 1 << 30;

export interface DataLogPosition {
  readonly file: number;
  readonly end: number;
}

/**
 * Reserved bytes are copied into slabs: large buffers that are reused once their bytes
 * are written, so staging a write copies into memory that is already mapped (fresh
 * memory costs a page fault per 4 KiB, which on a virtual machine is slower than the
 * copy itself), and a commit writes each slab's new bytes with one system call.
 */
export const SLAB_BYTES = 4 << 20;
/** Slabs kept for reuse: enough for a writer at full speed (see the fs core's back-pressure limit). */
const MAX_FREE_SLABS = 24;
/** Slabs kept once nothing was staged for {@link IDLE_MS}. */
const IDLE_FREE_SLABS = 2;
const IDLE_MS = 2000;
/**
 * Bytes written after which an fdatasync is started in the background, so the kernel
 * writes them back while staging goes on and the next synced commit has little left.
 */
export const WRITEBACK_BYTES = 32 << 20;

/** A slab holding the bytes of data log file `file` from position `pos` on. */
interface Chunk {
  readonly file: number;
  readonly pos: number;
  readonly buf: Buffer;
  /** Bytes reserved in `buf`. */
  used: number;
  /** Bytes handed to a write (a prefix of `used`). */
  written: number;
}

export interface DataLogMark {
  readonly file: number;
  readonly end: number;
  readonly chunks: number;
  readonly used: number;
  readonly unflushed: number;
  readonly unissued: number;
}

const fileName = (n: number) => `${n.toString(16).padStart(8, "0")}.dat`;

export class DataLog {
  private readonly handles = new Map<number, Promise<FileHandle>>();
  /** Slabs whose bytes are not all on disk yet, and the one being filled (last), in log order. */
  private chunks: Chunk[] = [];
  private readonly free: Buffer[] = [];
  private unflushedBytes = 0;
  /** Files written since their last fdatasync. */
  private readonly unsynced = new Set<number>();
  private file: number;
  private end: number;
  /** End of the data handed to the last flush: what a commit may record. */
  private flushedTo: DataLogPosition;
  private sinceWriteback = 0;
  /** Bytes reserved and not yet handed to a write. */
  private unissued = 0;
  /** When bytes were last reserved (ms since the epoch). */
  private lastReserve = 0;
  /** Writes started and not all done yet, in the order they were started. */
  private issued: { end: DataLogPosition; bytes: number; done: boolean }[] = [];
  /** Resolves once every write started so far is done. */
  private lastWrite: Promise<void> = Promise.resolve();
  /** A write failed: every later write fails with it (fail-stop). */
  private writeError: unknown;
  private writeback: Promise<void> | undefined;
  /** A background fdatasync failed: the next sync reports it (the kernel may not report it twice). */
  private writebackError: unknown;

  private constructor(
    private readonly dir: string,
    start: DataLogPosition,
    private readonly maxFileBytes: number,
  ) {
    this.file = start.file;
    this.end = start.end;
    this.flushedTo = start;
  }

  /** Open the log and cut off whatever lies past `committed` (bytes of commits that never happened). */
  static async open(dir: string, committed: DataLogPosition, maxFileBytes = DEFAULT_DATA_FILE_BYTES): Promise<DataLog> {
    await mkdir(dir, { recursive: true });
    for (const name of await readdir(dir)) {
      const m = /^([0-9a-f]{8})\.dat$/.exec(name);
      if (m && parseInt(m[1]!, 16) > committed.file) await rm(join(dir, name));
    }
    const log = new DataLog(dir, committed, maxFileBytes);
    const fh = await log.handle(committed.file);
    const { size } = await fh.stat();
    if (size < committed.end) {
      throw new JournalError(
        "corrupt",
        `Data log ${join(dir, fileName(committed.file))} is ${size} bytes but the journal says ${committed.end} were committed; the data directory was damaged or partly restored`,
      );
    }
    if (size > committed.end) await fh.truncate(committed.end);
    return log;
  }

  /** End of the log as far as the last {@link write} wrote it. */
  get position(): DataLogPosition {
    return this.flushedTo;
  }

  /** End of everything reserved so far: where the next {@link write} leaves the log. */
  get reservedEnd(): DataLogPosition {
    return { file: this.file, end: this.end };
  }

  /**
   * Checks data against its CRC after an unclean stop, without opening the
   * log for writing: missing files or bytes simply fail the check.
   */
  static checker(dir: string): { check(ref: DataRef, length: number, crc: number): Promise<boolean>; close(): Promise<void> } {
    const handles = new Map<number, Promise<FileHandle | undefined>>();
    return {
      async check(ref, length, crc) {
        if (length === 0) return true;
        let fh = handles.get(ref.file);
        if (!fh) handles.set(ref.file, (fh = open(join(dir, fileName(ref.file)), "r").catch(() => undefined)));
        const h = await fh;
        if (!h) return false;
        const buf = new Uint8Array(length);
        const { bytesRead } = await h.read(buf, 0, length, ref.pos);
        return bytesRead === length && crc32(buf) === crc;
      },
      async close() {
        for (const fh of handles.values()) await (await fh)?.close();
      },
    };
  }

  /** A point to go back to if the events being staged are abandoned. */
  mark(): DataLogMark {
    const last = this.chunks[this.chunks.length - 1];
    return { file: this.file, end: this.end, chunks: this.chunks.length, used: last?.used ?? 0, unflushed: this.unflushedBytes, unissued: this.unissued };
  }

  /** Give back everything reserved since `m` (synchronously after it: nothing was written). */
  rollback(m: DataLogMark): void {
    for (const c of this.chunks.splice(m.chunks)) this.recycle(c.buf);
    const last = this.chunks[this.chunks.length - 1];
    if (last && m.chunks > 0) last.used = m.used;
    this.file = m.file;
    this.end = m.end;
    this.unflushedBytes = m.unflushed;
    this.unissued = m.unissued;
  }

  /** Bytes reserved but not yet written to the file (for back-pressure). */
  get pendingBytes(): number {
    return this.unflushedBytes;
  }

  /**
   * Reserve room for `bytes` and copy them for the next {@link write}: the caller may
   * reuse its buffer as soon as this returns.
   */
  reserve(bytes: Uint8Array): DataRef {
    if (this.end > 0 && this.end + bytes.length > this.maxFileBytes) {
      this.file += 1;
      this.end = 0;
    }
    const ref = { file: this.file, pos: this.end };
    let from = 0;
    while (from < bytes.length) {
      let c = this.chunks[this.chunks.length - 1];
      if (!c || c.file !== this.file || c.pos + c.used !== this.end || c.used === c.buf.length) {
        c = { file: this.file, pos: this.end, buf: this.free.pop() ?? Buffer.allocUnsafeSlow(SLAB_BYTES), used: 0, written: 0 };
        this.chunks.push(c);
      }
      const n = Math.min(bytes.length - from, c.buf.length - c.used);
      c.buf.set(n === bytes.length ? bytes : bytes.subarray(from, from + n), c.used);
      c.used += n;
      from += n;
      this.end += n;
    }
    this.unflushedBytes += bytes.length;
    this.unissued += bytes.length;
    this.lastReserve = Date.now();
    return ref;
  }

  /** Whether some file was written since its last fdatasync. */
  get hasUnsynced(): boolean {
    return this.unsynced.size > 0;
  }

  /** Bytes reserved and not yet handed to a write (see {@link write}). */
  get unissuedBytes(): number {
    return this.unissued;
  }

  /**
   * Start writing every reservation made so far (not synced: see {@link sync}).
   * Writes may be started while earlier ones are in flight (they go to other bytes
   * of the file); the promise resolves once this one and every earlier one are in
   * the file, and rejects if any of them failed.
   */
  write(): Promise<void> {
    if (this.writeError !== undefined) return Promise.reject(this.writeError);
    // Runs of new bytes that are contiguous in one file: one pwritev each.
    const runs: { file: number; pos: number; parts: Uint8Array[]; bytes: number }[] = [];
    let total = 0;
    for (const c of this.chunks) {
      if (c.used === c.written) continue;
      const pos = c.pos + c.written;
      const part = c.buf.subarray(c.written, c.used);
      const run = runs[runs.length - 1];
      if (run && run.file === c.file && run.pos + run.bytes === pos && run.parts.length < 1024) {
        run.parts.push(part);
        run.bytes += part.length;
      } else runs.push({ file: c.file, pos, parts: [part], bytes: part.length });
      total += part.length;
      c.written = c.used;
    }
    this.unissued = 0;
    if (runs.length === 0) {
      // Nothing was staged for a while: give back the slabs kept for bulk writing.
      if (this.free.length > IDLE_FREE_SLABS && Date.now() - this.lastReserve > IDLE_MS) this.free.length = IDLE_FREE_SLABS;
      return this.lastWrite;
    }
    const last = runs[runs.length - 1]!;
    const issued = { end: { file: last.file, end: last.pos + last.bytes }, bytes: total, done: false };
    this.issued.push(issued);
    const mine = this.writeRuns(runs).then(
      () => {
        issued.done = true;
        this.advance();
      },
      (e: unknown) => {
        this.writeError ??= e;
        throw e;
      },
    );
    const all = Promise.all([this.lastWrite, mine]).then(() => {});
    all.catch(() => {}); // a write started ahead of a commit may have no one waiting on it
    this.lastWrite = all;
    return all;
  }

  private async writeRuns(runs: readonly { file: number; pos: number; parts: Uint8Array[]; bytes: number }[]): Promise<void> {
    for (const run of runs) {
      const fh = await this.handle(run.file);
      let written = 0;
      // pwritev may write less than asked (full disk, signals): continue from where it stopped.
      while (written < run.bytes) {
        const rest = written === 0 ? run.parts : sliceRun(run.parts, written);
        const { bytesWritten } = await fh.writev(rest, run.pos + written);
        if (bytesWritten === 0) throw new JournalError("io", `Cannot write to data log ${fileName(run.file)}: no progress`);
        written += bytesWritten;
      }
      this.unsynced.add(run.file);
    }
  }

  /** Move the written end over every write done so far, in order; free slabs it passed. */
  private advance(): void {
    let file = -1;
    while (this.issued.length > 0 && this.issued[0]!.done) {
      const w = this.issued.shift()!;
      this.flushedTo = w.end;
      this.unflushedBytes -= w.bytes;
      this.sinceWriteback += w.bytes;
      file = w.end.file;
    }
    // Slabs whose bytes are all in the file now serve again, but for the one being filled.
    while (this.chunks.length > 0) {
      const c = this.chunks[0]!;
      const current = this.chunks.length === 1 && c.used < c.buf.length && c.file === this.file;
      if (current || c.written < c.used || !this.isFlushed(c)) break;
      this.chunks.shift();
      this.recycle(c.buf);
    }
    if (file >= 0 && this.sinceWriteback >= WRITEBACK_BYTES && !this.writeback) {
      this.sinceWriteback = 0;
      this.writeback = this.handle(file)
        .then((fh) => fh.datasync())
        .catch((e) => {
          this.writebackError ??= e;
        })
        .finally(() => {
          this.writeback = undefined;
        });
    }
  }

  private isFlushed(c: Chunk): boolean {
    const ft = this.flushedTo;
    return c.file < ft.file || (c.file === ft.file && c.pos + c.used <= ft.end);
  }

  private recycle(buf: Buffer): void {
    if (this.free.length < MAX_FREE_SLABS) this.free.push(buf);
  }

  /** Make everything written so far durable. */
  async sync(): Promise<void> {
    if (this.writebackError !== undefined) throw this.writebackError;
    for (const f of [...this.unsynced]) {
      await (await this.handle(f)).datasync();
      this.unsynced.delete(f);
    }
  }

  /** Drop queued reservations after a failed commit (the journal is then closed). */
  discardPending(): void {
    this.chunks = [];
    this.unflushedBytes = 0;
    this.unissued = 0;
  }

  /**
   * Read `length` bytes at `offset` within the data that `ref` points at.
   * Bytes not yet written are served from memory.
   */
  async read(ref: DataRef, offset: number, length: number, into?: Uint8Array, intoOffset = 0): Promise<Uint8Array> {
    const buf = into ?? new Uint8Array(length);
    const start = ref.pos + offset;
    const ft = this.flushedTo;
    // The part below the written end is in the file; the rest is in slabs.
    const onDisk = ref.file < ft.file ? length : ref.file === ft.file ? Math.max(0, Math.min(length, ft.end - start)) : 0;
    if (onDisk < length) this.copyUnflushed(ref.file, start + onDisk, length - onDisk, buf, intoOffset + onDisk);
    if (onDisk > 0) {
      const fh = await this.handle(ref.file);
      let done = 0;
      while (done < onDisk) {
        const { bytesRead } = await fh.read(buf, intoOffset + done, onDisk - done, start + done);
        if (bytesRead === 0) {
          throw new JournalError("corrupt", `Data log ${fileName(ref.file)} ends before byte ${start + done}; the data directory is damaged`);
        }
        done += bytesRead;
      }
    }
    return into ? buf.subarray(intoOffset, intoOffset + length) : buf;
  }

  private copyUnflushed(file: number, pos: number, length: number, into: Uint8Array, at: number): void {
    let need = pos;
    const end = pos + length;
    for (const c of this.chunks) {
      if (c.file !== file) continue;
      const cEnd = c.pos + c.used;
      if (cEnd <= need || c.pos >= end) continue;
      if (c.pos > need) break;
      const from = need - c.pos;
      const n = Math.min(cEnd, end) - need;
      into.set(c.buf.subarray(from, from + n), at + (need - pos));
      need += n;
      if (need >= end) return;
    }
    if (need < end) throw new JournalError("corrupt", `Data log ${fileName(file)} has no bytes ${need}-${end} in memory or on disk`);
  }

  async close(): Promise<void> {
    await this.lastWrite.catch(() => {});
    await this.writeback;
    for (const fh of this.handles.values()) await (await fh).close();
    this.handles.clear();
    this.chunks = [];
    this.free.length = 0;
  }

  private handle(file: number): Promise<FileHandle> {
    let fh = this.handles.get(file);
    if (!fh) {
      const path = join(this.dir, fileName(file));
      // "a+" creates the file; reopen it without O_APPEND so positioned writes land where asked.
      fh = open(path, "a+").then(async (h) => {
        await h.close();
        return open(path, "r+");
      });
      this.handles.set(file, fh);
    }
    return fh;
  }
}

function sliceRun(run: Uint8Array[], skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of run) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}
