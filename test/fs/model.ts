/**
 * A reference model of the filesystem: a plain in-memory POSIX tree, path
 * based, with Linux's choice of errno and Linux's order of checks.
 *
 * It is written from the behaviour of Linux (fs/namei.c, fs/attr.c,
 * fs/xattr.c, fs/open.c, inode_init_owner, and the man pages of the system
 * calls), not from src/fs, and is deliberately simple: nodes in Maps, file
 * bytes in one growable buffer, nlink of a directory counted from its
 * subdirectories. It is the one definition of correctness for the generated
 * sequences in model_test.ts, and tmpfs_oracle_test.ts checks it against the
 * kernel.
 *
 * What it does not model, because the kernel's VFS enforces it before any
 * filesystem sees the call, and it is a sysctl rather than POSIX:
 * fs.protected_hardlinks and fs.protected_regular (the tmpfs oracle skips
 * the steps those rules would refuse). Symbolic links are never followed:
 * every target the generator makes is a dangling absolute path, so following
 * one, as a path component or as the last component of an operation that
 * follows links, fails with ENOENT, and that is what the model answers.
 * Times, inode numbers and directory sizes are not modelled.
 */

export const S_ISUID = 0o4000;
export const S_ISGID = 0o2000;
export const S_ISVTX = 0o1000;
const R = 4;
const W = 2;
const X = 1;

/** Who calls: no supplementary groups. */
export interface Caller {
  readonly uid: number;
  readonly gid: number;
}

export type Kind = "file" | "dir" | "symlink";

/** An errno answered by the model. */
export class ModelError extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}
const no = (code: string): never => {
  throw new ModelError(code);
};

export interface Node {
  readonly id: number;
  readonly kind: Kind;
  /** Permission bits, 0o7777. */
  mode: number;
  uid: number;
  gid: number;
  /** Files and symlinks: names linking to it. */
  links: number;
  /** Directories: still linked into the tree. */
  live: boolean;
  /** Files: bytes [0, size) of `data` (the rest of the buffer is zero). */
  data: Uint8Array;
  size: number;
  target: string;
  readonly xattrs: Map<string, Uint8Array>;
  readonly children: Map<string, Node>;
  parent: Node | undefined;
}

export interface Handle {
  readonly node: Node;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly append: boolean;
}

/** open(2) access modes. */
export type Access = 0 | 1 | 2;
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

export class Model {
  private nextId = 1;
  readonly root: Node;

  constructor(rootMode: number, rootOwner: Caller = { uid: 0, gid: 0 }) {
    this.root = this.node("dir", rootMode, rootOwner.uid, rootOwner.gid);
    this.root.parent = this.root;
  }

  // ---- helpers ----------------------------------------------------------------

  private node(kind: Kind, mode: number, uid: number, gid: number): Node {
    return {
      id: this.nextId++,
      kind,
      mode,
      uid,
      gid,
      links: 0,
      live: true,
      data: new Uint8Array(0),
      size: 0,
      target: "",
      xattrs: new Map(),
      children: new Map(),
      parent: undefined,
    };
  }

  static nlink(n: Node): number {
    if (n.kind !== "dir") return n.links;
    if (!n.live) return 0;
    let subdirs = 0;
    for (const c of n.children.values()) if (c.kind === "dir") subdirs++;
    return 2 + subdirs;
  }

  /** The classic owner/group/other check; root may read and write anything, and execute what has an x bit. */
  static allowed(c: Caller, n: Node, want: number): boolean {
    if (c.uid === 0) return (want & X) === 0 || n.kind === "dir" || (n.mode & 0o111) !== 0;
    const shift = c.uid === n.uid ? 6 : c.gid === n.gid ? 3 : 0;
    return (((n.mode >> shift) & 7) & want) === want;
  }

  private static inGroupOrRoot(c: Caller, gid: number): boolean {
    return c.uid === 0 || c.gid === gid;
  }

  /**
   * Resolve every component but the last, as the kernel's path walk does:
   * search permission on each directory (the last parent included), ENOENT
   * for a missing component or a (dangling) symlink, ENOTDIR for a non-directory.
   */
  parentOf(c: Caller, path: readonly string[]): { dir: Node; name: string } {
    let cur = this.root;
    for (let i = 0; i < path.length - 1; i++) {
      if (!Model.allowed(c, cur, X)) no("EACCES");
      const child = cur.children.get(path[i]!) ?? no("ENOENT");
      if (child.kind === "symlink") no("ENOENT");
      if (child.kind !== "dir") no("ENOTDIR");
      cur = child;
    }
    if (!Model.allowed(c, cur, X)) no("EACCES");
    return { dir: cur, name: path[path.length - 1]! };
  }

