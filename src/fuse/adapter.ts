/**
 * The FUSE adapter: low-level (inode-based) FUSE requests onto the fs core.
 *
 * The kernel names files by inode number, which is the journal's inode number
 * (the root is 1 in both), so every request maps onto one call of the core
 * with no path resolution. The adapter takes the caller from the request,
 * passes the core's errno back, counts the kernel's lookups of each inode
 * (FORGET brings them down), and chooses what the kernel may cache. It has no
 * filesystem semantics of its own: every decision, permission checks
 * included, is the core's.
 *
 * Caching: entries, absent names and attributes are cached by the kernel for
 * `timeout` seconds, file pages and directory listings are kept across opens, because every
 * change reaches the kernel through this mount (it updates or drops what it
 * cached) except those the core makes by itself (the replicator's conflict
 * renames, remote listings): `invalidate` tells the kernel about those.
 */
import { readFileSync } from "node:fs";
import { constants } from "node:os";
import type { Ino } from "../../journal/mod.ts";
import type { Ctx } from "../fs/context.ts";
import { FsError } from "../fs/errors.ts";
import type { Attr, DirEntry, Filesystem, SetAttr } from "../fs/filesystem.ts";
import { TYPE_BITS } from "../projection/evolve.ts";
import { MAX_WRITE, OP, OPEN, REQ, SET_ATTR, type LLAttr, type Session } from "./lowlevel.ts";

export interface AdapterOptions {
  /** Seconds the kernel may cache names, absent names and attributes. @default 1 */
  readonly timeout?: number;
  /** Log unexpected (non-errno) failures. @default console.error */
  readonly log?: (message: string) => void;
  /** Told about every answered operation: its time, success, and bytes read or written. */
  readonly onOperation?: (op: string, seconds: number, ok: boolean, bytes: number) => void;
}

const E = constants.errno;

/**
 * POSIX ACLs are not supported. Without FUSE_POSIX_ACL (libfuse 2 cannot ask
 * for it) the kernel passes these names through as plain xattrs; storing them
 * would let `cp -a` or `rsync -A` "set" an ACL that changes nothing, when
 * they would fall back to chmod on EOPNOTSUPP, as on any filesystem without ACLs.
 */
const ACL_XATTRS = new Set(["system.posix_acl_access", "system.posix_acl_default"]);

/** A process's supplementary groups and name, from /proc/PID/status, cached for a second (the kernel does not send them). */
class ProcessCache {
  private readonly cache = new Map<number, { groups: number[]; comm?: string; at: number }>();
  get(pid: number): { groups: number[]; comm?: string } | undefined {
    if (pid === 0) return undefined;
    const now = Date.now();
    const hit = this.cache.get(pid);
    if (hit && now - hit.at < 1000) return hit;
    let entry: { groups: number[]; comm?: string; at: number } = { groups: [], at: now };
    try {
      const status = readFileSync(`/proc/${pid}/status`, "utf8"); // /proc, never our own mount
      const g = /^Groups:\s*(.*)$/m.exec(status);
      const name = /^Name:\t(.*)$/m.exec(status)?.[1];
      entry = { groups: g?.[1]?.trim() ? g[1].trim().split(/\s+/).map(Number) : [], ...(name !== undefined ? { comm: name } : {}), at: now };
    } catch {
      // the process may be gone already
    }
    if (this.cache.size > 4096) this.cache.clear();
    this.cache.set(pid, entry);
    return entry;
  }
}

const toLL = (a: Attr): LLAttr => a; // the same fields; times are milliseconds

/** An open directory: entries read ahead from the core, served by cookie. */
interface DirHandle {
  readonly ino: Ino;
  /** Entries fetched and not yet sent, in cookie order. */
  ahead: DirEntry[];
  /** The cookie the first of `ahead` follows. */
  after: number;
}

/** Directory entries fetched from the core per page beyond the first request. */
const DIR_PAGE = 4096;
/** The largest readdir reply the kernel asks for. */
const DIR_BUF = 128 * 1024;
/** Read requests of a mount without max_pages, and the smaller reply buffers. */
const SMALL_READ = 128 * 1024;

export interface Adapter {
  /** The session's request handler. */
  readonly handle: (op: number, slot: number, name: string | undefined, name2: string | undefined, data: Buffer | undefined) => void;
  /** Inodes the kernel holds (lookup count above 0). */
  readonly known: ReadonlyMap<number, number>;
  /** Tell the kernel that `ino` changed behind its back: cached attributes and pages go. */
  invalidateInode(ino: number): void;
  /** Tell the kernel that the name `name` in `parent` changed behind its back. */
  invalidateEntry(parent: number, name: string): void;
}

