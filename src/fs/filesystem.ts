/**
 * The filesystem core: POSIX semantics over the journal.
 *
 * Every operation loads the rows it needs, decides synchronously against the
 * projection state (an errno, or events), and appends the events; the
 * projection rows derived from them (evolve) go in the same journal batch.
 * The API is inode-based like FUSE's low-level protocol and knows nothing of
 * FUSE or S3.
 *
 * Durability: in `fsync` mode an operation returns once its events are staged
 * (visible to every later operation, committed within milliseconds by group
 * commit), and fsync, and flush on close, wait until everything the process
 * has staged is synced. In `strict` mode every mutating operation waits for its
 * own synced commit.
 */
import { hostname } from "node:os";
import { constants as fsConstants } from "node:fs";
import { statfs as statfsDir } from "node:fs/promises";
import {
  Journal,
  JournalError,
  ROOT_INO,
  type Ino,
  type InodeKind,
  type JournalEvent,
  type NewEvent,
} from "../../journal/mod.ts";
import { evolve, S_IFMT, TYPE_BITS } from "../projection/evolve.ts";
import { auditSeqs, extentsIn, NotLoaded, SUBLEVELS, TreeState, type Backing, type Dirent, type Inode, type Need } from "../projection/state.ts";
import { fsck, rebuild, type FsckReport, type ReplayStart } from "../projection/fsck.ts";
import { localReplayStart } from "../retention/history.ts";
import { permits, inGroup, R_OK, S_ISGID, S_ISUID, S_ISVTX, W_OK, X_OK, type Ctx } from "./context.ts";
import { fail, FsError } from "./errors.ts";
import { key, readU64 } from "../../journal/keys.ts";
import type { RemoteSource } from "./remote.ts";
import type { Extent, RemoteBase } from "../projection/state.ts";
import { unpackValue } from "../../journal/codec.ts";

export type Durability = "fsync" | "strict";

export interface FilesystemOptions {
  /** Objects in S3 that back the tree: listed lazily, read on demand. */
  readonly remote?: RemoteSource;
  /** @default "fsync" */
  readonly durability?: Durability;
  /** Owner of the root directory when it is first created. @default the process's uid/gid */
  readonly rootOwner?: { readonly uid: number; readonly gid: number };
  /** Permission bits of the root directory when it is first created. @default 0o755 */
  readonly rootMode?: number;
  /** Cached rows of each kind before clean ones are dropped. @default 200000 */
  readonly cacheEntries?: number;
  /** Staged data bytes after which writers wait for the commit. @default 64 MiB */
  readonly maxPendingBytes?: number;
  /** Data log file size. @default 1 GiB */
  readonly dataFileBytes?: number;
  /** Recorded in the Mounted event. @default "objectfs" */
  readonly version?: string;
  /** Refuse every change with EROFS (nothing is appended, not even session markers). @default false */
  readonly readOnly?: boolean;
  /** Where the reason for stopping after a journal failure is reported. @default console.error */
  readonly log?: (message: string) => void;
}

export interface Attr {
  readonly ino: Ino;
  readonly kind: InodeKind;
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

export interface DirEntry {
  readonly name: string;
  readonly ino: Ino;
  readonly kind: InodeKind;
  /** Pass back to readdir to continue after this entry. */
  readonly offset: number;
}

export interface SetAttr {
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly size?: number;
  /** Milliseconds, or "now". */
  readonly atime?: number | "now";
  readonly mtime?: number | "now";
}

export interface StatFs {
  readonly bsize: number;
  readonly frsize: number;
  readonly blocks: number;
  readonly bfree: number;
  readonly bavail: number;
  readonly files: number;
  readonly ffree: number;
  readonly namemax: number;
}

/** One entry of {@link Filesystem.walk}. */
export interface WalkEntry {
  readonly path: string;
  readonly parent: Ino;
  readonly name: string;
  readonly inode: Inode;
}

/** A file frozen at seq `asOf` (see {@link Filesystem.view}). */
export interface FileView {
  readonly inode: Inode;
  readonly extents: readonly Extent[];
  readonly asOf: number;
}

interface Handle {
  readonly ino: Ino;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly append: boolean;
  /** Something was staged through this handle since its last flush. */
  dirty: boolean;
  /** The journal's staged seq after the last change through this handle: what a flush makes durable. */
  upTo: number;
}

const { O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND } = fsConstants;
const O_ACCMODE = 3;
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;
const NAME_MAX = 255;
const BLOCK = 4096;

export function backingOf(journal: Journal): Backing {
  return {
    inodes: journal.sublevel(SUBLEVELS.inodes),
    dirents: journal.sublevel(SUBLEVELS.dirents),
    cookies: journal.sublevel(SUBLEVELS.cookies),
    extents: journal.sublevel(SUBLEVELS.extents),
    orphans: journal.sublevel(SUBLEVELS.orphans),
    remote: journal.sublevel(SUBLEVELS.remote),
    segmentData: journal.sublevel(SUBLEVELS.segmentData),
    audit: journal.sublevel(SUBLEVELS.audit),
    meta: journal.sublevel(SUBLEVELS.meta),
  };
}

const KIND_OF_TYPE = new Map<number, InodeKind>(Object.entries(TYPE_BITS).map(([k, v]) => [v, k as InodeKind]));

export class Filesystem {
  private readonly handles = new Map<number, Handle>();
  private readonly openCount = new Map<number, number>();
  private nextFh = 1;
  private failed: Error | undefined;
  private failureLogged = false;
  private readonly log: (message: string) => void;
  private closed = false;
  private readonly remote: RemoteSource | undefined;
  /** Directory listings in flight, so concurrent operations on a directory list it once. */
  private readonly listing = new Map<number, Promise<void>>();

  private constructor(
    readonly journal: Journal,
    private readonly state: TreeState,
    private readonly backing: Backing,
    private readonly options: Required<Pick<FilesystemOptions, "durability" | "cacheEntries" | "maxPendingBytes" | "readOnly">>,
    log?: (message: string) => void,
    remote?: RemoteSource,
  ) {
    this.log = log ?? ((m) => console.error(m));
    this.remote = remote;
  }

  /** Open (or create) a filesystem whose journal lives in `dir`. */
  static async open(dir: string, options: FilesystemOptions = {}): Promise<Filesystem> {
    const journal = await Journal.open(dir, { dataFileBytes: options.dataFileBytes });
    try {
      const backing = backingOf(journal);
      // The journal was cut back after an unclean stop: rows derived from the removed events go too.
      if (journal.recovery?.truncatedFrom !== undefined) await rebuild(journal, backing, await localReplayStart(journal));
      const state = await TreeState.open(backing);
      const fs = new Filesystem(journal, state, backing, {
        durability: options.durability ?? "fsync",
        cacheEntries: options.cacheEntries ?? 200_000,
        maxPendingBytes: options.maxPendingBytes ?? 64 << 20,
        readOnly: options.readOnly ?? false,
      }, options.log, options.remote);
      journal.setRowWriter((w) => state.writeRows(w));
      journal.subscribe(() => fs.maybeEvict());
      await fs.start(options);
      return fs;
    } catch (e) {
      await journal.close().catch(() => {});
      throw e;
    }
  }

