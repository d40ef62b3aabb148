import { afterEach, describe, expect, test } from "bun:test";
import { appendFile, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Level } from "level";
import { asIno, Journal, JournalError, type JournalEvent, type NewEvent } from "../../journal/mod.ts";

const dirs: string[] = [];
async function freshDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), "objectfs-journal-"));
  dirs.push(d);
  return d;
}
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

const dropped = (ino: number): NewEvent => ({ type: "InodeDropped", ino: asIno(ino) });
const written = (ino: number, data: Uint8Array, offset = 0): NewEvent => ({ type: "ExtentWritten", ino: asIno(ino), offset, length: data.length, crc: 0, data });
/** LevelDB rows holding events (closed journals only). */
async function eventRows(dir: string): Promise<number> {
  const db = new Level<Buffer, Buffer>(join(dir, "journal"), { keyEncoding: "buffer", valueEncoding: "buffer" });
  let n = 0;
  for await (const _ of db.keys({ gte: Buffer.from("!e!"), lt: Buffer.from("!e\""), keyEncoding: "buffer" } as never)) n++;
  await db.close();
  return n;
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describe("journal store", () => {
  test("appends get consecutive seqs and read back by range, forward and reverse", async () => {
    const j = await Journal.open(await freshDir());
    for (let i = 1; i <= 50; i++) await j.append([dropped(i)]);
    expect(j.head as number).toBe(50);
    const mid = await collect(j.read({ gte: 10, lte: 20 }));
    expect(mid.map((e) => e.seq as number)).toEqual(Array.from({ length: 11 }, (_, i) => 10 + i));
    expect(mid.map((e) => (e as { ino: number }).ino)).toEqual(Array.from({ length: 11 }, (_, i) => 10 + i));
    const last3 = await collect(j.read({ reverse: true, limit: 3 }));
    expect(last3.map((e) => e.seq as number)).toEqual([50, 49, 48]);
    expect((await j.get(7))?.type).toBe("InodeDropped");
    expect(await j.get(51)).toBeUndefined();
    await j.close();
  });

  test("readBatches gives the same events as read, in bounded batches, across group rows cut by the range, and only the selected", async () => {
    const dir = await freshDir();
    const j = await Journal.open(dir);
    // Large groups (one append of 6,000 events: rows of up to 1,024) and single-event rows,
    // more of them than a scan reads from LevelDB at once.
    await j.append(Array.from({ length: 6000 }, (_, i) => dropped(i + 1)));
    for (let i = 0; i < 1300; i++) await j.append([i % 2 ? dropped(7000 + i) : written(5, new Uint8Array([i & 0xff]), i)]);
    await j.close();
    const again = await Journal.open(dir);
    try {
      for (const [gte, lte] of [[undefined, undefined], [1500, 2600], [1, 1], [5990, 6150], [6299, 7000], [7000, 9000], [6500, 7299]] as const) {
        const want = (await collect(again.read({ ...(gte !== undefined ? { gte } : {}), ...(lte !== undefined ? { lte } : {}) }))).map((e) => e.seq);
        const batches = await collect(again.readBatches({ ...(gte !== undefined ? { gte } : {}), ...(lte !== undefined ? { lte } : {}) }));
        expect(batches.flat().map((e) => e.seq)).toEqual(want);
        for (const b of batches) expect(b.length).toBeLessThanOrEqual(4096 + 1024);
      }
      const picked = (await collect(again.readBatches({ gte: 5000, select: (h) => h.type === "ExtentWritten" }))).flat();
      expect(picked.map((e) => e.seq as number)).toEqual(Array.from({ length: 650 }, (_, i) => 6001 + 2 * i));
      expect(picked.every((e) => e.type === "ExtentWritten")).toBe(true);
    } finally {
      await again.close();
    }
  });

  test("events and their data survive a reopen, and the bytes live in the data log, not LevelDB", async () => {
    const dir = await freshDir();
    let j = await Journal.open(dir);
    const blob = new Uint8Array(256 * 1024).map((_, i) => (i * 7) & 0xff);
    const [ev] = await j.append([written(9, blob, 4096)], { sync: true });
    expect(ev!.type === "ExtentWritten" && ev.ref).toEqual({ file: 0, pos: 0 });
    await j.close();
    expect((await stat(join(dir, "data", "00000000.dat"))).size).toBe(blob.length);
    j = await Journal.open(dir);
    expect(j.head as number).toBe(1);
    const [back] = await collect(j.read({ data: true }));
    expect(back!.type).toBe("ExtentWritten");
    if (back!.type !== "ExtentWritten") throw new Error("unreachable");
    expect(back.offset).toBe(4096);
    expect(Buffer.from(back.data!).equals(Buffer.from(blob))).toBe(true);
    const slice = await j.readData(back, 1000, 10);
    expect(Array.from(slice)).toEqual(Array.from(blob.subarray(1000, 1010)));
    await j.close();
  });

  test("projection rows are written in the same batch as their events", async () => {
    const dir = await freshDir();
    let j = await Journal.open(dir);
    let rows = j.sublevel("t");
    await j.append([dropped(1), dropped(2)], {
      project: (events) => events.map((e) => ({ type: "put", sublevel: rows, key: Buffer.from(`k${e.seq}`), value: Buffer.from(e.type) })),
    });
    expect((await rows.get(Buffer.from("k2")))?.toString()).toBe("InodeDropped");
    await j.close();
    j = await Journal.open(dir);
    rows = j.sublevel("t");
    expect((await rows.get(Buffer.from("k1")))?.toString()).toBe("InodeDropped");
    await j.close();
  });

  test("64 concurrent appenders are group-committed into fewer synced batches, nothing lost", async () => {
    const j = await Journal.open(await freshDir());
    const before = { ...j.stats };
    const results = await Promise.all(
      Array.from({ length: 64 }, async (_, w) => {
        const seqs: number[] = [];
        for (let i = 0; i < 20; i++) {
          const [e] = await j.append([w % 2 ? dropped(w * 1000 + i) : written(w * 1000 + i, new Uint8Array(4096).fill(w))], { sync: true });
          seqs.push(e!.seq as number);
        }
        return seqs;
      }),
    );
    const all = results.flat().sort((a, b) => a - b);
    expect(all).toEqual(Array.from({ length: 64 * 20 }, (_, i) => i + 1));
    const commits = j.stats.syncedCommits - before.syncedCommits;
    expect(j.stats.appends - before.appends).toBe(64 * 20);
    expect(commits).toBeLessThan(64 * 20 / 4);
    expect(j.durable as number).toBe(64 * 20);
    for (const r of results) for (let i = 1; i < r.length; i++) expect(r[i]!).toBeGreaterThan(r[i - 1]!);
    await j.close();
  });

  test("syncTo waits for a synced commit under way that holds the seq, and for nothing once it is durable", async () => {
    const j = await Journal.open(await freshDir());
    await j.append([dropped(1)]);
    const before = j.stats.syncedCommits;
    const first = j.append([written(2, new Uint8Array(4096).fill(2))], { sync: true });
    await new Promise<void>((r) => setImmediate(r)); // the commit holding it is now being written
    const seq = j.staged as number;
    const waiting = j.syncTo(seq);
    await Promise.all([first, waiting]);
    expect(j.durable as number).toBeGreaterThanOrEqual(seq);
    expect(j.stats.syncedCommits - before).toBe(1); // no second sync queued behind the first
    await j.syncTo(seq);
    expect(j.stats.syncedCommits - before).toBe(1);
    // A later unsynced append needs a synced commit of its own.
    await j.append([dropped(3)]);
    await j.syncTo(j.staged);
    expect(j.stats.syncedCommits - before).toBe(2);
    expect(j.durable).toBe(j.staged);
    await j.close();
  });

  test("tail yields what is committed, then new events as they commit, until aborted", async () => {
    const j = await Journal.open(await freshDir());
    await j.append([dropped(1), dropped(2)]);
    const ac = new AbortController();
    const seen: JournalEvent[] = [];
    const done = (async () => {
      for await (const e of j.tail(2, { signal: ac.signal })) {
        seen.push(e);
        if (seen.length === 3) ac.abort();
      }
    })();
    await j.append([dropped(3)]);
    await Bun.sleep(10);
    await j.append([dropped(4), dropped(5)]);
    await done;
    expect(seen.map((e) => e.seq as number)).toEqual([2, 3, 4]);
    await j.close();
  });

  test("retention deletes events before a seq and keeps the rest", async () => {
    const j = await Journal.open(await freshDir());
    for (let i = 0; i < 10; i++) await j.append([dropped(i)]);
    await j.deleteBefore(6);
    expect((await j.firstSeq()) as number).toBe(6);
    expect((await collect(j.read())).map((e) => e.seq as number)).toEqual([6, 7, 8, 9, 10]);
    await j.append([dropped(11)]);
    expect(j.head as number).toBe(11);
    await j.close();
  });

  test("events committed together are stored as one row, and each reads back by seq, by range in both directions and after a reopen", async () => {
    const dir = await freshDir();
    let j = await Journal.open(dir);
    // Rows of single events (as every row was before groups), then groups of many.
    for (let i = 1; i <= 5; i++) await j.append([dropped(i)]);
    const appends: Promise<unknown>[] = [];
    for (let i = 6; i <= 2500; i++) appends.push(j.append([i % 7 === 0 ? written(i, new Uint8Array(10).fill(i & 0xff)) : dropped(i)]));
    await Promise.all(appends);
    await j.close();
    const rows = await eventRows(dir);
    expect(rows).toBeLessThan(100);
    expect(rows).toBeGreaterThan(5); // groups are cut at GROUP_EVENTS and GROUP_BYTES
    j = await Journal.open(dir);
    expect(j.head as number).toBe(2500);
    const all = await collect(j.read({ data: true }));
    expect(all.map((e) => e.seq as number)).toEqual(Array.from({ length: 2500 }, (_, i) => i + 1));
    expect(all.map((e) => (e as { ino: number }).ino)).toEqual(Array.from({ length: 2500 }, (_, i) => i + 1));
    for (const e of all) if (e.type === "ExtentWritten") expect(e.data![0]).toBe(e.seq & 0xff);
    for (const seq of [1, 5, 6, 7, 1029, 1030, 2499, 2500]) expect((await j.get(seq))?.seq as number | undefined).toBe(seq);
    expect(await j.get(2501)).toBeUndefined();
    expect(await j.get(0)).toBeUndefined();
    const seqs = async (o: Parameters<Journal["read"]>[0]) => (await collect(j.read(o))).map((e) => e.seq as number);
    expect(await seqs({ gte: 1020, lte: 1040 })).toEqual(Array.from({ length: 21 }, (_, i) => 1020 + i));
    expect(await seqs({ gte: 4, lte: 8 })).toEqual([4, 5, 6, 7, 8]);
    expect(await seqs({ gte: 1020, lte: 1040, reverse: true, limit: 4 })).toEqual([1040, 1039, 1038, 1037]);
    expect(await seqs({ lte: 7, reverse: true })).toEqual([7, 6, 5, 4, 3, 2, 1]);
    expect(await seqs({ gte: 2498, reverse: true })).toEqual([2500, 2499, 2498]);
    expect(await seqs({ gte: 1500, limit: 3 })).toEqual([1500, 1501, 1502]);
    expect(await seqs({ gte: 3000 })).toEqual([]);
    await j.close();
  });

  test("retention inside a group keeps exactly the events from the given seq on", async () => {
    const dir = await freshDir();
    const j = await Journal.open(dir);
    await j.append(Array.from({ length: 10 }, (_, i) => dropped(i + 1)));
    await j.append(Array.from({ length: 10 }, (_, i) => dropped(i + 11)));
    await j.deleteBefore(14);
    expect((await j.firstSeq()) as number).toBe(14);
    expect((await collect(j.read())).map((e) => e.seq as number)).toEqual([14, 15, 16, 17, 18, 19, 20]);
    expect(await j.get(13)).toBeUndefined();
    expect((await j.get(14))?.seq as number | undefined).toBe(14);
    await j.close();
  });

  test("data written behind its appends reads back right at every moment: staged, in flight, in the file, across data files", async () => {
    const dir = await freshDir();
    let j = await Journal.open(dir, { dataFileBytes: 3 << 20 });
    const blob = (i: number) => new Uint8Array(100_000 + (i % 7) * 1000).map((_, k) => (i * 31 + k) & 0xff);
    const evs: JournalEvent[] = [];
    const reads: Promise<void>[] = [];
    const check = async (e: JournalEvent, i: number) => {
      if (e.type !== "ExtentWritten") throw new Error("unreachable");
      const got = await j.readData(e, 0, e.length);
      expect(Buffer.from(got).equals(Buffer.from(blob(i)))).toBe(true);
    };
    const appends: Promise<unknown>[] = [];
    for (let i = 0; i < 120; i++) {
      appends.push(
        j.append([written(1, blob(i), i)], {
          project: ([e]) => {
            evs[i] = e!;
            return [];
          },
        }),
      );
      // Read back at once (staged, its write perhaps started) and again once it committed.
      reads.push(check(evs[i]!, i), appends[i]!.then(() => check(evs[i]!, i)));
      if (i % 10 === 9) await Bun.sleep(0);
    }
    await Promise.all([...appends, ...reads]);
    for (let i = 0; i < 120; i++) await check(evs[i]!, i);
    expect(new Set(evs.map((e) => (e as { ref: { file: number } }).ref.file)).size).toBeGreaterThan(2);
    await j.close();
    j = await Journal.open(dir);
    const back = await collect(j.read({ data: true }));
    expect(back.length).toBe(120);
    back.forEach((e, i) => expect(Buffer.from((e as { data: Uint8Array }).data).equals(Buffer.from(blob(i)))).toBe(true));
    await j.close();
  });

  test("a second open of the same directory is refused with a clear message", async () => {
    const dir = await freshDir();
    const j = await Journal.open(dir);
    try {
      await Journal.open(dir);
      throw new Error("opened twice");
    } catch (e) {
      expect(e).toBeInstanceOf(JournalError);
      expect((e as JournalError).reason).toBe("locked");
      expect((e as Error).message).toContain("in use by another process");
    }
    await j.close();
  });

  test("data log bytes of a commit that never happened are cut off on reopen", async () => {
    const dir = await freshDir();
    let j = await Journal.open(dir);
    await j.append([written(1, new Uint8Array(100).fill(1))], { sync: true });
    await j.close();
    await appendFile(join(dir, "data", "00000000.dat"), new Uint8Array(50).fill(9));
    await appendFile(join(dir, "data", "00000001.dat"), new Uint8Array(50).fill(9));
    j = await Journal.open(dir);
    expect((await stat(join(dir, "data", "00000000.dat"))).size).toBe(100);
    expect(await readdir(join(dir, "data"))).toEqual(["00000000.dat"]);
    const [e] = await j.append([written(1, new Uint8Array(10).fill(2))]);
    expect(e!.type === "ExtentWritten" && e.ref).toEqual({ file: 0, pos: 100 });
    await j.close();
  });

  test("the data log rolls over to a new file at its size limit", async () => {
    const dir = await freshDir();
    const j = await Journal.open(dir, { dataFileBytes: 1000 });
    const evs = await j.append([written(1, new Uint8Array(600)), written(1, new Uint8Array(600)), written(1, new Uint8Array(300))]);
    expect(evs.map((e) => e.type === "ExtentWritten" && e.ref)).toEqual([
      { file: 0, pos: 0 },
      { file: 1, pos: 0 },
      { file: 1, pos: 600 },
    ]);
    const back = await collect(j.read({ data: true }));
    expect(back.map((e) => e.type === "ExtentWritten" && e.data!.length)).toEqual([600, 600, 300]);
    await j.close();
  });

  test("a damaged data log is named when its data is read", async () => {
    const dir = await freshDir();
    const j = await Journal.open(dir);
    await j.append([written(1, new Uint8Array(64).fill(5))], { sync: true });
    const fh = await (await import("node:fs/promises")).open(join(dir, "data", "00000000.dat"), "r+");
    await fh.write(new Uint8Array([6]), 0, 1, 10);
    await fh.close();
    await expect(collect(j.read({ data: true }))).rejects.toThrow(/fails its checksum/);
    await j.close();
  });
});
