/**
 * A do-nothing FUSE filesystem: the raw limit of FUSE through our fuse-native
 * low-level session on Bun (src/fuse/lowlevel.ts, the same binding objectfs
 * uses), for bench/mount.ts to compare objectfs against.
 *
 * Same mount options, protocol features and cache policy as objectfs
 * (src/fuse/mount.ts): default_permissions, 1 MiB requests, entries, absent
 * names and attributes cached for 1 s, pages kept across opens.
 * Writes are accepted and discarded (only the size is kept), reads return
 * zeros, and names and attributes live in a small in-memory map so create,
 * stat, readdir, mkdir, rename, links and `tar -x` work.
 *
 *   bun bench/support/null_fs.ts MOUNTPOINT
 *
 * Prints one line ("ready MOUNTPOINT") once mounted; SIGTERM or SIGINT unmount
 * and exit. It must run in its own process: sync fs calls on a mount from the
 * process that serves it deadlock.
 */
import { constants } from "node:os";
import { resolve } from "node:path";
import { OP, OPEN, REQ, SET_ATTR, Session, type LLAttr } from "../../src/fuse/lowlevel.ts";
import { mountOptions } from "../../src/fuse/mount.ts";

const E = constants.errno;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFMT = 0o170000;
const TIMEOUT = 1;

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
  children?: Map<string, Node>;
  parent?: Node;
}

const mountpoint = resolve(process.argv[2] ?? "");
if (!process.argv[2]) {
  console.error("usage: bun bench/support/null_fs.ts MOUNTPOINT");
  process.exit(2);
}

let nextIno = 2;
const nodes = new Map<number, Node>();
function newNode(mode: number, uid: number, gid: number, extra: Partial<Node> = {}): Node {
  const t = Date.now();
  const n: Node = { ino: nextIno++, mode, uid, gid, size: 0, nlink: (mode & S_IFMT) === S_IFDIR ? 2 : 1, rdev: 0, atime: t, mtime: t, ctime: t, ...extra };
  nodes.set(n.ino, n);
  return n;
}
const root: Node = { ino: 1, mode: S_IFDIR | 0o755, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, size: 0, nlink: 2, rdev: 0, atime: Date.now(), mtime: Date.now(), ctime: Date.now(), children: new Map() };
root.parent = root;
nodes.set(1, root);

const attr = (n: Node): LLAttr => ({
  ino: n.ino, mode: n.mode, nlink: n.nlink, uid: n.uid, gid: n.gid, rdev: n.rdev,
  size: (n.mode & S_IFMT) === S_IFDIR ? 4096 : n.size, blocks: Math.ceil(n.size / 512), blksize: 4096,
  atime: n.atime, mtime: n.mtime, ctime: n.ctime,
});

const handles = new Map<number, Node>();
const listings = new Map<number, [string, Node][]>();
let nextFh = 1;
const zeros = Buffer.alloc(1 << 20);
const dirBuf = Buffer.alloc(256 * 1024);

let session: Session;
const ok = (slot: number) => session.err(slot, 0);

function add(slot: number, parent: number, name: string, make: () => Node): void {
  const p = nodes.get(parent);
  if (!p?.children) return session.err(slot, E.ENOTDIR);
  if (p.children.has(name)) return session.err(slot, E.EEXIST);
  const n = make();
  p.children.set(name, n);
  if (n.children) {
    n.parent = p;
    p.nlink++;
  }
  p.mtime = p.ctime = Date.now();
  session.entry(slot, attr(n), TIMEOUT, TIMEOUT);
}

function remove(slot: number, parent: number, name: string, dir: boolean): void {
  const p = nodes.get(parent);
  const n = p?.children?.get(name);
  if (!p || !n) return session.err(slot, E.ENOENT);
  if (dir && !n.children) return session.err(slot, E.ENOTDIR);
  if (!dir && n.children) return session.err(slot, E.EISDIR);
  if (dir && n.children!.size > 0) return session.err(slot, E.ENOTEMPTY);
  p.children!.delete(name);
  if (n.children) p.nlink--;
  n.nlink--;
  p.mtime = p.ctime = Date.now();
  ok(slot);
}

