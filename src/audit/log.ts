/**
 * The audit log: every operation of a journal with its time, caller and the paths it touched
 * as they were at that moment (names are followed through renames by replaying the dirent
 * events alongside), filtered by path, time, uid and pid.
 *
 * `--path P` selects the operations on whatever was at P at the time, and every operation on
 * the files that are at P at the end of the queried range, under whatever name they had: so
 * "who wrote bytes X–Y of report.txt" is answered across renames.
 */
import type { RecordHead } from "../../journal/codec.ts";
import { ROOT_INO, type JournalEvent } from "../../journal/mod.ts";

export interface LogFilter {
  /** A path under the mount, "/" separated, with or without a leading "/". */
  readonly path?: string;
  /** Milliseconds since the epoch, inclusive. */
  readonly since?: number;
  readonly until?: number;
  readonly uid?: number;
  readonly pid?: number;
  /** Include replication facts and session markers (off: only what callers did). */
  readonly all?: boolean;
}

export interface LogEntry {
  readonly seq: number;
  readonly time: number;
  readonly op: string;
  readonly uid?: number;
  readonly gid?: number;
  readonly pid?: number;
  /** The calling process's name, where known. */
  readonly comm?: string;
  /** Paths as they were at the time ("/a/b"); a rename has two. */
  readonly paths: readonly string[];
  /** Byte range written [from, to), or the new size of a truncate. */
  readonly range?: readonly [number, number];
  readonly size?: number;
  readonly detail?: string;
}

const FACTS = new Set(["SegmentSealed", "SegmentReplicated", "ObjectMaterialized", "ObjectDeleted", "Reconciled", "RemoteListed", "ConflictDetected", "Mounted", "Unmounted", "ObjectDiscovered", "ObjectChanged"]);

/** What retention left before the events: a checkpoint's seq and the names then (see src/retention). */
export interface LogBase {
  readonly seq: number;
  readonly dirents: readonly (readonly [parent: number, name: string, ino: number, ...rest: unknown[]])[];
}

/** Names of inodes as the journal goes: ino → its links (parent, name). */
class Names {
  protected readonly links = new Map<number, [number, string][]>();

  constructor(base?: LogBase) {
    for (const [parent, name, ino] of base?.dirents ?? []) this.add(ino, parent, name);
  }

  apply(e: JournalEvent): void {
    switch (e.type) {
      case "DirentLinked":
        this.add(e.ino, e.parent, e.name);
        return;
      case "DirentUnlinked":
        this.moved(e.ino);
        this.remove(e.ino, e.parent, e.name);
        return;
      case "Renamed":
        this.moved(e.ino);
        if (e.replaced !== undefined) {
          this.moved(e.replaced);
          this.remove(e.replaced, e.toParent, e.toName);
        }
        this.remove(e.ino, e.fromParent, e.fromName);
        this.add(e.ino, e.toParent, e.toName);
        return;
      case "RemoteListed":
        for (const x of e.entries) this.add(x.ino, e.dir, x.name);
        return;
      case "InodeDropped":
        this.moved(e.ino);
        this.links.delete(e.ino);
        return;
      default:
    }
  }

  /**
   * Paths of directories, as {@link path} found them: most entries are in a directory whose
   * path was already worked out. A directory's path changes only when it or an ancestor is
   * renamed, unlinked or dropped ({@link moved}); a new link never changes a path (a path
   * follows an inode's first link, and a directory has one).
   */
  private readonly dirPaths = new Map<number, string>();

  /** `ino`'s name is about to change: forget cached paths that may go through it. */
  private moved(ino: number): void {
    if (this.dirPaths.has(ino)) this.dirPaths.clear();
  }

  /** The links of an inode, or undefined if it never had one. */
  linksOf(ino: number): readonly [number, string][] | undefined {
    return this.links.get(ino);
  }

  protected add(ino: number, parent: number, name: string): void {
    const l = this.links.get(ino) ?? [];
    l.push([parent, name]);
    this.links.set(ino, l);
  }

  protected remove(ino: number, parent: number, name: string): void {
    const l = this.links.get(ino);
    if (!l) return;
    const i = l.findIndex(([p, n]) => p === parent && n === name);
    if (i >= 0) l.splice(i, 1);
  }

