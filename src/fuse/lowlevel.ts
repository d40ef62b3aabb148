/**
 * The low-level (inode-based) FUSE session of our fuse-native patch
 * (`fuse-native/lowlevel.js`, `lowlevel.c`), typed.
 *
 * libfuse 2.9's fuse_lowlevel_new on a channel from fuse_mount: one native
 * thread reads requests and queues them to this thread without waiting; each
 * is answered later, once, by slot, with a reply method. The reply numbers go
 * through `reply` (a Float64Array the native side reads) and the request
 * numbers come in `req`, so no napi value is made per field.
 *
 * Used by the objectfs adapter and by the do-nothing filesystem of
 * bench/support/null_fs.ts, so both pay the same binding costs.
 */
import { spawn } from "node:child_process";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

type SessionHandle = { readonly __session: unique symbol };

interface Binding {
  mount(mountpoint: string, options: string, handler: Handler, req: Float64Array, reply: Float64Array, features: number, maxWrite: number): SessionHandle;
  close(s: SessionHandle): void;
  ref(s: SessionHandle, on: boolean): void;
  stats(s: SessionHandle): [number, number, number, number, number];
  replyErr(s: SessionHandle, slot: number, errno: number): number;
  replyEntry(s: SessionHandle, slot: number): number;
  replyCreate(s: SessionHandle, slot: number): number;
  replyAttr(s: SessionHandle, slot: number): number;
  replyOpen(s: SessionHandle, slot: number): number;
  replyWrite(s: SessionHandle, slot: number, count: number): number;
  replyXattr(s: SessionHandle, slot: number, size: number): number;
  replyBuf(s: SessionHandle, slot: number, data: Uint8Array, length: number): number;
  replyReadlink(s: SessionHandle, slot: number, target: string): number;
  replyStatfs(s: SessionHandle, slot: number): number;
  notifyInvalInode(s: SessionHandle, ino: number, offset: number, length: number): number;
  notifyInvalEntry(s: SessionHandle, parent: number, name: string): number;
  readonly OPS: readonly OpName[];
  readonly REQ: Record<"ino" | "a" | "b" | "c" | "fh" | "uid" | "gid" | "pid" | "umask" | "mode" | "attrUid" | "attrGid" | "size" | "atime" | "mtime" | "length", number>;
  readonly REPLY: Record<
    "ino" | "generation" | "mode" | "nlink" | "uid" | "gid" | "rdev" | "size" | "blocks" | "blksize" | "atime" | "mtime" | "ctime" | "attrTimeout" | "entryTimeout" | "fh" | "openFlags" | "fresh" | "statfs" | "length",
    number
  >;
  readonly SET_ATTR: Record<"mode" | "uid" | "gid" | "size" | "atime" | "mtime" | "atimeNow" | "mtimeNow", number>;
  readonly OPEN: Record<"directIo" | "keepCache" | "nonseekable" | "cacheDir", number>;
  readonly FEATURES: Record<"parallelDirops" | "killprivV2" | "maxPages" | "cacheSymlinks", number>;
}

export type OpName =
  | "init" | "lookup" | "forget" | "getattr" | "setattr" | "readlink" | "mknod" | "mkdir" | "unlink" | "rmdir" | "symlink" | "rename" | "link"
  | "open" | "read" | "write" | "flush" | "release" | "fsync" | "opendir" | "readdir" | "releasedir" | "fsyncdir" | "statfs" | "setxattr"
  | "getxattr" | "listxattr" | "removexattr" | "access" | "create" | "destroy";

/** One request as the native side hands it over: opcode, slot (-1: nothing to answer), strings, data (valid until the reply). */
export type Handler = (op: number, slot: number, name: string | undefined, name2: string | undefined, data: Buffer | undefined) => void;

export const ll: Binding = require("fuse-native/lowlevel.js");
export const OP = Object.fromEntries(ll.OPS.map((n, i) => [n, i])) as Record<OpName, number>;
export const { REQ, REPLY, SET_ATTR, OPEN, FEATURES } = ll;

