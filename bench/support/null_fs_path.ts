/**
 * The do-nothing FUSE filesystem on fuse-native's high-level path API
 * (libfuse 2.9's fuse_new, one request at a time per libfuse thread, each
 * waiting on a semaphore for JS), as objectfs was served before the
 * low-level session: bench/mount.ts shows it beside bench/support/null_fs.ts
 * to tell the binding's costs from the filesystem's.
 *
 * The mount options objectfs used with that API: big_writes,
 * max_write/max_read 131072, use_ino, default_permissions, entry and negative
 * timeout 1 s, attribute timeout 0 (each hard link is its own kernel inode
 * there), no op timeout. Writes are accepted and
 * discarded (only the size is kept), reads return zeros, and names and
 * attributes live in a small in-memory map so create, stat, readdir, mkdir,
 * rename, links and `tar -x` work.
 *
 *   bun bench/support/null_fs_path.ts MOUNTPOINT
 *
 * Prints one line ("ready MOUNTPOINT") once mounted; SIGTERM or SIGINT unmount
 * and exit. It must run in its own process: sync fs calls on a mount from the
 * process that serves it deadlock.
 */
import Fuse from "fuse-native";
import { constants } from "node:os";
import { resolve } from "node:path";

type Cb = (err: number, ...rest: unknown[]) => void;

/** Negative errno values, as fuse-native callbacks take them. */
const E = Object.fromEntries(Object.entries(constants.errno).map(([k, v]) => [k, -v])) as Record<keyof typeof constants.errno, number>;

