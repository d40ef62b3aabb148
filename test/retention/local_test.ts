/**
 * Retention of a data directory: after a pass, every point in the data window replays to the
 * tree it had, older points are refused with the oldest restorable one named, events older
 * than the events window are gone (but the carriers of live bytes), bytes of overwritten and
 * deleted files in the past are dropped and their space reclaimed, fsck stays clean, and the
 * tree now is untouched, also after a reopen and a second pass.
 */
import { afterAll, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT_INO, type Ino } from "../../journal/mod.ts";
import { stateAt } from "../../src/audit/time_travel.ts";
import type { Filesystem as FsType } from "../../src/fs/filesystem.ts";
import { backingOf, Filesystem } from "../../src/fs/filesystem.ts";
import { localCheckpoint, type History } from "../../src/retention/history.ts";
import { finishInterruptedPass, retainLocal } from "../../src/retention/retention.ts";

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
const tmp = async () => {
  const d = await mkdtemp(join(tmpdir(), "objectfs-retention-"));
  dirs.push(d);
  return d;
};

const root = { uid: 0, gid: 0, pid: 1 };
const O_RDWR_CREAT = 0o102;

/** Paths, kinds, modes, sizes, nlinks, link targets and content hashes of a tree. */
async function snapshot(fs: FsType): Promise<string> {
  const lines: string[] = [];
  for await (const e of fs.walk()) {
    const i = e.inode;
    let hash = "";
    if (i.kind === "file") {
      const view = (await fs.view(i.ino))!;
      hash = createHash("sha256").update(await fs.readView(view, 0, i.size)).digest("hex").slice(0, 16);
    }
    lines.push(`${e.path} ${i.kind} ${(i.mode & 0o7777).toString(8)} ${i.size} ${i.nlink} ${i.target ?? ""} ${hash}`);
  }
  return lines.sort().join("\n");
}

async function put(fs: FsType, parent: Ino, name: string, data: Uint8Array, offset = 0): Promise<Ino> {
  let ino: Ino;
  let fh: number;
  try {
    const a = await fs.lookup(root, parent, name);
    ino = a.ino as Ino;
    fh = await fs.open(root, ino, 2);
  } catch {
    const c = await fs.create(root, parent, name, 0o644, O_RDWR_CREAT);
    ino = c.attr.ino as Ino;
    fh = c.fh;
  }
  await fs.write(root, fh, offset, data);
  await fs.release(root, fh);
  return ino;
}

async function dataBytesOnDisk(dir: string): Promise<number> {
  let n = 0;
  for (const f of await readdir(join(dir, "data"))) if (f.endsWith(".dat")) n += (await stat(join(dir, "data", f))).blocks * 512;
  return n;
}

async function committed(fs: FsType): Promise<number> {
  await fs.journal.flushed();
  return fs.journal.head;
}

const history = async (fs: FsType): Promise<History> => {
  const checkpoint = await localCheckpoint(fs.journal.dir);
  return { ...(checkpoint ? { checkpoint } : {}), events: () => fs.journal.read({ data: true }) };
};

async function pastTree(fs: FsType, seq: number): Promise<string> {
  const past = await stateAt(await history(fs), { seq }, await tmp());
  try {
    return await snapshot(past.fs);
  } finally {
    await past.close();
  }
}