  private async start(options: FilesystemOptions): Promise<void> {
    await this.state.load([{ inode: ROOT_INO }]);
    if (this.options.readOnly) {
      if (!this.state.inode(ROOT_INO)) throw new FsError("EROFS", `cannot mount read-only: ${this.journal.dir} holds no filesystem yet`);
      return;
    }
    const events: NewEvent[] = [];
    if (!this.state.inode(ROOT_INO)) {
      const owner = options.rootOwner ?? { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
      events.push({
        type: "InodeCreated", ino: ROOT_INO, kind: "dir", mode: TYPE_BITS.dir | (options.rootMode ?? 0o755), uid: owner.uid, gid: owner.gid,
        ...(this.remote ? { remotePrefix: this.remote.prefix } : {}),
      });
    }
    // No handle survives a restart: inodes that were unlinked while open are freed now.
    const orphans = this.state.orphans();
    await this.state.load(orphans.map((ino) => ({ extents: ino })));
    for (const ino of orphans) events.push({ type: "InodeDropped", ino });
    events.push({ type: "Mounted", clientId: this.journal.clientId, host: hostname(), version: options.version ?? "objectfs", pid: process.pid });
    await this.commit(events, true);
  }

  // ---- the decide/append loop ------------------------------------------------

  /**
   * Load `needs`, run `decide` against the state (retrying if it touches
   * something not loaded), append its events with their projection rows.
   */
  private async run<T>(
    needs: readonly Need[],
    decide: () => { events: NewEvent[]; result: T; sync?: boolean },
    options: { readonly list?: readonly Ino[]; readonly system?: boolean } = {},
  ): Promise<T> {
    if (this.failed) throw this.failure();
    if (this.closed) throw new FsError("EIO", "filesystem is closed");
    if (this.remote) await this.listPending(needs, options.list ?? []);
    if (!this.state.loaded(needs)) await this.state.load(needs);
    for (let attempt = 0; ; attempt++) {
      let decision: { events: NewEvent[]; result: T; sync?: boolean };
      try {
        decision = decide();
      } catch (e) {
        if (e instanceof NotLoaded && attempt < 100_000) { // each retry loads one more row: deep trees just take more
          await this.state.load([e.what]);
          continue;
        }
        throw e;
      }
      if (decision.events.length > 0) await this.commit(decision.events, decision.sync ?? false, options.system);
      return decision.result;
    }
  }

  /** Append events, projecting them into the state in the same batch. */
  private async commit(events: readonly NewEvent[], sync: boolean, system = false): Promise<readonly JournalEvent[]> {
    if (this.options.readOnly && !system) fail("EROFS");
    let stagedOk = false;
    const done = this.journal.append(events, {
      sync: sync || this.options.durability === "strict",
      project: (evs) => {
        try {
          for (const e of evs) evolve(this.state, e);
        } catch (e) {
          // A half-applied state cannot be trusted: stop, nothing was queued.
          this.failed = e as Error;
          throw e;
        }
        stagedOk = true;
        return []; // rows go with the commit batch (setRowSource), once per changed row
      },
    });
    done.catch((e) => {
      this.failed ??= e as Error;
    });
    if (!stagedOk) await done; // throws the projection error
    if (this.options.durability === "strict" || sync) return await this.guard(done);
    if (this.journal.pendingDataBytes > this.options.maxPendingBytes) await this.guard(this.journal.flushed());
    // Staged: visible to every later operation. Errors surface at fsync/close (and stop the fs).
    return [];
  }

  private async guard<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (e) {
      this.failed ??= e as Error;
      throw this.failure();
    }
  }

  /**
   * The errno for every operation once the journal has failed (fail-stop: the
   * projected state may be ahead of the disk): ENOSPC for a full disk, else EIO.
   * The first time, the reason is logged.
   */
  private failure(): FsError {
    const e = this.failed!;
    if (!this.failureLogged) {
      this.failureLogged = true;
      this.log(`objectfs: ${e.message}`);
    }
    return new FsError(e instanceof JournalError && e.reason === "full" ? "ENOSPC" : "EIO", e.message);
  }

  /** After a commit that left nothing staged, drop clean cache entries beyond the limit. */
  private maybeEvict(): void {
    if (this.journal.queued > 0 || !this.state.over(this.options.cacheEntries)) return;
    this.state.evict(this.options.cacheEntries, new Set<number>(this.openCount.keys()));
  }

  // ---- remote directories ----------------------------------------------------------

  /** List the directories that `needs` look into (and `extra`) if their listing is pending. */
  private async listPending(needs: readonly Need[], extra: readonly Ino[]): Promise<void> {
    const dirs = new Set<Ino>(extra);
    for (const n of needs) if ("dirent" in n) dirs.add(n.dirent[0]);
    if (dirs.size === 0) return;
    await this.state.load([...dirs].map((ino) => ({ inode: ino })));
    for (const ino of dirs) {
      let pending: string | undefined;
      try {
        pending = this.state.inode(ino)?.pending;
      } catch (e) {
        if (!(e instanceof NotLoaded)) throw e;
        pending = undefined; // evicted meanwhile: the next operation lists it
      }
      if (pending !== undefined) await this.listDir(ino);
    }
  }

  /** Journal the listing of a pending directory (once, however many ask at the same time). */
  private listDir(ino: Ino): Promise<void> {
    let p = this.listing.get(ino);
    if (!p) {
      p = this.fetchListing(ino).finally(() => this.listing.delete(ino));
      this.listing.set(ino, p);
    }
    return p;
  }

  private async fetchListing(ino: Ino): Promise<void> {
    await this.state.load([{ inode: ino }]);
    const prefix = this.state.inode(ino)?.pending;
    if (prefix === undefined) return;
    let found: import("./remote.ts").RemoteListing;
    try {
      found = await this.remote!.list(prefix);
    } catch (e) {
      this.log(`objectfs: cannot list ${JSON.stringify(prefix)} in S3, so the directory stays unlisted for now: ${(e as Error).message}`);
      fail("EIO", (e as Error).message);
    }
    await this.run([{ inode: ino }], () => {
      const dir = this.inode(ino);
      if (dir.pending === undefined) return { events: [], result: undefined };
      let next = this.state.nextIno as number;
      const events: NewEvent[] = [];
      const CHUNK = 5000; // entries per event: a huge directory is several events in one batch
      for (let i = 0; i === 0 || i < found.entries.length; i += CHUNK) {
        const entries = found.entries.slice(i, i + CHUNK).map((e) => ({ ...e, ino: (next++) as Ino }));
        const last = i + CHUNK >= found.entries.length;
        events.push({ type: "RemoteListed", dir: ino, prefix, entries, skipped: last ? found.skipped : [], complete: last });
      }
      return { events, result: undefined };
    }, { system: true });
  }