interface Node {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  rdev: number;
  atime: number;
  mtime: number;
  ctime: number;
  target?: string;
  xattrs?: Map<string, Buffer>;
  /** Directories only: child name → node. */
  children?: Map<string, Node>;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFMT = 0o170000;

const mountpoint = resolve(process.argv[2] ?? "");
if (!process.argv[2]) {
  console.error("usage: bun bench/support/null_fs_path.ts MOUNTPOINT");
  process.exit(2);
}

let nextIno = 2;
const now = () => Date.now();
function newNode(mode: number, uid: number, gid: number, extra: Partial<Node> = {}): Node {
  const t = now();
  return { ino: nextIno++, mode, uid, gid, size: 0, nlink: (mode & S_IFMT) === S_IFDIR ? 2 : 1, rdev: 0, atime: t, mtime: t, ctime: t, ...extra };
}
const root: Node = { ...newNode(S_IFDIR | 0o755, process.getuid?.() ?? 0, process.getgid?.() ?? 0), ino: 1, children: new Map() };
nextIno = 2;

/** Open file handles → node, so a write through a handle reaches the file whatever its name is now. */
const handles = new Map<number, Node>();
let nextFh = 1;

function split(path: string): { parent: string; name: string } {
  const i = path.lastIndexOf("/");
  return { parent: i <= 0 ? "/" : path.slice(0, i), name: path.slice(i + 1) };
}

function lookup(path: string): Node | undefined {
  if (path === "/" || path === "") return root;
  let at: Node | undefined = root;
  for (const part of path.split("/")) {
    if (!part) continue;
    at = at?.children?.get(part);
    if (!at) return undefined;
  }
  return at;
}

function toStat(n: Node) {
  return {
    mode: n.mode,
    uid: n.uid,
    gid: n.gid,
    size: (n.mode & S_IFMT) === S_IFDIR ? 4096 : n.size,
    dev: 0,
    nlink: n.nlink,
    ino: n.ino,
    rdev: n.rdev,
    blksize: 4096,
    blocks: Math.ceil(n.size / 512),
    atime: n.atime,
    mtime: n.mtime,
    ctime: n.ctime,
  };
}

let fuse: Fuse;
function caller(): { uid: number; gid: number } {
  const c = fuse.context();
  return c ? { uid: c.uid, gid: c.gid } : { uid: 0, gid: 0 };
}

/** Add a new entry at `path`: errno or the node. */
function add(path: string, make: () => Node): number | Node {
  const { parent, name } = split(path);
  const p = lookup(parent);
  if (!p) return E.ENOENT;
  if (!p.children) return E.ENOTDIR;
  if (p.children.has(name)) return E.EEXIST;
  const n = make();
  p.children.set(name, n);
  if ((n.mode & S_IFMT) === S_IFDIR) p.nlink++;
  p.mtime = p.ctime = now();
  return n;
}

function remove(path: string, dir: boolean): number {
  const { parent, name } = split(path);
  const p = lookup(parent);
  const n = p?.children?.get(name);
  if (!p || !n) return E.ENOENT;
  const isDir = (n.mode & S_IFMT) === S_IFDIR;
  if (dir && !isDir) return E.ENOTDIR;
  if (!dir && isDir) return E.EISDIR;
  if (dir && n.children!.size > 0) return E.ENOTEMPTY;
  p.children!.delete(name);
  if (isDir) p.nlink--;
  n.nlink--;
  p.mtime = p.ctime = now();
  return 0;
}

const withNode = (path: string, cb: Cb, f: (n: Node) => void) => {
  const n = lookup(path);
  if (!n) return cb(E.ENOENT);
  f(n);
  n.ctime = now();
  cb(0);
};

const ops = {
  init: (cb: Cb) => cb(0),
  statfs: (_path: string, cb: Cb) =>
    cb(0, { bsize: 4096, frsize: 4096, blocks: 1 << 30, bfree: 1 << 30, bavail: 1 << 30, files: 1 << 24, ffree: 1 << 24, favail: 1 << 24, fsid: 0, flag: 0, namemax: 255 }),
  getattr(path: string, cb: Cb) {
    const n = lookup(path);
    return n ? cb(0, toStat(n)) : cb(E.ENOENT);
  },
  fgetattr(path: string, fd: number, cb: Cb) {
    const n = handles.get(fd) ?? lookup(path);
    return n ? cb(0, toStat(n)) : cb(E.ENOENT);
  },
  access: (_path: string, _mode: number, cb: Cb) => cb(0),
  opendir: (path: string, _flags: number, cb: Cb) => (lookup(path)?.children ? cb(0, 0) : cb(E.ENOTDIR)),
  releasedir: (_path: string, _fd: number, cb: Cb) => cb(0),
  readdir(path: string, cb: Cb) {
    const n = lookup(path);
    if (!n?.children) return cb(E.ENOTDIR);
    const names = [".", ".."];
    const stats: { ino: number; mode: number }[] = [{ ino: n.ino, mode: S_IFDIR }, { ino: 1, mode: S_IFDIR }];
    for (const [name, c] of n.children) {
      names.push(name);
      stats.push({ ino: c.ino, mode: c.mode & S_IFMT });
    }
    cb(0, names, stats);
  },
  create(path: string, mode: number, cb: Cb) {
    const { uid, gid } = caller();
    const r = add(path, () => newNode(S_IFREG | (mode & 0o7777), uid, gid));
    if (typeof r === "number") return cb(r);
    const fh = nextFh++;
    handles.set(fh, r);
    cb(0, fh);
  },
  open(path: string, flags: number, cb: Cb) {
    const n = lookup(path);
    if (!n) return cb(E.ENOENT);
    if (flags & 0o1000) n.size = 0; // O_TRUNC
    const fh = nextFh++;
    handles.set(fh, n);
    cb(0, fh);
  },
  read(_path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
    const n = handles.get(fd);
    if (!n) return cb(E.EBADF);
    const count = Math.max(0, Math.min(len, n.size - pos));
    buf.fill(0, 0, count);
    cb(count);
  },
  write(_path: string, fd: number, _buf: Buffer, len: number, pos: number, cb: Cb) {
    const n = handles.get(fd);
    if (!n) return cb(E.EBADF);
    if (pos + len > n.size) n.size = pos + len;
    n.mtime = n.ctime = now();
    cb(len);
  },
  flush: (_path: string, _fd: number, cb: Cb) => cb(0),
  fsync: (_path: string, _datasync: number, _fd: number, cb: Cb) => cb(0),
  fsyncdir: (_path: string, _datasync: number, _fd: number, cb: Cb) => cb(0),
  release(_path: string, fd: number, cb: Cb) {
    handles.delete(fd);
    cb(0);
  },
  truncate: (path: string, size: number, cb: Cb) => withNode(path, cb, (n) => (n.size = size)),
  ftruncate(path: string, fd: number, size: number, cb: Cb) {
    const n = handles.get(fd) ?? lookup(path);
    if (!n) return cb(E.ENOENT);
    n.size = size;
    cb(0);
  },
  chmod: (path: string, mode: number, cb: Cb) => withNode(path, cb, (n) => (n.mode = (n.mode & S_IFMT) | (mode & 0o7777))),
  chown: (path: string, uid: number, gid: number, cb: Cb) =>
    withNode(path, cb, (n) => {
      if (uid !== 0xffffffff && uid !== -1) n.uid = uid;
      if (gid !== 0xffffffff && gid !== -1) n.gid = gid;
    }),
  utimens: (path: string, atime: number | "now" | "omit", mtime: number | "now" | "omit", cb: Cb) =>
    withNode(path, cb, (n) => {
      if (atime !== "omit") n.atime = atime === "now" ? now() : atime;
      if (mtime !== "omit") n.mtime = mtime === "now" ? now() : mtime;
    }),
  mkdir(path: string, mode: number, cb: Cb) {
    const { uid, gid } = caller();
    const r = add(path, () => newNode(S_IFDIR | (mode & 0o7777), uid, gid, { children: new Map() }));
    cb(typeof r === "number" ? r : 0);
  },
  mknod(path: string, mode: number, dev: number, cb: Cb) {
    const { uid, gid } = caller();
    const r = add(path, () => newNode((mode & S_IFMT ? mode : S_IFREG | mode) & 0o177777, uid, gid, { rdev: dev }));
    cb(typeof r === "number" ? r : 0);
  },
  symlink(target: string, path: string, cb: Cb) {
    const { uid, gid } = caller();
    const r = add(path, () => newNode(S_IFLNK | 0o777, uid, gid, { target, size: Buffer.byteLength(target) }));
    cb(typeof r === "number" ? r : 0);
  },
  readlink(path: string, cb: Cb) {
    const n = lookup(path);
    if (!n) return cb(E.ENOENT);
    if (n.target === undefined) return cb(E.EINVAL);
    cb(0, n.target);
  },
  link(src: string, dest: string, cb: Cb) {
    const n = lookup(src);
    if (!n) return cb(E.ENOENT);
    const r = add(dest, () => n);
    if (typeof r === "number") return cb(r);
    n.nlink++;
    cb(0);
  },
  unlink: (path: string, cb: Cb) => cb(remove(path, false)),
  rmdir: (path: string, cb: Cb) => cb(remove(path, true)),
  rename(src: string, dest: string, cb: Cb) {
    const from = split(src);
    const to = split(dest);
    const fp = lookup(from.parent);
    const tp = lookup(to.parent);
    const n = fp?.children?.get(from.name);
    if (!fp || !tp?.children || !n) return cb(E.ENOENT);
    const old = tp.children.get(to.name);
    if (old === n) return cb(0);
    if (old?.children && old.children.size > 0) return cb(E.ENOTEMPTY);
    if (old) old.nlink--;
    fp.children!.delete(from.name);
    tp.children.set(to.name, n);
    if (n.children && fp !== tp) {
      fp.nlink--;
      tp.nlink++;
    }
    fp.mtime = fp.ctime = tp.mtime = tp.ctime = n.ctime = now();
    cb(0);
  },
  setxattr(path: string, name: string, value: Buffer, _position: number, _flags: number, cb: Cb) {
    withNode(path, cb, (n) => (n.xattrs ??= new Map()).set(name, Buffer.from(value)));
  },
  getxattr(path: string, name: string, _position: number, cb: Cb) {
    const n = lookup(path);
    if (!n) return cb(E.ENOENT);
    const v = n.xattrs?.get(name);
    return v ? cb(0, v) : cb(E.ENODATA);
  },
  listxattr(path: string, cb: Cb) {
    const n = lookup(path);
    if (!n) return cb(E.ENOENT);
    cb(0, [...(n.xattrs?.keys() ?? [])]);
  },
  removexattr(path: string, name: string, cb: Cb) {
    const n = lookup(path);
    if (!n) return cb(E.ENOENT);
    return n.xattrs?.delete(name) ? cb(0) : cb(E.ENODATA);
  },
};

fuse = new Fuse(mountpoint, ops, {
  fsname: `nullfs@${process.pid}`,
  subtype: "nullfs",
  defaultPermissions: true,
  bigWrites: true,
  maxWrite: 131072,
  maxRead: 131072,
  useIno: true,
  entryTimeout: 1,
  attrTimeout: 0,
  negativeTimeout: 1,
  timeout: false,
});

await new Promise<void>((ok, fail) => fuse.mount((err) => (err ? fail(err) : ok())));
console.log(`ready ${mountpoint}`);

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  fuse.unmount(() => process.exit(0));
  setTimeout(() => process.exit(1), 5000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
