/**
 * Projection state: the inode tree (inodes, dirents, directory cookies),
 * file extents and orphans, as rows persisted beside the journal.
 *
 * `TreeState` is the synchronous view that `evolve` and the fs core's
 * `decide` work on. With a backing store it is a bounded cache of LevelDB
 * rows: callers `load` what an operation will touch, then decide and evolve
 * synchronously; touching something not loaded throws {@link NotLoaded} (the
 * caller loads it and tries again). Every change is recorded, and
 * `takeRows()` turns the changes into row writes for the same journal batch.
 * Without a backing store (fsck, tests) everything is in memory and a miss
 * means "absent".
 *
 * Rows (sublevels of the journal's LevelDB, integers u64 big-endian):
 *   i!<ino>                  inode            msgpack Inode
 *   d!<parent><name utf8>    dirent           msgpack [ino, cookie, kind]
 *   c!<parent><cookie>       readdir cursor   msgpack [name, ino, kind] (cookies only grow: stable offsets)
 *   x!<ino><offset>          extent           msgpack [length, dataFile, dataPos]
 *   o!<ino>                  orphan           empty (nlink 0, kept while open)
 *   ae!<ino><seq>            audit index      events that touched inode ino (the log follows a file without a scan):
 *                                             empty for seq alone, or msgpack [d1, d2, …]: seq and seq+d1, seq+d2, …
 *                                             as well (one row per inode and commit; rows from before held one seq each)
 *   sd!<file><pos>           segment data     msgpack [length, segment key, at] (data log bytes also in a segment in S3)
 *   r!<key utf8>             remote index     msgpack [ino, etag, asOf] (objects this client knows in S3, and the seq they reflect)
 *   pm!nextIno               next inode number msgpack number
 *   pm!sync                  sync state       msgpack SyncState
 */
import { key, readU64, type Ino, type InodeKind, type RowOp, type SkippedKey, type Sublevel } from "../../journal/mod.ts";
import type { RowWriter } from "../../journal/store.ts";
import { packValue, unpackValue } from "../../journal/codec.ts";

export interface Inode {
  readonly ino: Ino;
  readonly kind: InodeKind;
  /** Full st_mode (type and permission bits). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  atime: number;
  mtime: number;
  ctime: number;
  rdev: number;
  target?: string;
  xattrs?: Record<string, Uint8Array>;
  /** Directories: the parent directory (for "..", and to refuse moving a directory into itself). */
  parent?: Ino;
  /** Directories: the next readdir cookie (1 and 2 are "." and ".."). */
  nextCookie?: number;
  /** Directories: number of entries (not counting "." and ".."). */
  entries?: number;
  /** Directories backed by S3 and not listed yet: the key prefix to list on first use. */
  pending?: string;
  /** Files backed by an S3 object: the bytes that local extents do not cover come from it. */
  remote?: RemoteBase;
  /** Seq of the last change that the object in S3 must reflect (contents, size, attributes). */
  changedAt?: number;
  /**
   * Truncations while the file had a remote base, as [seq, size] with sizes increasing:
   * the smallest size since any seq is the first entry after it (see {@link validAfter}).
   */
  truncs?: [number, number][];
}

/** A remote index row: which inode the object at a key holds, its ETag, the seq it reflects. */
export type RemoteKey = readonly [ino: Ino, etag: string, asOf: number];

/** The S3 object whose bytes a file shows where it has no local extent. */
export interface RemoteBase {
  readonly key: string;
  readonly etag: string;
  readonly size: number;
  readonly mtime: number;
  readonly versionId?: string;
  /** Bytes [0, valid) of the object are the file's (truncation cuts them; extension adds holes). */
  readonly valid: number;
  /** The journal seq whose state the object reflects. */
  readonly asOf: number;
}

/** Replication and sync facts, for status and for resuming. */
export interface SyncState {
  /** The last segment in S3. */
  replicated?: { readonly seq: number; readonly checksum: number; readonly key: string };
  /** Every change up to this seq is materialized. */
  reconciled: number;
  conflicts: number;
  lastConflict?: { readonly key: string; readonly conflictKey: string; readonly time: number };
  /** Keys hidden from the mount (the most recent 200), and how many in all. */
  skipped: SkippedKey[];
  skippedCount: number;
}