  /** The path of an inode now ("/" for the root), or undefined if it has no name. */
  path(ino: number, depth = 0): string | undefined {
    if (ino === ROOT_INO) return "/";
    const l = this.links.get(ino);
    if (!l || l.length === 0 || depth > 4096) return undefined;
    const [parent, name] = l[0]!;
    const p = this.dirPath(parent, depth + 1);
    return p === undefined ? undefined : p === "/" ? `/${name}` : `${p}/${name}`;
  }

  private dirPath(ino: number, depth: number): string | undefined {
    const known = this.dirPaths.get(ino);
    if (known !== undefined) return known;
    const p = this.path(ino, depth);
    if (p !== undefined) this.dirPaths.set(ino, p);
    return p;
  }

  /**
   * Whether the event could be at a path whose last segment is `base` or under one: its
   * own name or an ancestor's is `base`. (Exact paths are checked after.)
   */
  mayBeAt(e: JournalEvent, base: string): boolean {
    const named = (ino: number, depth = 0): boolean => {
      if (ino === ROOT_INO || depth > 4096) return base === "";
      const l = this.links.get(ino);
      if (!l) return false;
      return l.some(([p, n]) => n === base || named(p, depth + 1));
    };
    switch (e.type) {
      case "DirentLinked":
      case "DirentUnlinked":
        return e.name === base || named(e.parent);
      case "Renamed":
        return e.fromName === base || e.toName === base || named(e.fromParent) || named(e.toParent);
      case "RemoteListed":
        return named(e.dir) || e.entries.some((x) => x.name === base);
      default:
        return inodesOf(e).some((i) => named(i));
    }
  }

  child(parent: number, name: string): number | undefined {
    for (const [ino, l] of this.links) if (l.some(([p, n]) => p === parent && n === name)) return ino;
    return undefined;
  }

  /** The inode at a path now. */
  resolve(path: string): number | undefined {
    let ino: number | undefined = ROOT_INO;
    for (const part of path.split("/").filter(Boolean)) {
      ino = this.child(ino, part);
      if (ino === undefined) return undefined;
    }
    return ino;
  }
}

const normalize = (p: string) => `/${p.split("/").filter(Boolean).join("/")}`;

type Draft = { seq: number; time: number; op: string; uid?: number; gid?: number; pid?: number; comm?: string; paths?: readonly string[]; range?: readonly [number, number]; size?: number; detail?: string };

/** The path of `ino` for an entry. */
function pathFor(names: { path(ino: number): string | undefined }, ino: number): string {
  return names.path(ino) ?? `<inode ${ino}>`;
}

function pathUnder(names: { path(ino: number): string | undefined }, parent: number, name: string): string {
  const p = pathFor(names, parent);
  return p === "/" ? `/${name}` : `${p}/${name}`;
}