  /** List a directory and every directory below it (before it moves: its objects move with it). */
  private async listDeep(ino: Ino): Promise<void> {
    await this.listDir(ino);
    for (const child of await this.childDirs(ino)) await this.listDeep(child);
  }

  private async childDirs(ino: Ino): Promise<Ino[]> {
    const out: Ino[] = [];
    for (const e of await this.entries(ino)) if (e.kind === "dir") out.push(e.ino);
    return out;
  }

  /**
   * Committed entries of a directory after cookie `after` (2: all but "." and ".."), in
   * cookie order, at most `limit`. Read in pages: one native call per thousand entries.
   */
  private async entries(ino: Ino, after = 2, limit = Infinity, out: DirEntry[] = []): Promise<DirEntry[]> {
    await this.guard(this.journal.flushed()); // rows of staged operations are committed
    const it = this.backing.cookies.iterator({ gt: key(ino, after), lt: key(ino + 1), limit: limit === Infinity ? -1 : limit } as never);
    try {
      for (;;) {
        const page = await it.nextv(1000);
        if (page.length === 0) break;
        for (const [k, v] of page) {
          const [name, child, kind] = unpackValue<[string, Ino, InodeKind]>(v as Buffer);
          out.push({ name, ino: child, kind, offset: readU64(k as Buffer, 8) });
        }
      }
    } finally {
      await it.close();
    }
    return out;
  }

  // ---- for the replicator: whole-tree views, no permission checks ------------------

  /** Why the filesystem stopped taking changes (a journal failure), or undefined while it works. */
  get failedWith(): string | undefined {
    return this.failed?.message;
  }

  /** The seq of everything staged so far. */
  get staged(): number {
    return this.journal.staged;
  }

  /** Replication and sync facts. */
  get syncState(): import("../projection/state.ts").SyncState {
    return this.state.sync;
  }

  /**
   * Every entry known locally below the root (not inside directories whose listing is
   * pending), parents before children, with its path from the root ("a/b").
   */
  async *walk(): AsyncGenerator<WalkEntry> {
    const stack: { ino: Ino; path: string }[] = [{ ino: ROOT_INO, path: "" }];
    while (stack.length > 0) {
      const { ino, path } = stack.pop()!;
      const entries = await this.entries(ino);
      for (const e of entries) {
        const inode = await this.run([{ inode: e.ino }], () => ({ events: [], result: this.state.inode(e.ino) }));
        if (!inode) continue;
        const childPath = path === "" ? e.name : `${path}/${e.name}`;
        yield { path: childPath, parent: ino, name: e.name, inode: { ...inode } };
        if (inode.kind === "dir" && inode.pending === undefined) stack.push({ ino: e.ino, path: childPath });
      }
    }
  }

  /**
   * A file's contents as they are now, frozen: extents point into the append-only data log
   * and the remote base names an object version, so reading the view later gives these bytes.
   */
  async view(ino: Ino): Promise<FileView | undefined> {
    return this.run([{ inode: ino }, { extents: ino }], () => {
      const inode = this.state.inode(ino);
      if (!inode) return { events: [], result: undefined };
      return { events: [], result: { inode: { ...inode }, extents: [...this.state.extents(ino)], asOf: this.journal.staged } };
    });
  }

  /** Bytes [offset, offset+length) of a view (clamped to its size). */
  async readView(view: FileView, offset: number, length: number): Promise<Uint8Array> {
    const size = Math.max(0, Math.min(length, view.inode.size - offset));
    const out = new Uint8Array(size);
    await this.fill(out, offset, extentsIn(view.extents, offset, size), view.inode.remote);
    return out;
  }

  /**
   * Where data log bytes (file, pos, length) are in segments in S3, as consecutive pieces
   * from `pos` on; it stops at the first byte no segment holds.
   */
  async segmentPieces(file: number, pos: number, length: number): Promise<{ length: number; key: string; at: number }[]> {
    await this.guard(this.journal.flushed());
    const out: { length: number; key: string; at: number }[] = [];
    const end = pos + length;
    // The run that starts at or before pos, then the ones after it.
    let from = key(file, pos);
    for await (const k of this.backing.segmentData.keys({ lte: from, gte: key(file, 0), reverse: true, limit: 1 } as never)) from = k as Buffer;
    let at = pos;
    for await (const [k, v] of this.backing.segmentData.iterator({ gte: from, lt: key(file + 1, 0) } as never)) {
      const runPos = readU64(k as Buffer, 8);
      const [runLength, segKey, runAt] = unpackValue<[number, string, number]>(v as Buffer);
      if (runPos > at) break;
      const runEnd = runPos + runLength;
      if (runEnd <= at) continue;
      const take = Math.min(runEnd, end) - at;
      out.push({ length: take, key: segKey, at: runAt + (at - runPos) });
      at += take;
      if (at >= end) break;
    }
    return out;
  }

  /** Journal facts found or made by the replicator (allowed on read-only mounts too). */
  async record(needs: readonly Need[], decide: (now: { readonly nextIno: Ino }) => NewEvent[]): Promise<void> {
    await this.run(needs, () => ({ events: decide({ nextIno: this.state.nextIno }), result: undefined }), { system: true });
  }

  /** The inode at a path ("/a/b") now, without permission checks or listing, or undefined. */
  async resolvePath(path: string): Promise<Ino | undefined> {
    let ino: Ino = ROOT_INO;
    for (const name of path.split("/").filter(Boolean)) {
      // No dirent need: it would list a pending directory; a miss loads the row without listing.
      const d = await this.run([{ inode: ino }], () => {
        const dir = this.state.inode(ino);
        return { events: [], result: dir?.kind === "dir" && dir.pending === undefined ? this.state.dirent(ino, name) : undefined };
      });
      if (!d) return undefined;
      ino = d.ino;
    }
    return ino;
  }

  /** The audit index over this filesystem's projections (see audit/log.ts). */
  auditIndex(): import("../audit/log.ts").AuditIndex {
    return {
      resolveNow: (p) => this.resolvePath(p),
      isDir: async (ino) => (await this.inodeNow(ino as Ino))?.kind === "dir",
      eventsOf: (ino) => this.eventsOf(ino),
      get: (seq) => this.journal.get(seq),
      getMany: (seqs) => this.journal.getMany(seqs),
      batches: (from, to, select) => this.journal.readBatches({ gte: from, lte: to, ...(select ? { select } : {}) }),
      head: this.journal.head,
    };
  }

  /** Seqs of the events that touched an inode, in order (the audit index). */
  async eventsOf(ino: number): Promise<number[]> {
    await this.guard(this.journal.flushed());
    const out: number[] = [];
    for await (const [k, v] of this.backing.audit.iterator({ gte: key(ino, 0), lt: key(ino + 1, 0) } as never)) out.push(...auditSeqs(k as Buffer, v as Buffer));
    return out;
  }

