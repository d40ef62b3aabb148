/**
 * Restore and the remote journal reader over many small segments (more than are read ahead
 * and written at once), so that segment buffers are handed back and reused while the
 * restore runs: every file comes out with exactly the bytes the filesystem shows, after
 * writes interleaved across files, overwrites, truncations and deletions; a reader that
 * says how long it holds segment bytes sees buffers reused (never one it holds), and one
 * that does not keeps every event's bytes.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { JournalError, ROOT_INO, type Ino, type JournalEvent } from "../../journal/mod.ts";
import { restoreHistory } from "../../src/audit/restore.ts";
import { Filesystem } from "../../src/fs/filesystem.ts";
import { holdSegmentBytes, journalPrefix, listSegments, readRemoteJournal, SegmentShipper } from "../../src/replicator/segments.ts";
import { makeObjectStore, probeCapabilities, type ObjectStore } from "../../src/s3/mod.ts";
import { createBucket, serverPool, storeConfig } from "../support/s3_servers.ts";
import { readPath, ROOT } from "../support/s3_client.ts";

const servers = serverPool();
const cleanups: (() => Promise<unknown>)[] = [];
let store: ObjectStore;
let fs: Filesystem;
let clientId: string;
const names: string[] = [];

beforeAll(async () => {
  const server = await servers.get("ceph-rgw");
  const bucket = await createBucket(server);
  store = makeObjectStore(storeConfig(server, bucket));
  const dir = await mkdtemp(join(tmpdir(), "objectfs-restore-segments-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  fs = await Filesystem.open(dir);
  clientId = fs.journal.clientId;
  const O_RDWR_CREAT = 0o102;
  const handles: { ino: Ino; fh: number }[] = [];
  for (let f = 0; f < 6; f++) {
    const { attr, fh } = await fs.create(ROOT, ROOT_INO as Ino, `f${f}`, 0o644, O_RDWR_CREAT);
    handles.push({ ino: attr.ino as Ino, fh });
    names.push(`f${f}`);
  }
  // Writes of 5-40 KiB, round robin over the files, some over earlier bytes; some truncations.
  let seed = 7;
  const rand = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
  for (let i = 0; i < 400; i++) {
    const h = handles[i % handles.length]!;
    const size = (await fs.getattr(ROOT, h.ino)).size;
    const offset = rand(4) === 0 ? rand(size + 1) : size;
    await fs.write(ROOT, h.fh, offset, randomBytes(5_000 + rand(35_000)));
    if (rand(25) === 0) await fs.setattr(ROOT, h.ino, { size: rand(size + 1) });
  }
  for (const h of handles) await fs.release(ROOT, h.fh);
  await fs.unlink(ROOT, ROOT_INO as Ino, "f3");
  names.splice(names.indexOf("f3"), 1);
  await fs.journal.sync();
  const shipper = new SegmentShipper({ fs, store, prefix: "", capabilities: () => probeCapabilities(store), maxSegmentBytes: 256 << 10, log: () => {} });
  while (await shipper.shipOne(fs.journal.head));
  expect(shipper.totals.segments).toBeGreaterThan(25);
}, 120_000);

afterAll(async () => {
  await fs?.close();
  store?.close();
  for (const c of cleanups.reverse()) await c().catch(() => {});
  await servers.stopAll();
}, 60_000);

describe("restore over many segments", () => {
  test("a reader that says how long it holds segment bytes gets buffers reused, and never while it holds them", async () => {
    const seen = new Set<ArrayBufferLike>();
    const checks: Promise<void>[] = [];
    let reused = 0;
    let checked = 0;
    let n = 0;
    for await (const e of readRemoteJournal(store, "", clientId)) {
      if (e.type !== "ExtentWritten" || !e.data) continue;
      expect(crc32(e.data)).toBe(e.crc);
      checked++;
      if (seen.has(e.data.buffer) && e.data.buffer.byteLength >= 256 << 10) reused++;
      seen.add(e.data.buffer);
      const done = holdSegmentBytes(e.data);
      if (n++ % 3 !== 0) {
        done();
        continue;
      }
      // Every third event's bytes are held for a while (as a write would), then checked unchanged.
      const copy = Buffer.from(e.data);
      checks.push(
        Bun.sleep(n % 5).then(() => {
          const same = Buffer.from(e.data!).equals(copy);
          done();
          if (!same) throw new Error(`the bytes of event ${e.seq} changed while they were held`);
        }),
      );
    }
    await Promise.all(checks);
    expect(checked).toBeGreaterThanOrEqual(400);
    expect(reused).toBeGreaterThan(10);
  }, 60_000);

  test("a reader that never says how long it holds segment bytes keeps every event's bytes to the end", async () => {
    const kept: JournalEvent[] = [];
    for await (const e of readRemoteJournal(store, "", clientId)) if (e.type === "ExtentWritten" && e.data) kept.push(e);
    expect(kept.length).toBeGreaterThanOrEqual(400);
    for (const e of kept) if (e.type === "ExtentWritten") expect(crc32(e.data!)).toBe(e.crc);
  }, 60_000);

  test("read early, the journal gives the same events with the same bytes as read segment by segment", async () => {
    const whole: [number, number][] = [];
    for await (const e of readRemoteJournal(store, "", clientId)) whole.push([e.seq, e.type === "ExtentWritten" && e.data ? crc32(e.data) : -1]);
    const early: [number, number][] = [];
    for await (const e of readRemoteJournal(store, "", clientId, { early: true })) {
      early.push([e.seq, e.type === "ExtentWritten" && e.data ? crc32(e.data) : -1]);
      if (e.type === "ExtentWritten" && e.data) holdSegmentBytes(e.data)();
    }
    expect(early.length).toBeGreaterThan(400);
    expect(early).toEqual(whole);
  }, 60_000);

  test("a segment damaged where only its whole checksum shows it: a restore fails, names it, and leaves nothing", async () => {
    // A copy of the journal under another prefix, one segment in the middle damaged in its trailer (the state checksum slot).
    const from = journalPrefix("", clientId);
    const to = journalPrefix("damaged/", clientId);
    const segs = await listSegments(store, "", clientId);
    for (const seg of segs) await store.copy(seg.key, to + seg.key.slice(from.length));
    const victim = segs[Math.floor(segs.length / 2)]!;
    const bytes = Buffer.from((await store.get(victim.key)).bytes);
    bytes[bytes.length - 10]! ^= 0x01;
    const victimKey = to + victim.key.slice(from.length);
    await store.put(victimKey, bytes);
    let highest = 0;
    const into = join(await mkdtemp(join(tmpdir(), "objectfs-restore-segments-bad-")), "t");
    cleanups.push(() => rm(join(into, ".."), { recursive: true, force: true }));
    const events = async function* (o?: { early?: boolean }) {
      for await (const e of readRemoteJournal(store, "damaged/", clientId, { early: o?.early ?? false })) {
        highest = Math.max(highest, e.seq);
        yield e;
      }
    };
    const failure = await restoreHistory({ events }, undefined, into).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(failure).toBeInstanceOf(JournalError);
    expect((failure as Error).message).toContain(victimKey);
    expect((failure as { lastGoodSeq?: number }).lastGoodSeq).toBe(victim.minSeq - 1);
    expect(highest).toBeGreaterThan(victim.minSeq - 1); // its events were handed out before its checksum could be checked
    expect(await readdir(join(into, ".."))).toEqual([]); // nothing left: DIR, which it made, is gone
  }, 60_000);

  test("restore from the segments alone gives every file the bytes the filesystem shows", async () => {
    const into = join(await mkdtemp(join(tmpdir(), "objectfs-restore-segments-into-")), "t");
    cleanups.push(() => rm(join(into, ".."), { recursive: true, force: true }));
    const done = await restoreHistory({ events: () => readRemoteJournal(store, "", clientId) }, undefined, into);
    expect(done.bytes).toBeGreaterThan(400 * 5_000);
    expect((await readdir(into)).sort()).toEqual([...names].sort());
    for (const name of names) {
      const want = Buffer.from(await readPath(fs, name));
      const got = await readFile(join(into, name));
      expect(got.length).toBe(want.length);
      expect(got.equals(want)).toBe(true);
    }
  }, 60_000);
});
