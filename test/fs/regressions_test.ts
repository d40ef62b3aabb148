/**
 * Failures found by the model-based tests (model_test.ts, tmpfs_oracle_test.ts),
 * shrunk and pinned. Each sequence runs on the reference model, on a
 * Filesystem in both durability modes and, when the tests run as root, on a
 * real tmpfs directory (the kernel's answer); every step and the trees after
 * every step must agree, fsck must be clean, and the step that failed is
 * asserted explicitly as well. A few pins are not shrunk failures but the
 * same Linux rules found wanting by reading, confirmed on tmpfs; they say so.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Filesystem } from "../../src/fs/filesystem.ts";
import { FsSubject, ModelSubject, NOWHERE, runSequence, type CallerName, type Op, type StepResult, type Subject, type Tree } from "./ops.ts";
import { canSwitchUsers, TmpfsSubject } from "./tmpfs.ts";

const withTmpfs = canSwitchUsers && existsSync("/dev/shm");
let umask = 0;
beforeAll(() => {
  umask = process.umask(0);
});
afterAll(() => {
  process.umask(umask);
});

/** Run a pinned sequence on every subject; the model's results and final tree. */
async function pin(rootMode: number, ops: readonly Op[]): Promise<{ results: (StepResult | undefined)[]; tree: Tree }> {
  const dirs: string[] = [];
  const subjects: Subject[] = [new ModelSubject(rootMode)];
  try {
    for (const durability of ["fsync", "strict"] as const) {
      const dir = await mkdtemp(join(tmpdir(), "objectfs-regression-"));
      dirs.push(dir);
      await chmod(dir, 0o777); // LevelDB may create a file while a tmpfs step runs as a user
      subjects.push(await FsSubject.open(dir, durability, rootMode));
    }
    if (withTmpfs) {
      const shm = await mkdtemp("/dev/shm/objectfs-regression-");
      dirs.push(shm);
      await chmod(shm, rootMode);
      subjects.push(new TmpfsSubject(shm));
    }
    return await runSequence(ops, subjects);
  } finally {
    for (const s of subjects) await s.close().catch(() => {});
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  }
}

const ok = { value: undefined };
const create = (as: CallerName, path: string[], mode: number, acc: 0 | 1 | 2 = 2): Op => ({ op: "create", as, path, mode, acc, excl: false, trunc: false, append: false });