  /** The inode now (a copy), or undefined. */
  async inodeNow(ino: Ino): Promise<Inode | undefined> {
    return this.run([{ inode: ino }], () => {
      const i = this.state.inode(ino);
      return { events: [], result: i ? { ...i } : undefined };
    });
  }

  /** The entry `name` of directory `parent` now, listing the directory if needed. */
  async entryNow(parent: Ino, name: string): Promise<Dirent | undefined> {
    return this.run([{ inode: parent }, { dirent: [parent, name] }], () => ({ events: [], result: this.state.dirent(parent, name) }));
  }

  /** Remote index rows under `prefix`: what this client believes S3 holds. */
  async *remoteKeys(prefix: string): AsyncGenerator<{ key: string; ino: Ino; etag: string; asOf: number }> {
    await this.guard(this.journal.flushed());
    const gte = Buffer.from(prefix);
    const it = this.backing.remote.iterator({ gte } as never);
    try {
      for (;;) {
        const page = await it.nextv(1000);
        if (page.length === 0) return;
        for (const [k, v] of page) {
          const keyText = (k as Buffer).toString("utf8");
          if (!keyText.startsWith(prefix)) return;
          const [ino, etag, asOf] = unpackValue<[Ino, string, number]>(v as Buffer);
          yield { key: keyText, ino, etag, asOf };
        }
      }
    } finally {
      await it.close();
    }
  }

  // ---- helpers -------------------------------------------------------------------

  private inode(ino: Ino): Inode {
    return this.state.inode(ino) ?? fail("ENOENT", `no inode ${ino}`);
  }

  private dir(ctx: Ctx, ino: Ino, mask: number): Inode {
    const d = this.inode(ino);
    if (d.kind !== "dir") fail("ENOTDIR");
    if (!permits(ctx, d, mask)) fail("EACCES");
    return d;
  }

  private static checkName(name: string): void {
    if (name.length === 0 || name.includes("/") || name.includes("\0")) fail("EINVAL", `invalid name ${JSON.stringify(name)}`);
    if (Buffer.byteLength(name) > NAME_MAX) fail("ENAMETOOLONG");
  }

  /**
   * Refuse a new entry at parent/name: the name must be free and the parent
   * writable, in Linux's order (an existing name is EEXIST even to a caller
   * who may not write the directory).
   */
  private creatable(ctx: Ctx, parent: Ino, name: string): Inode {
    Filesystem.checkName(name);
    const p = this.dir(ctx, parent, X_OK);
    if (name === "." || name === ".." || this.state.dirent(parent, name)) fail("EEXIST");
    if (p.nlink === 0) fail("ENOENT", "directory was removed");
    if (!permits(ctx, p, W_OK | X_OK)) fail("EACCES");
    return p;
  }

  /** Sticky directories: only the owner of the entry or the directory (or root) may remove or rename it. */
  private static stickyDenies(ctx: Ctx, dir: Inode, victim: Inode): boolean {
    return (dir.mode & S_ISVTX) !== 0 && ctx.uid !== 0 && ctx.uid !== dir.uid && ctx.uid !== victim.uid;
  }

  /**
   * Linux's setattr_should_drop_sgid: set-group-ID is dropped by a chown, write or
   * truncate where it is group-executable, or where the caller (not root) is
   * not in the file's group and so could not have set it.
   */
  private static dropsSgid(ctx: Ctx, inode: Inode): boolean {
    return (inode.mode & S_ISGID) !== 0 && ((inode.mode & 0o010) !== 0 || (ctx.uid !== 0 && !inGroup(ctx, inode.gid)));
  }

  /** Permission bits after a write or truncate by `ctx`: anyone but root drops set-user-ID, and set-group-ID as above. */
  private static afterWrite(ctx: Ctx, inode: Inode): number {
    let mode = inode.mode & 0o7777;
    if (ctx.uid === 0 || inode.kind !== "file") return mode;
    mode &= ~S_ISUID;
    if (Filesystem.dropsSgid(ctx, inode)) mode &= ~S_ISGID;
    return mode;
  }

  private newInode(ctx: Ctx, parent: Inode, kind: InodeKind, mode: number, extra: { rdev?: number; target?: string } = {}): NewEvent[] {
    const ino = this.state.nextIno;
    // mkdir keeps only the permission and sticky bits of the mode it is given (as Linux does).
    let perm = mode & (kind === "dir" ? 0o1777 : 0o7777);
    let gid = ctx.gid;
    if (parent.mode & S_ISGID) {
      gid = parent.gid;
      if (kind === "dir") perm |= S_ISGID;
      // Linux's mode_strip_sgid: a group-executable set-group-ID file made here by
      // someone outside the directory's group (and not root) loses set-group-ID.
      else if ((perm & (S_ISGID | 0o010)) === (S_ISGID | 0o010) && ctx.uid !== 0 && !inGroup(ctx, gid)) perm &= ~S_ISGID;
    }
    return [
      { type: "InodeCreated", ino, kind, mode: TYPE_BITS[kind] | perm, uid: ctx.uid, gid, caller: ctx, ...extra },
    ];
  }

  private attrOf(inode: Inode): Attr {
    return {
      ino: inode.ino,
      kind: inode.kind,
      mode: inode.mode,
      nlink: inode.nlink,
      uid: inode.uid,
      gid: inode.gid,
      rdev: inode.rdev,
      size: inode.kind === "dir" ? BLOCK : inode.size,
      blocks: Math.ceil((inode.kind === "dir" ? BLOCK : inode.size) / 512),
      blksize: BLOCK,
      atime: inode.atime,
      mtime: inode.mtime,
      ctime: inode.ctime,
    };
  }

  private handle(fh: number): Handle {
    return this.handles.get(fh) ?? fail("EBADF");
  }

  /** The inode an open handle refers to (it may have no name any more). */
  handleIno(fh: number): Ino | undefined {
    return this.handles.get(fh)?.ino;
  }

  private addHandle(ino: Ino, flags: number, dirty: boolean): number {
    const acc = flags & O_ACCMODE;
    const fh = this.nextFh++;
    this.handles.set(fh, { ino, readable: acc !== O_WRONLY, writable: acc === O_WRONLY || acc === O_RDWR, append: (flags & O_APPEND) !== 0, dirty, upTo: this.journal.staged });
    this.openCount.set(ino, (this.openCount.get(ino) ?? 0) + 1);
    return fh;
  }

  /**
   * The directory just below `top` on the way up from directory `below` to the
   * root (`below` itself if `top` is its parent), or undefined when `top` is not
   * above `below`.
   */
  private childBelow(top: Ino, below: Ino): Ino | undefined {
    for (let at = below; at !== ROOT_INO; ) {
      const up = this.inode(at).parent ?? ROOT_INO;
      if (up === top) return at;
      at = up;
    }
    return undefined;
  }

  /** Events that free an inode whose last link went, unless it is still open. */
  private dropIfUnused(ino: Ino, nlinkAfter: number): NewEvent[] {
    return nlinkAfter <= 0 && !this.openCount.has(ino) ? [{ type: "InodeDropped", ino }] : [];
  }

