/**
 * Restore: a past state written into a plain directory (files with their bytes, directories,
 * symlinks, hard links, fifos and devices, modes, owners, times), straight from the journal.
 *
 * The journal is replayed once, as it streams in: the tree in memory (evolve over an
 * in-memory projection), file bytes straight to disk, each write at its offset in a file per
 * inode inside a work directory in DIR, truncations and deletions applied as they come, so
 * every byte crosses the disk once. At the end each inode's file is renamed to its path (and
 * hard-linked to its other names), the bytes files show from S3 objects (where no local write
 * covers them) are fetched pinned to the version the journal saw, and attributes are set,
 * directories last.
 */
import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { chmod, lchown, link, lutimes, mkdir, open, readdir, rename, rm, symlink, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { DROPPED_DATA_REF, ROOT_INO, type Ino, type JournalEvent } from "../../journal/mod.ts";
import { packValue, unpackValue } from "../../journal/codec.ts";
import { alignedBuffer, DIRECT_BLOCK as BLOCK } from "../../journal/data_log.ts";
import type { RemoteSource } from "../fs/remote.ts";
import { holdSegmentBytes } from "../replicator/segments.ts";
import { evolve } from "../projection/evolve.ts";
import { extentsIn, TreeState, type Dirent, type Inode } from "../projection/state.ts";
import { DataIndex } from "../retention/checkpoint.ts";
import { historyEvents, type History } from "../retention/history.ts";
import { checkRetained, pastPoint, type Point } from "./time_travel.ts";

export interface RestoreProgress {
  files: number;
  bytes: number;
  /** The last seq replayed. */
  seq: number;
  /** Of `bytes`, those written around the page cache (O_DIRECT). */
  direct: number;
}

export interface RestoreOptions {
  /** Reads bytes of S3 objects (pinned versions) for files that came from them. */
  readonly remote?: RemoteSource;
  readonly onProgress?: (p: RestoreProgress) => void;
}

const FAKE_REF = { file: 0, pos: 0 };
const CHUNK = 8 << 20;

/**
 * Files per inode in the work directory, a bounded number of them open at a time. Writes are
 * not awaited one by one: each inode's operations run in order on a chain of their own, and
 * at most {@link MAX_IN_FLIGHT} bytes are on their way, so writing overlaps with receiving.
 * The whole aligned blocks of writes of {@link WRITE_PIECE} and more go to the disk with
 * O_DIRECT through a few aligned buffers, the pieces of one write side by side; the rest (and
 * everything, on a filesystem that refuses O_DIRECT) through the page cache. A restore writes
 * a lot once and reads none of it back: through the page cache, each new page of it costs
 * the kernel a copy into memory that, on the VMs measured here, the host hands back slowly
 * (restores ran at half their speed in one round of two), where a direct write copies into
 * the same few buffers each time.
 */
const MAX_IN_FLIGHT = 64 << 20;
const WRITE_PIECE = 1 << 20;
/** Aligned buffers for direct writes (file offsets, lengths and addresses multiples of BLOCK), at most this many (each WRITE_PIECE). */
const BOUNCE_BUFFERS = 8;

class InodeFiles {
  private readonly open = new Map<number, Promise<FileHandle>>();
  /** The same files opened with O_DIRECT, for the whole aligned blocks of large writes. */
  private readonly directOpen = new Map<number, Promise<FileHandle>>();
  /** Whether direct writes are on (until the filesystem refuses them: EINVAL). */
  private direct = constants.O_DIRECT !== undefined;
  private readonly bounce: Buffer[] = [];
  private bounceMade = 0;
  private bounceWaiters: ((b: Buffer) => void)[] = [];
  /** Bytes written with O_DIRECT. */
  directBytes = 0;
  private readonly chains = new Map<number, Promise<void>>();
  private inFlight = 0;
  private waiters: (() => void)[] = [];
  private failure: unknown;
  /** Inodes with a file here (or one queued to be made). */
  readonly made = new Set<number>();
  /** Inodes whose file exists on disk already. */
  private readonly created = new Set<number>();
  constructor(readonly dir: string) {}

  path(ino: number): string {
    return join(this.dir, String(ino));
  }

  private async handle(ino: number): Promise<FileHandle> {
    let h = this.open.get(ino);
    if (h) {
      this.open.delete(ino); // most recently used last
      this.open.set(ino, h);
      return h;
    }
    if (this.open.size >= 64) {
      for (const [oldest, fh] of this.open) {
        if (this.chains.has(oldest) && oldest !== ino) continue; // busy: keep it open
        this.open.delete(oldest);
        await (await fh).close();
        await this.closeDirect(oldest);
        break;
      }
    }
    h = open(this.path(ino), this.created.has(ino) ? "r+" : "w+", 0o600);
    this.created.add(ino);
    this.open.set(ino, h);
    return h;
  }

  private async closeDirect(ino: number): Promise<void> {
    const d = this.directOpen.get(ino);
    this.directOpen.delete(ino);
    if (d) await (await d).close();
  }

  private directHandle(ino: number): Promise<FileHandle> {
    let h = this.directOpen.get(ino);
    if (!h) {
      h = open(this.path(ino), constants.O_WRONLY | constants.O_DIRECT);
      this.directOpen.set(ino, h);
      h.catch(() => this.directOpen.delete(ino));
    }
    return h;
  }

  private async takeBounce(): Promise<Buffer> {
    const b = this.bounce.pop();
    if (b) return b;
    if (this.bounceMade < BOUNCE_BUFFERS) {
      this.bounceMade++;
      return alignedBuffer(WRITE_PIECE);
    }
    return new Promise<Buffer>((r) => this.bounceWaiters.push(r));
  }

  private giveBounce(b: Buffer): void {
    const w = this.bounceWaiters.shift();
    if (w) w(b);
    else this.bounce.push(b);
  }

  /**
   * Write `data[from, to)` at file offset `at` (aligned, `to - from` a multiple of BLOCK) with
   * O_DIRECT, through an aligned buffer; returns how many bytes it wrote (fewer when the
   * filesystem refuses O_DIRECT: direct writes are then off for the rest).
   */
  private async writeDirect(ino: number, data: Uint8Array, from: number, to: number, at: number): Promise<number> {
    // The pieces of one write go out side by side (they are disjoint), as many as there are buffers.
    const piece = async (k: number): Promise<number> => {
      const start = from + k * WRITE_PIECE;
      const n = Math.min(WRITE_PIECE, to - start);
      const b = await this.takeBounce();
      try {
        if (!this.direct) return 0;
        b.set(data.subarray(start, start + n));
        const fh = await this.directHandle(ino);
        const { bytesWritten } = await fh.write(b, 0, n, at + (start - from));
        if (bytesWritten !== n) return 0;
        this.directBytes += n;
        return n;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EINVAL") throw e;
        this.direct = false;
        return 0;
      } finally {
        this.giveBounce(b);
      }
    };
    const results = await Promise.all(Array.from({ length: Math.ceil((to - from) / WRITE_PIECE) }, (_, k) => piece(k)));
    // Bytes up to the first piece that did not go: the rest is for the page cache.
    let done = 0;
    for (const r of results) {
      if (r === 0) break;
      done += r;
    }
    return done;
  }

  /** Queue `op` after the inode's earlier operations. */
  private queue(ino: number, bytes: number, op: () => Promise<void>): void {
    if (this.failure) throw this.failure;
    this.inFlight += bytes;
    const prev = this.chains.get(ino) ?? Promise.resolve();
    const next = prev.then(op).catch((e) => {
      this.failure ??= e;
    }).finally(() => {
      this.inFlight -= bytes;
      if (this.chains.get(ino) === next) this.chains.delete(ino);
      for (const w of this.waiters.splice(0)) w();
    });
    this.chains.set(ino, next);
  }

  /** Wait while too many bytes are on their way. */
  async room(): Promise<void> {
    while (this.inFlight > MAX_IN_FLIGHT) await new Promise<void>((r) => this.waiters.push(r));
    if (this.failure) throw this.failure;
  }

  /** Queue a write of `data` at `offset`; `written` is called once it no longer reads `data`. */
  write(ino: number, data: Uint8Array, offset: number, written?: () => void): void {
    this.made.add(ino);
    this.queue(ino, data.length, async () => {
      try {
        const fh = await this.handle(ino);
        // Whole aligned blocks of a large write go around the page cache.
        let head = data.length;
        let mid = 0;
        if (this.direct && data.length >= WRITE_PIECE) {
          head = Math.min(data.length, (BLOCK - (offset % BLOCK)) % BLOCK);
          mid = Math.floor((data.length - head) / BLOCK) * BLOCK;
        }
        if (mid > 0) mid = await this.writeDirect(ino, data, head, head + mid, offset + head);
        // The rest in pieces of at most WRITE_PIECE: one write(2) of many MiB costs the kernel twice the time per byte here.
        const buffered = async (from: number, to: number) => {
          for (let done = from; done < to; ) {
            const { bytesWritten } = await fh.write(data, done, Math.min(WRITE_PIECE, to - done), offset + done);
            done += bytesWritten;
          }
        };
        await buffered(0, head);
        await buffered(head + mid, data.length);
      } finally {
        written?.();
      }
    });
  }

  truncate(ino: number, size: number): void {
    if (!this.made.has(ino)) return;
    this.queue(ino, 0, async () => {
      await (await this.handle(ino)).truncate(size);
    });
  }

  drop(ino: number): void {
    if (!this.made.delete(ino)) return;
    this.queue(ino, 0, async () => {
      const h = this.open.get(ino);
      this.open.delete(ino);
      if (h) await (await h).close();
      await this.closeDirect(ino);
      this.created.delete(ino);
      await rm(this.path(ino), { force: true });
    });
  }

  /** Every queued operation done, every file closed. */
  async closeAll(): Promise<void> {
    await Promise.all([...this.chains.values()]);
    for (const h of this.open.values()) await (await h).close().catch(() => {});
    for (const h of this.directOpen.values()) await (await h).close().catch(() => {});
    this.open.clear();
    this.directOpen.clear();
    if (this.failure) throw this.failure;
  }
}

/** Restore the state of `history` at `at` (default: the latest) into `dir`, which must be empty or absent. */
export async function restoreHistory(history: History, at: Point | undefined, dir: string, options: RestoreOptions = {}): Promise<RestoreProgress> {
  checkRetained(history, at);
  const progress: RestoreProgress = { files: 0, bytes: 0, seq: 0, direct: 0 };
  let made: string | undefined;
  try {
    made = await mkdir(dir, { recursive: true });
    if ((await readdir(dir)).length > 0) throw new NotEmpty(`${dir} is not empty; restore into an empty or new directory, so nothing there is overwritten`);
    await restoreInto(history, at, dir, options, progress);
    await syncFilesystem(dir);
    return progress;
  } catch (e) {
    if (e instanceof NotEmpty) throw e; // none of it is ours
    // Nothing half-done stays: DIR is emptied, and what this made (DIR, and parents it needed) removed.
    for (const name of await readdir(dir).catch(() => [])) await rm(join(dir, name), { recursive: true, force: true }).catch(() => {});
    if (made !== undefined) await rm(made, { recursive: true, force: true }).catch(() => {});
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOSPC" || code === "EDQUOT") {
      throw new Error(`the filesystem of ${dir} is full (${code === "EDQUOT" ? "quota" : "no space"}) after ${(progress.bytes / 1048576).toFixed(1)} MiB of file bytes; free space there or restore into a directory on a larger filesystem (nothing was left in ${dir})`);
    }
    if (code === "EROFS" || code === "EACCES" || code === "EPERM") {
      throw new Error(`cannot write into ${dir} (${code}: ${(e as Error).message}); restore into a directory this user may write, on a writable filesystem`);
    }
    throw e;
  }
}

