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
 * in the file are read from the slabs. Whole aligned blocks of bulk runs are
 * written with O_DIRECT, the rest through the page cache (see writeRuns). The
 * journal head row records the end of the log; on open anything past it is cut
 * off: it belongs to a commit that never happened.
 *
 * Reclaiming space (retention): bytes that no retained point needs are recorded as dead in
 * `<n:08x>.dead` (pairs of u64 position and length, appended and fsynced); once enough of a
 * file that is no longer written is dead, it is rewritten as a sparse copy holding only the
 * rest, at the same positions (so every reference into it stays valid), fsynced and renamed
 * over the original. A file that is all dead is removed.
 */
import { ptr } from "bun:ffi";
import { constants } from "node:fs";
import { mkdir, open, readdir, readFile, rename, rm, stat, type FileHandle } from "node:fs/promises";
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

/**
 * Whole blocks of this size, at file positions that are multiples of it, are written with
 * O_DIRECT (see {@link DataLog.write}); slabs are aligned to it so that such a block's bytes
 * also start at an aligned address, which O_DIRECT needs.
 */
export const DIRECT_BLOCK = 4096;
/**
 * Runs with fewer whole blocks than this are written through the page cache. A direct write
 * waits for the device, and the log has one write in flight: small runs (a file of a few KiB
 * then its close; or an in-process writer of 128 KiB requests, whose runs stay small) would
 * each pay a device round trip, and bytes just written would be read back from the device
 * instead of the page cache. At 128 KiB the in-process core wrote 1 GiB at 478–532 MB/s (and
 * read it back at 342–393) against 584–894 (1,678–2,714) buffered; the mount, whose 1 MiB
 * requests make runs of 1 MiB and more, keeps its gain (0.87 of the do-nothing fs at 1 MiB).
 */
export const DIRECT_MIN_BYTES = 1 << 20;

/** A buffer of `size` bytes at an address that is a multiple of {@link DIRECT_BLOCK}, as O_DIRECT needs. */
export function alignedBuffer(size: number): Buffer {
  const b = Buffer.allocUnsafeSlow(size);
  if (ptr(b) % DIRECT_BLOCK === 0) return b; // large allocations are mapped pages: the usual case
  const over = Buffer.allocUnsafeSlow(size + DIRECT_BLOCK);
  const skip = (DIRECT_BLOCK - (ptr(over) % DIRECT_BLOCK)) % DIRECT_BLOCK;
  return over.subarray(skip, skip + size);
}

/** A slab of {@link SLAB_BYTES}, aligned for O_DIRECT. */
const newSlab = () => alignedBuffer(SLAB_BYTES);

/**
 * A slab holding the bytes of data log file `file` from position `pos` on. `buf` is the part
 * of `slab` from `pos % DIRECT_BLOCK` on, so that aligned file positions are aligned in memory.
 */
interface Chunk {
  readonly file: number;
  readonly pos: number;
  readonly slab: Buffer;
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
const deadName = (n: number) => `${n.toString(16).padStart(8, "0")}.dead`;

/** What {@link DataLog.reclaim} did. */
export interface ReclaimResult {
  /** Files rewritten as sparse copies, and files removed because nothing in them was live. */
  readonly rewritten: number;
  readonly removed: number;
  /** Bytes that no longer take space. */
  readonly bytes: number;
}

/**
 * Data log ranges [file, pos, length] sorted, empty ones left out, and merged where they
 * overlap or one ends where the next begins in the same file (appends make long runs of them).
 */
export function mergeDataRanges(ranges: readonly (readonly [number, number, number])[]): [number, number, number][] {
  const sorted = [...ranges].sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  const out: [number, number, number][] = [];
  for (const [file, pos, length] of sorted) {
    if (length <= 0) continue;
    const last = out[out.length - 1];
    if (last && last[0] === file && pos <= last[1] + last[2]) last[2] = Math.max(last[2], pos + length - last[1]);
    else out.push([file, pos, length]);
  }
  return out;
}

/** Sort and merge [pos, len] ranges of one file. */
function mergeRanges(ranges: readonly (readonly [number, number])[]): [number, number][] {
  return mergeDataRanges(ranges.map(([pos, len]) => [0, pos, len] as const)).map(([, pos, len]) => [pos, len]);
}

export class DataLog {
  private readonly handles = new Map<number, Promise<FileHandle>>();
  /** The same files opened with O_DIRECT, for whole aligned blocks (see {@link write}). */
  private readonly directHandles = new Map<number, Promise<FileHandle>>();
  /** Whole blocks are written with O_DIRECT until the filesystem refuses it (EINVAL). */
  private direct = constants.O_DIRECT !== undefined;
  private directBytes = 0;
  private bufferedBytes = 0;
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
      const m = /^([0-9a-f]{8})\.(dat|dead)$/.exec(name);
      if (m && parseInt(m[1]!, 16) > committed.file) await rm(join(dir, name));
      else if (name.endsWith(".tmp")) await rm(join(dir, name)); // a reclaim that did not finish
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
    for (const c of this.chunks.splice(m.chunks)) this.recycle(c.slab);
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
        const slab = this.free.pop() ?? newSlab();
        const skip = this.end % DIRECT_BLOCK;
        c = { file: this.file, pos: this.end, slab, buf: skip === 0 ? slab : slab.subarray(skip), used: 0, written: 0 };
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

