/**
 * The low-level session's own promises, on a real mount served by this
 * process (touched only through fs/promises, never sync calls): hard links
 * are one kernel inode, the kernel's caches are used, and changes the core
 * makes by itself (no caller, as the replicator's) reach the kernel as
 * invalidations, so nothing stale is seen even with caching on.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtemp, open, readFile, rm, stat, writeFile, link, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT_INO, type Ino } from "../../journal/mod.ts";
import { Filesystem } from "../../src/fs/filesystem.ts";
import { DEFAULT_FEATURES } from "../../src/fuse/lowlevel.ts";
import { invalidations, mountFilesystem, type Mounted } from "../../src/fuse/mount.ts";

let dir: string;
let fs: Filesystem;
let mounted: Mounted;
let mnt: string;
const ops = new Map<string, number>();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "objectfs-ll-"));
  mnt = join(dir, "mnt");
  await Bun.write(join(mnt, ".keep"), "");
  await rm(join(mnt, ".keep"));
  fs = await Filesystem.open(join(dir, "data"), { rootOwner: { uid: 0, gid: 0 } });
  // A long cache timeout: whatever is seen fresh below is fresh because of invalidation, not expiry.
  mounted = await mountFilesystem(fs, mnt, { cacheTimeout: 60, log: () => {}, onOperation: (op) => ops.set(op, (ops.get(op) ?? 0) + 1) });
});

afterAll(async () => {
  await mounted?.unmount();
  await fs?.close();
  await rm(dir, { recursive: true, force: true });
});

const count = (op: string) => ops.get(op) ?? 0;

/** Wait until the invalidations of the last change have been sent (from their own thread). */
async function notified(before: number, atLeast: number): Promise<void> {
  for (let i = 0; i < 500 && mounted.stats().notified < before + atLeast; i++) await Bun.sleep(10);
  expect(mounted.stats().notified).toBeGreaterThanOrEqual(before + atLeast);
  expect(mounted.stats().notifyFailed).toBe(0);
}

test("the kernel took the protocol features the session asks for (1 MiB requests, killpriv v2, parallel dirops, cached symlinks)", async () => {
  await stat(mnt); // a request is answered only after INIT
  expect(mounted.stats().granted).toBe(DEFAULT_FEATURES);
});

test("hard links are one inode: a write through one name shows at once in the other's size, nlink and ino", async () => {
  await writeFile(join(mnt, "a"), "12345");
  const before = await stat(join(mnt, "a")); // cached for 60 s from here
  await link(join(mnt, "a"), join(mnt, "b"));
  const h = await open(join(mnt, "b"), "a");
  await h.write("678");
  await h.close();
  const a = await stat(join(mnt, "a"));
  const b = await stat(join(mnt, "b"));
  expect(a.ino).toBe(before.ino);
  expect(b.ino).toBe(a.ino);
  expect(a.nlink).toBe(2);
  expect(a.size).toBe(8);
  expect(await readFile(join(mnt, "a"), "utf8")).toBe("12345678");
});

test("directory listings are cached: a second listing of an unchanged directory asks nothing, a create through the mount shows at once", async () => {
  await writeFile(join(mnt, "g1"), "");
  const first = await readdir(mnt);
  const readdirs = count("readdir");
  expect(await readdir(mnt)).toEqual(first);
  expect(count("readdir")).toBe(readdirs);
  await writeFile(join(mnt, "g2"), "");
  expect((await readdir(mnt)).sort()).toEqual([...first, "g2"].sort());
});

test("attributes and pages are cached: a second stat and a second read of an unchanged file ask nothing", async () => {
  await writeFile(join(mnt, "c"), Buffer.alloc(256 * 1024, 7));
  await stat(join(mnt, "c"));
  await readFile(join(mnt, "c"));
  const getattrs = count("getattr");
  const reads = count("read");
  const lookups = count("lookup");
  for (let i = 0; i < 5; i++) {
    expect((await stat(join(mnt, "c"))).size).toBe(256 * 1024);
    expect((await readFile(join(mnt, "c"))).equals(Buffer.alloc(256 * 1024, 7))).toBe(true);
  }
  expect(count("getattr")).toBe(getattrs);
  expect(count("read")).toBe(reads);
  expect(count("lookup")).toBe(lookups);
});

test("a name looked up and absent is cached as absent, and creating it through the mount shows it at once", async () => {
  await expect(stat(join(mnt, "later"))).rejects.toThrow(/ENOENT/);
  const lookups = count("lookup");
  await expect(stat(join(mnt, "later"))).rejects.toThrow(/ENOENT/);
  expect(count("lookup")).toBe(lookups);
  await writeFile(join(mnt, "later"), "now");
  expect(await readFile(join(mnt, "later"), "utf8")).toBe("now");
});

test("bytes changed by the core itself (no caller) are seen at once, cached pages and attributes notwithstanding", async () => {
  await writeFile(join(mnt, "d"), "old contents");
  expect(await readFile(join(mnt, "d"), "utf8")).toBe("old contents"); // pages cached now
  await stat(join(mnt, "d")); // attributes cached for 60 s
  const ino = (await fs.resolvePath("/d"))! as Ino;
  const sent = mounted.stats().notified;
  // The same size: the kernel would not drop its pages for a size change.
  await fs.record([{ inode: ino }, { extents: ino }], () => [
    { type: "ExtentWritten", ino, offset: 0, length: 12, crc: 0, data: new TextEncoder().encode("NEW contents") },
  ]);
  await notified(sent, 1);
  expect(await readFile(join(mnt, "d"), "utf8")).toBe("NEW contents");
});