/**
 * The features every mount asks for: parallel lookups in a directory, the
 * filesystem clearing set-user-ID itself (the kernel then stops asking for
 * security.capability before writes; the fs core already applies Linux's
 * rules), 1 MiB requests, cached symlink targets.
 */
export const DEFAULT_FEATURES = FEATURES.parallelDirops | FEATURES.killprivV2 | FEATURES.maxPages | FEATURES.cacheSymlinks;

/** The largest request (write or read) with FEATURES.maxPages. */
export const MAX_WRITE = 1 << 20;

export interface SessionOptions {
  /**
   * Protocol features beyond libfuse 2.9's (FEATURES bits), asked for in
   * the INIT reply when the kernel offers them. @default DEFAULT_FEATURES
   */
  readonly features?: number;
  /** Largest write request with FEATURES.maxPages (128 KiB to 1 MiB). @default 1048576 */
  readonly maxWrite?: number;
}

/** Attributes as the kernel wants them (times in milliseconds). */
export interface LLAttr {
  readonly ino: number;
  readonly mode: number;
  readonly nlink: number;
  readonly uid: number;
  readonly gid: number;
  readonly rdev: number;
  readonly size: number;
  readonly blocks: number;
  readonly blksize: number;
  readonly atime: number;
  readonly mtime: number;
  readonly ctime: number;
}

export interface LLStatfs {
  readonly bsize: number;
  readonly frsize: number;
  readonly blocks: number;
  readonly bfree: number;
  readonly bavail: number;
  readonly files: number;
  readonly ffree: number;
  readonly namemax: number;
}

/** A mounted low-level session. */
export class Session {
  /** Request numbers of the request being dispatched (read them synchronously in the handler). */
  readonly req = new Float64Array(16);
  private readonly reply = new Float64Array(32);
  private readonly handle: SessionHandle;
  private endedResolve!: () => void;
  /** Resolves when the kernel connection ended (unmounted, or aborted). */
  readonly ended = new Promise<void>((r) => (this.endedResolve = r));
  private closed = false;

  /**
   * Mount at `mountpoint` with the -o `options` (mount options for
   * fuse_mount and session options for fuse_lowlevel_new, e.g.
   * "fsname=x,default_permissions,big_writes,max_write=131072").
   */
  constructor(readonly mountpoint: string, options: readonly string[], handler: Handler, session: SessionOptions = {}) {
    const destroy = OP.destroy;
    this.handle = ll.mount(mountpoint, options.join(","), (op, slot, name, name2, data) => {
      if (op === destroy) {
        this.finish();
        return;
      }
      handler(op, slot, name, name2, data);
    }, this.req, this.reply, session.features ?? DEFAULT_FEATURES, session.maxWrite ?? MAX_WRITE);
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    ll.close(this.handle);
    this.endedResolve();
  }

  err(slot: number, errno: number): void {
    ll.replyErr(this.handle, slot, errno);
  }

  private attr(a: LLAttr, attrTimeout: number): void {
    const r = this.reply;
    r[REPLY.ino] = a.ino;
    r[REPLY.mode] = a.mode;
    r[REPLY.nlink] = a.nlink;
    r[REPLY.uid] = a.uid;
    r[REPLY.gid] = a.gid;
    r[REPLY.rdev] = a.rdev;
    r[REPLY.size] = a.size;
    r[REPLY.blocks] = a.blocks;
    r[REPLY.blksize] = a.blksize;
    r[REPLY.atime] = a.atime;
    r[REPLY.mtime] = a.mtime;
    r[REPLY.ctime] = a.ctime;
    r[REPLY.attrTimeout] = attrTimeout;
  }

  /** A name's inode (the kernel's lookup count of it goes up by one). */
  entry(slot: number, a: LLAttr, entryTimeout: number, attrTimeout: number, generation = 1): void {
    this.attr(a, attrTimeout);
    this.reply[REPLY.generation] = generation;
    this.reply[REPLY.entryTimeout] = entryTimeout;
    ll.replyEntry(this.handle, slot);
  }

  /** No such name, and the kernel may remember that for `timeout` seconds. */
  negative(slot: number, timeout: number): void {
    this.reply.fill(0, 0, REPLY.statfs);
    this.reply[REPLY.entryTimeout] = timeout;
    ll.replyEntry(this.handle, slot);
  }