/** The smallest size a file had after seq `asOf`, from its truncation stack. */
export function validAfter(truncs: readonly (readonly [number, number])[] | undefined, asOf: number): number {
  if (!truncs) return Infinity;
  for (const [seq, size] of truncs) if (seq > asOf) return size;
  return Infinity;
}

export interface Dirent {
  readonly ino: Ino;
  readonly cookie: number;
  readonly kind: InodeKind;
}

/** Bytes [offset, offset+length) of a file live at dataPos in data log file dataFile. */
export interface Extent {
  readonly offset: number;
  readonly length: number;
  readonly file: number;
  readonly pos: number;
}

/** Thrown when evolve or decide touches state that was not loaded. */
export class NotLoaded extends Error {
  constructor(readonly what: Need) {
    super(`not loaded: ${JSON.stringify(what)}`);
  }
}

export type Need =
  | { readonly inode: Ino }
  | { readonly dirent: readonly [Ino, string] }
  | { readonly extents: Ino };

export interface Backing {
  readonly inodes: Sublevel;
  readonly dirents: Sublevel;
  readonly cookies: Sublevel;
  readonly extents: Sublevel;
  readonly orphans: Sublevel;
  readonly remote: Sublevel;
  readonly segmentData: Sublevel;
  readonly audit: Sublevel;
  readonly meta: Sublevel;
}

export const SUBLEVELS = { inodes: "i", dirents: "d", cookies: "c", extents: "x", orphans: "o", remote: "r", segmentData: "sd", audit: "ae", meta: "pm" } as const;

/** A whole state as plain data (a checkpoint's contents). */
export interface StateDump {
  readonly inodes: readonly Inode[];
  readonly dirents: readonly (readonly [parent: number, name: string, ino: number, cookie: number, kind: InodeKind])[];
  readonly extents: readonly (readonly [ino: number, offset: number, length: number, file: number, pos: number])[];
  readonly orphans: readonly number[];
  readonly nextIno: number;
  readonly sync?: SyncState;
  readonly remote: readonly (readonly [key: string, ino: number, etag: string, asOf: number])[];
  readonly segmentRuns: readonly (readonly [file: number, pos: number, length: number, key: string, at: number])[];
}

/** A segment-data row: `length` bytes at data log (file, pos) are at byte `at` of segment `key`. */
export type SegmentRun = readonly [length: number, key: string, at: number];

const NEXT_INO = Buffer.from("nextIno");
const SYNC = Buffer.from("sync");
const EMPTY = Buffer.alloc(0);
const MAX_SKIPPED = 200;

export class TreeState {
  private readonly inodes = new Map<number, Inode | null>();
  /** Cached dirents: parent → name → dirent, or null when known absent. */
  private readonly dirents = new Map<number, Map<string, Dirent | null>>();
  private direntCount = 0;
  private readonly extentLists = new Map<number, Extent[]>();
  private orphanSet = new Set<number>();
  /**
   * Directories made since this state was opened, whose every dirent is in
   * `dirents` or absent: a miss there needs no LevelDB read. Cleared when
   * dirents are evicted.
   */
  private readonly completeDirs = new Set<number>();
  private nextInoValue = 2;
  /** Remote index: written blind (rows), read from LevelDB by the materializer; all of it in memory without backing. */
  private readonly remoteKeys = new Map<string, RemoteKey | null>();
  private syncState: SyncState | undefined;
  /** Segment data rows, written blind like the remote index. */
  private readonly segmentRuns = new Map<string, { file: number; pos: number; run: SegmentRun }>();
  /** Audit index entries to write: ino → the seqs of the events that touched it, in order. */
  private audit = new Map<number, number[]>();

  private readonly dirtyInodes = new Set<number>();
  /** Dirents changed since the last rows were taken: parent → name → the cookie before (undefined: none). */
  private readonly dirtyDirents = new Map<number, Map<string, number | undefined>>();
  private readonly dirtyExtents = new Map<number, Set<number>>();
  private readonly dirtyOrphans = new Set<number>();
  private dirtyMeta = false;
  private dirtySync = false;