test("a rename by the core itself (as a conflict copy) is seen at once: the old name is gone, the new one there", async () => {
  await writeFile(join(mnt, "e"), "mine");
  expect(await readFile(join(mnt, "e"), "utf8")).toBe("mine");
  await expect(stat(join(mnt, "e.conflict"))).rejects.toThrow(/ENOENT/); // cached as absent
  const ino = (await fs.resolvePath("/e"))! as Ino;
  const sent = mounted.stats().notified;
  await fs.record([{ inode: ROOT_INO }, { dirent: [ROOT_INO, "e"] }, { dirent: [ROOT_INO, "e.conflict"] }, { inode: ino }], () => [
    { type: "Renamed", ino, fromParent: ROOT_INO, fromName: "e", toParent: ROOT_INO, toName: "e.conflict" },
  ]);
  await notified(sent, 3); // both names, the inode (the root: counted too)
  await expect(stat(join(mnt, "e"))).rejects.toThrow(/ENOENT/);
  expect(await readFile(join(mnt, "e.conflict"), "utf8")).toBe("mine");
  expect(await readdir(mnt)).toContain("e.conflict");
});

test("invalidations: only events without a caller, names and inodes as they touch them", () => {
  const caller = { uid: 0, gid: 0, pid: 1 };
  expect(invalidations({ type: "Renamed", seq: 1, time: 0, ino: 5, fromParent: 1, fromName: "x", toParent: 2, toName: "y", caller } as never)).toEqual({ inodes: [], entries: [] });
  expect(invalidations({ type: "Renamed", seq: 1, time: 0, ino: 5, fromParent: 1, fromName: "x", toParent: 2, toName: "y" } as never)).toEqual({
    inodes: [5, 1, 2],
    entries: [[1, "x"], [2, "y"]],
  });
  expect(invalidations({ type: "RemoteListed", seq: 1, time: 0, dir: 3, prefix: "p/", entries: [{ name: "n" }], skipped: [], complete: false } as never)).toEqual({ inodes: [3], entries: [[3, "n"]] });
  expect(invalidations({ type: "RemoteListed", seq: 1, time: 0, dir: 3, prefix: "p/", entries: [{ name: "n" }], skipped: [], complete: true } as never)).toEqual({ inodes: [3], entries: [] });
  expect(invalidations({ type: "SegmentSealed", seq: 1, time: 0 } as never)).toEqual({ inodes: [], entries: [] });
});

test("the kernel's lookups are counted and FORGET brings them down when it lets go of an inode", async () => {
  await writeFile(join(mnt, "f"), "x");
  await stat(join(mnt, "f"));
  const ino = (await fs.resolvePath("/f"))!;
  expect(mounted.lookups.get(ino)).toBeGreaterThanOrEqual(1);
  await rm(join(mnt, "f")); // unlinked and not open: the kernel evicts the inode and forgets it
  for (let i = 0; i < 50 && mounted.lookups.has(ino); i++) await Bun.sleep(20);
  expect(mounted.lookups.has(ino)).toBe(false);
  expect(mounted.lookups.get(ROOT_INO as number)).toBeUndefined(); // the root is never looked up
});

/** Run python3 on the mount (xattrs have no fs/promises call; sync calls from this process would deadlock). */
async function py(code: string): Promise<string> {
  const p = Bun.spawn(["python3", "-c", code], { stdout: "pipe", stderr: "pipe" });
  const [out, err, status] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (status !== 0) throw new Error(`python3 failed (${status}): ${err.trim()}`);
  return out.trim();
}

test("a new file's security.capability (asked before its first write) is answered natively until an xattr is set on it, through the kernel or by the core", async () => {
  const CAP = "0100000200200000000000000000000000000000"; // a valid VFS_CAP_REVISION_2 value
  const native = mounted.stats().answeredNatively;
  const asked = count("getxattr");
  await writeFile(join(mnt, "cap"), "x"); // create, then the first write: the kernel asks for security.capability
  expect(mounted.stats().answeredNatively).toBeGreaterThan(native);
  expect(count("getxattr")).toBe(asked);
  // Set through the kernel: from then on the question goes to the core, which knows the value.
  const path = join(mnt, "cap");
  expect(await py(`import os; p=${JSON.stringify(path)}; os.setxattr(p, "security.capability", bytes.fromhex("${CAP}")); print(os.getxattr(p, "security.capability").hex())`)).toBe(CAP);
  expect(count("getxattr")).toBeGreaterThan(asked);
  // Set by the core itself (no caller): the invalidation it sends drops the native answer too.
  await writeFile(join(mnt, "cap2"), "x");
  const ino = (await fs.resolvePath("/cap2"))! as Ino;
  const sent = mounted.stats().notified;
  await fs.record([{ inode: ino }], () => [{ type: "XattrSet", ino, name: "security.capability", value: Buffer.from(CAP, "hex") }]);
  await notified(sent, 1);
  expect(await py(`import os; print(os.getxattr(${JSON.stringify(join(mnt, "cap2"))}, "security.capability").hex())`)).toBe(CAP);
});
