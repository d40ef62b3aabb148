/** Examples of the Filesystem's POSIX semantics, on a real LevelDB journal in a temp dir. */
import { afterEach, describe, expect, test } from "bun:test";
import fc from "fast-check";
import { mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT_INO, type Ino } from "../../journal/mod.ts";
import { Filesystem, type DirEntry } from "../../src/fs/filesystem.ts";
import { FsError } from "../../src/fs/errors.ts";
import { compareTrees, FsSubject, ModelSubject, O_APPEND, O_CREAT, runSequence, sequenceArb } from "./ops.ts";

const dirs: string[] = [];
const open: Filesystem[] = [];
async function fresh(options: Parameters<typeof Filesystem.open>[1] = {}): Promise<{ fs: Filesystem; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-fs-"));
  dirs.push(dir);
  const fs = await Filesystem.open(dir, { rootOwner: { uid: 0, gid: 0 }, rootMode: 0o777, ...options });
  open.push(fs);
  return { fs, dir };
}
async function reopen(fs: Filesystem, dir: string): Promise<Filesystem> {
  await fs.close();
  const again = await Filesystem.open(dir);
  open.push(again);
  return again;
}
afterEach(async () => {
  for (const fs of open.splice(0)) await fs.close().catch(() => {});
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

const root = { uid: 0, gid: 0, pid: 1 };
const user = { uid: 1000, gid: 1000, pid: 2 };
const O_RDONLY = 0;
const O_RDWR = 2;
const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

async function errno(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof FsError) return e.code;
    throw e;
  }
  return "no error";
}

async function expectClean(fs: Filesystem): Promise<void> {
  const report = await fs.fsck();
  expect(report.differences).toEqual([]);
  expect(report.ok).toBe(true);
}

async function writeFile(fs: Filesystem, parent: Ino, name: string, data: Uint8Array, offset = 0): Promise<Ino> {
  const { attr, fh } = await fs.create(root, parent, name, 0o644, O_RDWR);
  await fs.write(root, fh, offset, data);
  await fs.release(root, fh);
  return attr.ino;
}