  private constructor(
    private readonly backing: Backing | undefined,
    /** Keep audit index entries (off for long folds that need only the tree: retention). */
    private readonly keepAudit = true,
  ) {}

  /** A state with every row in memory, starting empty. */
  static memory(options: { readonly audit?: boolean } = {}): TreeState {
    return new TreeState(undefined, options.audit ?? true);
  }

  /** An in-memory state holding exactly what `dump` gave (a checkpoint), to evolve on from there. */
  static fromDump(d: StateDump, options: { readonly audit?: boolean } = {}): TreeState {
    const s = new TreeState(undefined, options.audit ?? true);
    for (const inode of d.inodes) {
      s.inodes.set(inode.ino, { ...inode, ...(inode.truncs ? { truncs: inode.truncs.map(([a, b]) => [a, b] as [number, number]) } : {}) });
      s.extentLists.set(inode.ino, []);
    }
    for (const [parent, name, ino, cookie, kind] of d.dirents) {
      let names = s.dirents.get(parent);
      if (!names) s.dirents.set(parent, (names = new Map()));
      names.set(name, { ino: ino as Ino, cookie, kind });
      s.direntCount++;
    }
    for (const [ino, offset, length, file, pos] of d.extents) {
      let list = s.extentLists.get(ino);
      if (!list) s.extentLists.set(ino, (list = []));
      list.push({ offset, length, file, pos });
    }
    for (const list of s.extentLists.values()) list.sort((a, b) => a.offset - b.offset);
    for (const ino of d.orphans) s.orphanSet.add(ino);
    s.nextInoValue = d.nextIno;
    if (d.sync) s.syncState = d.sync;
    for (const [k, ino, etag, asOf] of d.remote) s.remoteKeys.set(k, [ino as Ino, etag, asOf]);
    for (const [file, pos, length, k, at] of d.segmentRuns) s.segmentRuns.set(`${file}/${pos}`, { file, pos, run: [length, k, at] });
    return s;
  }

  /** Everything an in-memory state holds but its audit rows, as plain data (see {@link fromDump}). */
  dump(): StateDump {
    if (this.backing) throw new Error("dump() is for in-memory states");
    const inodes: Inode[] = [];
    for (const inode of this.inodes.values()) if (inode) inodes.push(inode);
    const dirents: StateDump["dirents"][number][] = [];
    for (const [parent, names] of this.dirents) for (const [name, d] of names) if (d) dirents.push([parent, name, d.ino, d.cookie, d.kind]);
    const extents: StateDump["extents"][number][] = [];
    for (const [ino, list] of this.extentLists) if (this.inodes.get(ino)) for (const e of list) extents.push([ino, e.offset, e.length, e.file, e.pos]);
    const remote: StateDump["remote"][number][] = [];
    for (const [k, v] of this.remoteKeys) if (v) remote.push([k, v[0], v[1], v[2]]);
    const segmentRuns: StateDump["segmentRuns"][number][] = [];
    for (const { file, pos, run } of this.segmentRuns.values()) segmentRuns.push([file, pos, run[0], run[1], run[2]]);
    return { inodes, dirents, extents, orphans: [...this.orphanSet], nextIno: this.nextInoValue, ...(this.syncState ? { sync: this.syncState } : {}), remote, segmentRuns };
  }

  /** In-memory states: every extent, for walking data (retention finds the bytes still needed). */
  *allExtents(): Generator<readonly [Ino, Extent]> {
    for (const [ino, list] of this.extentLists) if (this.inodes.get(ino)) for (const e of list) yield [ino as Ino, e];
  }


  /** A cache over persisted rows. */
  static async open(backing: Backing): Promise<TreeState> {
    const s = new TreeState(backing);
    const raw = await backing.meta.get(NEXT_INO);
    if (raw) s.nextInoValue = unpackValue<number>(raw);
    const sync = await backing.meta.get(SYNC);
    if (sync) s.syncState = unpackValue<SyncState>(sync);
    for await (const k of backing.orphans.keys()) s.orphanSet.add(readU64(k as Buffer));
    return s;
  }