/** One entry per event (what the event did, with paths as they were), before filtering. */
function describe(e: JournalEvent, names: { path(ino: number): string | undefined }): LogEntry {
  const c = e.caller;
  // Built field by field, in the order entries print in (spreads and closures cost more
  // than the rest of an entry on long queries).
  const d: Draft = { seq: e.seq, time: e.time, op: e.type };
  if (c) {
    d.uid = c.uid;
    d.gid = c.gid;
    d.pid = c.pid;
    if (c.comm !== undefined) d.comm = c.comm;
  }
  switch (e.type) {
    case "InodeCreated":
      d.paths = [];
      d.detail = `${e.kind} inode ${e.ino} mode ${(e.mode & 0o7777).toString(8)}${e.target !== undefined ? ` -> ${e.target}` : ""}`;
      break;
    case "DirentLinked":
    case "DirentUnlinked":
      d.paths = [pathUnder(names, e.parent, e.name)];
      d.detail = `inode ${e.ino}`;
      break;
    case "Renamed":
      d.paths = [pathUnder(names, e.fromParent, e.fromName), pathUnder(names, e.toParent, e.toName)];
      if (e.replaced !== undefined) d.detail = `replaced inode ${e.replaced}`;
      break;
    case "AttrsChanged": {
      d.paths = [pathFor(names, e.ino)];
      const parts: string[] = [];
      if (e.mode !== undefined) parts.push(`mode ${(e.mode & 0o7777).toString(8)}`);
      if (e.uid !== undefined) parts.push(`uid ${e.uid}`);
      if (e.gid !== undefined) parts.push(`gid ${e.gid}`);
      if (e.mtime !== undefined) parts.push(`mtime ${new Date(e.mtime).toISOString()}`);
      if (e.atime !== undefined) parts.push(`atime ${new Date(e.atime).toISOString()}`);
      d.detail = parts.join(", ");
      break;
    }
    case "ExtentWritten":
      d.paths = [pathFor(names, e.ino)];
      d.range = [e.offset, e.offset + e.length];
      break;
    case "Truncated":
      d.paths = [pathFor(names, e.ino)];
      d.size = e.size;
      break;
    case "XattrSet":
    case "XattrRemoved":
      d.paths = [pathFor(names, e.ino)];
      d.detail = e.name;
      break;
    case "InodeDropped":
      d.paths = [];
      d.detail = `inode ${e.ino}`;
      break;
    case "RemoteListed":
      d.paths = [pathFor(names, e.dir)];
      d.detail = `${e.entries.length} entries from s3 prefix ${JSON.stringify(e.prefix)}`;
      break;
    case "ConflictDetected":
      d.paths = [pathFor(names, e.ino)];
      d.detail = `${e.key} changed in S3; local version kept as ${e.conflictKey}`;
      break;
    case "ObjectMaterialized":
      d.paths = [pathFor(names, e.ino)];
      d.detail = `object ${e.object.key} (${e.object.size} bytes)`;
      break;
    case "ObjectDeleted":
      d.paths = [];
      d.detail = `object ${e.key}`;
      break;
    case "SegmentReplicated":
      d.paths = [];
      d.detail = `${e.key} (seq ${e.minSeq}-${e.maxSeq})`;
      break;
    case "Mounted":
      d.paths = [];
      d.detail = `client ${e.clientId} on ${e.host}, pid ${e.pid}`;
      break;
    case "Unmounted":
      d.paths = [];
      d.detail = `client ${e.clientId}${e.clean ? "" : " (unclean)"}`;
      break;
    default:
      d.paths = [];
  }
  return d as LogEntry;
}

/** The inodes an entry's event is about (for following a file through renames). */
function inodesOf(e: JournalEvent): number[] {
  switch (e.type) {
    case "DirentLinked":
    case "DirentUnlinked":
    case "Renamed":
    case "AttrsChanged":
    case "ExtentWritten":
    case "Truncated":
    case "XattrSet":
    case "XattrRemoved":
    case "InodeDropped":
    case "InodeCreated":
      return [e.ino];
    default:
      return [];
  }
}

/** What the projections offer for answering without a scan (a local journal). */
export interface AuditIndex {
  /** The inode at a path now. */
  resolveNow(path: string): Promise<number | undefined>;
  /** Whether an inode is a directory now. */
  isDir(ino: number): Promise<boolean>;
  /** Seqs of the events that touched an inode. */
  eventsOf(ino: number): Promise<number[]>;
  get(seq: number): Promise<JournalEvent | undefined>;
  /** Several events by seq (ascending); seqs not held are left out. */
  getMany?(seqs: readonly number[]): Promise<JournalEvent[]>;
  /** Events in [from, to], in order, many at a time; only those `select` accepts, when given. */
  batches(from: number, to: number, select?: (head: RecordHead) => boolean): AsyncIterable<readonly JournalEvent[]>;
  readonly head: number;
}

/** The events that change names. */
const NAME_TYPES = new Set(["DirentLinked", "DirentUnlinked", "Renamed", "RemoteListed", "InodeDropped"]);

/** Inodes whose links an event reads or changes. */
function inodesNamed(e: JournalEvent): number[] {
  const r = e as { ino?: number; parent?: number; fromParent?: number; toParent?: number; replaced?: number; dir?: number; entries?: readonly { ino: number }[] };
  const out: number[] = [];
  for (const x of [r.ino, r.parent, r.fromParent, r.toParent, r.replaced, r.dir]) if (x !== undefined) out.push(x);
  if (e.type === "RemoteListed") for (const x of e.entries) out.push(x.ino);
  return out;
}