  /** The node a path names; `follow` for calls that follow a final symlink (which then fails, being dangling). */
  resolve(c: Caller, path: readonly string[], follow: boolean): Node {
    const { dir, name } = this.parentOf(c, path);
    const n = dir.children.get(name) ?? no("ENOENT");
    if (follow && n.kind === "symlink") no("ENOENT");
    return n;
  }

  /** inode_init_owner and the set-group-ID stripping of a new non-directory. */
  private newChild(c: Caller, dir: Node, name: string, kind: Kind, perm: number): Node {
    let gid = c.gid;
    if (dir.mode & S_ISGID) {
      gid = dir.gid;
      if (kind === "dir") perm |= S_ISGID;
      else if ((perm & (S_ISGID | 0o010)) === (S_ISGID | 0o010) && !Model.inGroupOrRoot(c, dir.gid)) perm &= ~S_ISGID;
    }
    const n = this.node(kind, perm, c.uid, gid);
    this.attach(dir, name, n);
    return n;
  }

  private attach(dir: Node, name: string, n: Node): void {
    dir.children.set(name, n);
    if (n.kind === "dir") {
      n.parent = dir;
      n.live = true;
    } else n.links++;
  }

  private detach(dir: Node, name: string): void {
    const n = dir.children.get(name)!;
    dir.children.delete(name);
    if (n.kind === "dir") n.live = false;
    else n.links--;
  }

  /** may_delete: write and search on the directory, the sticky bit, the kinds. */
  private mayDelete(c: Caller, dir: Node, victim: Node, isDir: boolean): void {
    if (!Model.allowed(c, dir, W | X)) no("EACCES");
    if (dir.mode & S_ISVTX && c.uid !== 0 && c.uid !== dir.uid && c.uid !== victim.uid) no("EPERM");
    if (isDir) {
      if (victim.kind !== "dir") no("ENOTDIR");
    } else if (victim.kind === "dir") no("EISDIR");
  }

  /** A write or truncate by anyone without CAP_FSETID drops set-user-ID, and set-group-ID where it means something. */
  private killPrivs(c: Caller, n: Node): void {
    if (c.uid === 0 || n.kind !== "file") return;
    let m = n.mode;
    if (m & S_ISUID) m &= ~S_ISUID;
    if (m & S_ISGID && (m & 0o010 || !Model.inGroupOrRoot(c, n.gid))) m &= ~S_ISGID;
    n.mode = m;
  }

  private static setSize(n: Node, size: number): void {
    // Bytes of the buffer past `size` are kept zero, so growing again reads zeros.
    if (size < n.size) n.data.fill(0, size, Math.min(n.size, n.data.length));
    n.size = size;
  }

  private static reserve(n: Node, bytes: number): void {
    if (bytes <= n.data.length) return;
    const grown = new Uint8Array(Math.max(bytes, n.data.length * 2, 4096));
    grown.set(n.data);
    n.data = grown;
  }

  private openNode(c: Caller, n: Node, acc: Access, trunc: boolean, append: boolean): Handle {
    if (n.kind === "symlink") no("ENOENT");
    const want = (acc === 0 ? R : acc === 1 ? W : R | W) | (trunc ? W : 0);
    if (n.kind === "dir" && want & W) no("EISDIR");
    if (!Model.allowed(c, n, want)) no("EACCES");
    if (trunc && n.kind === "file") {
      Model.setSize(n, 0);
      this.killPrivs(c, n);
    }
    return { node: n, readable: acc !== 1, writable: acc !== 0, append };
  }

  // ---- operations ---------------------------------------------------------------

  /** open(path, O_CREAT | …, mode). */
  create(c: Caller, path: readonly string[], mode: number, acc: Access, o: { excl: boolean; trunc: boolean; append: boolean }): Handle {
    const { dir, name } = this.parentOf(c, path);
    const existing = dir.children.get(name);
    if (existing) {
      if (o.excl) no("EEXIST");
      if (existing.kind === "dir") no("EISDIR");
      return this.openNode(c, existing, acc, o.trunc, o.append);
    }
    if (!Model.allowed(c, dir, W | X)) no("EACCES");
    const n = this.newChild(c, dir, name, "file", mode & 0o7777);
    // A file this call created is opened without a permission check, and not truncated.
    return { node: n, readable: acc !== 1, writable: acc !== 0, append: o.append };
  }

  open(c: Caller, path: readonly string[], acc: Access, o: { trunc: boolean; append: boolean }): Handle {
    return this.openNode(c, this.resolve(c, path, true), acc, o.trunc, o.append);
  }

