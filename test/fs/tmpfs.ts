/**
 * A real tmpfs directory as a subject for the sequences of ops.ts: the
 * kernel's own answers. Used by tmpfs_oracle_test.ts and, when the tests run
 * as root, by regressions_test.ts.
 *
 * Callers: the tests run as root; a step of user 1000 or 1001 runs under
 * process.setegid/seteuid (process-wide in Bun: its I/O threads act with the
 * same credentials), with no supplementary groups, and root's ids are
 * restored before anything else runs. Whoever runs a Filesystem in the same
 * process should make its directory world-writable, so that LevelDB, should
 * it create a file while a step runs as a user, is not refused.
 *
 * Extended attributes have no node:fs API: the l*xattr calls go through
 * bun:ffi to libc (compiled on first use).
 *
 * Not compared, because tmpfs cannot express it the same way: inode numbers
 * (hard links are compared as "same inode as the first path"), directory
 * sizes, times and blocks. Steps that Linux's sysctl hardening would refuse
 * before any filesystem sees them (fs.protected_hardlinks,
 * fs.protected_regular, fs.protected_symlinks; FUSE filesystems get the same
 * treatment from the kernel) are for the runner to skip: see hardeningRefuses.
 */
import { cc, ptr } from "bun:ffi";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { chmod, lchown, link, lstat, mkdir, open, readdir, readFile, readlink, rename, rmdir, symlink, truncate, unlink, type FileHandle } from "node:fs/promises";
import { constants as osConstants, tmpdir } from "node:os";
import { join } from "node:path";
import { Model, S_ISGID, S_ISUID, S_ISVTX, type Node } from "./model.ts";
import { bytesFor, CALLERS, followsFinal, openFlags, type CallerName, type EntrySnap, type Op, type Path, type StepResult, type Subject, type Tree } from "./ops.ts";

/** Can this process act as users 1000 and 1001 (root, with seteuid, and no supplementary groups)? */
export const canSwitchUsers = process.getuid?.() === 0 && typeof process.seteuid === "function" && typeof process.setegid === "function" && (process.getgroups?.() ?? []).length <= 1;

// ---- extended attributes through libc ---------------------------------------------

const XATTR_C = `
extern long lgetxattr(const char *path, const char *name, void *value, unsigned long size);
extern long llistxattr(const char *path, char *list, unsigned long size);
extern int lsetxattr(const char *path, const char *name, const void *value, unsigned long size, int flags);
extern int lremovexattr(const char *path, const char *name);
extern int *__errno_location(void);
int x_get(const char *p, const char *n, void *buf, int size) { long r = lgetxattr(p, n, buf, size); return r < 0 ? -*__errno_location() : (int)r; }
int x_list(const char *p, char *buf, int size) { long r = llistxattr(p, buf, size); return r < 0 ? -*__errno_location() : (int)r; }
int x_set(const char *p, const char *n, const void *v, int size, int flags) { return lsetxattr(p, n, v, size, flags) < 0 ? -*__errno_location() : 0; }
int x_remove(const char *p, const char *n) { return lremovexattr(p, n) < 0 ? -*__errno_location() : 0; }
`;

type XattrLib = {
  x_get: (p: Buffer, n: Buffer, buf: number, size: number) => number;
  x_list: (p: Buffer, buf: number, size: number) => number;
  x_set: (p: Buffer, n: Buffer, v: number, size: number, flags: number) => number;
  x_remove: (p: Buffer, n: Buffer) => number;
};
let xattrLib: XattrLib | undefined;
function lib(): XattrLib {
  if (xattrLib) return xattrLib;
  const dir = mkdtempSync(join(tmpdir(), "objectfs-xattr-"));
  try {
    writeFileSync(join(dir, "xattr.c"), XATTR_C);
    xattrLib = cc({
      source: join(dir, "xattr.c"),
      symbols: {
        x_get: { args: ["ptr", "ptr", "ptr", "i32"], returns: "i32" },
        x_list: { args: ["ptr", "ptr", "i32"], returns: "i32" },
        x_set: { args: ["ptr", "ptr", "ptr", "i32", "i32"], returns: "i32" },
        x_remove: { args: ["ptr", "ptr"], returns: "i32" },
      },
    }).symbols as unknown as XattrLib;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return xattrLib;
}
const ERRNO_NAMES = new Map<number, string>();
for (const [name, n] of Object.entries(osConstants.errno)) if (!ERRNO_NAMES.has(n)) ERRNO_NAMES.set(n, name);

class Errno extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}
const cstr = (s: string) => Buffer.from(`${s}\0`);
function check(r: number): number {
  if (r < 0) throw new Errno(ERRNO_NAMES.get(-r) ?? `errno ${-r}`);
  return r;
}
const scratch = new Uint8Array(65536);
export const xattr = {
  get(path: string, name: string): Uint8Array {
    const n = check(lib().x_get(cstr(path), cstr(name), ptr(scratch), scratch.length));
    return scratch.slice(0, n);
  },
  list(path: string): string[] {
    const n = check(lib().x_list(cstr(path), ptr(scratch), scratch.length));
    return Buffer.from(scratch.subarray(0, n)).toString("utf8").split("\0").filter((s) => s.length > 0);
  },
  set(path: string, name: string, value: Uint8Array, flags: number): void {
    const buf = new Uint8Array(Math.max(1, value.length));
    buf.set(value);
    check(lib().x_set(cstr(path), cstr(name), ptr(buf), value.length, flags));
  },
  remove(path: string, name: string): void {
    check(lib().x_remove(cstr(path), cstr(name)));
  },
};