test("a retention pass keeps every point of the data window, drops older bytes and events, and reclaims their space", async () => {
  const dir = await tmp();
  let fs = await Filesystem.open(dir, { dataFileBytes: 1 << 20 });
  const MiB = 1 << 20;
  // Phase A: a directory, a big file, two small ones, a symlink, a hard link.
  const d = (await fs.mkdir(root, ROOT_INO, "d", 0o755)).ino as Ino;
  const a = await put(fs, ROOT_INO, "a", randomBytes(2 * MiB));
  await put(fs, ROOT_INO, "b", randomBytes(300_000));
  await put(fs, d, "c", Buffer.from("cee\n"));
  await fs.symlink(root, ROOT_INO, "ln", "a");
  await fs.link(root, a, d, "hard");
  const seqA = await committed(fs);
  const treeA = await snapshot(fs);
  await Bun.sleep(20);
  // Phase B: a overwritten whole, b renamed and patched, c deleted, e new, a chmod.
  await put(fs, ROOT_INO, "a", randomBytes(2 * MiB));
  await fs.rename(root, ROOT_INO, "b", d, "b2");
  await put(fs, d, "b2", Buffer.from("patch"), 1000);
  await fs.unlink(root, d, "c");
  const e = await put(fs, ROOT_INO, "e", randomBytes(500_000));
  await fs.setattr(root, e, { mode: 0o600 });
  const g = await put(fs, ROOT_INO, "g", randomBytes(200_000));
  await put(fs, ROOT_INO, "g", randomBytes(200_000)); // g's first bytes are shown by no point from B on
  const seqB = await committed(fs);
  const treeB = await snapshot(fs);
  await Bun.sleep(20);
  const tB = (await fs.journal.get(seqB))!.time;
  // Phase C: a deleted (both names), e half overwritten, f new.
  await fs.unlink(root, ROOT_INO, "a");
  await fs.unlink(root, d, "hard");
  await put(fs, ROOT_INO, "e", randomBytes(250_000), 100_000);
  await put(fs, ROOT_INO, "f", randomBytes(100_000));
  const seqC = await committed(fs);
  const treeC = await snapshot(fs);
  expect(new Set([treeA, treeB, treeC]).size).toBe(3);
  expect(await pastTree(fs, seqA)).toBe(treeA);

  const tA = (await fs.journal.get(seqA))!.time;
  const now = Date.now() + 10;
  const before = await dataBytesOnDisk(dir);
  const r = await retainLocal(fs, { eventsMs: now - tA, dataMs: now - tB }, { now, reclaim: { minDeadFraction: 0, minDeadBytes: 0 } });
  expect(r.changed).toBe(true);
  expect(r.checkpoint!.seq).toBe(seqA);
  expect(r.checkpoint!.dataFrom).toBe(seqB);
  expect(r.eventsRemoved).toBeGreaterThan(0);
  // The first 2 MiB of a (overwritten in B) and c are not needed by any point from B on.
  expect(r.bytesDead).toBeGreaterThanOrEqual(2 * MiB);
  expect(r.reclaimed!.rewritten + r.reclaimed!.removed).toBeGreaterThan(0);
  expect(await dataBytesOnDisk(dir)).toBeLessThan(before - MiB);

  // Every retained point replays; older ones are refused, naming the oldest that can be.
  expect(await pastTree(fs, seqB)).toBe(treeB);
  expect(await pastTree(fs, seqC)).toBe(treeC);
  expect(pastTree(fs, seqA)).rejects.toThrow(`the oldest point that can be restored is seq ${seqB}`);
  // Events up to A are gone but for the carriers of bytes still shown (b's, the symlink is metadata).
  const kept: number[] = [];
  for await (const ev of fs.journal.read({ lte: seqA })) kept.push(ev.seq);
  expect(kept.length).toBeLessThan(seqA);
  for await (const ev of fs.journal.read({ lte: seqA })) expect(ev.type).toBe("ExtentWritten");
  // The events of (A, B] stay for the audit log; bytes no point needs are dropped from them.
  const window: number[] = [];
  const gWrites: boolean[] = [];
  for await (const ev of fs.journal.read({ gte: seqA + 1, lte: seqB })) {
    window.push(ev.seq);
    if (ev.type === "ExtentWritten" && ev.ino === g) gWrites.push(ev.dataDropped === true);
  }
  expect(window.length).toBe(seqB - seqA);
  expect(gWrites).toEqual([true, false]);
  expect(r.payloadsDropped).toBe(1);
  expect((await fs.fsck()).differences).toEqual([]);
  expect(await snapshot(fs)).toBe(treeC);

  // Reopen: nothing changed; a second pass moves the windows to C.
  await fs.close();
  fs = await Filesystem.open(dir, { dataFileBytes: 1 << 20 });
  expect(await snapshot(fs)).toBe(treeC);
  expect((await fs.fsck()).differences).toEqual([]);
  const later = Date.now() + 10;
  const tC = (await fs.journal.get(seqC))!.time;
  const r2 = await retainLocal(fs, { eventsMs: later - tB, dataMs: later - tC }, { now: later, reclaim: { minDeadFraction: 0, minDeadBytes: 0 } });
  expect(r2.checkpoint!.seq).toBe(seqB);
  expect(r2.checkpoint!.dataFrom).toBe(seqC);
  expect(r2.bytesDead).toBeGreaterThanOrEqual(2 * MiB); // a's second version, deleted in C
  expect(await pastTree(fs, seqC)).toBe(treeC);
  expect(pastTree(fs, seqB)).rejects.toThrow("older than the retained window");
  expect((await fs.fsck()).differences).toEqual([]);
  for await (const ev of fs.journal.read({ lte: seqB })) expect(ev.type === "ExtentWritten" && ev.ino !== a).toBe(true);
  // A third pass with nothing new to do changes nothing.
  const r3 = await retainLocal(fs, { eventsMs: later - tB, dataMs: later - tC }, { now: later });
  expect(r3.changed).toBe(false);
  expect(await snapshot(fs)).toBe(treeC);
  await fs.close();
}, 60_000);