/**
 * Names during a window of the journal [from, ...], without replaying what came before it:
 * an inode's links are learnt when the window first touches it, from its own history through
 * the index (or, once that has been needed too often, from one scan of the name events
 * before the window), and followed through the window's events from there. An inode created
 * inside the window needs no lookup at all.
 */
class WindowNames extends Names {
  private seeds = 0;
  private start: Names | undefined;

  constructor(
    private readonly history: NameHistory,
    private readonly from: number,
    private readonly scanBefore: () => Promise<Names>,
  ) {
    super();
  }

  /** Whether the links of every inode `e` names, and of their ancestors, are known (then no {@link prepare} is needed). */
  ready(e: JournalEvent): boolean {
    if (e.type === "InodeCreated" && !this.links.has(e.ino)) this.links.set(e.ino, []);
    const r = e as { ino?: number; parent?: number; fromParent?: number; toParent?: number; replaced?: number; dir?: number };
    if (!this.known(r.ino) || !this.known(r.parent) || !this.known(r.fromParent) || !this.known(r.toParent) || !this.known(r.replaced) || !this.known(r.dir)) return false;
    if (e.type === "RemoteListed") for (const x of e.entries) if (!this.known(x.ino)) return false;
    return true;
  }

  /** The links of `ino` and of its ancestors are known (or there is no inode). */
  private known(ino: number | undefined): boolean {
    if (ino === undefined) return true;
    let at = ino;
    for (let depth = 0; at !== ROOT_INO && depth <= 4096; depth++) {
      const l = this.links.get(at);
      if (!l) return false;
      if (l.length === 0) break;
      at = l[0]![0];
    }
    return true;
  }

  /** Learn the links of every inode `e` names, and of their ancestors, as they are just before `e`. */
  async prepare(e: JournalEvent): Promise<void> {
    for (const ino of inodesNamed(e)) await this.learn(ino);
  }

  private async learn(ino: number, depth = 0): Promise<void> {
    if (ino === ROOT_INO || depth > 4096) return;
    let l = this.links.get(ino);
    if (!l) {
      if (!this.start && ++this.seeds > SEEDS_BEFORE_SCAN) this.start = await this.scanBefore();
      if (this.start) l = (this.start.linksOf(ino) ?? []).map(([p, n]): [number, string] => [p, n]);
      else l = await this.history.linksAt(ino, this.from);
      this.links.set(ino, l);
    }
    if (l.length > 0) await this.learn(l[0]![0], depth + 1);
  }
}

/** Inodes a window may learn one by one from their histories before one scan of what came before is cheaper. */
const SEEDS_BEFORE_SCAN = 1000;

/** Where inodes were named when, rebuilt per inode from its own events through the index. */
class NameHistory {
  /** Per inode: the name events among its own events, in order. */
  private readonly timelines = new Map<number, Promise<JournalEvent[]>>();
  private baseLinks: Map<number, [number, string][]> | undefined;
  constructor(
    private readonly index: AuditIndex,
    private readonly base?: LogBase,
  ) {}

  /** Where an inode was linked at the checkpoint, if there is one. */
  private baseLinksOf(ino: number): readonly [number, string][] {
    if (!this.base) return [];
    if (!this.baseLinks) {
      this.baseLinks = new Map();
      for (const [parent, name, i] of this.base.dirents) {
        const l = this.baseLinks.get(i) ?? [];
        l.push([parent, name]);
        this.baseLinks.set(i, l);
      }
    }
    return this.baseLinks.get(ino) ?? [];
  }

  private timeline(ino: number): Promise<JournalEvent[]> {
    let t = this.timelines.get(ino);
    if (!t) {
      t = (async () => {
        const seqs = (await this.index.eventsOf(ino)).filter((seq) => !this.base || seq > this.base.seq);
        const events = this.index.getMany ? await this.index.getMany(seqs) : (await Promise.all(seqs.map((seq) => this.index.get(seq)))).filter((e) => e !== undefined);
        return events.filter((e) => NAME_TYPES.has(e.type));
      })();
      if (this.timelines.size > 100_000) this.timelines.clear();
      this.timelines.set(ino, t);
    }
    return t;
  }