  // ---- loading -----------------------------------------------------------

  /** Load rows that an operation needs. Already cached entries are kept as they are. */
  async load(needs: readonly Need[]): Promise<void> {
    const b = this.backing;
    if (!b) return;
    for (const need of needs) {
      if ("inode" in need) {
        if (this.inodes.has(need.inode)) continue;
        const raw = await b.inodes.get(key(need.inode));
        if (!this.inodes.has(need.inode)) this.inodes.set(need.inode, raw ? unpackValue<Inode>(raw) : null);
      } else if ("dirent" in need) {
        const [parent, name] = need.dirent;
        if (this.completeDirs.has(parent) || this.dirents.get(parent)?.has(name)) continue;
        const raw = await b.dirents.get(key(parent, name));
        if (this.dirents.get(parent)?.has(name)) continue;
        if (raw) {
          const [ino, cookie, kind] = unpackValue<[Ino, number, InodeKind]>(raw);
          this.cacheDirent(parent, name, { ino, cookie, kind });
        } else this.cacheDirent(parent, name, null);
      } else {
        if (this.extentLists.has(need.extents)) continue;
        const list: Extent[] = [];
        const prefix = key(need.extents);
        for await (const [k, v] of b.extents.iterator({ gte: prefix, lt: key(need.extents + 1) } as never)) {
          const [length, file, pos] = unpackValue<[number, number, number]>(v as Buffer);
          list.push({ offset: readU64(k as Buffer, 8), length, file, pos });
        }
        if (!this.extentLists.has(need.extents)) this.extentLists.set(need.extents, list);
      }
    }
  }

  /** Whether every row that `needs` name is cached (then {@link load} has nothing to do). */
  loaded(needs: readonly Need[]): boolean {
    if (!this.backing) return true;
    for (const need of needs) {
      if ("inode" in need) {
        if (!this.inodes.has(need.inode)) return false;
      } else if ("dirent" in need) {
        const [parent, name] = need.dirent;
        if (!this.completeDirs.has(parent) && !this.dirents.get(parent)?.has(name)) return false;
      } else if (!this.extentLists.has(need.extents)) return false;
    }
    return true;
  }

  private cacheDirent(parent: number, name: string, d: Dirent | null): void {
    let names = this.dirents.get(parent);
    if (!names) this.dirents.set(parent, (names = new Map()));
    if (!names.has(name)) this.direntCount++;
    names.set(name, d);
  }

  /** Whether the cache holds more than `max` entries of some kind (then {@link evict} has work). */
  over(max: number): boolean {
    return this.inodes.size > max || this.direntCount > max || this.extentLists.size > max / 16;
  }

  /**
   * Drop clean cached entries when the cache holds more than `max` of a kind.
   * Only call when no operation is between `load` and its append.
   */
  evict(max: number, keep: ReadonlySet<number> = new Set()): void {
    if (!this.backing) return;
    if (this.inodes.size > max) {
      for (const ino of this.inodes.keys()) {
        if (this.inodes.size <= max / 2) break;
        if (!this.dirtyInodes.has(ino) && !keep.has(ino) && ino !== 1) this.inodes.delete(ino);
      }
    }
    if (this.direntCount > max) {
      this.completeDirs.clear();
      for (const [parent, names] of this.dirents) {
        if (this.direntCount <= max / 2) break;
        const dirty = this.dirtyDirents.get(parent);
        for (const name of names.keys()) {
          if (dirty?.has(name)) continue;
          names.delete(name);
          this.direntCount--;
        }
        if (names.size === 0) this.dirents.delete(parent);
      }
    }
    if (this.extentLists.size > max / 16) {
      for (const ino of this.extentLists.keys()) {
        if (this.extentLists.size <= max / 32) break;
        if (!this.dirtyExtents.has(ino) && !keep.has(ino)) this.extentLists.delete(ino);
      }
    }
  }

  // ---- reads (synchronous) -------------------------------------------------