function handle(op: number, slot: number, name: string | undefined, name2: string | undefined, data: Buffer | undefined): void {
  const q = session.req;
  const ino = q[REQ.ino]!;
  const n = nodes.get(ino);
  const uid = q[REQ.uid]!;
  const gid = q[REQ.gid]!;
  switch (op) {
    case OP.forget:
      return;
    case OP.lookup: {
      const c = n?.children?.get(name!);
      return c ? session.entry(slot, attr(c), TIMEOUT, TIMEOUT) : session.negative(slot, TIMEOUT);
    }
    case OP.getattr:
      return n ? session.attrs(slot, attr(n), TIMEOUT) : session.err(slot, E.ENOENT);
    case OP.setattr: {
      if (!n) return session.err(slot, E.ENOENT);
      const set = q[REQ.a]!;
      if (set & SET_ATTR.mode) n.mode = (n.mode & S_IFMT) | (q[REQ.mode]! & 0o7777);
      if (set & SET_ATTR.uid) n.uid = q[REQ.attrUid]!;
      if (set & SET_ATTR.gid) n.gid = q[REQ.attrGid]!;
      if (set & SET_ATTR.size) n.size = q[REQ.size]!;
      if (set & SET_ATTR.atime) n.atime = set & SET_ATTR.atimeNow ? Date.now() : q[REQ.atime]!;
      if (set & SET_ATTR.mtime) n.mtime = set & SET_ATTR.mtimeNow ? Date.now() : q[REQ.mtime]!;
      n.ctime = Date.now();
      return session.attrs(slot, attr(n), TIMEOUT);
    }
    case OP.readlink:
      return n?.target !== undefined ? session.readlink(slot, n.target) : session.err(slot, E.EINVAL);
    case OP.mknod:
      return add(slot, ino, name!, () => newNode(q[REQ.a]! & S_IFMT ? q[REQ.a]! : S_IFREG | q[REQ.a]!, uid, gid, { rdev: q[REQ.b]! }));
    case OP.mkdir:
      return add(slot, ino, name!, () => newNode(S_IFDIR | (q[REQ.a]! & 0o7777), uid, gid, { children: new Map() }));
    case OP.symlink:
      return add(slot, ino, name!, () => newNode(S_IFLNK | 0o777, uid, gid, { target: name2!, size: Buffer.byteLength(name2!) }));
    case OP.link: {
      if (!n) return session.err(slot, E.ENOENT);
      const p = nodes.get(q[REQ.a]!);
      if (!p?.children) return session.err(slot, E.ENOTDIR);
      if (p.children.has(name!)) return session.err(slot, E.EEXIST);
      p.children.set(name!, n);
      n.nlink++;
      return session.entry(slot, attr(n), TIMEOUT, TIMEOUT);
    }
    case OP.unlink:
      return remove(slot, ino, name!, false);
    case OP.rmdir:
      return remove(slot, ino, name!, true);
    case OP.rename: {
      const fp = n;
      const tp = nodes.get(q[REQ.a]!);
      const m = fp?.children?.get(name!);
      if (!fp || !tp?.children || !m) return session.err(slot, E.ENOENT);
      const old = tp.children.get(name2!);
      if (old === m) return ok(slot);
      if (old?.children && old.children.size > 0) return session.err(slot, E.ENOTEMPTY);
      if (old) old.nlink--;
      fp.children!.delete(name!);
      tp.children.set(name2!, m);
      if (m.children && fp !== tp) {
        fp.nlink--;
        tp.nlink++;
        m.parent = tp;
      }
      fp.mtime = fp.ctime = tp.mtime = tp.ctime = m.ctime = Date.now();
      return ok(slot);
    }
    case OP.create: {
      const p = n;
      if (!p?.children) return session.err(slot, E.ENOTDIR);
      if (p.children.has(name!)) return session.err(slot, E.EEXIST);
      const c = newNode(S_IFREG | (q[REQ.a]! & 0o7777), uid, gid);
      p.children.set(name!, c);
      p.mtime = p.ctime = Date.now();
      const fh = nextFh++;
      handles.set(fh, c);
      return session.create(slot, attr(c), TIMEOUT, TIMEOUT, fh, OPEN.keepCache, true);
    }
    case OP.open: {
      if (!n) return session.err(slot, E.ENOENT);
      if (q[REQ.a]! & 0o1000) n.size = 0; // O_TRUNC (atomic_o_trunc)
      const fh = nextFh++;
      handles.set(fh, n);
      return session.open(slot, fh, OPEN.keepCache);
    }
    case OP.read: {
      const f = handles.get(q[REQ.fh]!);
      if (!f) return session.err(slot, E.EBADF);
      const count = Math.max(0, Math.min(q[REQ.a]!, f.size - q[REQ.b]!));
      return session.buf(slot, zeros, Math.min(count, zeros.length));
    }
    case OP.write: {
      const f = handles.get(q[REQ.fh]!);
      if (!f) return session.err(slot, E.EBADF);
      const end = q[REQ.b]! + data!.length;
      if (end > f.size) f.size = end;
      f.mtime = f.ctime = Date.now();
      return session.written(slot, data!.length);
    }
    case OP.release:
      handles.delete(q[REQ.fh]!);
      return ok(slot);
    case OP.flush:
    case OP.fsync:
    case OP.fsyncdir:
    case OP.access:
      return ok(slot);
    case OP.opendir: {
      if (!n?.children) return session.err(slot, E.ENOTDIR);
      // The listing as it is at opendir, served by index (what libfuse's path API does too).
      const fh = nextFh++;
      listings.set(fh, [[".", n], ["..", n.parent ?? root], ...n.children]);
      return session.open(slot, fh, OPEN.keepCache | OPEN.cacheDir);
    }
    case OP.releasedir:
      listings.delete(q[REQ.fh]!);
      return ok(slot);
    case OP.readdir: {
      const all = listings.get(q[REQ.fh]!);
      if (!all) return session.err(slot, E.EBADF);
      const size = Math.min(q[REQ.a]!, dirBuf.length);
      const from = q[REQ.b]!;
      let at = 0;
      for (let i = from; i < all.length; i++) {
        const [nm, c] = all[i]!;
        const len = Buffer.byteLength(nm);
        const rec = (24 + len + 7) & ~7;
        if (at + rec > size) break;
        dirBuf.writeUInt32LE(c.ino, at);
        dirBuf.writeUInt32LE(0, at + 4);
        dirBuf.writeUInt32LE(i + 1, at + 8);
        dirBuf.writeUInt32LE(0, at + 12);
        dirBuf.writeUInt32LE(len, at + 16);
        dirBuf.writeUInt32LE((c.mode & S_IFMT) >> 12, at + 20);
        dirBuf.write(nm, at + 24);
        dirBuf.fill(0, at + 24 + len, at + rec);
        at += rec;
      }
      return session.buf(slot, dirBuf, at);
    }
    case OP.statfs:
      return session.statfs(slot, { bsize: 4096, frsize: 4096, blocks: 1 << 30, bfree: 1 << 30, bavail: 1 << 30, files: 1 << 24, ffree: 1 << 24, namemax: 255 });
    case OP.setxattr:
      if (!n) return session.err(slot, E.ENOENT);
      (n.xattrs ??= new Map()).set(name!, Buffer.from(data!));
      return ok(slot);
    case OP.getxattr: {
      const v = n?.xattrs?.get(name!);
      if (!v) return session.err(slot, E.ENODATA);
      const size = q[REQ.a]!;
      if (size === 0) return session.xattrSize(slot, v.length);
      return v.length > size ? session.err(slot, E.ERANGE) : session.buf(slot, v);
    }
    case OP.listxattr: {
      const list = Buffer.from([...(n?.xattrs?.keys() ?? [])].map((k) => `${k}\0`).join(""));
      const size = q[REQ.a]!;
      if (size === 0) return session.xattrSize(slot, list.length);
      return list.length > size ? session.err(slot, E.ERANGE) : session.buf(slot, list);
    }
    case OP.removexattr:
      return n?.xattrs?.delete(name!) ? ok(slot) : session.err(slot, E.ENODATA);
    default:
      if (slot >= 0) session.err(slot, E.ENOSYS);
  }
}

// The options and protocol features of objectfs's mounts (src/fuse/mount.ts), another fsname.
session = new Session(mountpoint, mountOptions({}, `nullfs@${process.pid}`), handle);
console.log(`ready ${mountpoint}`);

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  setTimeout(() => process.exit(1), 8000).unref();
  void session.unmount().then(() => process.exit(0));
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
