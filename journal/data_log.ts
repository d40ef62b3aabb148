/**
 * The data log: append-only files that hold the bytes of `ExtentWritten`
 * events, so that bulk data is written to disk once instead of twice (LevelDB
 * would write it to its log and again to a table).
 *
 * Files are `<dir>/<n:08x>.dat`, at most {@link DEFAULT_DATA_FILE_BYTES} each.
 * Space is reserved synchronously (so the event can name its position before
 * the write happens) and written by the journal's commit loop before it
 * commits the events that point at it; a synced commit fdatasyncs every file
 * written since the last one first. The journal head row records the end of
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

interface PendingWrite {
  readonly file: number;
  readonly pos: number;
  readonly bytes: Uint8Array;
}

const fileName = (n: number) => `${n.toString(16).padStart(8, "0")}.dat`;

export class DataLog {
  private readonly handles = new Map<number, Promise<FileHandle>>();
  private pending: PendingWrite[] = [];
  /** Writes handed to the running flush, kept readable until they are durable. */
  private inflight: PendingWrite[] = [];
  private unflushedBytes = 0;
  /** Files written since their last fdatasync. */
  private readonly unsynced = new Set<number>();
  private file: number;
  private end: number;
  /** End of the data handed to the last flush: what a commit may record. */
  private flushedTo: DataLogPosition;

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

  /** End of the log as far as the last {@link flush} wrote it. */
  get position(): DataLogPosition {
    return this.flushedTo;
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
  mark(): { file: number; end: number; pending: number } {
    return { file: this.file, end: this.end, pending: this.pending.length };
  }

  rollback(m: { file: number; end: number; pending: number }): void {
    this.file = m.file;
    this.end = m.end;
    for (const w of this.pending.splice(m.pending)) this.unflushedBytes -= w.bytes.length;
  }

  /** Bytes reserved but not yet durable (for back-pressure). */
  get pendingBytes(): number {
    return this.unflushedBytes;
  }

  /** Reserve room for `bytes` and queue them for the next {@link flush}. */
  reserve(bytes: Uint8Array): DataRef {
    if (this.end > 0 && this.end + bytes.length > this.maxFileBytes) {
      this.file += 1;
      this.end = 0;
    }
    const ref = { file: this.file, pos: this.end };
    this.pending.push({ file: this.file, pos: this.end, bytes });
    this.unflushedBytes += bytes.length;
    this.end += bytes.length;
    return ref;
  }

  /** Whether some file was written since its last fdatasync. */
  get hasUnsynced(): boolean {
    return this.unsynced.size > 0;
  }

  /** Write every queued reservation (not synced: see {@link sync}). */
  async write(): Promise<void> {
    if (this.pending.length === 0) return;
    const writes = this.pending;
    this.pending = [];
    this.inflight = writes;
    const lastWrite = writes[writes.length - 1]!;
    const covered = { file: lastWrite.file, end: lastWrite.pos + lastWrite.bytes.length };
    let i = 0;
    while (i < writes.length) {
      // Gather a contiguous run in one file into a single writev.
      const first = writes[i]!;
      const run: Uint8Array[] = [first.bytes];
      let next = first.pos + first.bytes.length;
      let j = i + 1;
      while (j < writes.length && writes[j]!.file === first.file && writes[j]!.pos === next && run.length < 1024) {
        run.push(writes[j]!.bytes);
        next += writes[j]!.bytes.length;
        j++;
      }
      const fh = await this.handle(first.file);
      let written = 0;
      const want = next - first.pos;
      // writev may write less than asked (full disk, signals): continue from where it stopped.
      while (written < want) {
        const rest = written === 0 ? run : sliceRun(run, written);
        const { bytesWritten } = await fh.writev(rest, first.pos + written);
        if (bytesWritten === 0) throw new JournalError("io", `Cannot write to data log ${fileName(first.file)}: no progress`);
        written += bytesWritten;
      }
      this.unsynced.add(first.file);
      i = j;
    }
    this.flushedTo = covered;
    this.inflight = [];
    for (const w of writes) this.unflushedBytes -= w.bytes.length;
  }

  /** Make everything written so far durable. */
  async sync(): Promise<void> {
    for (const f of [...this.unsynced]) {
      await (await this.handle(f)).datasync();
      this.unsynced.delete(f);
    }
  }

  /** Drop queued reservations after a failed commit (the journal is then closed). */
  discardPending(): void {
    this.pending = [];
    this.inflight = [];
    this.unflushedBytes = 0;
  }

  /**
   * Read `length` bytes at `offset` within the data that `ref` points at.
   * Bytes not yet durable are served from memory.
   */
  async read(ref: DataRef, offset: number, length: number, into?: Uint8Array, intoOffset = 0): Promise<Uint8Array> {
    const buf = into ?? new Uint8Array(length);
    const start = ref.pos + offset;
    const ft = this.flushedTo;
    // The part below the durable end is on disk; the rest is in pending or inflight writes.
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
    for (const list of [this.inflight, this.pending]) {
      for (const w of list) {
        if (w.file !== file) continue;
        const wEnd = w.pos + w.bytes.length;
        if (wEnd <= need || w.pos >= end) continue;
        if (w.pos > need) break;
        const from = need - w.pos;
        const n = Math.min(wEnd, end) - need;
        into.set(w.bytes.subarray(from, from + n), at + (need - pos));
        need += n;
        if (need >= end) return;
      }
    }
    if (need < end) throw new JournalError("corrupt", `Data log ${fileName(file)} has no bytes ${need}-${end} in memory or on disk`);
  }

  async close(): Promise<void> {
    for (const fh of this.handles.values()) await (await fh).close();
    this.handles.clear();
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