  inode(ino: Ino): Inode | undefined {
    const v = this.inodes.get(ino);
    if (v === undefined) {
      if (this.backing) throw new NotLoaded({ inode: ino });
      return undefined;
    }
    return v ?? undefined;
  }

  /** The inode if it is cached (null: known absent), else undefined; never loads or throws. */
  cached(ino: Ino): Inode | null | undefined {
    return this.inodes.get(ino);
  }

  dirent(parent: Ino, name: string): Dirent | undefined {
    const v = this.dirents.get(parent)?.get(name);
    if (v === undefined) {
      if (this.backing && !this.completeDirs.has(parent)) throw new NotLoaded({ dirent: [parent, name] });
      return undefined;
    }
    return v ?? undefined;
  }

  extents(ino: Ino): readonly Extent[] {
    let list = this.extentLists.get(ino);
    if (!list) {
      if (this.backing) throw new NotLoaded({ extents: ino });
      list = [];
      this.extentLists.set(ino, list);
    }
    return list;
  }

  get nextIno(): Ino {
    return this.nextInoValue as Ino;
  }

  orphans(): readonly Ino[] {
    return [...this.orphanSet] as Ino[];
  }

  /** Replication and sync facts (a copy to change goes back through {@link setSync}). */
  get sync(): SyncState {
    return this.syncState ?? { reconciled: 0, conflicts: 0, skipped: [], skippedCount: 0 };
  }

  setSync(change: Partial<SyncState>, skipped: readonly SkippedKey[] = []): void {
    const next = { ...this.sync, ...change };
    if (skipped.length > 0) {
      next.skipped = [...next.skipped, ...skipped].slice(-MAX_SKIPPED);
      next.skippedCount += skipped.length;
    }
    this.syncState = next;
    this.dirtySync = true;
  }

  /** Record (or with null forget) that S3 has `key` as this client last saw it. */
  setRemoteKey(k: string, value: RemoteKey | null): void {
    this.remoteKeys.set(k, value);
  }

  /** Record that event `seq` touched inode `ino` (the audit index). */
  indexEvent(ino: number, seq: number): void {
    if (!this.keepAudit) return;
    const seqs = this.audit.get(ino);
    if (seqs) {
      if (seqs[seqs.length - 1] !== seq) seqs.push(seq);
    } else this.audit.set(ino, [seq]);
  }

  /** Record that data log bytes (file, pos, length) are in a segment in S3. */
  addSegmentRun(file: number, pos: number, run: SegmentRun): void {
    this.segmentRuns.set(`${file}/${pos}`, { file, pos, run });
  }

  /** In-memory states only: the remote index. */
  remoteIndex(): ReadonlyMap<string, RemoteKey | null> {
    return this.remoteKeys;
  }

  // ---- changes (used by evolve) ---------------------------------------------

  /** A new inode: it has no extents yet (nothing to load for it). */
  putInode(inode: Inode): void {
    this.inodes.set(inode.ino, inode);
    if (!this.extentLists.has(inode.ino)) this.extentLists.set(inode.ino, []);
    if (inode.kind === "dir" && this.backing) this.completeDirs.add(inode.ino);
    this.dirtyInodes.add(inode.ino);
    if (inode.ino >= this.nextInoValue) {
      this.nextInoValue = inode.ino + 1;
      this.dirtyMeta = true;
    }
  }

  /** Mark an inode changed in place. */
  touchInode(inode: Inode): void {
    this.dirtyInodes.add(inode.ino);
  }

  dropInode(ino: Ino): void {
    this.inodes.set(ino, null);
    this.completeDirs.delete(ino);
    this.dirtyInodes.add(ino);
    const list = this.extentLists.get(ino) ?? (this.backing ? undefined : []);
    if (list === undefined) throw new NotLoaded({ extents: ino });
    for (const e of list) this.markExtent(ino, e.offset);
    this.extentLists.set(ino, []);
    this.setOrphan(ino, false);
  }

  setOrphan(ino: Ino, orphan: boolean): void {
    if (orphan === this.orphanSet.has(ino)) return;
    if (orphan) this.orphanSet.add(ino);
    else this.orphanSet.delete(ino);
    this.dirtyOrphans.add(ino);
  }