/** Serve `fs` through a low-level session: `session()` is the session once mounted. */
export function makeAdapter(fs: Filesystem, session: () => Session, options: AdapterOptions = {}): Adapter {
  const log = options.log ?? ((m: string) => console.error(m));
  const timeout = options.timeout ?? 1;
  const observe = options.onOperation;
  const processes = new ProcessCache();
  const known = new Map<number, number>();
  /** Inodes changed behind the kernel since their last open: the next open drops cached pages. */
  const stale = new Set<number>();
  const dirs = new Map<number, DirHandle>();
  let nextDirFh = 1;
  // Reply buffers for reads, reused: fresh memory costs a page fault per 4 KiB, more than the
  // copy into it. Two sizes: the 128 KiB requests of plain mounts and the 1 MiB of max_pages.
  const smallReads: Buffer[] = [];
  const largeReads: Buffer[] = [];
  const dirBuf = Buffer.alloc(DIR_BUF);
  let s: Session;
  let q: Float64Array;

  const remember = (ino: number) => known.set(ino, (known.get(ino) ?? 0) + 1);

  const ctxOf = (): Ctx => {
    const pid = q[REQ.pid]!;
    const p = processes.get(pid);
    return { uid: q[REQ.uid]!, gid: q[REQ.gid]!, pid, ...(p ? { groups: p.groups, ...(p.comm !== undefined ? { comm: p.comm } : {}) } : {}) };
  };

  /** Answer a failed operation: the core's errno, or EIO (logged) for anything unexpected. */
  function failed(op: string, slot: number, e: unknown): void {
    if (e instanceof FsError) return s.err(slot, e.errno);
    log(`objectfs: ${op} failed: ${(e as Error)?.stack ?? String(e)}`);
    s.err(slot, E.EIO);
  }

  /** Run `work` and answer with `reply`, or with the errno it failed with. */
  function run<T>(op: string, slot: number, work: Promise<T>, reply: (v: T) => void, bytes?: (v: T) => number): void {
    const start = observe ? performance.now() : 0;
    work.then(
      (v) => {
        observe?.(op, (performance.now() - start) / 1000, true, bytes ? bytes(v) : 0);
        reply(v);
      },
      (e) => {
        observe?.(op, (performance.now() - start) / 1000, false, 0);
        failed(op, slot, e);
      },
    );
  }

  /** Sync failures (the core throws before its first await) become rejections. */
  const call = <T>(f: () => Promise<T>): Promise<T> => {
    try {
      return f();
    } catch (e) {
      return Promise.reject(e);
    }
  };

  const entry = (slot: number) => (a: Attr) => {
    remember(a.ino);
    s.entry(slot, toLL(a), timeout, timeout);
  };
  const done = (slot: number) => () => s.err(slot, 0);
  const keep = (ino: number) => {
    if (stale.delete(ino)) return 0; // pages cached before the change go at this open
    return OPEN.keepCache;
  };

  /** Fill the reply buffer with entries of `h` after cookie `off`, up to `size` bytes. */
  async function readdir(ctx: Ctx, h: DirHandle, off: number, size: number): Promise<number> {
    if (off === 0 || off !== h.after || h.ahead.length === 0) {
      // First page small (most directories fit), later ones large.
      const limit = off === 0 ? Math.max(16, Math.ceil(size / 32)) : DIR_PAGE;
      h.ahead = await fs.readdir(ctx, h.ino, off, limit);
      h.after = off;
    }
    let at = 0;
    let used = 0;
    const max = Math.min(size, DIR_BUF);
    for (const e of h.ahead) {
      const len = Buffer.byteLength(e.name);
      const rec = (24 + len + 7) & ~7; // struct fuse_dirent, as fuse_add_direntry lays it out
      if (at + rec > max) break;
      dirBuf.writeUInt32LE(e.ino % 0x1_0000_0000, at);
      dirBuf.writeUInt32LE(Math.floor(e.ino / 0x1_0000_0000), at + 4);
      dirBuf.writeUInt32LE(e.offset % 0x1_0000_0000, at + 8); // the cookie to go on from
      dirBuf.writeUInt32LE(Math.floor(e.offset / 0x1_0000_0000), at + 12);
      dirBuf.writeUInt32LE(len, at + 16);
      dirBuf.writeUInt32LE(TYPE_BITS[e.kind] >> 12, at + 20);
      dirBuf.write(e.name, at + 24);
      dirBuf.fill(0, at + 24 + len, at + rec);
      at += rec;
      used++;
    }
    if (used > 0) {
      h.after = h.ahead[used - 1]!.offset;
      h.ahead = h.ahead.slice(used);
    }
    return at;
  }

  function setattrOf(): SetAttr {
    const set = q[REQ.a]!;
    return {
      ...(set & SET_ATTR.mode ? { mode: q[REQ.mode]! } : {}),
      ...(set & SET_ATTR.uid ? { uid: q[REQ.attrUid]! } : {}),
      ...(set & SET_ATTR.gid ? { gid: q[REQ.attrGid]! } : {}),
      ...(set & SET_ATTR.size ? { size: q[REQ.size]! } : {}),
      ...(set & SET_ATTR.atime ? { atime: set & SET_ATTR.atimeNow ? ("now" as const) : q[REQ.atime]! } : {}),
      ...(set & SET_ATTR.mtime ? { mtime: set & SET_ATTR.mtimeNow ? ("now" as const) : q[REQ.mtime]! } : {}),
    };
  }

  function xattrReply(slot: number, size: number, value: Uint8Array): void {
    if (size === 0) return s.xattrSize(slot, value.length);
    if (value.length > size) return s.err(slot, E.ERANGE);
    s.buf(slot, value);
  }

  function handle(op: number, slot: number, name: string | undefined, name2: string | undefined, data: Buffer | undefined): void {
    s ??= session();
    q ??= s.req;
    const ino = q[REQ.ino]! as Ino;
    if (op === OP.forget) {
      const left = (known.get(ino) ?? 0) - q[REQ.a]!;
      if (left > 0) known.set(ino, left);
      else {
        known.delete(ino);
        stale.delete(ino);
      }
      return;
    }
    const ctx = ctxOf();
    switch (op) {
      case OP.lookup: {
        const start = observe ? performance.now() : 0;
        call(() => fs.lookup(ctx, ino, name!)).then(
          (a) => {
            observe?.("lookup", (performance.now() - start) / 1000, true, 0);
            remember(a.ino);
            s.entry(slot, toLL(a), timeout, timeout);
          },
          (e) => {
            observe?.("lookup", (performance.now() - start) / 1000, false, 0);
            if (e instanceof FsError && e.errno === E.ENOENT) s.negative(slot, timeout); // cached absence
            else failed("lookup", slot, e);
          },
        );
        return;
      }
      case OP.getattr:
        return run("getattr", slot, call(() => fs.getattr(ctx, ino)), (a) => s.attrs(slot, toLL(a), timeout));
      case OP.setattr: {
        const fh = q[REQ.b] ? q[REQ.fh]! : undefined;
        return run("setattr", slot, call(() => fs.setattr(ctx, ino, setattrOf(), fh)), (a) => s.attrs(slot, toLL(a), timeout));
      }
      case OP.readlink:
        return run("readlink", slot, call(() => fs.readlink(ctx, ino)), (t) => s.readlink(slot, t));
      case OP.mknod: {
        const mode = q[REQ.a]!;
        const rdev = q[REQ.b]!;
        return run("mknod", slot, call(() => fs.mknod(ctx, ino, name!, mode, rdev)), entry(slot));
      }
      case OP.mkdir: {
        const mode = q[REQ.a]!;
        return run("mkdir", slot, call(() => fs.mkdir(ctx, ino, name!, mode)), entry(slot));
      }
      case OP.symlink:
        return run("symlink", slot, call(() => fs.symlink(ctx, ino, name!, name2!)), entry(slot));
      case OP.link: {
        const parent = q[REQ.a]! as Ino;
        return run("link", slot, call(() => fs.link(ctx, ino, parent, name!)), entry(slot));
      }
      case OP.unlink:
        return run("unlink", slot, call(() => fs.unlink(ctx, ino, name!)), done(slot));
      case OP.rmdir:
        return run("rmdir", slot, call(() => fs.rmdir(ctx, ino, name!)), done(slot));
      case OP.rename: {
        const to = q[REQ.a]! as Ino;
        return run("rename", slot, call(() => fs.rename(ctx, ino, name!, to, name2!)), done(slot));
      }
      case OP.create: {
        const mode = q[REQ.a]!;
        const flags = q[REQ.b]!;
        return run("create", slot, call(() => fs.create(ctx, ino, name!, mode, flags)), (r) => {
          remember(r.attr.ino);
          s.create(slot, toLL(r.attr), timeout, timeout, r.fh, keep(r.attr.ino), true); // a new inode has no xattrs
        });
      }
      case OP.open: {
        const flags = q[REQ.a]!;
        return run("open", slot, call(() => fs.open(ctx, ino, flags)), (fh) => s.open(slot, fh, keep(ino)));
      }
      case OP.read: {
        const size = q[REQ.a]!;
        const off = q[REQ.b]!;
        const fh = q[REQ.fh]!;
        const small = size <= SMALL_READ;
        const pool = small ? smallReads : largeReads;
        const into = size > MAX_WRITE ? Buffer.allocUnsafe(size) : (pool.pop() ?? Buffer.allocUnsafe(small ? SMALL_READ : MAX_WRITE));
        const back = () => {
          if (into.length <= MAX_WRITE && pool.length < (small ? 64 : 16)) pool.push(into);
        };
        // Bytes the core holds in memory may come back as they are (no copy): released after the reply.
        let release: (() => void) | undefined;
        const lease = (r: () => void) => (release = r);
        return run("read", slot, call(() => fs.read(ctx, fh, off, size, into, lease)), (bytes) => {
          try {
            s.buf(slot, bytes); // fuse_reply_buf has written the bytes to /dev/fuse when it returns
          } finally {
            release?.();
          }
          back();
        }, (b) => b.length); // not after a failure: a copy still under way may land in `into` later
      }
      case OP.write: {
        const off = q[REQ.b]!;
        const fh = q[REQ.fh]!;
        // `data` is the request's own buffer, valid until the reply; the core copies what it keeps.
        return run("write", slot, call(() => fs.write(ctx, fh, off, data!)), (n) => s.written(slot, n), (n) => n);
      }
      case OP.flush: {
        const fh = q[REQ.fh]!;
        return run("flush", slot, call(() => fs.flush(ctx, fh)), done(slot));
      }
      case OP.release: {
        const fh = q[REQ.fh]!;
        return run("release", slot, call(() => fs.release(ctx, fh)), done(slot));
      }
      case OP.fsync: {
        const fh = q[REQ.fh]!;
        const datasync = q[REQ.a]! !== 0;
        return run("fsync", slot, call(() => fs.fsync(ctx, fh, datasync)), done(slot));
      }
      case OP.opendir:
        return run("opendir", slot, call(() => fs.opendir(ctx, ino)), () => {
          const fh = nextDirFh++;
          dirs.set(fh, { ino, ahead: [], after: -1 });
          // The kernel caches the entries and keeps them across opens; a change through
          // the kernel resets them, one behind it drops them with the inode's invalidation.
          s.open(slot, fh, keep(ino) | OPEN.cacheDir);
        });
      case OP.readdir: {
        const size = q[REQ.a]!;
        const off = q[REQ.b]!;
        const h = dirs.get(q[REQ.fh]!);
        if (!h) return s.err(slot, E.EBADF);
        return run("readdir", slot, call(() => readdir(ctx, h, off, size)), (n) => s.buf(slot, dirBuf, n));
      }
      case OP.releasedir:
        dirs.delete(q[REQ.fh]!);
        return s.err(slot, 0);
      case OP.fsyncdir:
        return run("fsyncdir", slot, call(() => fs.syncAll()), done(slot));
      case OP.statfs:
        return run("statfs", slot, call(() => fs.statfs(ctx)), (v) => s.statfs(slot, v));
      case OP.access: {
        const mask = q[REQ.a]!;
        return run("access", slot, call(() => fs.access(ctx, ino, mask)), done(slot));
      }
      case OP.setxattr: {
        if (ACL_XATTRS.has(name!)) return s.err(slot, E.EOPNOTSUPP);
        const flags = q[REQ.a]!;
        return run("setxattr", slot, call(() => fs.setxattr(ctx, ino, name!, data!, flags)), done(slot));
      }
      case OP.getxattr: {
        if (ACL_XATTRS.has(name!)) return s.err(slot, E.EOPNOTSUPP);
        const size = q[REQ.a]!;
        return run("getxattr", slot, call(() => fs.getxattr(ctx, ino, name!)), (v) => xattrReply(slot, size, v));
      }
      case OP.listxattr: {
        const size = q[REQ.a]!;
        return run("listxattr", slot, call(() => fs.listxattr(ctx, ino)), (names) =>
          xattrReply(slot, size, Buffer.from(names.filter((n) => !ACL_XATTRS.has(n)).map((n) => `${n}\0`).join(""))),
        );
      }
      case OP.removexattr: {
        if (ACL_XATTRS.has(name!)) return s.err(slot, E.EOPNOTSUPP);
        return run("removexattr", slot, call(() => fs.removexattr(ctx, ino, name!)), done(slot));
      }
      default:
        if (slot >= 0) s.err(slot, E.ENOSYS);
    }
  }

  return {
    handle,
    known,
    invalidateInode(ino) {
      if (!known.has(ino) && ino !== 1) return; // the kernel holds nothing of it
      stale.add(ino);
      session().invalidateInode(ino);
    },
    invalidateEntry(parent, name) {
      if (known.has(parent) || parent === 1) session().invalidateEntry(parent, name);
    },
  };
}