  // ---- POSIX operations ------------------------------------------------------------

  async lookup(ctx: Ctx, parent: Ino, name: string): Promise<Attr> {
    return this.run([{ inode: parent }, { dirent: [parent, name] }], () => {
      const p = this.dir(ctx, parent, X_OK);
      if (name === ".") return { events: [], result: this.attrOf(p) };
      if (name === "..") return { events: [], result: this.attrOf(this.inode(p.parent ?? ROOT_INO)) };
      if (Buffer.byteLength(name) > NAME_MAX) fail("ENAMETOOLONG");
      const d = this.state.dirent(parent, name) ?? fail("ENOENT");
      return { events: [], result: this.attrOf(this.inode(d.ino)) };
    });
  }

  async getattr(_ctx: Ctx, ino: Ino): Promise<Attr> {
    return this.run([{ inode: ino }], () => ({ events: [], result: this.attrOf(this.inode(ino)) }));
  }

  async setattr(ctx: Ctx, ino: Ino, change: SetAttr, fh?: number): Promise<Attr> {
    return this.run([{ inode: ino }, { extents: ino }], () => {
      const inode = this.inode(ino);
      const owner = ctx.uid === 0 || ctx.uid === inode.uid;
      const events: NewEvent[] = [];
      const attrs: { mode?: number; uid?: number; gid?: number; atime?: number; mtime?: number } = {};
      let mode = inode.mode & 0o7777;
      if (change.uid !== undefined || change.gid !== undefined) {
        const uid = change.uid ?? inode.uid;
        const gid = change.gid ?? inode.gid;
        if (ctx.uid !== 0) {
          if (uid !== inode.uid || ctx.uid !== inode.uid) fail("EPERM");
          if (gid !== inode.gid && !inGroup(ctx, gid)) fail("EPERM");
        }
        attrs.uid = uid;
        attrs.gid = gid;
        // Changing owner drops set-user-ID (even for root), and set-group-ID as dropsSgid says.
        if (inode.kind !== "dir") {
          if (mode & S_ISUID) mode &= ~S_ISUID;
          if (Filesystem.dropsSgid(ctx, inode)) mode &= ~S_ISGID;
          if (mode !== (inode.mode & 0o7777)) attrs.mode = mode;
        }
      }
      if (change.mode !== undefined) {
        if (!owner) fail("EPERM");
        mode = change.mode & 0o7777;
        const gid = attrs.gid ?? inode.gid;
        // chmod(2): without privilege, set-group-ID is silently dropped outside the file's group (directories too).
        if (ctx.uid !== 0 && mode & S_ISGID && !inGroup(ctx, gid)) mode &= ~S_ISGID;
        attrs.mode = mode;
      }
      for (const which of ["atime", "mtime"] as const) {
        const t = change[which];
        if (t === undefined) continue;
        if (t === "now") {
          if (!owner && !permits(ctx, inode, W_OK)) fail("EACCES");
          attrs[which] = Date.now();
        } else {
          if (!owner) fail("EPERM");
          attrs[which] = t;
        }
      }
      if (change.size !== undefined) {
        if (inode.kind === "dir") fail("EISDIR");
        if (inode.kind !== "file") fail("EINVAL");
        if (change.size < 0) fail("EINVAL");
        const h = fh !== undefined ? this.handles.get(fh) : undefined;
        if (!(h?.writable) && !permits(ctx, inode, W_OK)) fail("EACCES");
        this.state.extents(ino); // evolve trims extents
        events.push({ type: "Truncated", ino, size: change.size, caller: ctx });
        const kept = Filesystem.afterWrite(ctx, { ...inode, mode, gid: attrs.gid ?? inode.gid });
        if (kept !== mode) attrs.mode = kept;
        if (h) h.dirty = true;
      }
      if (Object.keys(attrs).length > 0 || events.length === 0) events.push({ type: "AttrsChanged", ino, ...attrs, caller: ctx });
      return { events, result: undefined };
    }).then(() => {
      const h = fh !== undefined ? this.handles.get(fh) : undefined;
      if (h?.dirty) h.upTo = this.journal.staged;
      return this.getattr(ctx, ino);
    });
  }

  async access(ctx: Ctx, ino: Ino, mask: number): Promise<void> {
    return this.run([{ inode: ino }], () => {
      if (!permits(ctx, this.inode(ino), mask & 7)) fail("EACCES");
      return { events: [], result: undefined };
    });
  }

  async mknod(ctx: Ctx, parent: Ino, name: string, mode: number, rdev = 0): Promise<Attr> {
    const kind = KIND_OF_TYPE.get(mode & S_IFMT) ?? (mode & S_IFMT ? fail("EINVAL") : "file");
    if (kind === "dir" || kind === "symlink") fail("EINVAL");
    if ((kind === "char" || kind === "block") && ctx.uid !== 0) fail("EPERM");
    return this.make(ctx, parent, name, kind, mode, { rdev });
  }

  async mkdir(ctx: Ctx, parent: Ino, name: string, mode: number): Promise<Attr> {
    return this.make(ctx, parent, name, "dir", mode);
  }

  async symlink(ctx: Ctx, parent: Ino, name: string, target: string): Promise<Attr> {
    if (target.length === 0) fail("ENOENT");
    if (Buffer.byteLength(target) > 4095) fail("ENAMETOOLONG");
    return this.make(ctx, parent, name, "symlink", 0o777, { target });
  }

  private async make(ctx: Ctx, parent: Ino, name: string, kind: InodeKind, mode: number, extra: { rdev?: number; target?: string } = {}): Promise<Attr> {
    const ino = await this.run([{ inode: parent }, { dirent: [parent, name] }], () => {
      const p = this.creatable(ctx, parent, name);
      const events = this.newInode(ctx, p, kind, mode, extra);
      const ino = (events[0] as { ino: Ino }).ino;
      events.push({ type: "DirentLinked", parent, name, ino, caller: ctx });
      return { events, result: ino };
    });
    return this.attrNow(ctx, ino);
  }

  /** Attributes of an inode just changed: from the cache when it is still there. */
  private attrNow(ctx: Ctx, ino: Ino): Promise<Attr> | Attr {
    try {
      const inode = this.state.inode(ino);
      if (inode) return this.attrOf(inode);
    } catch (e) {
      if (!(e instanceof NotLoaded)) throw e;
    }
    return this.getattr(ctx, ino);
  }