  putDirent(parent: Ino, name: string, dirent: Dirent): void {
    this.noteDirent(parent, name);
    this.cacheDirent(parent, name, dirent);
  }

  delDirent(parent: Ino, name: string): void {
    this.noteDirent(parent, name);
    this.cacheDirent(parent, name, null);
  }

  private noteDirent(parent: Ino, name: string): void {
    let dirty = this.dirtyDirents.get(parent);
    if (!dirty) this.dirtyDirents.set(parent, (dirty = new Map()));
    if (dirty.has(name)) return;
    dirty.set(name, this.dirents.get(parent)?.get(name)?.cookie);
  }

  /** Record that bytes [offset, offset+length) now live at (file, pos). */
  writeExtent(ino: Ino, ext: Extent): void {
    const list = this.extents(ino) as Extent[];
    const end = ext.offset + ext.length;
    // First extent that ends after the new one starts.
    let i = lowerBoundEnd(list, ext.offset);
    const replaced: Extent[] = [];
    let j = i;
    while (j < list.length && list[j]!.offset < end) replaced.push(list[j++]!);
    const pieces: Extent[] = [];
    const first = replaced[0];
    if (first && first.offset < ext.offset) pieces.push({ ...first, length: ext.offset - first.offset });
    let inserted = ext;
    const prev = pieces.length === 0 ? list[i - 1] : undefined;
    if (prev && prev.offset + prev.length === ext.offset && prev.file === ext.file && prev.pos + prev.length === ext.pos) {
      // Coalesce with a neighbour whose bytes are contiguous in the data log.
      inserted = { offset: prev.offset, length: prev.length + ext.length, file: ext.file, pos: prev.pos };
      i -= 1;
      replaced.unshift(prev);
    }
    pieces.push(inserted);
    const last = replaced[replaced.length - 1];
    if (last && last.offset + last.length > end) {
      const cut = end - last.offset;
      pieces.push({ offset: end, length: last.length - cut, file: last.file, pos: last.pos + cut });
    }
    list.splice(i, replaced.length, ...pieces);
    for (const r of replaced) this.markExtent(ino, r.offset);
    for (const p of pieces) this.markExtent(ino, p.offset);
  }

  /** Drop extent bytes at and past `size`. */
  truncateExtents(ino: Ino, size: number): void {
    const list = this.extents(ino) as Extent[];
    let i = lowerBoundEnd(list, size);
    const e = list[i];
    if (e && e.offset < size) {
      list[i] = { ...e, length: size - e.offset };
      this.markExtent(ino, e.offset);
      i++;
    }
    for (let k = i; k < list.length; k++) this.markExtent(ino, list[k]!.offset);
    list.length = i;
  }

  private markExtent(ino: Ino, offset: number): void {
    let set = this.dirtyExtents.get(ino);
    if (!set) this.dirtyExtents.set(ino, (set = new Set()));
    set.add(offset);
  }

  // ---- persistence ---------------------------------------------------------

  /** Row writes for every change since the last call. */
  takeRows(): RowOp[] {
    const ops: RowOp[] = [];
    const copy = (u: Uint8Array) => Buffer.from(u);
    this.writeRows({
      put: (sublevel, k, v) => ops.push({ type: "put", sublevel, key: copy(k), value: copy(v) }),
      del: (sublevel, k) => ops.push({ type: "del", sublevel, key: copy(k) }),
    });
    return ops;
  }