class NotEmpty extends Error {}

/**
 * Make everything written under `dir` durable before the restore says it is done: one
 * syncfs(2) of its filesystem (`sync --file-system`, coreutils), rather than an fsync per file
 * and directory (a restore of many small files would pay a journal commit for each). Most bytes
 * went to the disk around the page cache already; this carries the rest, the names and the
 * attributes.
 */
async function syncFilesystem(dir: string): Promise<void> {
  const failure = await new Promise<string | undefined>((resolve) =>
    execFile("sync", ["--file-system", dir], (e, _out, err) => resolve(e ? String(err).trim() || e.message : undefined)),
  );
  if (failure !== undefined) throw new Error(`cannot make the restored files in ${dir} durable (sync --file-system: ${failure}); check that filesystem, then restore again`);
}

async function restoreInto(history: History, at: Point | undefined, dir: string, options: RestoreOptions, progress: RestoreProgress): Promise<RestoreProgress> {
  const work = join(dir, `.objectfs-restore-${randomBytes(6).toString("hex")}`);
  await mkdir(work, { mode: 0o700 });
  const files = new InodeFiles(work);
  try {
    const c = history.checkpoint;
    const state = c ? TreeState.fromDump(unpackValue(packValue(c.dump)), { audit: false }) : TreeState.memory({ audit: false });
    // Where the checkpoint's files get the bytes of each carrier: seq → [ino, file offset, offset in the event's data, length].
    const placements = new Map<number, [number, number, number, number][]>();
    if (c) {
      const index = new DataIndex();
      for (const [seq, file, pos, length] of c.dataMap) index.add(seq, file, pos, length);
      for (const [ino, offset, length, file, pos] of c.dump.extents) {
        for (const [seq, , epos, elen] of index.overlapping(file, pos, length)) {
          const from = Math.max(pos, epos);
          const to = Math.min(pos + length, epos + elen);
          if (to <= from) continue;
          let l = placements.get(seq);
          if (!l) placements.set(seq, (l = []));
          l.push([ino, offset + (from - pos), from - epos, to - from]);
        }
      }
    }
    let last = c?.seq ?? 0;
    let lastReport = 0;
    const report = () => {
      if (!options.onProgress || Date.now() - lastReport < 200) return;
      lastReport = Date.now();
      options.onProgress(progress);
    };
    for await (const e of historyEvents(history, { early: true })) {
      if (c && e.seq <= c.seq) {
        if (e.type !== "ExtentWritten" || !e.data) continue;
        for (const [ino, offset, at, length] of placements.get(e.seq) ?? []) {
          files.write(ino, e.data.subarray(at, at + length), offset, holdSegmentBytes(e.data));
          progress.bytes += length;
        }
        await files.room();
        report();
        continue;
      }
      if (pastPoint(e, at)) break;
      apply(state, files, e, progress);
      await files.room();
      last = e.seq;
      progress.seq = last;
      report();
    }
    if (last === 0) throw new Error("there is no event at or before that point");
    progress.seq = last;
    await files.closeAll();
    progress.direct = files.directBytes;
    await writeTree(state, files, dir, options, progress);
    return progress;
  } finally {
    await files.closeAll().catch(() => {});
    await rm(work, { recursive: true, force: true });
  }
}

