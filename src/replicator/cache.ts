/**
 * The persistent read cache of remote object bytes: fixed-size chunks, one file each under
 * `DATA_DIR/cache`, named after the object version (key and ETag), so a changed object can
 * never be served from stale chunks. Bounded in bytes, least recently used first out; it
 * survives restarts (the order is rebuilt from the files' access times).
 *
 * Cached bytes are derived data that S3 can always give again, so they stay out of the
 * journal: segments never carry downloaded bytes, and losing the cache loses nothing.
 *
 * The chunks one ranged GET brings (a readahead span, up to SPAN_CHUNKS) go to disk as one
 * file, `ID-FIRST+COUNT` (a single chunk: `ID-INDEX`), written once the span is in: a file
 * made per 1 MiB chunk cost the mount more CPU (ext4 inode allocation, open, rename) than the
 * bytes themselves. Files are what the bound evicts, whole; a chunk is read from its file at
 * its place in it. Each file is written as `NAME.tmp` and renamed, so a crash leaves no file
 * that holds less than its name says (and `.tmp` files are removed at the next open).
 *
 * Sequential reads fetch ahead: each chunk read right after the one before widens the
 * window of chunks fetched in parallel, up to `maxReadahead`.
 *
 * Chunk memory is reused: a buffer goes back to a pool once its chunk is out of memory and
 * written to disk (fresh memory costs a page fault per 4 KiB, more than the copy into it).
 * A reader holds a {@linkcode Chunk}, not its buffer, and copies out of it synchronously only
 * while `bytes` is set: a chunk whose buffer went back has `bytes` cleared first, and the
 * reader asks again.
 */
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { mkdir, open, readdir, rename, stat, unlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { RemoteView } from "../fs/remote.ts";
import type { RemoteBase } from "../projection/state.ts";
import { isS3Error, type ObjectStore } from "../s3/mod.ts";

const PAGE = 4096;
/** Chunks fetched by one ranged GET at most (readahead). */
const SPAN_CHUNKS = 16;

export interface ChunkCacheOptions {
  readonly dir: string;
  readonly store: ObjectStore;
  /** @default 1 GiB */
  readonly maxBytes?: number;
  /** @default 1 MiB */
  readonly chunkBytes?: number;
  /** Chunks fetched ahead of a sequential reader, at most. @default 32 */
  readonly maxReadahead?: number;
  /** Chunks kept in memory as well (readahead lands there first). @default 64 */
  readonly memoryChunks?: number;
}

export interface CacheStats {
  hits: number;
  misses: number;
  bytes: number;
  downloadedBytes: number;
}

/** A chunk's bytes in memory. */
interface Chunk {
  /** The chunk's bytes (a view of `buffer`); undefined once the buffer went back to the pool. */
  bytes: Uint8Array | undefined;
  /** Whole chunk size, from the pool. */
  readonly buffer: Uint8Array;
  /** Kept in `memory`; being written to disk; views given out. The buffer goes back when none holds. */
  held: boolean;
  writing: boolean;
  pins: number;
}

export class ChunkCache {
  private readonly files = new Map<string, number>(); // file name → bytes, least recently used first
  /** Chunk name (`ID-INDEX`) → the file holding it. */
  private readonly chunkFiles = new Map<string, string>();
  private readonly memory = new Map<string, Chunk>();
  /** Chunks served and waiting for (or being written in) their span's file: still readable. */
  private readonly unwritten = new Map<string, Chunk>();
  private readonly inflight = new Map<string, Promise<Chunk>>();
  /** Buffers of `chunk` bytes to reuse. */
  private readonly pool: Uint8Array[] = [];
  private readonly writes = new Set<Promise<void>>();
  /** Chunk files are written with O_DIRECT until the filesystem refuses it. */
  private direct = constants.O_DIRECT !== undefined;
  /** Per object version: the last chunk read and the readahead window. */
  private readonly streams = new Map<string, { last: number; window: number }>();
  private bytes = 0;
  readonly stats: CacheStats = { hits: 0, misses: 0, bytes: 0, downloadedBytes: 0 };
  private readonly chunk: number;
  private readonly maxBytes: number;
  private readonly maxReadahead: number;
  private readonly memoryChunks: number;

  private constructor(private readonly options: ChunkCacheOptions) {
    this.chunk = options.chunkBytes ?? 1 << 20;
    this.maxBytes = options.maxBytes ?? 1 << 30;
    this.maxReadahead = options.maxReadahead ?? 32;
    this.memoryChunks = options.memoryChunks ?? 64;
  }

  static async open(options: ChunkCacheOptions): Promise<ChunkCache> {
    const cache = new ChunkCache(options);
    await mkdir(options.dir, { recursive: true });
    const found: { name: string; size: number; atime: number }[] = [];
    for (const name of await readdir(options.dir)) {
      if (name.endsWith(".tmp")) {
        await unlink(join(options.dir, name)).catch(() => {});
        continue;
      }
      const s = await stat(join(options.dir, name)).catch(() => undefined);
      if (s?.isFile()) found.push({ name, size: s.size, atime: s.atimeMs });
    }
    found.sort((a, b) => a.atime - b.atime);
    for (const f of found) cache.remember(f.name, f.size);
    await cache.evict();
    return cache;
  }

  /** Bytes [offset, offset+length) of `base` into `into` at `at`. */
  async read(base: RemoteBase, offset: number, length: number, into: Uint8Array, at: number): Promise<void> {
    const id = versionId(base);
    const first = Math.floor(offset / this.chunk);
    const last = Math.floor((offset + length - 1) / this.chunk);
    this.readahead(base, id, first, last);
    await Promise.all(
      Array.from({ length: last - first + 1 }, async (_, i) => {
        const index = first + i;
        let bytes: Uint8Array | undefined;
        // Its buffer may have gone back to the pool between the answer and now: ask again.
        for (let tries = 0; bytes === undefined; tries++) {
          if (tries === 100) throw new Error(`chunk ${index} of ${base.key} left memory 100 times before it could be read`);
          bytes = (await this.chunkOf(base, id, index)).bytes;
        }
        const start = index * this.chunk;
        const from = Math.max(offset, start);
        const to = Math.min(offset + length, start + bytes.length);
        if (to > from) into.set(bytes.subarray(from - start, to - start), at + (from - offset));
        if (to < Math.min(offset + length, start + this.chunk) && start + bytes.length < base.size) {
          throw new Error(`cached chunk ${index} of ${base.key} is short`);
        }
      }),
    );
  }

  /**
   * Bytes [offset, offset+length) without a copy when they lie in one chunk (a FUSE read of a
   * whole chunk is answered from the bytes as they came from S3), else undefined. The chunk's
   * buffer stays out of the pool until `release()`.
   */
  async view(base: RemoteBase, offset: number, length: number): Promise<RemoteView | undefined> {
    const index = Math.floor(offset / this.chunk);
    if (length <= 0 || Math.floor((offset + length - 1) / this.chunk) !== index || offset + length > base.size) return undefined;
    const id = versionId(base);
    this.readahead(base, id, index, index);
    for (let tries = 0; tries < 100; tries++) {
      const c = await this.chunkOf(base, id, index);
      const bytes = c.bytes;
      if (bytes === undefined) continue; // its buffer went back to the pool: ask again
      const from = offset - index * this.chunk;
      if (from + length > bytes.length) throw new Error(`cached chunk ${index} of ${base.key} is short`);
      c.pins++;
      let released = false;
      return {
        bytes: bytes.subarray(from, from + length),
        release: () => {
          if (released) return;
          released = true;
          c.pins--;
          this.release(c);
        },
      };
    }
    throw new Error(`chunk ${index} of ${base.key} left memory 100 times before it could be read`);
  }

  private readahead(base: RemoteBase, id: string, first: number, last: number): void {
    const s = this.streams.get(id) ?? { last: -2, window: 0 };
    // A reader that moves on past the furthest chunk read so far is sequential: widen its
    // window. Reads a little behind it are the kernel's own readahead arriving out of order
    // (several requests in flight); only a jump elsewhere starts over.
    const near = first <= s.last + 1 && first >= s.last - Math.max(2, s.window);
    if (near && last > s.last) s.window = Math.min(this.maxReadahead, Math.max(2, s.window * 2));
    else if (!near) s.window = 0;
    s.last = near ? Math.max(s.last, last) : last;
    this.streams.delete(id);
    this.streams.set(id, s);
    if (this.streams.size > 1024) this.streams.delete(this.streams.keys().next().value!);
    const chunks = Math.ceil(base.size / this.chunk);
    this.fetchMissing(base, id, last + 1, Math.min(chunks, last + 1 + s.window));
  }

  /**
   * Fetch ahead into chunks [from, to) that are nowhere yet, in whole spans: only once a
   * span of SPAN_CHUNKS (or what is left of the window or object) is missing, so that a
   * reader moving one chunk at a time does not send one small GET per chunk.
   */
  private fetchMissing(base: RemoteBase, id: string, from: number, to: number): void {
    const present = (i: number) => {
      const name = `${id}-${i}`;
      return this.memory.has(name) || this.inflight.has(name) || this.unwritten.has(name) || this.chunkFiles.has(name);
    };
    let i = from;
    while (i < to && present(i)) i++;
    const chunks = Math.ceil(base.size / this.chunk);
    if (to - i < Math.min(SPAN_CHUNKS, to - from, chunks - i)) return;
    while (i < to) {
      const start = i;
      const limit = Math.min(chunks, start + SPAN_CHUNKS);
      while (i < limit && !present(i)) i++;
      this.fetchSpan(base, id, start, i);
      while (i < to && present(i)) i++;
    }
  }

  private chunkOf(base: RemoteBase, id: string, index: number): Promise<Chunk> {
    const name = `${id}-${index}`;
    const mem = this.memory.get(name);
    if (mem) {
      this.memory.delete(name);
      this.memory.set(name, mem);
      this.touch(name);
      this.stats.hits++;
      return Promise.resolve(mem);
    }
    const pending = this.inflight.get(name);
    if (pending) return pending;
    const unwritten = this.unwritten.get(name);
    if (unwritten?.bytes !== undefined) {
      this.stats.hits++;
      this.keepInMemory(name, unwritten);
      return Promise.resolve(unwritten);
    }
    if (this.chunkFiles.has(name)) {
      const p = this.fromDisk(base, id, index).finally(() => this.inflight.get(name) === p && this.inflight.delete(name));
      this.inflight.set(name, p);
      return p;
    }
    return this.fetchSpan(base, id, index, index + 1)[0]!;
  }

  private async fromDisk(base: RemoteBase, id: string, index: number): Promise<Chunk> {
    const name = `${id}-${index}`;
    const file = this.chunkFiles.get(name)!;
    const span = spanOf(file)!;
    const path = join(this.options.dir, file);
    const c = this.newChunk(Math.min(this.chunk, base.size - index * this.chunk));
    // The file holds chunks [first, first + count): all whole but the object's last.
    const fileSize = Math.min(base.size, (span.first + span.count) * this.chunk) - span.first * this.chunk;
    if (!(await readAt(path, c.buffer, (index - span.first) * this.chunk, c.bytes!.length, fileSize))) {
      // Gone or damaged: S3 has it. Removed too, as a chunk fetched again goes to a file of
      // its own name and would leave this one behind, uncounted.
      this.dropFile(file);
      void unlink(path).catch(() => {});
      this.release(c);
      return this.fetchSpan(base, id, index, index + 1)[0]!;
    }
    this.stats.hits++;
    this.touch(name);
    void utimes(path, new Date(), new Date()).catch(() => {});
    this.keepInMemory(name, c);
    return c;
  }

  /** A chunk of `length` bytes in a buffer from the pool, held by nothing yet. */
  private newChunk(length: number): Chunk {
    const buffer = this.pool.pop() ?? new Uint8Array(this.chunk);
    return { buffer, bytes: buffer.subarray(0, length), held: false, writing: false, pins: 0 };
  }

  /** Back to the pool if nothing holds it; readers still holding the chunk see `bytes` cleared. */
  private release(c: Chunk): void {
    if (c.held || c.writing || c.pins > 0 || c.bytes === undefined) return;
    c.bytes = undefined;
    if (this.pool.length < 2 * SPAN_CHUNKS) this.pool.push(c.buffer);
  }

  /**
   * One ranged GET for chunks [first, end), read as it arrives: each chunk is served the
   * moment its last byte is in (a sequential reader does not wait for the rest of the span),
   * then kept in memory and written to disk behind the reader.
   */
  private fetchSpan(base: RemoteBase, id: string, first: number, end: number): Promise<Chunk>[] {
    this.stats.misses += end - first;
    const waiting: { resolve: (c: Chunk) => void; reject: (e: unknown) => void }[] = [];
    const promises: Promise<Chunk>[] = [];
    for (let i = first; i < end; i++) {
      const name = `${id}-${i}`;
      const p = new Promise<Chunk>((resolve, reject) => waiting.push({ resolve, reject }));
      p.catch(() => {});
      promises.push(p);
      this.inflight.set(name, p);
      void p.finally(() => this.inflight.get(name) === p && this.inflight.delete(name)).catch(() => {});
    }
    let next = first; // the first chunk not served yet
    const got: Chunk[] = []; // chunks [first, next), for the span's file
    const done = (c: Chunk) => {
      const name = `${id}-${next}`;
      this.stats.downloadedBytes += c.bytes!.length;
      c.writing = true; // its buffer stays until the span's file is written
      this.unwritten.set(name, c);
      got.push(c);
      this.keepInMemory(name, c);
      waiting[next - first]!.resolve(c);
      next++;
    };
    // Counted as a write from now on, so that flush() also waits for the span's file.
    const p: Promise<void> = this.streamRetrying(base, first, end, () => next, done)
      .then(
        () => this.persist(id, first, got),
        (e) => {
          for (let i = next; i < end; i++) waiting[i - first]!.reject(e);
          this.persist(id, first, got); // what did arrive
        },
      )
      .finally(() => this.writes.delete(p));
    this.writes.add(p);
    return promises;
  }

  /**
   * The chunks from `from()` to `end` of one ranged GET, each handed to `done` whole, in order.
   * A GET that fails or breaks off is tried again (up to 5 times in about 6 s) from the first
   * chunk not done yet, after errors that another attempt can cure: a reader gets EIO only when
   * S3 stays unreachable or the object changed.
   */
  private async streamRetrying(base: RemoteBase, first: number, end: number, from: () => number, done: (c: Chunk) => void): Promise<void> {
    const chunkEnd = (i: number) => Math.min(base.size, (i + 1) * this.chunk);
    for (let attempt = 1; ; attempt++) {
      const next = from();
      const start = next * this.chunk;
      const stop = chunkEnd(end - 1);
      let c: Chunk | undefined; // the chunk being filled
      try {
        const got = await this.options.store.getStream(base.key, {
          range: { start, end: stop - 1 },
          ...(base.versionId !== undefined ? { versionId: base.versionId } : { ifMatch: base.etag }),
        });
        // Servers that ignore If-Match on GET (s3rver) answer with whatever is there now.
        if (got.head.etag !== base.etag) {
          got.cancel();
          throw new ObjectChanged(`${base.key} changed in S3 (ETag ${got.head.etag}, expected ${base.etag})`);
        }
        const sent = got.range === undefined ? base.size : got.range.end - got.range.start + 1;
        if (sent !== stop - start) {
          got.cancel();
          throw new Error(`S3 returned ${sent} bytes of ${base.key} for a range of ${stop - start}`);
        }
        let index = next;
        let chunk: Uint8Array = new Uint8Array(0);
        let fill = 0;
        // Read to the body's own end (not `break`: that would close a connection that can be reused).
        for await (const piece of got.body) {
          if (index >= end && piece.length > 0) throw new Error(`S3 sent more than the ${stop - start} bytes asked of ${base.key}`);
          for (let p = 0; p < piece.length && index < end; ) {
            if (c === undefined) {
              c = this.newChunk(chunkEnd(index) - index * this.chunk);
              chunk = c.bytes!;
              fill = 0;
            }
            const n = Math.min(piece.length - p, chunk.length - fill);
            chunk.set(n === piece.length ? piece : piece.subarray(p, p + n), fill);
            fill += n;
            p += n;
            if (fill === chunk.length) {
              done(c);
              c = undefined;
              index++;
            }
          }
        }
        if (index < end) throw new Error(`S3 ended the body of ${base.key} after chunk ${index - 1} of a span to ${end - 1}`);
        return;
      } catch (e) {
        if (c !== undefined) this.release(c); // a part-filled chunk nobody saw
        const final = e instanceof ObjectChanged || isS3Error(e, "not-found") || isS3Error(e, "precondition-failed") || isS3Error(e, "auth") || attempt >= 5;
        if (final) throw e;
        await Bun.sleep(200 * 2 ** (attempt - 1));
      }
    }
  }

  private keepInMemory(name: string, c: Chunk): void {
    this.forget(name);
    c.held = true;
    this.memory.set(name, c);
    while (this.memory.size > this.memoryChunks) this.forget(this.memory.keys().next().value!);
  }

  /** Out of memory (its buffer back to the pool once written). */
  private forget(name: string): void {
    const c = this.memory.get(name);
    if (c === undefined) return;
    this.memory.delete(name);
    c.held = false;
    this.release(c);
  }

  /**
   * Chunks `first`, `first + 1`, … of one span to disk, behind the reader: one file for the
   * whole chunks and, where the object ends in a part chunk, one for that (O_DIRECT takes only
   * whole pages). A write that fails only costs another GET later.
   */
  private persist(id: string, first: number, chunks: readonly Chunk[]): void {
    let whole = chunks.length;
    if (whole > 1 && chunks[whole - 1]!.bytes!.length !== this.chunk) whole--;
    const runs: [number, readonly Chunk[]][] = [[first, chunks.slice(0, whole)]];
    if (whole < chunks.length) runs.push([first + whole, chunks.slice(whole)]);
    for (const [at, run] of runs) {
      if (run.length === 0) continue;
      const file = run.length === 1 ? `${id}-${at}` : `${id}-${at}+${run.length}`;
      const p: Promise<void> = this.write(file, run.map((c) => c.bytes!)).finally(() => {
        run.forEach((c, i) => {
          const name = `${id}-${at + i}`;
          if (this.unwritten.get(name) === c) this.unwritten.delete(name);
          c.writing = false;
          this.release(c);
        });
        this.writes.delete(p);
      });
      this.writes.add(p);
    }
  }

  /** Once every chunk fetched so far (and being fetched) is written to disk (or failed to be). */
  async flush(): Promise<void> {
    while (this.writes.size > 0) await Promise.all(this.writes);
  }

  private async write(name: string, parts: readonly Uint8Array[]): Promise<void> {
    const path = join(this.options.dir, name);
    const size = parts.reduce((n, b) => n + b.length, 0);
    try {
      if (!(this.direct && (await this.writeDirect(`${path}.tmp`, parts, size)))) await writeFile(`${path}.tmp`, parts.length === 1 ? parts[0]! : Buffer.concat(parts));
      await rename(`${path}.tmp`, path);
      this.remember(name, size);
      await this.evict();
    } catch {
      // A cache that cannot write (full disk) only costs another GET later.
    }
  }

  /**
   * Write a whole chunk with O_DIRECT, past the page cache: a buffered write of 1 MiB costs the
   * reader's machine a copy and page cache upkeep, often more than the download itself. Only
   * for whole pages of page-aligned memory (pool buffers are); false (and a buffered write
   * then) where the filesystem refuses it, e.g. tmpfs, and from then on.
   */
  private async writeDirect(path: string, parts: readonly Uint8Array[], size: number): Promise<boolean> {
    if (parts.some((b) => b.length % PAGE !== 0 || b.byteOffset % PAGE !== 0)) return false;
    let fh;
    try {
      fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT);
      let at = 0;
      // One writev for the span; what a short write leaves goes piece by piece (page multiples).
      at += (await fh.writev(parts as Uint8Array[], 0)).bytesWritten;
      let skip = at;
      for (const b of parts) {
        if (skip >= b.length) {
          skip -= b.length;
          continue;
        }
        for (let off = skip; off < b.length; ) {
          const n = (await fh.write(b, off, b.length - off, at)).bytesWritten;
          if (n <= 0) throw new Error(`short write to ${path}`);
          off += n;
          at += n;
        }
        skip = 0;
      }
      if (at !== size) throw new Error(`wrote ${at} of ${size} bytes to ${path}`);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EINVAL") this.direct = false;
      return false;
    } finally {
      await fh?.close().catch(() => {});
    }
  }

  /** A file on disk, newest in the LRU order; its chunks are read from it from now on. */
  private remember(file: string, size: number): void {
    const old = this.files.get(file);
    if (old !== undefined) this.bytes -= old;
    this.files.delete(file);
    this.files.set(file, size);
    this.bytes += size;
    this.stats.bytes = this.bytes;
    const span = spanOf(file);
    if (span) for (let i = 0; i < span.count; i++) this.chunkFiles.set(`${span.id}-${span.first + i}`, file);
  }

  /** The file out of the books (not off the disk); its chunks are no longer on disk. */
  private dropFile(file: string): void {
    const size = this.files.get(file);
    if (size === undefined) return;
    this.files.delete(file);
    this.bytes -= size;
    this.stats.bytes = this.bytes;
    const span = spanOf(file);
    if (span) {
      for (let i = 0; i < span.count; i++) {
        const name = `${span.id}-${span.first + i}`;
        if (this.chunkFiles.get(name) === file) this.chunkFiles.delete(name);
      }
    }
  }

  /** A chunk was used: its file moves to the end of the LRU order. */
  private touch(name: string): void {
    const file = this.chunkFiles.get(name);
    const size = file === undefined ? undefined : this.files.get(file);
    if (size === undefined) return;
    this.files.delete(file!);
    this.files.set(file!, size);
  }

  private async evict(): Promise<void> {
    while (this.bytes > this.maxBytes && this.files.size > 0) {
      const file = this.files.keys().next().value!;
      const span = spanOf(file);
      this.dropFile(file);
      if (span) for (let i = 0; i < span.count; i++) this.forget(`${span.id}-${span.first + i}`);
      await unlink(join(this.options.dir, file)).catch(() => {});
    }
    this.stats.bytes = this.bytes;
  }
}