describe("Filesystem", () => {
  test("rename() over a non-empty directory fails with ENOTEMPTY", async () => {
    const { fs } = await fresh();
    const a = await fs.mkdir(root, ROOT_INO, "a", 0o755);
    const b = await fs.mkdir(root, ROOT_INO, "b", 0o755);
    await fs.mkdir(root, b.ino, "inside", 0o755);
    expect(await errno(fs.rename(root, ROOT_INO, "a", ROOT_INO, "b"))).toBe("ENOTEMPTY");
    // nothing moved
    expect((await fs.lookup(root, ROOT_INO, "a")).ino).toBe(a.ino);
    expect((await fs.lookup(root, b.ino, "inside")).kind).toBe("dir");
    // once empty, it is replaced, and the nlinks follow
    await fs.rmdir(root, b.ino, "inside");
    await fs.rename(root, ROOT_INO, "a", ROOT_INO, "b");
    expect((await fs.lookup(root, ROOT_INO, "b")).ino).toBe(a.ino);
    expect(await errno(fs.lookup(root, ROOT_INO, "a"))).toBe("ENOENT");
    expect(await errno(fs.getattr(root, b.ino))).toBe("ENOENT");
    expect((await fs.getattr(root, ROOT_INO)).nlink).toBe(3);
    await expectClean(fs);
  });

  test("an unlinked file stays readable through an open handle until the last release", async () => {
    const { fs } = await fresh();
    const { attr, fh: writer } = await fs.create(user, ROOT_INO, "f", 0o644, O_RDWR);
    await fs.write(user, writer, 0, text("hello world"));
    const reader = await fs.open(user, attr.ino, O_RDONLY);
    await fs.unlink(user, ROOT_INO, "f");
    expect(await errno(fs.lookup(user, ROOT_INO, "f"))).toBe("ENOENT");
    expect((await fs.getattr(user, attr.ino)).nlink).toBe(0);
    expect(str(await fs.read(user, reader, 0, 100))).toBe("hello world");
    await fs.write(user, writer, 11, text("!"));
    await fs.release(user, writer);
    expect(str(await fs.read(user, reader, 6, 100))).toBe("world!");
    await expectClean(fs);
    await fs.release(user, reader);
    expect(await errno(fs.getattr(user, attr.ino))).toBe("ENOENT");
    expect(await errno(fs.read(user, reader, 0, 1))).toBe("EBADF");
    await expectClean(fs);
  });

  test("an unlinked file still open at a restart is freed by the restart", async () => {
    const { fs, dir } = await fresh();
    const { attr, fh } = await fs.create(root, ROOT_INO, "f", 0o644, O_RDWR);
    await fs.write(root, fh, 0, text("gone soon"));
    await fs.unlink(root, ROOT_INO, "f");
    const again = await reopen(fs, dir);
    expect(await errno(again.getattr(root, attr.ino))).toBe("ENOENT");
    expect(await errno(again.read(root, fh, 0, 1))).toBe("EBADF");
    await expectClean(again);
  });

  test("holes read as zeros", async () => {
    const { fs } = await fresh();
    const { attr, fh } = await fs.create(root, ROOT_INO, "sparse", 0o644, O_RDWR);
    await fs.write(root, fh, 0, text("A"));
    await fs.write(root, fh, 10_000, text("B"));
    expect((await fs.getattr(root, attr.ino)).size).toBe(10_001);
    const all = await fs.read(root, fh, 0, 20_000);
    expect(all.length).toBe(10_001);
    expect([all[0], all[10_000]]).toEqual([65, 66]);
    expect(all.subarray(1, 10_000).every((b) => b === 0)).toBe(true);
    // shrink, then grow again: what was cut off reads as zeros, not as the old bytes
    await fs.setattr(root, attr.ino, { size: 1 }, fh);
    await fs.setattr(root, attr.ino, { size: 20_000 }, fh);
    const grown = await fs.read(root, fh, 0, 30_000);
    expect(grown.length).toBe(20_000);
    expect(grown[0]).toBe(65);
    expect(grown.subarray(1).every((b) => b === 0)).toBe(true);
    // a read that starts in a hole and ends in data
    await fs.write(root, fh, 15_000, text("CD"));
    expect(Array.from(await fs.read(root, fh, 14_998, 4))).toEqual([0, 0, 67, 68]);
    await fs.release(root, fh);
    await expectClean(fs);
  });

  test("a file of 100 GiB can be written sparsely without holding it in memory", async () => {
    const { fs, dir } = await fresh();
    const GiB = 1024 ** 3;
    const far = 100 * GiB;
    const rssBefore = process.memoryUsage().rss;
    const { attr, fh } = await fs.create(root, ROOT_INO, "huge", 0o644, O_RDWR);
    await fs.write(root, fh, 3, text("head"));
    await fs.write(root, fh, far, text("tail!"));
    await fs.fsync(root, fh);
    expect((await fs.getattr(root, attr.ino)).size).toBe(far + 5);
    const check = async (f: Filesystem, h: number) => {
      expect(Array.from(await f.read(root, h, 0, 8))).toEqual([0, 0, 0, ...text("head"), 0]);
      expect(str(await f.read(root, h, far, 100))).toBe("tail!");
      expect(Array.from(await f.read(root, h, far - 2, 4))).toEqual([0, 0, ...text("ta")]);
      const middle = await f.read(root, h, 50 * GiB, 1 << 20);
      expect(middle.length).toBe(1 << 20);
      expect(middle.every((b) => b === 0)).toBe(true);
    };
    await check(fs, fh);
    await fs.release(root, fh);
    // the data log holds the bytes written, not the size
    let logged = 0;
    for (const name of await readdir(join(dir, "data"))) logged += (await stat(join(dir, "data", name))).size;
    expect(logged).toBeLessThan(1 << 20);
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(256 * 1024 * 1024);
    const again = await reopen(fs, dir);
    const h = await again.open(root, attr.ino, O_RDWR);
    await check(again, h);
    // cut it down to a few bytes, then back out to 100 GiB: all zeros past the cut
    await again.setattr(root, attr.ino, { size: 5 }, h);
    await again.setattr(root, attr.ino, { size: far + 5 }, h);
    expect(Array.from(await again.read(root, h, 0, 8))).toEqual([0, 0, 0, ...text("he"), 0, 0, 0]);
    expect(Array.from(await again.read(root, h, far, 5))).toEqual([0, 0, 0, 0, 0]);
    await again.release(root, h);
    await expectClean(again);
  });

  test("O_APPEND writes go to the end of the file whatever the offset", async () => {
    const { fs } = await fresh();
    const { attr, fh } = await fs.create(root, ROOT_INO, "log", 0o644, O_RDWR | O_CREAT | O_APPEND);
    await fs.write(root, fh, 0, text("one "));
    await fs.write(root, fh, 0, text("two "));
    await fs.write(root, fh, 1_000_000, text("three"));
    expect((await fs.getattr(root, attr.ino)).size).toBe(13);
    expect(str(await fs.read(root, fh, 0, 100))).toBe("one two three");
    await fs.release(root, fh);
  });

  test("restart keeps the tree identical and fsck clean", async () => {
    // Trees made by a few generated sequences (without restarts), checked against the model first.
    const sequences = fc.sample(sequenceArb(60), { numRuns: 6, seed: 20240611 });
    for (const seq of sequences) {
      const dir = await mkdtemp(join(tmpdir(), "objectfs-fs-"));
      dirs.push(dir);
      const sut = await FsSubject.open(dir, "fsync", seq.rootMode);
      try {
        await runSequence(
          seq.ops.filter((op) => op.op !== "restart"),
          [new ModelSubject(seq.rootMode), sut],
          { treesEveryStep: false },
        );
        const before = await sut.snapshot();
        const listings = await allListings(sut.fs);
        await sut.restart(); // asserts fsck is clean
        expect(compareTrees(before, await sut.snapshot(), ["before", "after"])).toEqual([]);
        expect(await allListings(sut.fs)).toEqual(listings);
      } finally {
        await sut.close();
      }
    }
  });

  test("readdir offsets stay stable while entries are added and removed", async () => {
    const { fs, dir } = await fresh();
    const d = (await fs.mkdir(root, ROOT_INO, "d", 0o755)).ino;
    for (const n of ["e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7"]) await writeFile(fs, d, n, text(n));
    const first = await fs.readdir(root, d, 0, 5); // ".", "..", e0, e1, e2
    expect(first.map((e) => e.name)).toEqual([".", "..", "e0", "e1", "e2"]);
    const offsets = new Map(first.map((e) => [e.name, e.offset]));
    // between two pages: remove one entry already listed and two not yet listed, add two
    await fs.unlink(root, d, "e1");
    await fs.unlink(root, d, "e4");
    await fs.rename(root, d, "e6", d, "moved");
    await writeFile(fs, d, "new", text("new"));
    const rest: DirEntry[] = [];
    for (let at = first[first.length - 1]!.offset; ; ) {
      const page = await fs.readdir(root, d, at, 2);
      if (page.length === 0) break;
      rest.push(...page);
      at = page[page.length - 1]!.offset;
    }
    // nothing listed twice, nothing left alive skipped, removed entries not resurrected, new ones after the old
    expect(rest.map((e) => e.name)).toEqual(["e3", "e5", "e7", "moved", "new"]);
    // entries keep their offsets, also across a restart
    const again = await reopen(fs, dir);
    const all = await again.readdir(root, d);
    for (const e of all) if (offsets.has(e.name)) expect(e.offset).toBe(offsets.get(e.name)!);
    expect(all.map((e) => e.name)).toEqual([".", "..", "e0", "e2", "e3", "e5", "e7", "moved", "new"]);
    const resumed = await again.readdir(root, d, offsets.get("e2")!);
    expect(resumed.map((e) => e.name)).toEqual(["e3", "e5", "e7", "moved", "new"]);
    await expectClean(again);
  });

  test("a user may not create in, remove from, or list a directory without the permission for it", async () => {
    const { fs } = await fresh();
    const closed = (await fs.mkdir(root, ROOT_INO, "closed", 0o700)).ino;
    await writeFile(fs, closed, "secret", text("x"));
    expect(await errno(fs.mkdir(user, closed, "x", 0o755))).toBe("EACCES");
    expect(await errno(fs.unlink(user, closed, "secret"))).toBe("EACCES");
    expect(await errno(fs.readdir(user, closed))).toBe("EACCES");
    expect(await errno(fs.lookup(user, closed, "secret"))).toBe("EACCES");
    const sticky = (await fs.mkdir(root, ROOT_INO, "tmp", 0o1777)).ino;
    const { fh } = await fs.create(root, sticky, "roots", 0o666, O_RDWR);
    await fs.release(root, fh);
    expect(await errno(fs.unlink(user, sticky, "roots"))).toBe("EPERM");
    expect(await errno(fs.rename(user, sticky, "roots", sticky, "mine"))).toBe("EPERM");
  });
});