  /** Create and open a regular file (or open it, when it exists and O_EXCL is not given). */
  async create(ctx: Ctx, parent: Ino, name: string, mode: number, flags: number): Promise<{ attr: Attr; fh: number }> {
    type Made = { existing: Dirent; ino?: undefined } | { existing?: undefined; ino: Ino };
    const made = await this.run<Made>([{ inode: parent }, { dirent: [parent, name] }], () => {
      this.dir(ctx, parent, X_OK);
      const existing = this.state.dirent(parent, name);
      if (existing) return { events: [], result: { existing } };
      const p = this.creatable(ctx, parent, name);
      const events = this.newInode(ctx, p, "file", mode);
      const ino = (events[0] as { ino: Ino }).ino;
      events.push({ type: "DirentLinked", parent, name, ino, caller: ctx });
      return { events, result: { ino } };
    });
    if (made.existing) {
      const existing = made.existing;
      if (flags & O_EXCL) fail("EEXIST");
      if (existing.kind === "dir") fail("EISDIR");
      const fh = await this.open(ctx, existing.ino, flags & ~O_CREAT);
      return { attr: await this.getattr(ctx, existing.ino), fh };
    }
    const fh = this.addHandle(made.ino, flags, true);
    return { attr: await this.attrNow(ctx, made.ino), fh };
  }

  async open(ctx: Ctx, ino: Ino, flags: number): Promise<number> {
    const trunc = await this.run([{ inode: ino }, { extents: ino }], () => {
      const inode = this.inode(ino);
      const acc = flags & O_ACCMODE;
      const mask = (acc === O_WRONLY ? W_OK : acc === O_RDWR ? R_OK | W_OK : R_OK) | (flags & O_TRUNC && acc === 0 ? W_OK : 0);
      if (inode.kind === "dir" && mask & W_OK) fail("EISDIR");
      if (inode.kind === "symlink") fail("ELOOP");
      if (mask & W_OK && this.options.readOnly) fail("EROFS");
      if (!permits(ctx, inode, mask)) fail("EACCES");
      // O_TRUNC truncates even an empty file, which drops set-user-ID for anyone but root.
      const trunc = Boolean(flags & O_TRUNC) && inode.kind === "file" && (inode.size > 0 || Filesystem.afterWrite(ctx, inode) !== (inode.mode & 0o7777));
      return { events: [], result: trunc };
    });
    const fh = this.addHandle(ino, flags, false);
    if (trunc) {
      try {
        await this.setattr(ctx, ino, { size: 0 }, fh);
      } catch (e) {
        await this.release(ctx, fh);
        throw e;
      }
    }
    return fh;
  }

  /**
   * Read up to `length` bytes at `offset`. With `into`, the bytes land there
   * (no allocation, no copy: FUSE's own buffer) and a view of them is returned.
   */
  /**
   * Bytes of an open file. With `lease`, bytes of a remote object that lie in one piece in
   * memory may be returned as they are, without a copy: `lease` is then given the function
   * to call once they are used (until then they stay valid).
   */
  async read(_ctx: Ctx, fh: number, offset: number, length: number, into?: Uint8Array, lease?: (release: () => void) => void): Promise<Uint8Array> {
    const h = this.handle(fh);
    if (!h.readable) fail("EBADF");
    if (offset < 0 || length < 0) fail("EINVAL");
    const { extents, size, kind, remote } = await this.run([{ inode: h.ino }, { extents: h.ino }], () => {
      const inode = this.inode(h.ino);
      const n = Math.max(0, Math.min(length, inode.size - offset));
      return { events: [], result: { extents: extentsIn(this.state.extents(h.ino), offset, n), size: n, kind: inode.kind, remote: inode.remote } };
    });
    if (kind === "dir") fail("EISDIR");
    if (lease && extents.length === 0 && remote && this.remote?.view && size > 0 && offset + size <= remote.valid) {
      const v = await this.remote.view(remote, offset, size).catch((e) => fail("EIO", `cannot read ${remote.key} from S3: ${(e as Error).message}`));
      if (v) {
        lease(v.release);
        return v.bytes;
      }
    }
    const reuse = into !== undefined && into.length >= size;
    const out = reuse ? into.subarray(0, size) : new Uint8Array(size); // a new buffer is all zeros
    await this.fill(out, offset, extents, remote, reuse);
    return out;
  }

  /**
   * Fill `out` with the file bytes at `offset`: from the extents (in the data log), the gaps
   * below the remote base's valid length from the object, the rest zeros (holes). `dirty`:
   * `out` may hold old bytes, so holes are cleared.
   */
  private async fill(out: Uint8Array, offset: number, extents: readonly Extent[], remote: RemoteBase | undefined, dirty = false): Promise<void> {
    const end = offset + out.length;
    const gaps: [number, number][] = [];
    let at = offset;
    for (const e of extents) {
      const from = Math.max(e.offset, offset);
      if (from > at) gaps.push([at, from]);
      at = Math.max(at, Math.min(e.offset + e.length, end));
    }
    if (at < end) gaps.push([at, end]);
    const reads: Promise<unknown>[] = extents.map((e) => {
      const from = Math.max(e.offset, offset);
      const to = Math.min(e.offset + e.length, end);
      return this.journal.readData({ ref: { file: e.file, pos: e.pos }, length: e.length }, from - e.offset, to - from, out, from - offset);
    });
    for (const [from, to] of gaps) {
      const cut = remote && this.remote ? Math.min(to, remote.valid) : from;
      if (cut > from) reads.push(this.remote!.read(remote!, from, cut - from, out, from - offset).catch((e) => fail("EIO", `cannot read ${remote!.key} from S3: ${(e as Error).message}`)));
      if (dirty && to > Math.max(from, cut)) out.fill(0, Math.max(from, cut) - offset, to - offset);
    }
    await Promise.all(reads);
  }

  async write(ctx: Ctx, fh: number, offset: number, data: Uint8Array): Promise<number> {
    const h = this.handle(fh);
    if (!h.writable) fail("EBADF");
    if (offset < 0) fail("EINVAL");
    if (data.length === 0) return 0;
    // The journal copies the bytes when it appends them (the caller may reuse its buffer).
    const bytes = data;
    await this.run([{ inode: h.ino }, { extents: h.ino }], () => {
      const inode = this.inode(h.ino);
      this.state.extents(h.ino);
      const at = h.append ? inode.size : offset;
      const events: NewEvent[] = [{ type: "ExtentWritten", ino: h.ino, offset: at, length: bytes.length, crc: 0, data: bytes, caller: ctx }];
      const mode = Filesystem.afterWrite(ctx, inode);
      if (mode !== (inode.mode & 0o7777)) events.push({ type: "AttrsChanged", ino: h.ino, mode, caller: ctx });
      h.dirty = true;
      return { events, result: undefined };
    });
    // Seqs are assigned as the events are staged: everything up to here covers this write.
    h.upTo = this.journal.staged;
    return data.length;
  }

  /**
   * Called on every close of a descriptor: in fsync mode, makes what was written through
   * it durable (and everything staged before it), waiting for no later operation's events.
   */
  async flush(_ctx: Ctx, fh: number): Promise<void> {
    const h = this.handle(fh);
    if (h.dirty) {
      const upTo = h.upTo;
      await this.guard(this.journal.syncTo(upTo));
      if (h.upTo === upTo) h.dirty = false;
    }
  }

  async fsync(_ctx: Ctx, fh: number, _datasync = false): Promise<void> {
    const h = this.handle(fh);
    const upTo = this.journal.staged;
    await this.guard(this.journal.syncTo(upTo));
    if (h.upTo <= upTo) h.dirty = false;
  }