  write(c: Caller, h: Handle, offset: number, bytes: Uint8Array): number {
    if (!h.writable) no("EBADF");
    const n = h.node;
    if (bytes.length === 0) return 0;
    const at = h.append ? n.size : offset;
    this.killPrivs(c, n);
    Model.reserve(n, at + bytes.length);
    n.data.set(bytes, at);
    n.size = Math.max(n.size, at + bytes.length);
    return bytes.length;
  }

  read(_c: Caller, h: Handle, offset: number, length: number): Uint8Array {
    if (!h.readable) no("EBADF");
    const n = h.node;
    if (n.kind === "dir") no("EISDIR");
    const end = Math.min(n.size, offset + length);
    const out = new Uint8Array(Math.max(0, end - offset)); // holes (and growth by truncate) read as zeros
    if (offset < n.data.length) out.set(n.data.subarray(offset, Math.min(end, n.data.length)));
    return out;
  }

  truncate(c: Caller, path: readonly string[], size: number): void {
    const n = this.resolve(c, path, true);
    if (n.kind === "dir") no("EISDIR");
    if (n.kind !== "file") no("EINVAL");
    if (!Model.allowed(c, n, W)) no("EACCES");
    Model.setSize(n, size);
    this.killPrivs(c, n);
  }

  ftruncate(c: Caller, h: Handle, size: number): void {
    if (!h.writable || h.node.kind !== "file") no("EINVAL");
    Model.setSize(h.node, size);
    this.killPrivs(c, h.node);
  }

  chmod(c: Caller, path: readonly string[], mode: number): void {
    const n = this.resolve(c, path, true);
    if (c.uid !== 0 && c.uid !== n.uid) no("EPERM");
    let m = mode & 0o7777;
    // Directories too: chmod(2) drops S_ISGID when the caller is not in the file's group.
    if (!Model.inGroupOrRoot(c, n.gid)) m &= ~S_ISGID;
    n.mode = m;
  }

  /** lchown(path, uid ?? -1, gid ?? -1): symlinks are changed themselves. */
  chown(c: Caller, path: readonly string[], uid: number | undefined, gid: number | undefined): void {
    const n = this.resolve(c, path, false);
    if (uid !== undefined && !(c.uid === 0 || (c.uid === n.uid && uid === n.uid))) no("EPERM");
    if (gid !== undefined && !(c.uid === 0 || (c.uid === n.uid && (gid === n.gid || c.gid === gid)))) no("EPERM");
    if (n.kind !== "dir") {
      // chown always kills set-user-ID on non-directories, even for root; set-group-ID
      // when it is group-executable or the caller could not have set it.
      let m = n.mode;
      if (m & S_ISUID) m &= ~S_ISUID;
      if (m & S_ISGID && (m & 0o010 || !Model.inGroupOrRoot(c, n.gid))) m &= ~S_ISGID;
      n.mode = m;
    }
    if (uid !== undefined) n.uid = uid;
    if (gid !== undefined) n.gid = gid;
  }

  mkdir(c: Caller, path: readonly string[], mode: number): void {
    const { dir, name } = this.parentOf(c, path);
    if (dir.children.has(name)) no("EEXIST");
    if (!Model.allowed(c, dir, W | X)) no("EACCES");
    this.newChild(c, dir, name, "dir", mode & 0o1777);
  }

  symlink(c: Caller, path: readonly string[], target: string): void {
    const { dir, name } = this.parentOf(c, path);
    if (dir.children.has(name)) no("EEXIST");
    if (!Model.allowed(c, dir, W | X)) no("EACCES");
    const n = this.newChild(c, dir, name, "symlink", 0o777);
    n.target = target;
    n.size = Buffer.byteLength(target);
  }

  /** linkat(2) without AT_SYMLINK_FOLLOW: a symlink is linked itself. */
  link(c: Caller, from: readonly string[], to: readonly string[]): void {
    const src = this.resolve(c, from, false);
    const { dir, name } = this.parentOf(c, to);
    if (dir.children.has(name)) no("EEXIST");
    if (!Model.allowed(c, dir, W | X)) no("EACCES");
    if (src.kind === "dir") no("EPERM");
    this.attach(dir, name, src);
  }

  unlink(c: Caller, path: readonly string[]): void {
    const { dir, name } = this.parentOf(c, path);
    const victim = dir.children.get(name) ?? no("ENOENT");
    this.mayDelete(c, dir, victim, false);
    this.detach(dir, name);
  }