// ---- sysctl hardening -------------------------------------------------------------

function sysctl(name: string): number {
  try {
    return Number(readFileSync(`/proc/sys/fs/${name}`, "utf8").trim());
  } catch {
    return 0;
  }
}
const PROTECTED_HARDLINKS = sysctl("protected_hardlinks");
const PROTECTED_REGULAR = sysctl("protected_regular");
const PROTECTED_SYMLINKS = sysctl("protected_symlinks");

/** Walk the model as root, without permission checks: each directory on the way and the last node (if any). */
function walk(model: Model, path: Path): { dirs: Node[]; node: Node | undefined } {
  const dirs: Node[] = [model.root];
  let node: Node | undefined = model.root;
  for (let i = 0; i < path.length; i++) {
    node = node.children.get(path[i]!);
    if (!node) return { dirs, node: undefined };
    if (i < path.length - 1) {
      if (node.kind !== "dir") return { dirs, node: undefined };
      dirs.push(node);
    }
  }
  return { dirs, node };
}

/** Would fs.protected_* refuse this step (as the kernel does before calling any filesystem)? */
export function hardeningRefuses(model: Model, op: Op): boolean {
  if (op.op === "restart") return false;
  const c = CALLERS[op.as];
  if (PROTECTED_HARDLINKS && op.op === "link" && c.uid !== 0) {
    const src = walk(model, op.from).node;
    if (src && src.uid !== c.uid) {
      const safe = src.kind === "file" && !(src.mode & S_ISUID) && (src.mode & (S_ISGID | 0o010)) !== (S_ISGID | 0o010) && Model.allowed(c, src, 6);
      if (!safe) return true;
    }
  }
  if (PROTECTED_REGULAR && op.op === "create") {
    const { dirs, node } = walk(model, op.path);
    const dir = dirs[dirs.length - 1]!;
    const open = dir.mode & 0o002 || (PROTECTED_REGULAR >= 2 && dir.mode & 0o020);
    if (node?.kind === "file" && dir.mode & S_ISVTX && open && node.uid !== dir.uid && node.uid !== c.uid) return true;
  }
  if (PROTECTED_SYMLINKS) {
    const paths: Path[] = "path" in op ? [op.path] : "from" in op ? [op.from, op.to] : [];
    for (const path of paths) {
      let dir = model.root;
      for (let i = 0; i < path.length; i++) {
        const n = dir.children.get(path[i]!);
        if (!n) break;
        const followed = i < path.length - 1 || followsFinal(op);
        if (n.kind === "symlink" && followed && n.uid !== c.uid && (dir.mode & (S_ISVTX | 0o002)) === (S_ISVTX | 0o002) && n.uid !== dir.uid) return true;
        if (n.kind !== "dir") break;
        dir = n;
      }
    }
  }
  return false;
}

// ---- tmpfs as a subject -------------------------------------------------------------

/** Run `fn` with the effective ids of `who`. */
export async function as<T>(who: CallerName, fn: () => Promise<T>): Promise<T> {
  const c = CALLERS[who];
  if (c.uid === 0) return fn();
  process.setegid!(c.gid);
  process.seteuid!(c.uid);
  try {
    return await fn();
  } finally {
    process.seteuid!(0);
    process.setegid!(0);
  }
}

interface TmpfsHandle {
  readonly fh: FileHandle;
  readonly writable: boolean;
}

export class TmpfsSubject implements Subject {
  readonly name = "tmpfs";
  private handles: TmpfsHandle[] = [];
  constructor(readonly root: string) {}

  private p(path: Path): string {
    return join(this.root, ...path);
  }

  private handle(h: number): TmpfsHandle | undefined {
    return this.handles.length === 0 ? undefined : this.handles[h % this.handles.length];
  }

  async step(op: Op): Promise<StepResult> {
    if (op.op === "restart") {
      await this.closeHandles();
      return { value: undefined };
    }
    try {
      return await as(op.as, () => this.run(op));
    } catch (e) {
      if (e instanceof Errno) return { errno: e.code };
      const code = (e as { code?: unknown }).code;
      if (typeof code === "string" && code.startsWith("E")) return { errno: code };
      throw e;
    }
  }