  /**
   * A new file, opened. `fresh`: it has no extended attributes, so until one is set (or the
   * kernel forgets the inode) the native side answers the kernel's question for
   * security.capability before the file's first write itself (ENODATA), without a hop here.
   */
  create(slot: number, a: LLAttr, entryTimeout: number, attrTimeout: number, fh: number, openFlags: number, fresh: boolean, generation = 1): void {
    this.attr(a, attrTimeout);
    this.reply[REPLY.generation] = generation;
    this.reply[REPLY.entryTimeout] = entryTimeout;
    this.reply[REPLY.fh] = fh;
    this.reply[REPLY.openFlags] = openFlags;
    this.reply[REPLY.fresh] = fresh ? 1 : 0;
    ll.replyCreate(this.handle, slot);
  }

  attrs(slot: number, a: LLAttr, attrTimeout: number): void {
    this.attr(a, attrTimeout);
    ll.replyAttr(this.handle, slot);
  }

  open(slot: number, fh: number, openFlags: number): void {
    this.reply[REPLY.fh] = fh;
    this.reply[REPLY.openFlags] = openFlags;
    ll.replyOpen(this.handle, slot);
  }

  written(slot: number, count: number): void {
    ll.replyWrite(this.handle, slot, count);
  }

  /** The size an xattr value or name list would need (a probe with size 0). */
  xattrSize(slot: number, size: number): void {
    ll.replyXattr(this.handle, slot, size);
  }

  buf(slot: number, data: Uint8Array, length = data.length): void {
    ll.replyBuf(this.handle, slot, data, length);
  }

  readlink(slot: number, target: string): void {
    ll.replyReadlink(this.handle, slot, target);
  }

  statfs(slot: number, s: LLStatfs): void {
    const r = this.reply;
    const at = REPLY.statfs;
    r[at] = s.bsize;
    r[at + 1] = s.frsize;
    r[at + 2] = s.blocks;
    r[at + 3] = s.bfree;
    r[at + 4] = s.bavail;
    r[at + 5] = s.files;
    r[at + 6] = s.ffree;
    r[at + 7] = s.ffree;
    r[at + 8] = s.namemax;
    ll.replyStatfs(this.handle, slot);
  }

  /** Drop the kernel's cached attributes of `ino` and its cached pages in [offset, offset+length) (length 0: all). */
  invalidateInode(ino: number, offset = 0, length = 0): void {
    if (!this.closed) ll.notifyInvalInode(this.handle, ino, offset, length);
  }

  /** Drop the kernel's cached name `name` in directory `parent` (and a cached absence of it). */
  invalidateEntry(parent: number, name: string): void {
    if (!this.closed) ll.notifyInvalEntry(this.handle, parent, name);
  }

  /**
   * Requests not yet answered, notifications sent, notifications that failed, FEATURES the
   * kernel took, and security.capability questions answered natively (see {@link create}).
   */
  stats(): { outstanding: number; notified: number; notifyFailed: number; granted: number; answeredNatively: number } {
    const [outstanding, notified, notifyFailed, granted, answeredNatively] = ll.stats(this.handle);
    return { outstanding, notified, notifyFailed, granted, answeredNatively };
  }

  /**
   * Unmount (fusermount -u, lazily if busy) and wait up to `ms` for the
   * connection to end. Resolves false if it has not (a lazy unmount of a busy
   * mount lives until its last user goes); the session then stops keeping the
   * event loop alive.
   */
  async unmount(ms = 5000): Promise<boolean> {
    if (this.closed) return true;
    const run = (args: string[]) => new Promise<number>((resolve) => {
      const p = spawn("fusermount", args, { stdio: "ignore" });
      p.on("error", () => resolve(-1));
      p.on("exit", (code) => resolve(code ?? -1));
    });
    if ((await run(["-u", this.mountpoint])) !== 0 && !this.closed) await run(["-uz", this.mountpoint]);
    const done = await Promise.race([this.ended.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);
    if (!done) ll.close(this.handle); // only unrefs while the connection lives
    return done;
  }
}