  /** Sync everything staged so far (fsync on a directory, syncfs). */
  async syncAll(): Promise<void> {
    await this.guard(this.journal.sync());
  }

  async release(ctx: Ctx, fh: number): Promise<void> {
    const h = this.handles.get(fh);
    if (!h) return;
    this.handles.delete(fh);
    const left = (this.openCount.get(h.ino) ?? 1) - 1;
    if (left > 0) {
      this.openCount.set(h.ino, left);
      return;
    }
    this.openCount.delete(h.ino);
    // The common case, a file that still has a name, needs no load and no decision.
    if ((this.state.cached(h.ino)?.nlink ?? 0) > 0 && !this.failed && !this.closed) return;
    await this.run([{ inode: h.ino }, { extents: h.ino }], () => {
      const inode = this.state.inode(h.ino);
      if (!inode || inode.nlink > 0 || this.openCount.has(h.ino)) return { events: [], result: undefined };
      return { events: [{ type: "InodeDropped", ino: h.ino, caller: ctx }], result: undefined };
    });
  }

  async unlink(ctx: Ctx, parent: Ino, name: string): Promise<void> {
    await this.removeEntry(ctx, parent, name, (victim) => {
      if (victim.kind === "dir") fail("EISDIR");
      return victim.nlink - 1;
    });
  }

  async rmdir(ctx: Ctx, parent: Ino, name: string): Promise<void> {
    if (name === ".") fail("EINVAL");
    if (name === "..") fail("ENOTEMPTY");
    await this.removeEntry(ctx, parent, name, (victim) => {
      if (victim.kind !== "dir") fail("ENOTDIR");
      if ((victim.entries ?? 0) > 0) fail("ENOTEMPTY");
      return 0;
    });
  }

  /**
   * Remove parent/name after may_delete's checks (search and write on the
   * directory, then the sticky bit), then `kindCheck`'s, which returns the
   * victim's link count afterwards; the inode is freed when that is 0 and it
   * is not open.
   */
  private async removeEntry(ctx: Ctx, parent: Ino, name: string, kindCheck: (victim: Inode) => number): Promise<void> {
    const target = await this.run([{ inode: parent }, { dirent: [parent, name] }], () => {
      this.dir(ctx, parent, X_OK);
      return { events: [], result: this.state.dirent(parent, name) };
    });
    if (!target) fail("ENOENT");
    if (target!.kind === "dir" && this.remote) await this.listDir(target!.ino);
    await this.run([{ inode: parent }, { dirent: [parent, name] }, { inode: target!.ino }, { extents: target!.ino }], () => {
      const p = this.dir(ctx, parent, W_OK | X_OK);
      const d = this.state.dirent(parent, name) ?? fail("ENOENT");
      const victim = this.inode(d.ino);
      this.state.extents(d.ino);
      if (Filesystem.stickyDenies(ctx, p, victim)) fail("EPERM");
      const nlinkAfter = kindCheck(victim);
      return {
        events: [{ type: "DirentUnlinked", parent, name, ino: d.ino, caller: ctx }, ...this.dropIfUnused(d.ino, nlinkAfter)],
        result: undefined,
      };
    });
  }

  async rename(ctx: Ctx, parent: Ino, name: string, newParent: Ino, newName: string, flags = 0): Promise<void> {
    Filesystem.checkName(newName);
    if (name === "." || name === ".." || newName === "." || newName === "..") fail("EINVAL");
    const RENAME_NOREPLACE = 1;
    if (flags & ~RENAME_NOREPLACE) fail("EINVAL");
    // Load both entries, then the ancestors of the target directory (for the subtree check).
    const [src, dst] = await this.run([{ inode: parent }, { inode: newParent }, { dirent: [parent, name] }, { dirent: [newParent, newName] }], () => {
      this.dir(ctx, parent, X_OK);
      this.dir(ctx, newParent, X_OK);
      return { events: [], result: [this.state.dirent(parent, name), this.state.dirent(newParent, newName)] as const };
    });
    if (!src) fail("ENOENT");
    if (this.remote) {
      if (src!.kind === "dir") await this.listDeep(src!.ino);
      if (dst?.kind === "dir") await this.listDir(dst.ino);
    }
    const needs: Need[] = [{ inode: parent }, { inode: newParent }, { dirent: [parent, name] }, { dirent: [newParent, newName] }, { inode: src!.ino }];
    if (dst) needs.push({ inode: dst.ino }, { extents: dst.ino });
    await this.run(needs, () => {
      const from = this.dir(ctx, parent, X_OK);
      const to = this.dir(ctx, newParent, X_OK);
      const s = this.state.dirent(parent, name) ?? fail("ENOENT");
      const moving = this.inode(s.ino);
      const d = this.state.dirent(newParent, newName);
      if (d && flags & RENAME_NOREPLACE) fail("EEXIST");
      // Checked in Linux's order (do_renameat2, lock_rename, vfs_rename, may_delete).
      // First the ancestry: the source may not be an ancestor of the target's
      // directory, nor the target an ancestor of the source's.
      if (parent !== newParent) {
        const below = this.childBelow(parent, newParent);
        if (below !== undefined) {
          if (below === moving.ino) fail("EINVAL", "cannot move a directory into its own subtree");
        } else if (d && this.childBelow(newParent, parent) === d.ino) fail("ENOTEMPTY");
      }
      if (d && d.ino === s.ino) return { events: [], result: undefined }; // same file: nothing to do
      if (!permits(ctx, from, W_OK | X_OK)) fail("EACCES");
      if (Filesystem.stickyDenies(ctx, from, moving)) fail("EPERM");
      let replaced: Inode | undefined;
      if (d) {
        replaced = this.inode(d.ino);
        this.state.extents(d.ino);
        if (!permits(ctx, to, W_OK | X_OK)) fail("EACCES");
        if (Filesystem.stickyDenies(ctx, to, replaced)) fail("EPERM");
        if (moving.kind === "dir" && replaced.kind !== "dir") fail("ENOTDIR");
        if (moving.kind !== "dir" && replaced.kind === "dir") fail("EISDIR");
      } else if (!permits(ctx, to, W_OK | X_OK)) fail("EACCES");
      // A directory that changes parent has its ".." rewritten: that needs write permission on it.
      if (moving.kind === "dir" && parent !== newParent && !permits(ctx, moving, W_OK)) fail("EACCES");
      if (replaced && replaced.kind === "dir" && (replaced.entries ?? 0) > 0) fail("ENOTEMPTY");
      const events: NewEvent[] = [
        { type: "Renamed", ino: moving.ino, fromParent: parent, fromName: name, toParent: newParent, toName: newName, ...(replaced ? { replaced: replaced.ino } : {}), caller: ctx },
      ];
      if (replaced) events.push(...this.dropIfUnused(replaced.ino, replaced.kind === "dir" ? 0 : replaced.nlink - 1));
      return { events, result: undefined };
    });
  }