  /** Bytes written so far with O_DIRECT and through the page cache, and whether O_DIRECT is still on. */
  get writeStats(): { readonly direct: boolean; readonly directBytes: number; readonly bufferedBytes: number } {
    return { direct: this.direct, directBytes: this.directBytes, bufferedBytes: this.bufferedBytes };
  }

  /** Whether some file was written since its last fdatasync. */
  get hasUnsynced(): boolean {
    return this.unsynced.size > 0;
  }

  /** Whether a write started by {@link write} has not finished yet. */
  get writing(): boolean {
    return this.issued.length > 0;
  }

  /** Bytes reserved and not yet handed to a write (see {@link write}). */
  get unissuedBytes(): number {
    return this.unissued;
  }

  /**
   * Start writing every reservation made so far (not synced: see {@link sync}): after the
   * writes started before it, one at a time. (Two writes to one file at once gain nothing,
   * the kernel takes them in turn under the inode's lock, and cost CPU: `perf` showed a
   * fifth of a mount's CPU during a sequential write spent by the second thread spinning on
   * that lock.) The promise resolves once this one and every earlier one are in the file,
   * and rejects if any of them failed.
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
    // After the earlier writes (which it then also waits for); after a failed one, not at all.
    const mine = this.lastWrite
      .then(() => this.writeRuns(runs))
      .then(
        () => {
          issued.done = true;
          this.advance();
        },
        (e: unknown) => {
          this.writeError ??= e;
          throw e;
        },
      );
    mine.catch(() => {}); // a write started ahead of a commit may have no one waiting on it
    this.lastWrite = mine;
    return mine;
  }

  /**
   * Write each run: its whole aligned blocks with O_DIRECT, the partial blocks at either end
   * (if any) through the page cache. A buffered write costs the kernel a copy into freshly
   * allocated page cache pages, which `perf` showed to be two thirds of a mount's CPU during a
   * sequential write; O_DIRECT writes from the slab itself, and leaves no second copy of the
   * bytes in memory (the FUSE file's own pages have them). Buffered and direct writes never
   * share a block: a partial block at a run's end is finished through the page cache by the
   * next run (whose first block it is). Reads go through the page cache, which the kernel
   * keeps coherent with direct writes (it drops cached pages of the range written); readers
   * only read below the written end, which moves once a write returned.
   */
  private async writeRuns(runs: readonly { file: number; pos: number; parts: Uint8Array[]; bytes: number }[]): Promise<void> {
    for (const run of runs) {
      const end = run.pos + run.bytes;
      const from = Math.min(end, alignUp(run.pos));
      const to = Math.max(from, end - (end % DIRECT_BLOCK));
      if (this.direct && to - from >= DIRECT_MIN_BYTES) {
        if (from > run.pos) await this.writeBuffered(run.file, run.pos, run.parts, 0, from - run.pos);
        const done = await this.writeDirect(run.file, from, run.parts, from - run.pos, to - from);
        await this.writeBuffered(run.file, from + done, run.parts, from + done - run.pos, end - from - done);
      } else await this.writeBuffered(run.file, run.pos, run.parts, 0, run.bytes);
      this.unsynced.add(run.file);
    }
  }