/** Every directory's full readdir (names, inodes, offsets), by path. */
async function allListings(fs: Filesystem): Promise<Record<string, DirEntry[]>> {
  const out: Record<string, DirEntry[]> = {};
  const visit = async (path: string, ino: Ino) => {
    const entries = await fs.readdir(root, ino);
    out[path] = entries;
    for (const e of entries.slice(2)) if (e.kind === "dir") await visit(`${path}/${e.name}`, e.ino);
  };
  await visit("", ROOT_INO);
  return out;
}

test("a read into a caller's dirty buffer (as FUSE passes) gives zeros for holes and the data for extents", async () => {
  const { fs } = await fresh();
  const { fh } = await fs.create(root, ROOT_INO, "holes", 0o644, O_RDWR);
  await fs.write(root, fh, 10, text("abc"));
  await fs.write(root, fh, 30, text("xyz"));
  await fs.write(root, fh, 45, text("!"));
  const buf = new Uint8Array(64).fill(0xee);
  const got = await fs.read(root, fh, 5, 60, buf);
  expect(got.buffer).toBe(buf.buffer); // no copy
  const want = new Uint8Array(41);
  want.set(text("abc"), 5);
  want.set(text("xyz"), 25);
  want.set(text("!"), 40);
  expect(Array.from(got)).toEqual(Array.from(want));
  // Whole-buffer hole, and a read that starts inside an extent.
  const hole = await fs.read(root, fh, 15, 10, new Uint8Array(10).fill(1));
  expect(Array.from(hole)).toEqual(new Array(10).fill(0));
  const mid = await fs.read(root, fh, 11, 4, new Uint8Array(8).fill(1));
  expect(str(mid.subarray(0, 2))).toBe("bc");
  expect(Array.from(mid.subarray(2))).toEqual([0, 0]);
  await fs.release(root, fh);
});