  rmdir(c: Caller, path: readonly string[]): void {
    const { dir, name } = this.parentOf(c, path);
    const victim = dir.children.get(name) ?? no("ENOENT");
    this.mayDelete(c, dir, victim, true);
    if (victim.children.size > 0) no("ENOTEMPTY");
    this.detach(dir, name);
  }

  /** Is `a` an ancestor of `b` or `b` itself? */
  private static within(a: Node, b: Node): boolean {
    for (let at = b; ; at = at.parent!) {
      if (at === a) return true;
      if (at.parent === at) return false;
    }
  }

  /** The child of `top` on the way down to `below` (or `below` itself). */
  private static childTowards(top: Node, below: Node): Node {
    let at = below;
    while (at.parent !== top) at = at.parent!;
    return at;
  }

  /** rename(2), in the order of do_renameat2, lock_rename and vfs_rename. */
  rename(c: Caller, from: readonly string[], to: readonly string[]): void {
    const { dir: od, name: on } = this.parentOf(c, from);
    const { dir: nd, name: nn } = this.parentOf(c, to);
    const src = od.children.get(on) ?? no("ENOENT");
    const dst = nd.children.get(nn);
    if (od !== nd) {
      if (Model.within(od, nd)) {
        // the source may not be an ancestor of the target
        if (Model.childTowards(od, nd) === src) no("EINVAL");
      } else if (Model.within(nd, od)) {
        // the target may not be an ancestor of the source
        if (Model.childTowards(nd, od) === dst) no("ENOTEMPTY");
      }
    }
    if (dst === src) return; // the same inode: nothing happens, and nothing is checked
    const isDir = src.kind === "dir";
    this.mayDelete(c, od, src, isDir);
    if (dst) this.mayDelete(c, nd, dst, isDir);
    else if (!Model.allowed(c, nd, W | X)) no("EACCES");
    // moving a directory rewrites its ".."
    if (od !== nd && isDir && !Model.allowed(c, src, W)) no("EACCES");
    if (dst && dst.kind === "dir" && dst.children.size > 0) no("ENOTEMPTY");
    if (dst) this.detach(nd, nn);
    od.children.delete(on);
    nd.children.set(nn, src);
    if (isDir) src.parent = nd;
  }

  /** xattr_permission. */
  private static xattrAllowed(c: Caller, n: Node, name: string, write: boolean): void {
    if (name.startsWith("security.")) {
      // No check by the VFS; the capability LSM lets only CAP_SYS_ADMIN write.
      if (write && c.uid !== 0) no("EPERM");
      return;
    }
    if (name.startsWith("trusted.")) {
      if (c.uid !== 0) no(write ? "EPERM" : "ENODATA");
      return;
    }
    if (name.startsWith("user.")) {
      if (n.kind !== "file" && n.kind !== "dir") no(write ? "EPERM" : "ENODATA");
      if (write && n.kind === "dir" && n.mode & S_ISVTX && c.uid !== 0 && c.uid !== n.uid) no("EPERM");
    }
    if (!Model.allowed(c, n, write ? W : R)) no("EACCES");
  }

  /** lsetxattr. */
  setxattr(c: Caller, path: readonly string[], name: string, value: Uint8Array, flags: number): void {
    const n = this.resolve(c, path, false);
    Model.xattrAllowed(c, n, name, true);
    const exists = n.xattrs.has(name);
    if (flags & XATTR_CREATE && exists) no("EEXIST");
    if (flags & XATTR_REPLACE && !exists) no("ENODATA");
    n.xattrs.set(name, new Uint8Array(value));
  }

  removexattr(c: Caller, path: readonly string[], name: string): void {
    const n = this.resolve(c, path, false);
    Model.xattrAllowed(c, n, name, true);
    if (!n.xattrs.delete(name)) no("ENODATA");
  }

  getxattr(c: Caller, path: readonly string[], name: string): Uint8Array {
    const n = this.resolve(c, path, false);
    Model.xattrAllowed(c, n, name, false);
    return n.xattrs.get(name) ?? no("ENODATA");
  }

  /** llistxattr: no permission check; trusted.* names are visible to root only. */
  listxattr(c: Caller, path: readonly string[]): string[] {
    const n = this.resolve(c, path, false);
    return [...n.xattrs.keys()].filter((k) => c.uid === 0 || !k.startsWith("trusted.")).sort();
  }

  /** opendir + readdir: names other than "." and "..", sorted. */
  readdir(c: Caller, path: readonly string[]): string[] {
    const n = this.resolve(c, path, true);
    if (n.kind !== "dir") no("ENOTDIR");
    if (!Model.allowed(c, n, R)) no("EACCES");
    return [...n.children.keys()].sort();
  }
}