  /**
   * Write the rows of every change since the last call into `w` (which copies keys and
   * values at once: they are scratch buffers here). The audit index gets one row per
   * inode touched, holding every seq that touched it since the last call.
   */
  writeRows(w: RowWriter): void {
    const b = this.backing;
    if (!b) {
      for (const [k, v] of this.remoteKeys) if (v === null) this.remoteKeys.delete(k);
      this.clearDirty();
      return;
    }
    for (const ino of this.dirtyInodes) {
      const inode = this.inodes.get(ino);
      if (inode) w.put(b.inodes, k8(ino), packValue(inode));
      else w.del(b.inodes, k8(ino));
    }
    for (const [parent, names] of this.dirtyDirents) {
      const cached = this.dirents.get(parent);
      for (const [name, oldCookie] of names) {
        const d = cached?.get(name);
        if (oldCookie !== undefined && oldCookie !== d?.cookie) w.del(b.cookies, k16(parent, oldCookie));
        if (d) {
          w.put(b.dirents, kName(parent, name), packValue([d.ino, d.cookie, d.kind]));
          if (oldCookie !== d.cookie) w.put(b.cookies, k16(parent, d.cookie), packValue([name, d.ino, d.kind]));
        } else w.del(b.dirents, kName(parent, name));
      }
    }
    for (const [ino, offsets] of this.dirtyExtents) {
      const list = this.extentLists.get(ino) ?? [];
      for (const off of offsets) {
        const e = findExtent(list, off);
        if (e) w.put(b.extents, k16(ino, off), packValue([e.length, e.file, e.pos]));
        else w.del(b.extents, k16(ino, off));
      }
    }
    for (const ino of this.dirtyOrphans) {
      if (this.orphanSet.has(ino)) w.put(b.orphans, k8(ino), EMPTY);
      else w.del(b.orphans, k8(ino));
    }
    if (this.dirtyMeta) w.put(b.meta, NEXT_INO, packValue(this.nextInoValue));
    if (this.dirtySync) w.put(b.meta, SYNC, packValue(this.syncState));
    for (const [k, v] of this.remoteKeys) {
      if (v) w.put(b.remote, Buffer.from(k), packValue(v));
      else w.del(b.remote, Buffer.from(k));
    }
    this.remoteKeys.clear();
    for (const { file, pos, run } of this.segmentRuns.values()) w.put(b.segmentData, k16(file, pos), packValue(run));
    this.segmentRuns.clear();
    for (const [ino, seqs] of this.audit) w.put(b.audit, k16(ino, seqs[0]!), auditValue(seqs, 0, seqs.length));
    this.audit = new Map();
    this.clearDirty();
  }

  private clearDirty(): void {
    this.dirtyInodes.clear();
    this.dirtyDirents.clear();
    this.dirtyExtents.clear();
    this.dirtyOrphans.clear();
    this.dirtyMeta = false;
    this.dirtySync = false;
  }

  /**
   * Every row of an in-memory state, as sublevel name → (hex key → value), for
   * comparison with persisted rows (fsck). The audit index comes as rows of at most
   * {@link AUDIT_ROW_SEQS} seqs; compare it with {@link auditEntries}, which does not
   * depend on how seqs were grouped into rows.
   */
  rows(): Map<string, Map<string, Buffer>> {
    const out = new Map<string, Map<string, Buffer>>(Object.values(SUBLEVELS).map((n) => [n, new Map()]));
    const put = (sub: string, k: Uint8Array, v: Uint8Array) => out.get(sub)!.set(Buffer.from(k).toString("hex"), Buffer.from(v));
    for (const [ino, inode] of this.inodes) if (inode) put(SUBLEVELS.inodes, key(ino), packValue(inode));
    for (const [parent, names] of this.dirents) {
      for (const [name, d] of names) {
        if (!d) continue;
        put(SUBLEVELS.dirents, key(parent, name), packValue([d.ino, d.cookie, d.kind]));
        put(SUBLEVELS.cookies, key(parent, d.cookie), packValue([name, d.ino, d.kind]));
      }
    }
    for (const [ino, list] of this.extentLists) for (const e of list) put(SUBLEVELS.extents, key(ino, e.offset), packValue([e.length, e.file, e.pos]));
    for (const ino of this.orphanSet) put(SUBLEVELS.orphans, key(ino), new Uint8Array(0));
    // Persisted only once an inode past the root raised it (putInode), so never while it is 2.
    if (this.nextInoValue !== 2) put(SUBLEVELS.meta, NEXT_INO, packValue(this.nextInoValue));
    if (this.syncState) put(SUBLEVELS.meta, SYNC, packValue(this.syncState));
    for (const [k, v] of this.remoteKeys) if (v) put(SUBLEVELS.remote, Buffer.from(k), packValue(v));
    for (const { file, pos, run } of this.segmentRuns.values()) put(SUBLEVELS.segmentData, key(file, pos), packValue(run));
    for (const [ino, seqs] of this.audit) {
      for (let i = 0; i < seqs.length; i += AUDIT_ROW_SEQS) put(SUBLEVELS.audit, key(ino, seqs[i]!), auditValue(seqs, i, Math.min(seqs.length, i + AUDIT_ROW_SEQS)));
    }
    return out;
  }