test("a data log file that is all dead is removed, even the one being written, and the journal reopens", async () => {
  const dir = await tmp();
  let fs = await Filesystem.open(dir);
  await put(fs, ROOT_INO, "x", randomBytes(3 << 20));
  await fs.unlink(root, ROOT_INO, "x");
  await put(fs, ROOT_INO, "small", Buffer.from("left\n"));
  await fs.unlink(root, ROOT_INO, "small");
  const seq = await committed(fs);
  const t = (await fs.journal.get(seq))!.time;
  const now = t + 50;
  const r = await retainLocal(fs, { eventsMs: 50, dataMs: 50 }, { now, reclaim: { minDeadFraction: 0, minDeadBytes: 0 } });
  expect(r.reclaimed!.removed).toBe(1);
  expect(await dataBytesOnDisk(dir)).toBe(0);
  // Closed right after the pass: opening checks the data log file the head row names.
  await fs.close();
  fs = await Filesystem.open(dir);
  await put(fs, ROOT_INO, "after", Buffer.from("new bytes\n"));
  const tree = await snapshot(fs);
  await fs.close();
  fs = await Filesystem.open(dir);
  expect(await snapshot(fs)).toBe(tree);
  expect((await fs.fsck()).differences).toEqual([]);
  await fs.close();
}, 30_000);

test("a pass killed after its checkpoint, before its audit rows were trimmed, is finished at the next pass or mount: fsck clean again", async () => {
  const dir = await tmp();
  const fs = await Filesystem.open(dir);
  for (let i = 0; i < 20; i++) await put(fs, ROOT_INO, "f", randomBytes(1000), i * 1000);
  await put(fs, ROOT_INO, "g", Buffer.from("g\n"));
  const seq = await committed(fs);
  const now = (await fs.journal.get(seq))!.time + 50;
  // The audit index's batches fail, as if the process died there: the checkpoint is written
  // and the events are gone, but their audit rows are not.
  const audit = Object.getPrototypeOf(backingOf(fs.journal).audit) as { batch: (...a: unknown[]) => Promise<void> };
  const batch = audit.batch;
  audit.batch = function (this: { prefix?: string }, ...a: unknown[]) {
    if (this.prefix === backingOf(fs.journal).audit.prefix) return Promise.reject(new Error("killed"));
    return batch.apply(this, a);
  };
  try {
    await expect(retainLocal(fs, { eventsMs: 50, dataMs: 50 }, { now })).rejects.toThrow("killed");
  } finally {
    audit.batch = batch;
  }
  expect((await localCheckpoint(dir))?.seq).toBeGreaterThan(0);
  const left = (await fs.fsck()).differences;
  expect(left.length).toBeGreaterThan(0);
  expect(left.every((d) => d.includes("audit index entry") && d.includes("persisted but the journal does not produce it"))).toBe(true);
  // What a mount does as it starts (and every pass first): the trimming is done, the note removed.
  expect(await finishInterruptedPass(fs)).toBe(true);
  expect((await fs.fsck()).differences).toEqual([]);
  expect(await finishInterruptedPass(fs)).toBe(false);
  await fs.close();
}, 30_000);

/** Bytes recorded dead in the data log: the `.dead` files' ranges, merged per file. */
async function deadBytes(dir: string): Promise<number> {
  let total = 0;
  for (const f of await readdir(join(dir, "data"))) {
    if (!f.endsWith(".dead")) continue;
    const b = await Bun.file(join(dir, "data", f)).bytes();
    const v = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    const ranges: [number, number][] = [];
    for (let at = 0; at + 16 <= v.length; at += 16) ranges.push([Number(v.readBigUInt64BE(at)), Number(v.readBigUInt64BE(at + 8))]);
    ranges.sort((x, y) => x[0] - y[0]);
    let end = -1;
    for (const [pos, len] of ranges) {
      const from = Math.max(pos, end);
      if (pos + len > from) total += pos + len - from;
      end = Math.max(end, pos + len);
    }
  }
  return total;
}

