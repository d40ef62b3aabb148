/**
 * The FUSE adapter: fuse-native's path callbacks onto the fs core.
 *
 * It resolves paths to inodes (cached), takes the caller from the FUSE
 * request context, and passes the core's errno back. It has no filesystem
 * semantics of its own: every decision, permission checks included, is the
 * core's.
 */
import { constants as fsConstants, readFileSync } from "node:fs";
import { constants } from "node:os";
import { ROOT_INO, type Ino } from "../../journal/mod.ts";
import type { Ctx } from "../fs/context.ts";
import { FsError } from "../fs/errors.ts";
import type { Attr, Filesystem } from "../fs/filesystem.ts";
import { TYPE_BITS } from "../projection/evolve.ts";

type Cb = (err: number | Error | null, ...rest: unknown[]) => void;

/** fuse-native's caller context (see patches/fuse-native@2.2.6.patch). */
export interface FuseContext {
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  readonly umask: number;
}

export interface AdapterOptions {
  /** Log unexpected (non-errno) failures. @default console.error */
  readonly log?: (message: string) => void;
  /** Told about every answered operation: its time, success, and bytes read or written. */
  readonly onOperation?: (op: string, seconds: number, ok: boolean, bytes: number) => void;
}

const EIO = constants.errno.EIO;
const EOPNOTSUPP = constants.errno.EOPNOTSUPP;
const UNCHANGED_ID = 0xffffffff;

/**
 * POSIX ACLs are not supported. Without FUSE_POSIX_ACL (libfuse 2 cannot ask
 * for it) the kernel passes these names through as plain xattrs; storing them
 * would let `cp -a` or `rsync -A` "set" an ACL that changes nothing, when
 * they would fall back to chmod on EOPNOTSUPP, as on any filesystem without ACLs.
 */
const ACL_XATTRS = new Set(["system.posix_acl_access", "system.posix_acl_default"]);