  private async run(op: Exclude<Op, { op: "restart" }>): Promise<StepResult> {
    switch (op.op) {
      case "create":
        this.handles.push({ fh: await open(this.p(op.path), openFlags({ ...op, creat: true }), op.mode), writable: op.acc !== 0 });
        return { value: undefined };
      case "open":
        this.handles.push({ fh: await open(this.p(op.path), openFlags(op)), writable: op.acc !== 0 });
        return { value: undefined };
      case "close": {
        const h = this.handle(op.h);
        if (!h) return { value: "no handle" };
        this.handles.splice(this.handles.indexOf(h), 1);
        await h.fh.close();
        return { value: undefined };
      }
      case "fsync": {
        const h = this.handle(op.h);
        if (!h) return { value: "no handle" };
        await h.fh.sync();
        return { value: undefined };
      }
      case "write": {
        const h = this.handle(op.h);
        if (!h) return { value: "no handle" };
        const { bytesWritten } = await h.fh.write(bytesFor(op.seed, op.size), 0, op.size, op.offset);
        return { value: bytesWritten };
      }
      case "read": {
        const h = this.handle(op.h);
        if (!h) return { value: "no handle" };
        if (op.length === 0) {
          // Node and Bun return at once from a zero-length read; the kernel would still say
          // EBADF (not open for reading) or EISDIR. A one-byte read makes the same checks.
          await h.fh.read(new Uint8Array(1), 0, 1, op.offset);
          return { value: new Uint8Array(0) };
        }
        const buf = new Uint8Array(op.length);
        let got = 0;
        while (got < op.length) {
          const { bytesRead } = await h.fh.read(buf, got, op.length - got, op.offset + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        return { value: buf.slice(0, got) };
      }
      case "truncate":
        await truncate(this.p(op.path), op.size);
        return { value: undefined };
      case "ftruncate": {
        const h = this.handle(op.h);
        if (!h) return { value: "no handle" };
        await h.fh.truncate(op.size);
        return { value: undefined };
      }
      case "rename":
        await rename(this.p(op.from), this.p(op.to));
        return { value: undefined };
      case "link":
        await link(this.p(op.from), this.p(op.to));
        return { value: undefined };
      case "unlink":
        await unlink(this.p(op.path));
        return { value: undefined };
      case "mkdir":
        await mkdir(this.p(op.path), { mode: op.mode });
        return { value: undefined };
      case "rmdir":
        await rmdir(this.p(op.path));
        return { value: undefined };
      case "chmod":
        await chmod(this.p(op.path), op.mode);
        return { value: undefined };
      case "chown":
        await lchown(this.p(op.path), op.uid ?? -1, op.gid ?? -1);
        return { value: undefined };
      case "symlink":
        await symlink(op.target, this.p(op.path));
        return { value: undefined };
      case "setxattr":
        xattr.set(this.p(op.path), op.name, Buffer.from(op.value), op.flags);
        return { value: undefined };
      case "removexattr":
        xattr.remove(this.p(op.path), op.name);
        return { value: undefined };
      case "getxattr":
        return { value: xattr.get(this.p(op.path), op.name) };
      case "listxattr":
        return { value: xattr.list(this.p(op.path)).sort() };
      case "readdir":
        return { value: (await readdir(this.p(op.path))).sort() };
    }
  }

  private async closeHandles(): Promise<void> {
    const hs = this.handles;
    this.handles = [];
    for (const h of hs) await h.fh.close();
  }

  async snapshot(): Promise<Tree> {
    const tree: Tree = new Map();
    const seen = new Map<number, string>();
    const visit = async (path: string, full: string) => {
      const st = await lstat(full);
      const kind = st.isDirectory() ? "dir" : st.isFile() ? "file" : st.isSymbolicLink() ? "symlink" : "other";
      if (!seen.has(st.ino)) seen.set(st.ino, path);
      // security.* only as the sequences set it (an LSM may label every file with its own).
      const names = xattr.list(full).filter((n) => n.startsWith("user.") || n.startsWith("trusted.") || n === "security.s");
      const entry: EntrySnap = {
        kind,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        nlink: st.nlink,
        ...(kind === "dir" ? {} : { size: st.size }),
        ...(kind === "file" ? { data: new Uint8Array(await readFile(full)) } : {}),
        ...(kind === "symlink" ? { target: await readlink(full) } : {}),
        xattrs: Object.fromEntries(names.sort().map((n) => [n, Buffer.from(xattr.get(full, n)).toString("hex")])),
        same: seen.get(st.ino)!,
      };
      tree.set(path, entry);
      if (kind === "dir") for (const name of (await readdir(full)).sort()) await visit(path === "/" ? `/${name}` : `${path}/${name}`, join(full, name));
    };
    await visit("/", this.root);
    return tree;
  }

  async close(): Promise<void> {
    await this.closeHandles();
  }
}