  /** The links of `ino` just before event `seq`, as a replay of every name event would have them. */
  async linksAt(ino: number, seq: number): Promise<[number, string][]> {
    const names = new Names({ seq: 0, dirents: this.baseLinksOf(ino).map(([p, n]) => [p, n, ino] as const) });
    for (const e of await this.timeline(ino)) {
      if (e.seq >= seq) break;
      names.apply(e);
    }
    return (names.linksOf(ino) ?? []).map(([p, n]): [number, string] => [p, n]);
  }

  /** The path of `ino` just before event `seq`. */
  async pathAt(ino: number, seq: number, depth = 0): Promise<string | undefined> {
    if (ino === ROOT_INO) return "/";
    if (depth > 4096) return undefined;
    const at = (await this.linksAt(ino, seq))[0];
    if (!at) return undefined;
    const p = await this.pathAt(at[0], seq, depth + 1);
    return p === undefined ? undefined : p === "/" ? `/${at[1]}` : `${p}/${at[1]}`;
  }

  /** Paths before event `e` of every inode it names, for `describe`. */
  async namesFor(e: JournalEvent): Promise<{ path(ino: number): string | undefined }> {
    const r = e as { ino?: number; parent?: number; fromParent?: number; toParent?: number; dir?: number };
    const inos = [r.ino, r.parent, r.fromParent, r.toParent, r.dir].filter((x): x is number => x !== undefined);
    const paths = new Map<number, string | undefined>();
    for (const ino of inos) paths.set(ino, await this.pathAt(ino, e.seq));
    return { path: (ino) => paths.get(ino) };
  }
}