for (const step of ["retire", "markDataDead"] as const) {
  test(`a pass killed before its ${step === "retire" ? "events were removed" : "bytes were recorded dead"} is finished from its checkpoint: only carriers before it, no old payloads, every byte that went recorded dead, fsck clean`, async () => {
    const dir = await tmp();
    const fs = await Filesystem.open(dir);
    for (let i = 0; i < 20; i++) await put(fs, ROOT_INO, "f", randomBytes(1000), (i % 5) * 1000); // overwrites: most bytes go
    await put(fs, ROOT_INO, "g", Buffer.from("g\n"));
    const seq = await committed(fs);
    const now = (await fs.journal.get(seq))!.time + 50;
    const tree = await snapshot(fs);
    // Every payload in the data log before the pass, by seq.
    const payloads = new Map<number, number>();
    for await (const e of fs.journal.read()) if (e.type === "ExtentWritten" && e.ref && !e.dataDropped) payloads.set(e.seq, e.length);
    const journal = fs.journal as unknown as Record<string, unknown>;
    journal[step] = () => Promise.reject(new Error("killed"));
    try {
      await expect(retainLocal(fs, { eventsMs: 50, dataMs: 50 }, { now })).rejects.toThrow("killed");
    } finally {
      delete journal[step];
    }
    const c = (await localCheckpoint(dir))!;
    expect(c.seq).toBeGreaterThan(0);
    expect(await deadBytes(dir)).toBe(0);
    if (step === "retire") expect((await fs.journal.get(1)) !== undefined || c.carriers.includes(1)).toBe(true);
    // What a mount does as it starts (and every pass first). After the "retire" kill it is told
    // not to rewrite files that are not all dead, so the dead records can be counted; after the
    // other, everything dead is reclaimed at once.
    const before = await dataBytesOnDisk(dir);
    const reclaimNow = step === "markDataDead";
    const reclaim = reclaimNow ? { minDeadFraction: 0, minDeadBytes: 0 } : { minDeadFraction: 2, minDeadBytes: 2 ** 50 };
    expect(await finishInterruptedPass(fs, () => {}, { reclaim })).toBe(true);
    expect(await finishInterruptedPass(fs)).toBe(false);
    let goneBytes = 0;
    const left = new Set<number>();
    for await (const e of fs.journal.read()) {
      left.add(e.seq);
      if (e.seq <= c.seq) expect(e.type === "ExtentWritten" && c.carriers.includes(e.seq)).toBe(true);
      else if (e.seq <= c.dataFrom && e.type === "ExtentWritten" && !c.carriers.includes(e.seq)) expect(e.dataDropped === true || e.length === 0).toBe(true);
      if (e.type === "ExtentWritten" && e.dataDropped && payloads.has(e.seq)) goneBytes += payloads.get(e.seq)!;
    }
    for (const [s, len] of payloads) if (!left.has(s)) goneBytes += len;
    expect(goneBytes).toBeGreaterThan(10_000);
    if (!reclaimNow) {
      expect(await deadBytes(dir)).toBe(goneBytes);
      await fs.journal.reclaimData({ minDeadFraction: 0, minDeadBytes: 0 });
    }
    // The bytes that went were recorded dead (also those of events the killed pass had removed): their space is free.
    expect(await dataBytesOnDisk(dir)).toBeLessThanOrEqual(before - goneBytes + 4096);
    expect((await fs.fsck()).differences).toEqual([]);
    expect(await snapshot(fs)).toBe(tree);
    // The next pass finds nothing left to remove; after a reopen the tree is the same.
    expect((await retainLocal(fs, { eventsMs: 50, dataMs: 50 }, { now })).eventsRemoved).toBe(0);
    await fs.close();
    const again = await Filesystem.open(dir);
    expect(await snapshot(again)).toBe(tree);
    expect((await again.fsck()).differences).toEqual([]);
    await again.close();
  }, 30_000);
}