  /** Every audit index entry of an in-memory state, as "ino:seq". */
  auditEntries(): Set<string> {
    const out = new Set<string>();
    for (const [ino, seqs] of this.audit) for (const seq of seqs) out.add(`${ino}:${seq}`);
    return out;
  }
}

/** Seqs per audit row when rows are rebuilt from the journal. */
export const AUDIT_ROW_SEQS = 256;

/** The value of an audit row for seqs[from..to): empty for one seq, else the others' offsets from the first. */
function auditValue(seqs: readonly number[], from: number, to: number): Uint8Array {
  if (to - from === 1) return EMPTY;
  const first = seqs[from]!;
  const deltas: number[] = [];
  for (let i = from + 1; i < to; i++) deltas.push(seqs[i]! - first);
  return packValue(deltas);
}

/** An audit row holding `seqs` (sorted) of inode `ino`: its key and value. */
export function auditRow(ino: number, seqs: readonly number[]): { key: Buffer; value: Buffer } {
  return { key: key(ino, seqs[0]!), value: Buffer.from(auditValue(seqs, 0, seqs.length)) };
}

/** The seqs an audit row holds (its key is ino, seq). */
export function auditSeqs(key: Uint8Array, value: Uint8Array): number[] {
  const first = readU64(key, 8);
  if (value.length === 0) return [first];
  return [first, ...unpackValue<number[]>(value).map((d) => first + d)];
}

// Row keys, built in one scratch buffer: the writer copies them at once.
const keyScratch = Buffer.allocUnsafeSlow(8 + 4096);

function k8(a: number): Buffer {
  keyScratch.writeUInt32BE(Math.floor(a / 2 ** 32), 0);
  keyScratch.writeUInt32BE(a >>> 0, 4);
  return keyScratch.subarray(0, 8);
}

function k16(a: number, b: number): Buffer {
  keyScratch.writeUInt32BE(Math.floor(a / 2 ** 32), 0);
  keyScratch.writeUInt32BE(a >>> 0, 4);
  keyScratch.writeUInt32BE(Math.floor(b / 2 ** 32), 8);
  keyScratch.writeUInt32BE(b >>> 0, 12);
  return keyScratch.subarray(0, 16);
}

function kName(parent: number, name: string): Buffer {
  keyScratch.writeUInt32BE(Math.floor(parent / 2 ** 32), 0);
  keyScratch.writeUInt32BE(parent >>> 0, 4);
  const n = keyScratch.write(name, 8, "utf8");
  if (8 + Buffer.byteLength(name) > keyScratch.length) return key(parent, name);
  return keyScratch.subarray(0, 8 + n);
}

/** Index of the first extent whose end is past `offset`. */
function lowerBoundEnd(list: readonly Extent[], offset: number): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const e = list[mid]!;
    if (e.offset + e.length <= offset) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function findExtent(list: readonly Extent[], offset: number): Extent | undefined {
  let lo = 0;
  let hi = list.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const e = list[mid]!;
    if (e.offset === offset) return e;
    if (e.offset < offset) lo = mid + 1;
    else hi = mid - 1;
  }
  return undefined;
}

/** Extents overlapping [offset, offset+length), in order. */
export function extentsIn(list: readonly Extent[], offset: number, length: number): Extent[] {
  const out: Extent[] = [];
  const end = offset + length;
  for (let i = lowerBoundEnd(list, offset); i < list.length && list[i]!.offset < end; i++) out.push(list[i]!);
  return out;
}
