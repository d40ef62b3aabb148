/**
 * The persistent read cache of remote object bytes: fixed-size chunks, one file each under
 * `DATA_DIR/cache`, named after the object version (key and ETag), so a changed object can
 * never be served from stale chunks. Bounded in bytes, least recently used first out; it
 * survives restarts (the order is rebuilt from the files' access times).
 *
 * Cached bytes are derived data that S3 can always give again, so they stay out of the
 * journal: segments never carry downloaded bytes, and losing the cache loses nothing.
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
  private readonly files = new Map<string, number>(); // name → bytes, least recently used first
  private readonly memory = new Map<string, Chunk>();
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
      return this.memory.has(name) || this.inflight.has(name) || this.files.has(name);
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
    if (this.files.has(name)) {
      const p = this.fromDisk(base, id, index).finally(() => this.inflight.get(name) === p && this.inflight.delete(name));
      this.inflight.set(name, p);
      return p;
    }
    return this.fetchSpan(base, id, index, index + 1)[0]!;
  }

  private async fromDisk(base: RemoteBase, id: string, index: number): Promise<Chunk> {
    const name = `${id}-${index}`;
    const path = join(this.options.dir, name);
    const c = this.newChunk(Math.min(this.chunk, base.size - index * this.chunk));
    if (!(await readWhole(path, c.buffer, c.bytes!.length))) {
      this.files.delete(name); // gone or damaged: S3 has it
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
    const done = (c: Chunk) => {
      const name = `${id}-${next}`;
      this.stats.downloadedBytes += c.bytes!.length;
      this.keepInMemory(name, c);
      this.persist(name, c);
      waiting[next - first]!.resolve(c);
      next++;
    };
    this.streamRetrying(base, first, end, () => next, done).catch((e) => {
      for (let i = next; i < end; i++) waiting[i - first]!.reject(e);
    });
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

  /** Written behind the reader; a write that fails only costs another GET later. */
  private persist(name: string, c: Chunk): void {
    c.writing = true;
    const p: Promise<void> = this.write(name, c.bytes!).finally(() => {
      c.writing = false;
      this.release(c);
      this.writes.delete(p);
    });
    this.writes.add(p);
  }

  /** Once every chunk fetched so far is written to disk (or failed to be). */
  async flush(): Promise<void> {
    while (this.writes.size > 0) await Promise.all(this.writes);
  }

  private async write(name: string, bytes: Uint8Array): Promise<void> {
    const path = join(this.options.dir, name);
    try {
      if (!(this.direct && (await this.writeDirect(`${path}.tmp`, bytes)))) await writeFile(`${path}.tmp`, bytes);
      await rename(`${path}.tmp`, path);
      this.remember(name, bytes.length);
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
  private async writeDirect(path: string, bytes: Uint8Array): Promise<boolean> {
    if (bytes.length % PAGE !== 0 || bytes.byteOffset % PAGE !== 0) return false;
    let fh;
    try {
      fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT);
      for (let at = 0; at < bytes.length; ) at += (await fh.write(bytes, at, bytes.length - at, at)).bytesWritten;
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EINVAL") this.direct = false;
      return false;
    } finally {
      await fh?.close().catch(() => {});
    }
  }

  private remember(name: string, size: number): void {
    const old = this.files.get(name);
    if (old !== undefined) this.bytes -= old;
    this.files.delete(name);
    this.files.set(name, size);
    this.bytes += size;
    this.stats.bytes = this.bytes;
  }

  private touch(name: string): void {
    const size = this.files.get(name);
    if (size === undefined) return;
    this.files.delete(name);
    this.files.set(name, size);
  }

  private async evict(): Promise<void> {
    while (this.bytes > this.maxBytes && this.files.size > 0) {
      const [name, size] = this.files.entries().next().value!;
      this.files.delete(name);
      this.forget(name);
      this.bytes -= size;
      await unlink(join(this.options.dir, name)).catch(() => {});
    }
    this.stats.bytes = this.bytes;
  }
}

/** The object is not the version the reader asked for: no retry helps. */
class ObjectChanged extends Error {}

const versionId = (base: RemoteBase) => createHash("sha256").update(`${base.key}\0${base.versionId ?? ""}\0${base.etag}`).digest("hex").slice(0, 40);

/** The file's bytes into `buf`: true if it holds exactly `size`. */
async function readWhole(path: string, buf: Uint8Array, size: number): Promise<boolean> {
  const fh = await open(path, "r").catch(() => undefined);
  if (!fh) return false;
  try {
    if ((await fh.stat()).size !== size) return false;
    let at = 0;
    while (at < size) {
      const { bytesRead } = await fh.read(buf, at, size - at, at);
      if (bytesRead === 0) break;
      at += bytesRead;
    }
    return at === size;
  } catch {
    return false;
  } finally {
    await fh.close();
  }
}