/** One event: the tree in memory, its bytes queued for the disk. */
function apply(state: TreeState, files: InodeFiles, e: JournalEvent, progress: RestoreProgress): void {
  switch (e.type) {
    case "ExtentWritten":
      evolve(state, { ...e, data: undefined, ref: e.dataDropped ? DROPPED_DATA_REF : FAKE_REF });
      if (e.data && e.length > 0) {
        files.write(e.ino, e.data, e.offset, holdSegmentBytes(e.data));
        progress.bytes += e.length;
      }
      return;
    case "Truncated":
      evolve(state, e);
      files.truncate(e.ino, e.size);
      return;
    case "InodeDropped":
      evolve(state, e);
      files.drop(e.ino);
      return;
    default:
      evolve(state, e);
  }
}

/** Put every inode of the state at its paths, fetch bytes from S3 objects, set attributes. */
async function writeTree(state: TreeState, files: InodeFiles, dir: string, options: RestoreOptions, progress: RestoreProgress): Promise<void> {
  const root = process.getuid?.() === 0;
  const children = new Map<number, [string, Dirent][]>();
  for (const [parent, name, ino, cookie, kind] of state.dump().dirents) {
    let l = children.get(parent);
    if (!l) children.set(parent, (l = []));
    l.push([name, { ino: ino as Ino, cookie, kind }]);
  }
  const placed = new Map<number, string>(); // ino → first path, for hard links
  const dirs: { path: string; inode: Inode }[] = [];
  const stack: { ino: number; path: string }[] = [{ ino: ROOT_INO, path: dir }];
  while (stack.length > 0) {
    const { ino: parentIno, path: parentPath } = stack.pop()!;
    for (const [name, d] of children.get(parentIno) ?? []) {
      const inode = state.inode(d.ino);
      if (!inode) continue;
      const path = join(parentPath, name);
      if (inode.kind === "dir") {
        await mkdir(path, { mode: 0o700 });
        dirs.push({ path, inode });
        if (inode.pending === undefined) stack.push({ ino: d.ino, path });
        continue;
      }
      const first = placed.get(inode.ino);
      if (first !== undefined) {
        await link(first, path);
        continue;
      }
      placed.set(inode.ino, path);
      if (inode.kind === "file") await placeFile(state, files, inode, path, options, progress);
      else if (inode.kind === "symlink") await symlink(inode.target ?? "", path);
      else {
        const type = inode.kind === "fifo" ? ["p"] : inode.kind === "char" ? ["c", String(inode.rdev >> 8), String(inode.rdev & 0xff)] : inode.kind === "block" ? ["b", String(inode.rdev >> 8), String(inode.rdev & 0xff)] : undefined;
        if (!type) continue; // sockets exist only while a process listens
        const r = spawnSync("mknod", [path, ...type], { stdio: "pipe" });
        if (r.status !== 0) throw new Error(`cannot make ${inode.kind} ${path}: ${r.stderr.toString().trim()}`);
      }
      await setAttrs(path, inode, root);
      progress.files++;
      options.onProgress?.(progress);
    }
  }
  // Directories last, deepest first: their modes may forbid writing, their times change with entries.
  for (const d of dirs.reverse()) await setAttrs(d.path, d.inode, root);
}