/** The object is not the version the reader asked for: no retry helps. */
class ObjectChanged extends Error {}

const versionId = (base: RemoteBase) => createHash("sha256").update(`${base.key}\0${base.versionId ?? ""}\0${base.etag}`).digest("hex").slice(0, 40);

/** A cache file's name: `ID-FIRST+COUNT`, or `ID-INDEX` for one chunk; undefined for others. */
function spanOf(file: string): { id: string; first: number; count: number } | undefined {
  const m = /^([0-9a-f]{40})-(\d+)(?:\+(\d+))?$/.exec(file);
  if (!m) return undefined;
  const count = m[3] === undefined ? 1 : Number(m[3]);
  return count >= 1 ? { id: m[1]!, first: Number(m[2]), count } : undefined;
}

/** `length` bytes at `position` of the file into `buf`: true if the file is `fileSize` long and they were all read. */
async function readAt(path: string, buf: Uint8Array, position: number, length: number, fileSize: number): Promise<boolean> {
  const fh = await open(path, "r").catch(() => undefined);
  if (!fh) return false;
  try {
    if ((await fh.stat()).size !== fileSize) return false;
    let at = 0;
    while (at < length) {
      const { bytesRead } = await fh.read(buf, at, length - at, position + at);
      if (bytesRead === 0) break;
      at += bytesRead;
    }
    return at === length;
  } catch {
    return false;
  } finally {
    await fh.close();
  }
}
