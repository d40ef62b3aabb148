/**
 * The read cache against both real servers: bounded in bytes with the least recently used
 * chunks out first, kept across restarts (cached chunks read with the server unreachable),
 * pinned to object versions (a changed object is never served from old chunks). The chunks
 * of a readahead span share one file; a damaged one is fetched again and removed.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm, stat, truncate } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChunkCache } from "../../src/replicator/mod.ts";
import { makeObjectStore, type ObjectStore } from "../../src/s3/mod.ts";
import type { RemoteBase } from "../../src/projection/state.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";
import { closedPort, createBucket, S3_SERVER_KINDS, serverPool, storeConfig, type S3Server, type S3ServerKind } from "../support/s3_servers.ts";

const servers = serverPool();
const serverFor = servers.get;
const cleanups: (() => Promise<unknown> | void)[] = [];

beforeAll(async () => {
  await servers.startAll();
}, 60_000);

afterAll(async () => {
  for (const c of cleanups.splice(0)) await c();
  await servers.stopAll();
}, 60_000);

const MIB = 1024 * 1024;

async function base(store: ObjectStore, key: string): Promise<RemoteBase> {
  const h = (await store.head(key))!;
  return { key, etag: h.etag, size: h.size, mtime: h.lastModified.getTime(), valid: h.size, asOf: 0 };
}

async function read(cache: ChunkCache, b: RemoteBase, offset: number, length: number): Promise<Buffer> {
  const out = new Uint8Array(length);
  await cache.read(b, offset, length, out, 0);
  return Buffer.from(out);
}

/** A fresh bucket holding one object of `size` random bytes, a store on it, and a cache directory. */
async function withObject(kind: S3ServerKind, key: string, size: number): Promise<{ server: S3Server; bucket: string; store: ObjectStore; dir: string; a: Buffer; ba: RemoteBase }> {
  const server = await serverFor(kind);
  const bucket = await createBucket(server);
  const store = makeObjectStore(storeConfig(server, bucket));
  cleanups.push(() => store.close());
  const dir = await mkdtemp(join(tmpdir(), "objectfs-cache-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const a = randomBytes(size);
  await store.put(key, a);
  return { server, bucket, store, dir, a, ba: await base(store, key) };
}

for (const kind of S3_SERVER_KINDS) {
  describe(kind, () => {
    test("bounded LRU, survives a restart (served with S3 unreachable), never stale across object versions", async () => {
      const { server, bucket, store, dir, a, ba } = await withObject(kind, "a.bin", 5 * MIB + 123);

      const cache = await ChunkCache.open({ dir, store, maxBytes: 3 * MIB, chunkBytes: MIB, maxReadahead: 0 });
      // Sequential read of every byte, in FUSE-sized pieces.
      const got: Buffer[] = [];
      for (let off = 0; off < a.length; off += 128 * 1024) got.push(await read(cache, ba, off, Math.min(128 * 1024, a.length - off)));
      expect(Buffer.concat(got).equals(a)).toBe(true);
      await cache.flush(); // eviction runs after each chunk file is written
      expect(cache.stats.bytes).toBeLessThanOrEqual(3 * MIB);
      expect((await readdir(dir)).length).toBeLessThanOrEqual(3);
      expect(cache.stats.downloadedBytes).toBe(a.length);
      // Chunk 1 is used again: chunk 2 is now the least recently used and goes first.
      await read(cache, ba, 0, 10); // chunk 0: evicted, fetched again
      await cache.flush(); // chunk files are written behind the reader
      const names = await readdir(dir);
      expect(names.some((n) => n.endsWith("-1"))).toBe(false);

      // A restart with S3 unreachable: cached chunks still read, others fail.
      const dead = makeObjectStore({ ...storeConfig(server, bucket), endpoint: `http://127.0.0.1:${await closedPort()}`, maxAttempts: 1 });
      cleanups.push(() => dead.close());
      const again = await ChunkCache.open({ dir, store: dead, maxBytes: 3 * MIB, chunkBytes: MIB, maxReadahead: 0 });
      expect((await read(again, ba, 5 * MIB, 123)).equals(a.subarray(5 * MIB))).toBe(true);
      expect((await read(again, ba, 0, 10)).equals(a.subarray(0, 10))).toBe(true);
      await expect(read(again, ba, MIB, 10)).rejects.toThrow();

      // The object changes: its new version is read from S3, not from the old chunks.
      const b = randomBytes(5 * MIB + 123);
      await store.put("a.bin", b);
      const bb = await base(store, "a.bin");
      expect((await read(cache, bb, 0, 1000)).equals(b.subarray(0, 1000))).toBe(true);
      // And the old version is refused rather than mixed with new bytes.
      await expect(read(cache, ba, 2 * MIB + 5, 10)).rejects.toThrow();
    }, 60_000);

    test("a span file damaged on disk is read from S3 again after a restart, and removed: every byte right, the byte count true", async () => {
      const { store, dir, a, ba } = await withObject(kind, "d.bin", 3 * MIB + 555);
      const chunk = 64 * 1024;
      const cache = await ChunkCache.open({ dir, store, chunkBytes: chunk });
      for (let off = 0; off < a.length; off += chunk) await read(cache, ba, off, Math.min(chunk, a.length - off));
      await cache.flush();
      const spans = (await readdir(dir)).filter((n) => /\+\d+$/.test(n));
      expect(spans.length).toBeGreaterThan(1);
      const damaged = spans[1]!;
      const size = (await stat(join(dir, damaged))).size;
      await truncate(join(dir, damaged), size - 1000);
      const [first, count] = damaged.slice(damaged.lastIndexOf("-") + 1).split("+").map(Number);

      const again = await ChunkCache.open({ dir, store, chunkBytes: chunk, maxReadahead: 0 });
      const off = (first! + Math.floor(count! / 2)) * chunk;
      expect((await read(again, ba, off, 3 * chunk)).equals(a.subarray(off, off + 3 * chunk))).toBe(true);
      expect((await read(again, ba, 0, a.length)).equals(a)).toBe(true);
      await again.flush();
      const names = await readdir(dir);
      expect(names).not.toContain(damaged);
      let onDisk = 0;
      for (const n of names) onDisk += (await stat(join(dir, n))).size;
      expect(again.stats.bytes).toBe(onDisk);
    }, 60_000);

    test("bodies cut off or reset mid-span are fetched again from where they broke: every byte right", async () => {
      const server = await serverFor(kind);
      const bucket = await createBucket(server);
      const store = makeObjectStore(storeConfig(server, bucket));
      cleanups.push(() => store.close());
      const proxy = await startFaultProxy(server.endpoint, { seed: 7 });
      cleanups.push(() => proxy.close());
      const through = makeObjectStore({ ...storeConfig(server, bucket), endpoint: proxy.endpoint, maxAttempts: 1 });
      cleanups.push(() => through.close());
      const dir = await mkdtemp(join(tmpdir(), "objectfs-cache-"));
      cleanups.push(() => rm(dir, { recursive: true, force: true }));
      const a = randomBytes(6 * MIB + 4321);
      await store.put("f.bin", a);
      const ba = await base(store, "f.bin");
      // Spans of 16 chunks of 64 KiB: a cut lands inside a span, after some chunks were served.
      const cache = await ChunkCache.open({ dir, store: through, chunkBytes: 64 * 1024, memoryChunks: 8 });
      proxy.setRules([
        { method: "GET", pathIncludes: "/f.bin", fault: { kind: "truncate", bytes: 300_000 }, probability: 0.5, times: 4 },
        { method: "GET", pathIncludes: "/f.bin", fault: { kind: "reset" }, probability: 0.3, times: 2 },
      ]);
      const got: Buffer[] = [];
      for (let off = 0; off < a.length; off += 200_000) got.push(await read(cache, ba, off, Math.min(200_000, a.length - off)));
      expect(Buffer.concat(got).equals(a)).toBe(true);
      expect(proxy.stats().injected.truncate ?? 0).toBeGreaterThan(0);
      // Again, from memory and disk, and at odd offsets across chunk edges.
      for (const [off, len] of [[0, a.length], [64 * 1024 - 3, 7], [5 * MIB + 1, 70_000], [a.length - 10, 10]] as const) {
        expect((await read(cache, ba, off, len)).equals(a.subarray(off, off + len))).toBe(true);
      }
      await cache.flush(); // chunk files are written behind the reader
      expect(cache.stats.bytes).toBe(a.length);
    }, 60_000);

    test("a view of a chunk is its bytes without a copy, and stays right while held however many chunks pass through", async () => {
      const { store, dir, a, ba } = await withObject(kind, "v.bin", 2 * MIB + 99);
      const cache = await ChunkCache.open({ dir, store, chunkBytes: 64 * 1024, memoryChunks: 2, maxBytes: MIB });
      // Not within one chunk, or past the end: no view (the caller copies with read()).
      expect(await cache.view(ba, 64 * 1024 - 1, 2)).toBeUndefined();
      expect(await cache.view(ba, a.length - 10, 20)).toBeUndefined();
      const whole = (await cache.view(ba, 5 * 64 * 1024, 64 * 1024))!;
      const part = (await cache.view(ba, a.length - 99, 99))!;
      expect(Buffer.from(whole.bytes).equals(a.subarray(5 * 64 * 1024, 6 * 64 * 1024))).toBe(true);
      expect(Buffer.from(part.bytes).equals(a.subarray(a.length - 99))).toBe(true);
      // Every other chunk passes through memory (two chunks) while the views are held.
      for (let off = 0; off < a.length; off += 100_000) {
        const len = Math.min(100_000, a.length - off);
        expect((await read(cache, ba, off, len)).equals(a.subarray(off, off + len))).toBe(true);
      }
      await cache.flush();
      expect(Buffer.from(whole.bytes).equals(a.subarray(5 * 64 * 1024, 6 * 64 * 1024))).toBe(true);
      expect(Buffer.from(part.bytes).equals(a.subarray(a.length - 99))).toBe(true);
      whole.release();
      part.release();
      whole.release(); // a second release changes nothing
      for (let off = 0; off < a.length; off += 64 * 1024) {
        const v = (await cache.view(ba, off, Math.min(64 * 1024, a.length - off)))!;
        expect(Buffer.from(v.bytes).equals(a.subarray(off, off + 64 * 1024))).toBe(true);
        v.release();
      }
    }, 60_000);

    test("many readers at once, with chunk buffers reused and chunks leaving memory and disk, get every byte right", async () => {
      const { store, dir, a, ba } = await withObject(kind, "m.bin", 3 * MIB + 777);
      // Two chunks in memory and 1 MiB on disk: buffers go back to the pool all the time.
      const cache = await ChunkCache.open({ dir, store, chunkBytes: 64 * 1024, memoryChunks: 2, maxBytes: MIB });
      let seed = 12345;
      const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n);
      const random = async () => {
        for (let i = 0; i < 40; i++) {
          const off = rand(a.length);
          const len = 1 + rand(Math.min(300_000, a.length - off));
          const got = await read(cache, ba, off, len);
          if (!got.equals(a.subarray(off, off + len))) throw new Error(`wrong bytes at ${off} (+${len})`);
        }
      };
      const sequential = async () => {
        for (let off = 0; off < a.length; off += 128 * 1024) {
          const len = Math.min(128 * 1024, a.length - off);
          if (!(await read(cache, ba, off, len)).equals(a.subarray(off, off + len))) throw new Error(`wrong bytes at ${off}`);
        }
      };
      await Promise.all([random(), random(), random(), random(), sequential(), sequential()]);
      await cache.flush();
      expect(cache.stats.bytes).toBeLessThanOrEqual(MIB);
      // Each chunk file on disk holds its chunk's bytes (read after a restart, nothing fetched).
      const names = (await readdir(dir)).filter((n) => !n.endsWith(".tmp"));
      expect(names.length).toBeGreaterThan(0);
      const again = await ChunkCache.open({ dir, store, chunkBytes: 64 * 1024, memoryChunks: 2, maxBytes: MIB, maxReadahead: 0 });
      // A file holds one chunk (`ID-INDEX`) or a span of them (`ID-FIRST+COUNT`).
      const chunks = names.flatMap((n) => {
        const [first, count = "1"] = n.slice(n.lastIndexOf("-") + 1).split("+");
        return Array.from({ length: Number(count) }, (_, i) => ({ n, index: Number(first) + i }));
      });
      await Promise.all(
        chunks.map(async ({ n, index }) => {
          const off = index * 64 * 1024;
          const len = Math.min(64 * 1024, a.length - off);
          if (!(await read(again, ba, off, len)).equals(a.subarray(off, off + len))) throw new Error(`wrong bytes of chunk ${index} in ${n}`);
        }),
      );
      expect(again.stats.hits).toBe(chunks.length);
      expect(again.stats.downloadedBytes).toBe(0);
    }, 60_000);
  });
}