async function placeFile(state: TreeState, files: InodeFiles, inode: Inode, path: string, options: RestoreOptions, progress: RestoreProgress): Promise<void> {
  if (files.made.has(inode.ino)) await rename(files.path(inode.ino), path);
  const fh = await open(path, files.made.has(inode.ino) ? "r+" : "wx", 0o600);
  files.made.delete(inode.ino);
  try {
    await fh.truncate(inode.size);
    const base = inode.remote;
    if (base && base.etag !== "" && base.valid > 0) {
      // Bytes below `valid` that no local write covers come from the object, pinned to its version.
      if (!options.remote) throw new Error(`${path} shows bytes of S3 object ${base.key}, and no S3 source was given to read them`);
      const end = Math.min(base.valid, inode.size);
      let at = 0;
      const gaps: [number, number][] = [];
      for (const e of extentsIn(state.extents(inode.ino), 0, end)) {
        if (e.offset > at) gaps.push([at, e.offset]);
        at = Math.max(at, e.offset + e.length);
      }
      if (at < end) gaps.push([at, end]);
      for (const [from, to] of gaps) {
        for (let p = from; p < to; p += CHUNK) {
          const n = Math.min(CHUNK, to - p);
          const buf = new Uint8Array(n);
          try {
            await options.remote.read(base, p, n, buf, 0);
          } catch (e) {
            throw new Error(
              `${path} shows bytes of S3 object ${base.key} as it was then (ETag ${base.etag}${base.versionId ? `, version ${base.versionId}` : ""}), which cannot be read: ${(e as Error).message}; an object overwritten since is gone unless the bucket keeps versions (enable versioning to restore such points)`,
            );
          }
          await fh.write(buf, 0, n, p);
          progress.bytes += n;
        }
      }
    }
  } finally {
    await fh.close();
  }
}

async function setAttrs(path: string, i: Inode, root: boolean): Promise<void> {
  if (root) await lchown(path, i.uid, i.gid);
  if (i.kind !== "symlink") await chmod(path, i.mode & 0o7777);
  await lutimes(path, i.atime / 1000, i.mtime / 1000);
}
