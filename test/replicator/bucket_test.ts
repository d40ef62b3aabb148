/**
 * S3 backing without FUSE, against both real servers: an existing bucket appears as a tree;
 * local changes become plain objects (checked with an independent client) and segments; a
 * second client sees the same tree; two writers of one file keep both versions; a corrupted
 * segment is named and refused.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { makeObjectStore, type ObjectStore } from "../../src/s3/mod.ts";
import { readRemoteJournal, journalPrefix } from "../../src/replicator/mod.ts";
import { createBucket, S3_SERVER_KINDS, serverPool, storeConfig, type S3Server } from "../support/s3_servers.ts";
import { list, minioFor, minioGet, openClient, readPath, removeClient, resolvePath, ROOT, writePath, type Client } from "../support/s3_client.ts";

const servers = serverPool();
const serverFor = servers.get;
const clients: Client[] = [];
const stores: ObjectStore[] = [];

beforeAll(async () => {
  await servers.startAll();
}, 60_000);

afterAll(async () => {
  for (const c of clients.splice(0)) await removeClient(c);
  for (const s of stores.splice(0)) s.close();
  await servers.stopAll();
}, 60_000);

async function client(server: S3Server, bucket: string, prefix = "", options = {}): Promise<Client> {
  const c = await openClient(server, bucket, prefix, options);
  clients.push(c);
  return c;
}

async function bucketStore(server: S3Server): Promise<{ bucket: string; store: ObjectStore }> {
  const bucket = await createBucket(server);
  const store = makeObjectStore(storeConfig(server, bucket));
  stores.push(store);
  return { bucket, store };
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

for (const kind of S3_SERVER_KINDS) {
  describe(`${kind}`, () => {
    test("an existing bucket mounts as a tree: nested prefixes, 2,100 keys in one directory, metadata, hostile keys hidden", async () => {
      const server = await serverFor(kind);
      const { bucket, store } = await bucketStore(server);
      const put = (key: string, body: string, metadata?: Record<string, string>) => store.put(key, body, metadata ? { metadata } : {});
      await put("top.txt", "top", { mode: String(0o100600), uid: "1000", gid: "1001", mtime: "1700000000.5" });
      await put("a/b/c/deep.txt", "deep");
      await put("a/sibling", "s");
      await put("link", "top.txt", { mode: String(0o120777) });
      const many: string[] = [];
      for (let i = 0; i < 2100; i++) many.push(`many/f${String(i).padStart(5, "0")}`);
      for (let i = 0; i < many.length; i += 100) await Promise.all(many.slice(i, i + 100).map((k) => put(k, k)));
      // Keys that cannot be names: never visible, reported. (s3rver stores each object as a
      // file named after its key, so it can hold neither "..", "//" nor 300-byte keys.)
      // Nor does it list "dup" and "dup/inside" in key order, so that case is RGW's alone.
      const hostile = kind === "ceph-rgw" ? ["bad/../escape", "bad//double", "n".repeat(300), "dup", "dup/inside"] : ["bad/x", "dup/inside"];
      for (const k of hostile) await put(k, "x");

      const c = await client(server, bucket);
      expect(await list(c.fs, "")).toEqual(["a", "bad", "dup", "link", "many", "top.txt"]);
      if (kind === "s3rver") expect(await list(c.fs, "bad")).toEqual(["x"]);
      else expect(await list(c.fs, "bad")).toEqual([]);
      expect(await list(c.fs, "a")).toEqual(["b", "sibling"]);
      expect(text(await readPath(c.fs, "a/b/c/deep.txt"))).toBe("deep");
      const top = await c.fs.getattr(ROOT, await resolvePath(c.fs, "top.txt"));
      expect({ mode: top.mode, uid: top.uid, gid: top.gid, mtime: top.mtime, size: top.size }).toEqual({ mode: 0o100600, uid: 1000, gid: 1001, mtime: 1700000000500, size: 3 });
      expect(await c.fs.readlink(ROOT, await resolvePath(c.fs, "link"))).toBe("top.txt");
      const names = await list(c.fs, "many");
      expect(names.length).toBe(2100);
      expect(names).toEqual(many.map((k) => k.slice(5)));
      expect(text(await readPath(c.fs, "many/f02099"))).toBe("many/f02099");
      expect(await list(c.fs, "dup")).toEqual(["inside"]);
      const skipped = c.fs.syncState.skipped.map((s) => s.key).sort();
      expect(skipped).toEqual((kind === "ceph-rgw" ? ["bad//", "bad/../", "dup", "n".repeat(300)] : []).sort());
      // Nothing local changed: nothing is written back.
      await c.replication.sync({ timeoutMs: 30_000 });
      expect(c.replication.materializer.totals.put).toBe(0);
    }, 120_000);

    test("write, sync: plain objects with bytes and metadata for an independent client, segments in S3, a second client sees the same tree", async () => {
      const server = await serverFor(kind);
      const { bucket, store } = await bucketStore(server);
      await store.put("data/existing.txt", "old bytes");
      const a = await client(server, bucket, "data/");
      const big = randomBytes(20 * 1024 * 1024 + 12345);
      await writePath(a.fs, "hello.txt", "hello world", 0o640);
      await a.fs.mkdir(ROOT, 1 as never, "empty", 0o750);
      await a.fs.mkdir(ROOT, 1 as never, "sub", 0o755);
      await writePath(a.fs, "sub/big.bin", big);
      await a.fs.symlink(ROOT, 1 as never, "ln", "hello.txt");
      await a.fs.rename(ROOT, 1 as never, "existing.txt", 1 as never, "renamed.txt");
      await a.replication.sync({ timeoutMs: 60_000 });

      const m = minioFor(server);
      const hello = await minioGet(m, bucket, "data/hello.txt");
      expect(hello.bytes.toString()).toBe("hello world");
      expect(Number(hello.meta.mode)).toBe(0o100640);
      expect((await minioGet(m, bucket, "data/sub/big.bin")).bytes.equals(big)).toBe(true);
      expect((await minioGet(m, bucket, "data/ln")).bytes.toString()).toBe("hello.txt");
      expect(Number((await minioGet(m, bucket, "data/empty/")).meta.mode)).toBe(0o40750);
      expect((await minioGet(m, bucket, "data/renamed.txt")).bytes.toString()).toBe("old bytes");
      expect(await store.head("data/existing.txt")).toBeUndefined();
      // The rename was a server-side copy: its bytes did not cross the network again.
      expect(a.replication.materializer.totals.copied).toBeGreaterThanOrEqual(1);
      // Where the server copies parts, the big file was assembled from its journal segment.
      const totals = a.replication.materializer.totals;
      if (kind === "ceph-rgw") {
        expect(totals.copiedBytes).toBeGreaterThanOrEqual(big.length);
        expect(totals.uploadedBytes).toBeLessThan(1024 * 1024);
      } else expect(totals.uploadedBytes).toBeGreaterThanOrEqual(big.length);

      const segments: string[] = [];
      for await (const e of store.list({ prefix: journalPrefix("data/", a.fs.journal.clientId) })) if (e.kind === "object") segments.push(e.key);
      expect(segments.length).toBeGreaterThan(0);
      const events = [];
      for await (const e of readRemoteJournal(store, "data/", a.fs.journal.clientId)) events.push(e);
      expect(events.some((e) => e.type === "ExtentWritten")).toBe(true);
      expect(events.map((e) => e.seq as number)).toEqual(events.map((_, i) => i + 1));

      const b = await client(server, bucket, "data/");
      expect(await list(b.fs, "")).toEqual(["empty", "hello.txt", "ln", "renamed.txt", "sub"]);
      expect(text(await readPath(b.fs, "hello.txt"))).toBe("hello world");
      expect((await b.fs.getattr(ROOT, await resolvePath(b.fs, "hello.txt"))).mode).toBe(0o100640);
      expect((await b.fs.getattr(ROOT, await resolvePath(b.fs, "empty"))).mode).toBe(0o40750);
      expect(Buffer.from(await readPath(b.fs, "sub/big.bin")).equals(big)).toBe(true);
      expect(await b.fs.readlink(ROOT, await resolvePath(b.fs, "ln"))).toBe("hello.txt");

      // Deletes and a partial overwrite of a remote file travel too.
      await a.fs.unlink(ROOT, 1 as never, "hello.txt");
      const fh = await b.fs.open(ROOT, await resolvePath(b.fs, "sub/big.bin"), 2);
      await b.fs.write(ROOT, fh, 1000, new TextEncoder().encode("PATCH"));
      await b.fs.release(ROOT, fh);
      await a.replication.sync({ timeoutMs: 60_000 });
      await b.replication.sync({ timeoutMs: 60_000 });
      expect(await store.head("data/hello.txt")).toBeUndefined();
      const patched = Buffer.from(big);
      patched.write("PATCH", 1000);
      expect((await minioGet(m, bucket, "data/sub/big.bin")).bytes.equals(patched)).toBe(true);
      expect([...a.logs, ...b.logs].filter((l) => l.includes("conflict"))).toEqual([]);
      const report = await a.fs.fsck();
      expect(report.differences).toEqual([]);
    }, 180_000);

    test("two clients writing the same file keep both versions: a conflict copy, never a lost update", async () => {
      const server = await serverFor(kind);
      const { bucket, store } = await bucketStore(server);
      await store.put("shared.txt", "v0");
      const a = await client(server, bucket);
      const b = await client(server, bucket);
      expect(text(await readPath(a.fs, "shared.txt"))).toBe("v0");
      expect(text(await readPath(b.fs, "shared.txt"))).toBe("v0");
      await writePath(a.fs, "shared.txt", "from A");
      await a.replication.sync({ timeoutMs: 30_000 });
      await writePath(b.fs, "shared.txt", "from B");
      await b.replication.sync({ timeoutMs: 30_000 });
      expect(text((await store.get("shared.txt")).bytes)).toBe("from A");
      const keys: string[] = [];
      for await (const e of store.list({})) if (e.kind === "object" && !e.key.startsWith(".objectfs/")) keys.push(e.key);
      const conflict = keys.find((k) => k.startsWith("shared.txt.conflict-"));
      expect(conflict).toBeDefined();
      expect(text((await store.get(conflict!)).bytes)).toBe("from B");
      expect(b.fs.syncState.conflicts).toBe(1);
      // B's tree holds both too.
      expect(text(await readPath(b.fs, "shared.txt"))).toBe("from A");
      expect(text(await readPath(b.fs, conflict!))).toBe("from B");
    }, 120_000);

    test("a new client takes attributes from the first client's snapshot instead of a HEAD per object, and never from a stale one", async () => {
      const server = await serverFor(kind);
      const { bucket, store } = await bucketStore(server);
      const a = await client(server, bucket);
      await a.fs.mkdir(ROOT, 1 as never, "d", 0o700);
      const d = await resolvePath(a.fs, "d");
      for (let i = 0; i < 150; i++) await writePath(a.fs, `d/f${i}`, `file ${i}`, 0o600 + (i % 8));
      await a.fs.symlink(ROOT, d, "ln", "f1");
      await a.replication.sync({ timeoutMs: 60_000 });
      const snap = `.objectfs/snapshots/${a.fs.journal.clientId}.snap`;
      for (let i = 0; i < 100 && !(await store.head(snap)); i++) await Bun.sleep(100);
      expect(await store.head(snap)).toBeDefined();
      // Changed by someone else after the snapshot: its attributes must come from S3.
      await store.put("d/f7", "changed", { metadata: { mode: String(0o100644) } });

      const b = await client(server, bucket);
      expect(await list(b.fs, "d")).toEqual(await list(a.fs, "d"));
      const counts = b.remote.source.counts;
      expect(counts.vouched).toBeGreaterThanOrEqual(150);
      expect(counts.heads).toBeLessThanOrEqual(3);
      for (const i of [0, 3, 149]) {
        const at = await b.fs.getattr(ROOT, await resolvePath(b.fs, `d/f${i}`));
        expect(at.mode).toBe(0o100600 + (i % 8));
      }
      expect((await b.fs.getattr(ROOT, await resolvePath(b.fs, "d"))).mode).toBe(0o40700);
      expect(await b.fs.readlink(ROOT, await resolvePath(b.fs, "d/ln"))).toBe("f1");
      expect((await b.fs.getattr(ROOT, await resolvePath(b.fs, "d/f7"))).mode).toBe(0o100644);
      expect(text(await readPath(b.fs, "d/f7"))).toBe("changed");
    }, 120_000);

    test("a corrupted segment is detected, named, and nothing from it is applied", async () => {
      const server = await serverFor(kind);
      const { bucket, store } = await bucketStore(server);
      const a = await client(server, bucket);
      await writePath(a.fs, "one.txt", "1");
      await a.replication.sync({ timeoutMs: 30_000 });
      await writePath(a.fs, "two.txt", "2");
      await a.replication.sync({ timeoutMs: 30_000 });
      const keys: string[] = [];
      for await (const e of store.list({ prefix: journalPrefix("", a.fs.journal.clientId) })) if (e.kind === "object") keys.push(e.key);
      expect(keys.length).toBeGreaterThanOrEqual(2);
      const victim = keys.sort()[1]!;
      const bytes = Buffer.from((await store.get(victim)).bytes);
      bytes[Math.floor(bytes.length / 2)]! ^= 0x40;
      await store.put(victim, bytes);
      const seen: number[] = [];
      let error: Error | undefined;
      try {
        for await (const e of readRemoteJournal(store, "", a.fs.journal.clientId)) seen.push(e.seq);
      } catch (e) {
        error = e as Error;
      }
      expect(error?.message).toContain(victim);
      expect(error?.message).toMatch(/corrupt/);
      const firstBad = Number.parseInt(victim.slice(-37, -21), 16);
      expect(seen.every((s) => s < firstBad)).toBe(true);
    }, 120_000);
  });
}