  /** Write `length` bytes of `parts` from `skip` on at `pos`, through the page cache. */
  private async writeBuffered(file: number, pos: number, parts: Uint8Array[], skip: number, length: number): Promise<void> {
    if (length === 0) return;
    const fh = await this.handle(file);
    let written = 0;
    // pwritev may write less than asked (full disk, signals): continue from where it stopped.
    while (written < length) {
      const { bytesWritten } = await fh.writev(sliceRun(parts, skip + written, length - written), pos + written);
      if (bytesWritten === 0) throw new JournalError("io", `Cannot write to data log ${fileName(file)}: no progress`);
      written += bytesWritten;
    }
    this.bufferedBytes += length;
  }

  /**
   * Write whole aligned blocks with O_DIRECT; returns how many bytes it wrote (all but after
   * a short write that did not end on a block, or when the filesystem refuses O_DIRECT, e.g.
   * one without it: the rest is then for a buffered write, and from then on every write).
   */
  private async writeDirect(file: number, pos: number, parts: Uint8Array[], skip: number, length: number): Promise<number> {
    let written = 0;
    while (written < length && this.direct) {
      let bytesWritten: number;
      try {
        const fh = await this.directHandle(file);
        ({ bytesWritten } = await fh.writev(sliceRun(parts, skip + written, length - written), pos + written));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EINVAL") throw e;
        this.direct = false;
        break;
      }
      if (bytesWritten === 0) throw new JournalError("io", `Cannot write to data log ${fileName(file)}: no progress`);
      written += bytesWritten;
      this.directBytes += bytesWritten;
      if (written % DIRECT_BLOCK !== 0) break;
    }
    return written;
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
      this.recycle(c.slab);
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
    if (ref.file < 0) throw new JournalError("dropped", "Cannot read these bytes: retention dropped them (they belong to a point older than the retained window)");
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
    for (const fh of this.directHandles.values()) await (await fh.catch(() => undefined))?.close();
    this.directHandles.clear();
    this.chunks = [];
    this.free.length = 0;
  }

  /** The file being appended to now (reclaim leaves it alone). */
  get activeFile(): number {
    return this.file;
  }

  /**
   * Begin a new file with the next reservation, so the current one can be reclaimed (once a
   * commit has recorded the new position: the head row names the file that opening checks).
   */
  rotate(): void {
    if (this.end === 0) return;
    this.file += 1;
    this.end = 0;
    // With nothing waiting to be written, the old file is complete now.
    if (this.unflushedBytes === 0 && this.issued.length === 0) this.flushedTo = { file: this.file, end: 0 };
  }