test("regression: fsck is clean on a filesystem that holds nothing but its root", async () => {
  // Shrunk: [create as u1000 in a 0755 root → EACCES]; fsck then expected a nextIno row that is never persisted.
  const { results } = await pin(0o755, [create("u1000", ["a"], 0), { op: "restart" }]);
  expect(results[0]).toEqual({ errno: "EACCES" });
  const dir = await mkdtemp(join(tmpdir(), "objectfs-regression-"));
  try {
    const fs = await Filesystem.open(dir);
    expect((await fs.fsck()).differences).toEqual([]);
    await fs.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("regression: mkdir() keeps only the permission and sticky bits of the mode it is given", async () => {
  // Shrunk: [mkdir /a mode 02000] gave a set-group-ID directory.
  const { tree } = await pin(0o777, [
    { op: "mkdir", as: "root", path: ["a"], mode: 0o2000 },
    { op: "mkdir", as: "root", path: ["b"], mode: 0o2755 },
    { op: "mkdir", as: "u1000", path: ["c"], mode: 0o7777 },
  ]);
  expect([tree.get("/a")!.mode, tree.get("/b")!.mode, tree.get("/c")!.mode]).toEqual([0, 0o755, 0o1777]);
});

test("regression: mkdir() and symlink() of an existing name fail with EEXIST even where the caller may not write", async () => {
  // Shrunk: [create /a as root; mkdir /a as u1000] gave EACCES; likewise symlink.
  const { results } = await pin(0o755, [
    create("root", ["a"], 0o644),
    { op: "mkdir", as: "u1000", path: ["a"], mode: 0o755 },
    { op: "symlink", as: "u1001", path: ["a"], target: `${NOWHERE}x` },
    { op: "mkdir", as: "u1000", path: ["b"], mode: 0o755 },
  ]);
  expect(results.slice(1)).toEqual([{ errno: "EEXIST" }, { errno: "EEXIST" }, { errno: "EACCES" }]);
});

test("regression: a write by a user outside the file's group drops its set-group-ID bit", async () => {
  // Shrunk: [create /a mode 02200 as u1001; write through it as u1000] kept set-group-ID.
  const { tree } = await pin(0o777, [
    create("u1001", ["a"], 0o2200),
    { op: "write", as: "u1000", h: 0, offset: 0, size: 1, seed: 0 },
    create("u1001", ["b"], 0o2666),
    { op: "write", as: "u1001", h: 1, offset: 0, size: 1, seed: 0 },
  ]);
  expect(tree.get("/a")!.mode).toBe(0o200);
  expect(tree.get("/b")!.mode).toBe(0o2666); // a member of the group keeps it
});

test("regression: link() of a directory onto an existing name fails with EEXIST", async () => {
  // Shrunk: [mkdir /a as u1000; link /a → /a as u1000] gave EPERM.
  const { results } = await pin(0o777, [
    { op: "mkdir", as: "u1000", path: ["a"], mode: 0o755 },
    { op: "link", as: "u1000", from: ["a"], to: ["a"] },
    { op: "link", as: "u1000", from: ["a"], to: ["b"] },
  ]);
  expect(results.slice(1)).toEqual([{ errno: "EEXIST" }, { errno: "EPERM" }]);
});

test("regression: open(O_CREAT) of an existing directory fails with EISDIR", async () => {
  // Shrunk: [mkdir /a as u1000; create /a O_RDONLY as u1001] opened the directory.
  const { results } = await pin(0o777, [{ op: "mkdir", as: "u1000", path: ["a"], mode: 0o755 }, create("u1001", ["a"], 0o644, 0), create("root", ["a"], 0o644, 0)]);
  expect(results.slice(1)).toEqual([{ errno: "EISDIR" }, { errno: "EISDIR" }]);
});

test("regression: listxattr() needs no read permission, and users neither see nor read trusted.* attributes", async () => {
  // Shrunk: [create /b mode 0640 as root; listxattr /b as u1000] gave EACCES.
  const { results } = await pin(0o777, [
    create("root", ["b"], 0o640),
    { op: "setxattr", as: "root", path: ["b"], name: "trusted.t", value: "x", flags: 0 },
    { op: "setxattr", as: "root", path: ["b"], name: "user.a", value: "v", flags: 0 },
    { op: "listxattr", as: "u1000", path: ["b"] },
    { op: "listxattr", as: "root", path: ["b"] },
    { op: "getxattr", as: "u1000", path: ["b"], name: "trusted.t" },
    { op: "getxattr", as: "u1000", path: ["b"], name: "user.a" },
  ]);
  expect(results.slice(3)).toEqual([{ value: ["user.a"] }, { value: ["trusted.t", "user.a"] }, { errno: "ENODATA" }, { errno: "EACCES" }]);
});

test("regression: security.* attributes are read without read permission (only user.* needs it), and written by root only", async () => {
  // The kernel reads security.capability before a write by a caller who may not read the file; the core answered EACCES.
  const { results } = await pin(0o777, [
    create("root", ["b"], 0o600),
    { op: "setxattr", as: "root", path: ["b"], name: "security.s", value: "x", flags: 0 },
    { op: "getxattr", as: "u1000", path: ["b"], name: "security.s" },
    { op: "getxattr", as: "u1000", path: ["b"], name: "user.a" },
    { op: "setxattr", as: "u1000", path: ["b"], name: "security.s", value: "y", flags: 0 },
  ]);
  expect(results.slice(2)).toEqual([{ value: new Uint8Array([0x78]) }, { errno: "EACCES" }, { errno: "EPERM" }]);
});

test("regression: rename() of a directory into its own subtree fails with EINVAL before any permission check", async () => {
  // Shrunk: [mkdir /d as root; rename /d → /d/a as u1001] gave EACCES.
  const { results } = await pin(0o777, [
    { op: "mkdir", as: "root", path: ["d"], mode: 0o755 },
    { op: "rename", as: "u1001", from: ["d"], to: ["d", "a"] },
    { op: "rename", as: "root", from: ["d"], to: ["d", "a"] },
  ]);
  expect(results.slice(1)).toEqual([{ errno: "EINVAL" }, { errno: "EINVAL" }]);
});

test("regression: unlink() of another user's directory in a sticky directory fails with EPERM, not EISDIR", async () => {
  // Shrunk: [mkdir /a as u1001 in a 01777 root; unlink /a as u1000] gave EISDIR.
  const { results } = await pin(0o1777, [
    { op: "mkdir", as: "u1001", path: ["a"], mode: 0o755 },
    { op: "unlink", as: "u1000", path: ["a"] },
    { op: "unlink", as: "u1001", path: ["a"] },
  ]);
  expect(results.slice(1)).toEqual([{ errno: "EPERM" }, { errno: "EISDIR" }]);
});

test("regression: chmod() by a directory's owner outside its group drops set-group-ID", async () => {
  // Shrunk: [mkdir /b as u1001; chown /b uid 1000 as root; chmod /b 02755 as u1000] kept set-group-ID.
  const { tree } = await pin(0o777, [
    { op: "mkdir", as: "u1001", path: ["b"], mode: 0o777 },
    { op: "chown", as: "root", path: ["b"], uid: 1000 },
    { op: "chmod", as: "u1000", path: ["b"], mode: 0o2755 },
    { op: "mkdir", as: "u1000", path: ["c"], mode: 0o777 },
    { op: "chmod", as: "u1000", path: ["c"], mode: 0o2755 },
  ]);
  expect(tree.get("/b")!.mode).toBe(0o755);
  expect(tree.get("/c")!.mode).toBe(0o2755);
});

test("regression: a set-group-ID file created in a set-group-ID directory outside its group loses the bit only when group-executable", async () => {
  // Shrunk (after the generator learnt to make set-group-ID directories): 02644 lost the bit.
  const { tree } = await pin(0o777, [
    { op: "mkdir", as: "root", path: ["s"], mode: 0o777 },
    { op: "chmod", as: "root", path: ["s"], mode: 0o2777 },
    create("u1000", ["s", "x"], 0o2644),
    create("u1000", ["s", "y"], 0o2755),
    { op: "mkdir", as: "u1000", path: ["s", "d"], mode: 0o755 },
  ]);
  expect([tree.get("/s/x")!.mode, tree.get("/s/x")!.gid]).toEqual([0o2644, 0]);
  expect([tree.get("/s/y")!.mode, tree.get("/s/y")!.gid]).toEqual([0o755, 0]);
  expect([tree.get("/s/d")!.mode, tree.get("/s/d")!.gid]).toEqual([0o2755, 0]); // directories inherit both
});

// ---- the same rules, found by reading Linux while writing the model, confirmed on tmpfs ----

test("regression: O_TRUNC of an empty set-user-ID file by a user drops set-user-ID", async () => {
  const { tree } = await pin(0o777, [
    create("u1000", ["a"], 0o4666),
    { op: "close", as: "u1000", h: 0 },
    { op: "open", as: "u1001", path: ["a"], acc: 1, trunc: true, append: false },
  ]);
  expect(tree.get("/a")!.mode).toBe(0o666);
});

test("regression: truncate() by a user outside the file's group drops set-group-ID", async () => {
  const { tree } = await pin(0o777, [create("u1001", ["a"], 0o2666), { op: "truncate", as: "u1000", path: ["a"], size: 10 }]);
  expect([tree.get("/a")!.mode, tree.get("/a")!.size]).toEqual([0o666, 10]);
});

test("regression: chown() by a file's owner outside the file's group drops its set-group-ID", async () => {
  const { tree } = await pin(0o777, [
    create("u1000", ["a"], 0o2644),
    { op: "chown", as: "root", path: ["a"], gid: 1001 }, // root keeps a set-group-ID that is not group-executable
    { op: "chown", as: "u1000", path: ["a"], uid: 1000 },
    create("u1000", ["b"], 0o6755),
    { op: "chown", as: "root", path: ["b"], uid: 1000 }, // even root's chown drops set-user-ID, and set-group-ID where group-executable
  ]);
  expect([tree.get("/a")!.mode, tree.get("/a")!.gid]).toEqual([0o644, 1001]);
  expect(tree.get("/b")!.mode).toBe(0o755);
});

test("regression: setxattr(user.*) on another user's sticky directory fails with EPERM", async () => {
  const { results } = await pin(0o777, [
    { op: "mkdir", as: "u1000", path: ["a"], mode: 0o1777 },
    { op: "setxattr", as: "u1001", path: ["a"], name: "user.a", value: "v", flags: 0 },
    { op: "setxattr", as: "u1000", path: ["a"], name: "user.a", value: "v", flags: 0 },
    { op: "removexattr", as: "u1001", path: ["a"], name: "user.a" },
  ]);
  expect(results.slice(1)).toEqual([{ errno: "EPERM" }, ok, { errno: "EPERM" }]);
});

test("regression: rename() between two links of the same file does nothing, even without write permission", async () => {
  const { results, tree } = await pin(0o777, [
    { op: "mkdir", as: "root", path: ["a"], mode: 0o755 },
    create("root", ["a", "b"], 0o644),
    { op: "link", as: "root", from: ["a", "b"], to: ["a", "c"] },
    { op: "rename", as: "u1000", from: ["a", "b"], to: ["a", "c"] },
  ]);
  expect(results[3]).toEqual(ok);
  expect([tree.has("/a/b"), tree.has("/a/c"), tree.get("/a/b")!.nlink]).toEqual([true, true, 2]);
});

test("regression: rename() of a file onto a directory above it fails with ENOTEMPTY", async () => {
  const { results } = await pin(0o777, [{ op: "mkdir", as: "root", path: ["a"], mode: 0o755 }, create("root", ["a", "b"], 0o644), { op: "rename", as: "root", from: ["a", "b"], to: ["a"] }]);
  expect(results[2]).toEqual({ errno: "ENOTEMPTY" });
});

test("regression: rmdir() of a file in another user's sticky directory fails with EPERM before ENOTDIR", async () => {
  const { results } = await pin(0o777, [
    { op: "mkdir", as: "root", path: ["a"], mode: 0o1777 },
    create("u1001", ["a", "f"], 0o644),
    { op: "rmdir", as: "u1000", path: ["a", "f"] },
    { op: "rmdir", as: "u1001", path: ["a", "f"] },
  ]);
  expect(results.slice(2)).toEqual([{ errno: "EPERM" }, { errno: "ENOTDIR" }]);
});

test("regression: rename of a directory over an empty directory replaces it, over a non-empty one fails, and the tree survives a restart", async () => {
  const { results, tree } = await pin(0o777, [
    { op: "mkdir", as: "root", path: ["a"], mode: 0o755 },
    { op: "mkdir", as: "root", path: ["a", "x"], mode: 0o755 },
    { op: "mkdir", as: "root", path: ["b"], mode: 0o755 },
    { op: "mkdir", as: "root", path: ["b", "y"], mode: 0o700 },
    { op: "rename", as: "root", from: ["a", "x"], to: ["b", "y"] }, // across directories, over an empty one
    { op: "rename", as: "root", from: ["b"], to: ["a"] }, // "a" is empty now
    { op: "mkdir", as: "root", path: ["c"], mode: 0o755 },
    { op: "mkdir", as: "root", path: ["c", "z"], mode: 0o755 },
    { op: "rename", as: "root", from: ["c"], to: ["a"] },
    { op: "rename", as: "root", from: ["c", "z"], to: ["c", "z"] },
    { op: "restart" },
  ]);
  expect(results.slice(4, 6)).toEqual([ok, ok]);
  expect(results.slice(8, 10)).toEqual([{ errno: "ENOTEMPTY" }, ok]);
  expect([...tree.keys()]).toEqual(["/", "/a", "/a/y", "/c", "/c/z"]);
  expect([tree.get("/")!.nlink, tree.get("/a")!.nlink, tree.get("/a/y")!.nlink, tree.get("/a/y")!.mode]).toEqual([4, 3, 2, 0o755]);
});