/** Supplementary groups of a process, from /proc, cached briefly (the kernel does not send them). */
/** A process's supplementary groups and name, from /proc/PID/status, cached for a second. */
class ProcessCache {
  private readonly cache = new Map<number, { groups: number[]; comm?: string; at: number }>();
  get(pid: number): { groups: number[]; comm?: string } | undefined {
    if (pid === 0) return undefined;
    const now = Date.now();
    const hit = this.cache.get(pid);
    if (hit && now - hit.at < 1000) return hit;
    let entry: { groups: number[]; comm?: string; at: number } = { groups: [], at: now };
    try {
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
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

/** Path → inode cache. Entries under a renamed or removed path are dropped. */
class PathCache {
  private readonly map = new Map<string, Ino>([["/", ROOT_INO]]);
  get(path: string): Ino | undefined {
    return this.map.get(path);
  }
  set(path: string, ino: Ino): void {
    if (this.map.size > 500_000) {
      this.map.clear();
      this.map.set("/", ROOT_INO);
    }
    this.map.set(path, ino);
  }
  /** Forget `path` and everything below it. */
  forget(path: string): void {
    this.map.delete(path);
    const prefix = `${path}/`;
    for (const k of this.map.keys()) if (k.startsWith(prefix)) this.map.delete(k);
  }
}

function split(path: string): { parent: string; name: string } {
  const i = path.lastIndexOf("/");
  return { parent: i <= 0 ? "/" : path.slice(0, i), name: path.slice(i + 1) };
}

function toStat(a: Attr) {
  return {
    mode: a.mode,
    uid: a.uid,
    gid: a.gid,
    size: a.size,
    dev: 0,
    nlink: a.nlink,
    ino: a.ino,
    rdev: a.rdev,
    blksize: a.blksize,
    blocks: a.blocks,
    atime: Math.floor(a.atime),
    mtime: Math.floor(a.mtime),
    ctime: Math.floor(a.ctime),
  };
}

/** Build the fuse-native operations object for a filesystem. `context` reads the current request's caller. */
export function makeOperations(fs: Filesystem, context: () => FuseContext | null, options: AdapterOptions = {}) {
  const log = options.log ?? ((m: string) => console.error(m));
  const paths = new PathCache();
  const processes = new ProcessCache();

  /**
   * libfuse 2 cannot serve an unlinked file that is still open by inode, so it
   * renames it to ".fuse_hidden…" and unlinks that name on the last release.
   * We turn that rename back into the unlink the application asked for (the
   * core keeps the inode until its last handle is released) and serve the
   * hidden name from this map until libfuse removes it.
   */
  const hidden = new Map<string, Ino>();
  const HIDDEN = /\/\.fuse_hidden[0-9a-f]{16}$/;

  const ctxOf = (): Ctx => {
    const c = context();
    if (!c) return { uid: 0, gid: 0, pid: 0 };
    const p = processes.get(c.pid);
    return { uid: c.uid, gid: c.gid, pid: c.pid, ...(p ? { groups: p.groups, ...(p.comm !== undefined ? { comm: p.comm } : {}) } : {}) };
  };

  /** Resolve a path to an inode, walking (and checking search permission) from the nearest cached ancestor. */
  async function resolve(ctx: Ctx, path: string): Promise<Ino> {
    const hit = paths.get(path) ?? hidden.get(path);
    if (hit !== undefined) return hit;
    const { parent, name } = split(path);
    const pino = await resolve(ctx, parent);
    const attr = await fs.lookup(ctx, pino, name);
    paths.set(path, attr.ino);
    return attr.ino;
  }

  /** Answer a failed operation: the core's errno, or EIO (logged) for anything unexpected. */
  function failed(op: string, cb: Cb, e: unknown): void {
    if (e instanceof FsError) return cb(-e.errno);
    log(`objectfs: ${op} failed: ${(e as Error)?.stack ?? String(e)}`);
    cb(-EIO);
  }

  const observe = options.onOperation;

  /** Run an operation and answer FUSE: 0 and the reply values, or an errno. */
  function answer<T>(op: string, cb: Cb, work: (ctx: Ctx) => Promise<T>, reply: (v: T) => unknown[] = () => []): void {
    const ctx = ctxOf(); // must be read synchronously, before any await
    const start = observe ? performance.now() : 0;
    work(ctx).then(
      (v) => {
        observe?.(op, (performance.now() - start) / 1000, true, 0);
        cb(0, ...reply(v));
      },
      (e) => {
        observe?.(op, (performance.now() - start) / 1000, false, 0);
        failed(op, cb, e);
      },
    );
  }

  /** Like `answer` for read and write, whose first callback value is a byte count (or -errno). */
  function count(op: string, cb: Cb, work: (ctx: Ctx) => Promise<number>): void {
    const ctx = ctxOf();
    const start = observe ? performance.now() : 0;
    work(ctx).then(
      (n) => {
        observe?.(op, (performance.now() - start) / 1000, true, n);
        cb(n);
      },
      (e) => {
        observe?.(op, (performance.now() - start) / 1000, false, 0);
        failed(op, cb, e);
      },
    );
  }

  return {
    init(cb: Cb) {
      cb(0);
    },
    statfs(_path: string, cb: Cb) {
      answer("statfs", cb, (ctx) => fs.statfs(ctx), (s) => [{ ...s, favail: s.ffree, fsid: 0, flag: 0 }]);
    },
    getattr(path: string, cb: Cb) {
      answer("getattr", cb, async (ctx) => toStat(await fs.getattr(ctx, await resolve(ctx, path))), (s) => [s]);
    },
    fgetattr(path: string, fd: number, cb: Cb) {
      answer("fgetattr", cb, async (ctx) => toStat(await fs.getattr(ctx, fs.handleIno(fd) ?? (await resolve(ctx, path)))), (s) => [s]);
    },
    access(path: string, mode: number, cb: Cb) {
      answer("access", cb, async (ctx) => fs.access(ctx, await resolve(ctx, path), mode));
    },
    readlink(path: string, cb: Cb) {
      answer("readlink", cb, async (ctx) => fs.readlink(ctx, await resolve(ctx, path)), (t) => [t]);
    },
    opendir(path: string, _flags: number, cb: Cb) {
      answer("opendir", cb, async (ctx) => fs.opendir(ctx, await resolve(ctx, path)), () => [0]);
    },
    releasedir(_path: string, _fd: number, cb: Cb) {
      cb(0);
    },
    readdir(path: string, cb: Cb) {
      answer(
        "readdir",
        cb,
        async (ctx) => fs.readdir(ctx, await resolve(ctx, path)),
        (entries) => [entries.map((e) => e.name), entries.map((e) => ({ ino: e.ino, mode: TYPE_BITS[e.kind] }))],
      );
    },
    mknod(path: string, mode: number, dev: number, cb: Cb) {
      answer("mknod", cb, async (ctx) => {
        const { parent, name } = split(path);
        const a = await fs.mknod(ctx, await resolve(ctx, parent), name, mode, dev);
        paths.set(path, a.ino);
      });
    },
    mkdir(path: string, mode: number, cb: Cb) {
      answer("mkdir", cb, async (ctx) => {
        const { parent, name } = split(path);
        const a = await fs.mkdir(ctx, await resolve(ctx, parent), name, mode);
        paths.set(path, a.ino);
      });
    },
    symlink(target: string, path: string, cb: Cb) {
      answer("symlink", cb, async (ctx) => {
        const { parent, name } = split(path);
        const a = await fs.symlink(ctx, await resolve(ctx, parent), name, target);
        paths.set(path, a.ino);
      });
    },
    link(src: string, dest: string, cb: Cb) {
      answer("link", cb, async (ctx) => {
        const { parent, name } = split(dest);
        const a = await fs.link(ctx, await resolve(ctx, src), await resolve(ctx, parent), name);
        paths.set(dest, a.ino);
      });
    },
    unlink(path: string, cb: Cb) {
      answer("unlink", cb, async (ctx) => {
        if (hidden.delete(path)) return; // already unlinked when libfuse hid it
        const { parent, name } = split(path);
        await fs.unlink(ctx, await resolve(ctx, parent), name);
        paths.forget(path);
      });
    },
    rmdir(path: string, cb: Cb) {
      answer("rmdir", cb, async (ctx) => {
        const { parent, name } = split(path);
        await fs.rmdir(ctx, await resolve(ctx, parent), name);
        paths.forget(path);
      });
    },
    rename(src: string, dest: string, cb: Cb) {
      answer("rename", cb, async (ctx) => {
        const from = split(src);
        if (HIDDEN.test(dest) && !hidden.has(src)) {
          const ino = await resolve(ctx, src);
          await fs.unlink(ctx, await resolve(ctx, from.parent), from.name);
          paths.forget(src);
          hidden.set(dest, ino);
          return;
        }
        const to = split(dest);
        await fs.rename(ctx, await resolve(ctx, from.parent), from.name, await resolve(ctx, to.parent), to.name);
        paths.forget(src);
        paths.forget(dest);
      });
    },
    chmod(path: string, mode: number, cb: Cb) {
      answer("chmod", cb, async (ctx) => fs.setattr(ctx, await resolve(ctx, path), { mode }));
    },
    chown(path: string, uid: number, gid: number, cb: Cb) {
      answer("chown", cb, async (ctx) =>
        fs.setattr(ctx, await resolve(ctx, path), {
          ...(uid !== UNCHANGED_ID && uid !== -1 ? { uid } : {}),
          ...(gid !== UNCHANGED_ID && gid !== -1 ? { gid } : {}),
        }),
      );
    },
    utimens(path: string, atime: number | "now" | "omit", mtime: number | "now" | "omit", cb: Cb) {
      answer("utimens", cb, async (ctx) =>
        fs.setattr(ctx, await resolve(ctx, path), {
          ...(atime !== "omit" ? { atime } : {}),
          ...(mtime !== "omit" ? { mtime } : {}),
        }),
      );
    },
    truncate(path: string, size: number, cb: Cb) {
      answer("truncate", cb, async (ctx) => fs.setattr(ctx, await resolve(ctx, path), { size }));
    },
    ftruncate(path: string, fd: number, size: number, cb: Cb) {
      answer("ftruncate", cb, async (ctx) => fs.setattr(ctx, fs.handleIno(fd) ?? (await resolve(ctx, path)), { size }, fd));
    },
    create(path: string, mode: number, cb: Cb) {
      // fuse-native does not pass the open flags of create; the kernel has already
      // handled O_EXCL (it looked the name up first), so open read-write.
      answer(
        "create",
        cb,
        async (ctx) => {
          const { parent, name } = split(path);
          const r = await fs.create(ctx, await resolve(ctx, parent), name, mode, fsConstants.O_RDWR | fsConstants.O_CREAT);
          paths.set(path, r.attr.ino);
          return r.fh;
        },
        (fh) => [fh],
      );
    },
    open(path: string, flags: number, cb: Cb) {
      answer("open", cb, async (ctx) => fs.open(ctx, await resolve(ctx, path), flags), (fh) => [fh]);
    },
    read(_path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
      count("read", cb, async (ctx) => {
        // Straight into FUSE's buffer: no allocation, no copy.
        return (await fs.read(ctx, fd, pos, len, buf)).length;
      });
    },
    write(_path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
      count("write", cb, (ctx) => fs.write(ctx, fd, pos, len === buf.length ? buf : buf.subarray(0, len)));
    },
    flush(_path: string, fd: number, cb: Cb) {
      answer("flush", cb, (ctx) => fs.flush(ctx, fd));
    },
    fsync(_path: string, datasync: number, fd: number, cb: Cb) {
      answer("fsync", cb, (ctx) => fs.fsync(ctx, fd, Boolean(datasync)));
    },
    fsyncdir(_path: string, _datasync: number, _fd: number, cb: Cb) {
      answer("fsyncdir", cb, () => fs.syncAll());
    },
    release(_path: string, fd: number, cb: Cb) {
      answer("release", cb, (ctx) => fs.release(ctx, fd));
    },
    setxattr(path: string, name: string, value: Buffer, _position: number, flags: number, cb: Cb) {
      if (ACL_XATTRS.has(name)) return cb(-EOPNOTSUPP);
      answer("setxattr", cb, async (ctx) => fs.setxattr(ctx, await resolve(ctx, path), name, value, flags));
    },
    getxattr(path: string, name: string, _position: number, cb: Cb) {
      if (ACL_XATTRS.has(name)) return cb(-EOPNOTSUPP);
      answer("getxattr", cb, async (ctx) => Buffer.from(await fs.getxattr(ctx, await resolve(ctx, path), name)), (v) => [v]);
    },
    listxattr(path: string, cb: Cb) {
      answer("listxattr", cb, async (ctx) => (await fs.listxattr(ctx, await resolve(ctx, path))).filter((n) => !ACL_XATTRS.has(n)), (names) => [names]);
    },
    removexattr(path: string, name: string, cb: Cb) {
      if (ACL_XATTRS.has(name)) return cb(-EOPNOTSUPP);
      answer("removexattr", cb, async (ctx) => fs.removexattr(ctx, await resolve(ctx, path), name));
    },
  };
}