  /** Record bytes no retained point needs any more: (file, pos, length) each. */
  async markDead(ranges: readonly (readonly [number, number, number])[]): Promise<void> {
    const byFile = new Map<number, number[]>();
    for (const [file, pos, length] of ranges) {
      if (file < 0 || length <= 0) continue;
      let l = byFile.get(file);
      if (!l) byFile.set(file, (l = []));
      l.push(pos, length);
    }
    for (const [file, list] of byFile) {
      const buf = Buffer.allocUnsafe(list.length * 8);
      for (let i = 0; i < list.length; i++) buf.writeBigUInt64BE(BigInt(list[i]!), i * 8);
      const fh = await open(join(this.dir, deadName(file)), "a", 0o600);
      try {
        await fh.write(buf);
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
  }

  private async deadRanges(file: number): Promise<[number, number][]> {
    let buf: Buffer;
    try {
      buf = await readFile(join(this.dir, deadName(file)));
    } catch {
      return [];
    }
    const out: [number, number][] = [];
    for (let at = 0; at + 16 <= buf.length; at += 16) out.push([Number(buf.readBigUInt64BE(at)), Number(buf.readBigUInt64BE(at + 8))]);
    return mergeRanges(out);
  }

  /**
   * Rewrite every file but the active one whose dead bytes reach `minDeadFraction` of its
   * size (or `minDeadBytes`) as a sparse copy of the rest; remove files that are all dead.
   * `guard(file, live)` is asked first and may refuse (it checks that nothing still points
   * into the dead ranges).
   */
  async reclaim(options: { readonly minDeadFraction?: number; readonly minDeadBytes?: number; readonly guard?: (file: number, dead: readonly (readonly [number, number])[]) => Promise<boolean> } = {}): Promise<ReclaimResult> {
    const minFraction = options.minDeadFraction ?? 0.5;
    const minBytes = options.minDeadBytes ?? 256 << 20;
    let rewritten = 0;
    let removed = 0;
    let bytes = 0;
    const names = await readdir(this.dir);
    for (const name of names) {
      const m = /^([0-9a-f]{8})\.dead$/.exec(name);
      if (!m) continue;
      const file = parseInt(m[1]!, 16);
      // Only files every write has reached: the written end is past them (writes end in order,
      // and new ones only go to the active file).
      if (file >= this.file || file >= this.flushedTo.file) continue;
      const path = join(this.dir, fileName(file));
      let size: number;
      let allocated: number;
      try {
        const st = await stat(path);
        size = st.size;
        allocated = st.blocks * 512;
      } catch {
        await rm(join(this.dir, name), { force: true }); // the file is gone already
        continue;
      }
      const dead = (await this.deadRanges(file)).filter(([pos]) => pos < size).map(([pos, len]) => [pos, Math.min(len, size - pos)] as [number, number]);
      const deadBytes = dead.reduce((n, [, len]) => n + len, 0);
      if (deadBytes < Math.min(minBytes, size * minFraction) && deadBytes < size) continue;
      if (options.guard && !(await options.guard(file, dead))) continue;
      const old = this.handles.get(file);
      this.handles.delete(file);
      // Nothing writes to this file any more (it is not the active one).
      const direct = this.directHandles.get(file);
      this.directHandles.delete(file);
      if (direct) void direct.then((h) => h.close()).catch(() => {});
      if (deadBytes >= size) {
        if (old) setTimeout(() => void old.then((h) => h.close()).catch(() => {}), 30_000).unref?.();
        await rm(path, { force: true });
        await rm(join(this.dir, name), { force: true });
        removed++;
        bytes += allocated;
      } else {
        const tmp = `${path}.tmp`;
        const src = old ? await old : await open(path, "r");
        const out = await open(tmp, "w", 0o600);
        try {
          const chunk = Buffer.allocUnsafe(8 << 20);
          let at = 0;
          const live: [number, number][] = [];
          for (const [pos, len] of dead) {
            if (pos > at) live.push([at, pos - at]);
            at = pos + len;
          }
          if (at < size) live.push([at, size - at]);
          for (const [pos, len] of live) {
            for (let done = 0; done < len; ) {
              const n = Math.min(chunk.length, len - done);
              const { bytesRead } = await src.read(chunk, 0, n, pos + done);
              if (bytesRead !== n) throw new JournalError("corrupt", `Data log ${fileName(file)} ends before byte ${pos + done + n}; the data directory is damaged`);
              await out.write(chunk, 0, n, pos + done);
              done += n;
            }
          }
          await out.truncate(size);
          await out.sync();
        } finally {
          await out.close();
          // Reads may still be using the old file: close it a little later.
          setTimeout(() => void src.close().catch(() => {}), 30_000).unref?.();
        }
        await rename(tmp, path);
        await rm(join(this.dir, name), { force: true });
        const after = (await stat(path)).blocks * 512;
        bytes += Math.max(0, allocated - after);
        rewritten++;
      }
      await syncDir(this.dir);
    }
    return { rewritten, removed, bytes };
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

  /** The file opened with O_DIRECT (after {@link handle}, which creates it). */
  private directHandle(file: number): Promise<FileHandle> {
    let fh = this.directHandles.get(file);
    if (!fh) {
      fh = this.handle(file).then(() => open(join(this.dir, fileName(file)), constants.O_RDWR | constants.O_DIRECT));
      this.directHandles.set(file, fh);
      // A refusal (EINVAL) turns direct writes off; a later attempt may open it again.
      fh.catch(() => this.directHandles.delete(file));
    }
    return fh;
  }
}

const alignUp = (n: number) => Math.ceil(n / DIRECT_BLOCK) * DIRECT_BLOCK;

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, "r");
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/** The `length` bytes of `run` from `skip` on, as views of its buffers. */
function sliceRun(run: Uint8Array[], skip: number, length: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of run) {
    if (length <= 0) break;
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    const n = Math.min(b.length - skip, length);
    out.push(skip === 0 && n === b.length ? b : b.subarray(skip, skip + n));
    skip = 0;
    length -= n;
  }
  return out;
}