  async link(ctx: Ctx, ino: Ino, newParent: Ino, newName: string): Promise<Attr> {
    await this.run([{ inode: ino }, { inode: newParent }, { dirent: [newParent, newName] }], () => {
      const inode = this.inode(ino);
      // Linux's order: the new name must be free and its directory writable before a directory is refused.
      this.creatable(ctx, newParent, newName);
      if (inode.kind === "dir") fail("EPERM");
      if (inode.nlink === 0) fail("ENOENT");
      return { events: [{ type: "DirentLinked", parent: newParent, name: newName, ino, caller: ctx }], result: undefined };
    });
    return this.getattr(ctx, ino);
  }

  async readlink(_ctx: Ctx, ino: Ino): Promise<string> {
    return this.run([{ inode: ino }], () => {
      const inode = this.inode(ino);
      if (inode.kind !== "symlink") fail("EINVAL");
      return { events: [], result: inode.target ?? "" };
    });
  }

  async opendir(ctx: Ctx, ino: Ino): Promise<void> {
    await this.run([{ inode: ino }], () => {
      this.dir(ctx, ino, R_OK);
      return { events: [], result: undefined };
    });
  }

  /**
   * Entries after `offset` (0 for the start), "." and ".." first. Offsets are
   * stable: an entry keeps its offset until it is removed, and entries added
   * later come after every existing one.
   */
  async readdir(ctx: Ctx, ino: Ino, offset = 0, limit = Infinity): Promise<DirEntry[]> {
    const dir = await this.run([{ inode: ino }], () => {
      const d = this.dir(ctx, ino, R_OK);
      return { events: [], result: { parent: d.parent ?? ROOT_INO } };
    }, { list: [ino] });
    const out: DirEntry[] = [];
    if (offset < 1 && out.length < limit) out.push({ name: ".", ino, kind: "dir", offset: 1 });
    if (offset < 2 && out.length < limit) out.push({ name: "..", ino: dir.parent, kind: "dir", offset: 2 });
    if (out.length >= limit) return out;
    return this.entries(ino, Math.max(offset, 2), limit - out.length, out);
  }

  async statfs(_ctx?: Ctx): Promise<StatFs> {
    const s = await statfsDir(this.journal.dir);
    const scale = s.bsize / BLOCK;
    return {
      bsize: BLOCK,
      frsize: BLOCK,
      blocks: Math.floor(s.blocks * scale),
      bfree: Math.floor(s.bfree * scale),
      bavail: Math.floor(s.bavail * scale),
      files: this.state.nextIno + s.ffree,
      ffree: s.ffree,
      namemax: NAME_MAX,
    };
  }

  async getxattr(ctx: Ctx, ino: Ino, name: string): Promise<Uint8Array> {
    return this.run([{ inode: ino }], () => {
      const inode = this.inode(ino);
      Filesystem.xattrReadable(ctx, inode, name);
      const v = inode.xattrs?.[name] ?? fail("ENODATA");
      return { events: [], result: v };
    });
  }

  /** Names of the extended attributes; as on Linux, no permission is needed, and trusted.* names are shown to root only. */
  async listxattr(ctx: Ctx, ino: Ino): Promise<string[]> {
    return this.run([{ inode: ino }], () => {
      const inode = this.inode(ino);
      const names = Object.keys(inode.xattrs ?? {});
      return { events: [], result: ctx.uid === 0 ? names : names.filter((n) => !n.startsWith("trusted.")) };
    });
  }

  async setxattr(ctx: Ctx, ino: Ino, name: string, value: Uint8Array, flags = 0): Promise<void> {
    if (name.length === 0 || Buffer.byteLength(name) > 255) fail("ERANGE");
    if (value.length > 65536) fail("E2BIG");
    await this.run([{ inode: ino }], () => {
      const inode = this.inode(ino);
      this.xattrWritable(ctx, inode, name);
      const exists = inode.xattrs?.[name] !== undefined;
      if (flags & XATTR_CREATE && exists) fail("EEXIST");
      if (flags & XATTR_REPLACE && !exists) fail("ENODATA");
      return { events: [{ type: "XattrSet", ino, name, value: new Uint8Array(value), caller: ctx }], result: undefined };
    });
  }

  async removexattr(ctx: Ctx, ino: Ino, name: string): Promise<void> {
    await this.run([{ inode: ino }], () => {
      const inode = this.inode(ino);
      this.xattrWritable(ctx, inode, name);
      if (inode.xattrs?.[name] === undefined) fail("ENODATA");
      return { events: [{ type: "XattrRemoved", ino, name, caller: ctx }], result: undefined };
    });
  }

  /** Linux's xattr_permission for writing: user.* only on files and directories, not on another's sticky directory; other namespaces are root's. */
  private xattrWritable(ctx: Ctx, inode: Inode, name: string): void {
    if (name.startsWith("user.")) {
      if (inode.kind !== "file" && inode.kind !== "dir") fail("EPERM");
      if (inode.kind === "dir" && inode.mode & S_ISVTX && ctx.uid !== 0 && ctx.uid !== inode.uid) fail("EPERM");
      if (!permits(ctx, inode, W_OK)) fail("EACCES");
    } else if (ctx.uid !== 0) fail("EPERM");
  }

  /**
   * xattr_permission for reading: what a caller may not see reads as absent (ENODATA); only
   * user.* needs read permission on the inode (security.* and system.* are the LSM's and the
   * filesystem's to judge, as on Linux: the kernel itself reads security.capability before a
   * write by someone who may not read the file).
   */
  private static xattrReadable(ctx: Ctx, inode: Inode, name: string): void {
    if (name.startsWith("trusted.") && ctx.uid !== 0) fail("ENODATA");
    if (!name.startsWith("user.")) return;
    if (inode.kind !== "file" && inode.kind !== "dir") fail("ENODATA");
    if (!permits(ctx, inode, R_OK)) fail("EACCES");
  }

  // ---- maintenance -------------------------------------------------------------------

  /** Rebuild every projection from the journal alone and compare with the persisted rows. */
  async fsck(): Promise<FsckReport> {
    await this.guard(this.journal.flushed());
    const start = await localReplayStart(this.journal);
    return fsck(this.journal, this.backing, start ? { start } : {});
  }

  /** Replace every projection row with the journal's replay (after fsck found differences). */
  static async repair(dir: string, start?: ReplayStart): Promise<{ events: number }> {
    const journal = await Journal.open(dir);
    try {
      return await rebuild(journal, backingOf(journal), start ?? (await localReplayStart(journal)));
    } finally {
      await journal.close();
    }
  }

  /** Sync, record the unmount, close the journal. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (!this.failed && !this.options.readOnly) {
      try {
        await this.journal.append([{ type: "Unmounted", clientId: this.journal.clientId, clean: true }], { sync: true });
      } catch {
        // the journal reports its own failure on close
      }
    }
    this.closed = true;
    await this.journal.close();
  }
}