/** The first seq whose event time is ≥ t (head + 1 if none), by bisection: times grow with seqs. */
async function seqAtTime(index: AuditIndex, t: number): Promise<number> {
  let lo = 1;
  let hi = index.head + 1;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    const e = await index.get(mid);
    if (e && e.time >= t) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/**
 * The audit log through the projections, where they can answer without reading the whole
 * journal: a file (not a directory) named by --path, or any query without a path (its time
 * window only). Undefined when the query needs the scan.
 */
async function indexed(index: AuditIndex, filter: LogFilter, base?: LogBase): Promise<AsyncGenerator<LogEntry> | undefined> {
  const history = new NameHistory(index, base);
  const after = base?.seq ?? 0;
  const keep = (e: JournalEvent) =>
    (filter.since === undefined || e.time >= filter.since) &&
    (filter.until === undefined || e.time <= filter.until) &&
    (filter.all || !FACTS.has(e.type)) &&
    (filter.uid === undefined || e.caller?.uid === filter.uid) &&
    (filter.pid === undefined || e.caller?.pid === filter.pid);
  if (filter.path !== undefined && filter.until === undefined) {
    const ino = await index.resolveNow(normalize(filter.path));
    if (ino === undefined || (await index.isDir(ino))) return undefined;
    const seqs = (await index.eventsOf(ino)).filter((s) => s > after);
    return (async function* () {
      for (const seq of seqs) {
        const e = await index.get(seq);
        if (e && keep(e)) yield describe(e, await history.namesFor(e));
      }
    })();
  }
  if (filter.path === undefined) {
    // Any time window (the whole journal without one): only its events are read.
    const from = Math.max(after + 1, filter.since === undefined ? 1 : await seqAtTime(index, filter.since));
    const to = filter.until === undefined ? index.head : (await seqAtTime(index, filter.until + 1)) - 1;
    const batches = index.batches.bind(index);
    const names = new WindowNames(history, from, async () => {
      const before = new Names(base);
      for await (const b of batches(after + 1, from - 1, (h) => NAME_TYPES.has(h.type))) for (const e of b) before.apply(e);
      return before;
    });
    // Name events for the names (and creations: a new inode needs no lookup); of the others
    // only those that may be reported are decoded.
    const select = (h: RecordHead) =>
      NAME_TYPES.has(h.type) || h.type === "InodeCreated" || ((filter.all || !FACTS.has(h.type)) && (filter.uid === undefined || h.uid === filter.uid) && (filter.pid === undefined || h.pid === filter.pid));
    return (async function* () {
      if (to < from) return;
      for await (const b of batches(from, to, select)) {
        for (const e of b) {
          if (!names.ready(e)) await names.prepare(e);
          const entry = keep(e) ? describe(e, names) : undefined;
          names.apply(e);
          if (entry) yield entry;
        }
      }
    })();
  }
  return undefined;
}

/**
 * The audit log of `events` (in seq order), filtered. `events` is called twice when
 * filtering by path: once to learn which inodes are at the path at the end of the range.
 */
export async function* auditLog(
  events: () => AsyncIterable<JournalEvent>,
  filter: LogFilter = {},
  options: {
    /** The inode at a path now, from the projection: spares the first pass when the range ends now. */
    readonly resolveNow?: (path: string) => Promise<number | undefined>;
    /** The projections' indexes (a local journal): most path and time queries need no scan. */
    readonly index?: AuditIndex;
    /** The checkpoint retention left: events up to its seq are not reported, names start from it. */
    readonly base?: LogBase;
  } = {},
): AsyncGenerator<LogEntry> {
  const start = options.base;
  const after = start?.seq ?? 0;
  const fast = options.index ? await indexed(options.index, filter, start) : undefined;
  if (fast) {
    yield* fast;
    return;
  }
  const inTime = (e: JournalEvent) => (filter.since === undefined || e.time >= filter.since) && (filter.until === undefined || e.time <= filter.until);
  const path = filter.path === undefined ? undefined : normalize(filter.path);
  const base = path?.slice(path.lastIndexOf("/") + 1);
  let followed = new Set<number>();
  if (path !== undefined && filter.until === undefined && options.resolveNow) {
    const ino = await options.resolveNow(path);
    if (ino !== undefined) followed = new Set([ino]);
  } else if (path !== undefined) {
    const names = new Names(start);
    for await (const e of events()) {
      if (e.seq <= after) continue;
      if (filter.until !== undefined && e.time > filter.until) break;
      names.apply(e);
    }
    const ino = names.resolve(path);
    if (ino !== undefined) followed = new Set([ino]);
  }
  const names = new Names(start);
  for await (const e of events()) {
    if (e.seq <= after) continue;
    if (filter.until !== undefined && e.time > filter.until) break;
    // Cheap rejections first; paths are worked out only for events that may be reported.
    const wanted =
      inTime(e) &&
      (filter.all || !FACTS.has(e.type)) &&
      (filter.uid === undefined || e.caller?.uid === filter.uid) &&
      (filter.pid === undefined || e.caller?.pid === filter.pid) &&
      (path === undefined || inodesOf(e).some((i) => followed.has(i)) || names.mayBeAt(e, base!));
    // Paths before the event (an unlink or rename names what was there).
    const entry = wanted ? describe(e, names) : undefined;
    names.apply(e);
    if (!entry) continue;
    if (path !== undefined) {
      const hit = entry.paths.some((p) => p === path || p.startsWith(`${path}/`)) || inodesOf(e).some((i) => followed.has(i));
      if (!hit) continue;
      // A created inode has no path yet: it is reported with the link that names it.
      if (e.type === "InodeCreated" && entry.paths.length === 0 && !inodesOf(e).some((i) => followed.has(i))) continue;
    }
    yield entry;
  }
}

/** One line of text for an entry. */
export function formatEntry(e: LogEntry): string {
  const who = e.uid !== undefined ? `uid ${e.uid} gid ${e.gid} pid ${e.pid}${e.comm !== undefined ? ` (${e.comm})` : ""}` : "-";
  const what = e.paths.join(" -> ");
  const extra = e.range ? ` bytes ${e.range[0]}-${e.range[1]}` : e.size !== undefined ? ` size ${e.size}` : "";
  return `${new Date(e.time).toISOString()}  #${e.seq}  ${who}  ${e.op}  ${what}${extra}${e.detail ? `  (${e.detail})` : ""}`;
}
