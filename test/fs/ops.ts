/**
 * Generated operation sequences for the model-based tests, the subjects that
 * run them (the reference model, a real Filesystem), whole-tree snapshots,
 * and the runner that compares every step.
 *
 * Operations are plain data, path based, over a small pool of names in
 * directories up to three deep, so that a shrunk failure prints as a short
 * readable list and can be pinned as a regression test. A subject resolves a
 * path the way the kernel's path walk would before calling the filesystem:
 * component by component with lookup (search permission on each directory,
 * the last parent included), and a symlink met on the way, or at the end of a
 * call that follows links, fails with ENOENT (every generated target is a
 * dangling absolute path). Handles are named by their position among the
 * handles open now, modulo their number.
 */
import fc from "fast-check";
import { constants as fsConstants } from "node:fs";
import { ROOT_INO, type Ino } from "../../journal/mod.ts";
import { Filesystem, type Durability } from "../../src/fs/filesystem.ts";
import { FsError } from "../../src/fs/errors.ts";
import type { Ctx } from "../../src/fs/context.ts";
import { Model, ModelError, type Access, type Caller, type Handle as ModelHandle, type Node } from "./model.ts";

// ---- operations ---------------------------------------------------------------

export const CALLERS = {
  root: { uid: 0, gid: 0 },
  u1000: { uid: 1000, gid: 1000 },
  u1001: { uid: 1001, gid: 1001 },
} as const satisfies Record<string, Caller>;
export type CallerName = keyof typeof CALLERS;

export type Path = readonly string[];

export type Op =
  | { readonly op: "create"; readonly as: CallerName; readonly path: Path; readonly mode: number; readonly acc: Access; readonly excl: boolean; readonly trunc: boolean; readonly append: boolean }
  | { readonly op: "open"; readonly as: CallerName; readonly path: Path; readonly acc: Access; readonly trunc: boolean; readonly append: boolean }
  | { readonly op: "close"; readonly as: CallerName; readonly h: number }
  | { readonly op: "fsync"; readonly as: CallerName; readonly h: number }
  | { readonly op: "write"; readonly as: CallerName; readonly h: number; readonly offset: number; readonly size: number; readonly seed: number }
  | { readonly op: "read"; readonly as: CallerName; readonly h: number; readonly offset: number; readonly length: number }
  | { readonly op: "truncate"; readonly as: CallerName; readonly path: Path; readonly size: number }
  | { readonly op: "ftruncate"; readonly as: CallerName; readonly h: number; readonly size: number }
  | { readonly op: "rename"; readonly as: CallerName; readonly from: Path; readonly to: Path }
  | { readonly op: "link"; readonly as: CallerName; readonly from: Path; readonly to: Path }
  | { readonly op: "unlink"; readonly as: CallerName; readonly path: Path }
  | { readonly op: "mkdir"; readonly as: CallerName; readonly path: Path; readonly mode: number }
  | { readonly op: "rmdir"; readonly as: CallerName; readonly path: Path }
  | { readonly op: "chmod"; readonly as: CallerName; readonly path: Path; readonly mode: number }
  | { readonly op: "chown"; readonly as: CallerName; readonly path: Path; readonly uid?: number; readonly gid?: number }
  | { readonly op: "symlink"; readonly as: CallerName; readonly path: Path; readonly target: string }
  | { readonly op: "setxattr"; readonly as: CallerName; readonly path: Path; readonly name: string; readonly value: string; readonly flags: 0 | 1 | 2 }
  | { readonly op: "removexattr"; readonly as: CallerName; readonly path: Path; readonly name: string }
  | { readonly op: "getxattr"; readonly as: CallerName; readonly path: Path; readonly name: string }
  | { readonly op: "listxattr"; readonly as: CallerName; readonly path: Path }
  | { readonly op: "readdir"; readonly as: CallerName; readonly path: Path }
  | { readonly op: "restart" };

/**
 * A generated path: concrete, or `{pick: n}`, the n-th (modulo their number)
 * existing path of the reference subject's tree when the step runs, so that
 * sequences often act on what exists. The runner reports concrete ops.
 */
export type PathArg = Path | { readonly pick: number };
type Generated<O> = O extends unknown ? { readonly [K in keyof O]: O[K] extends Path ? PathArg : O[K] } : never;
/** An op as generated: paths may be picks. */
export type GenOp = Generated<Op>;

export interface Sequence {
  /** Permission bits of the root directory (owned by root). */
  readonly rootMode: number;
  readonly ops: readonly GenOp[];
}

/** The op with every pick replaced by an existing path of `tree` (["a"] when only the root exists). */
export function concretize(op: GenOp, tree: Tree): Op {
  if (!Object.values(op).some((v) => v !== null && typeof v === "object" && "pick" in v)) return op as Op;
  const existing = [...tree.keys()].filter((p) => p !== "/");
  const out: Record<string, unknown> = { ...op };
  for (const [k, v] of Object.entries(op)) {
    if (v !== null && typeof v === "object" && "pick" in v) {
      const n = (v as { pick: number }).pick;
      out[k] = existing.length === 0 ? ["a"] : existing[n % existing.length]!.slice(1).split("/");
    }
  }
  return out as Op;
}

/** Where every generated symlink points: nowhere, so following one fails with ENOENT. */
export const NOWHERE = "/objectfs-test-nowhere/";

export const O_CREAT = fsConstants.O_CREAT;
export const O_EXCL = fsConstants.O_EXCL;
export const O_TRUNC = fsConstants.O_TRUNC;
export const O_APPEND = fsConstants.O_APPEND;

export function openFlags(o: { acc: Access; creat?: boolean; excl?: boolean; trunc: boolean; append: boolean }): number {
  return o.acc | (o.creat ? O_CREAT : 0) | (o.excl ? O_EXCL : 0) | (o.trunc ? O_TRUNC : 0) | (o.append ? O_APPEND : 0);
}

/** The bytes a write op writes: deterministic, never zero (so they cannot pass for a hole). */
export function bytesFor(seed: number, size: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < size; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = (x >>> 24) | 1;
  }
  return out;
}

/** Does the op follow a symlink at the end of its path (or paths)? */
export function followsFinal(op: Op): boolean {
  switch (op.op) {
    case "create":
      return !op.excl;
    case "open":
    case "truncate":
    case "chmod":
    case "readdir":
      return true;
    default:
      return false;
  }
}

// ---- generators -----------------------------------------------------------------

const KiB = 1024;
const MiB = 1024 * KiB;

// "a" and "b" lead paths more often, so that paths meet the directories the prelude makes.
const firstArb = fc.constantFrom("a", "b", "a", "b", "a", "c", "d");
const nameArb = fc.constantFrom("a", "b", "c", "d");
export const concretePathArb: fc.Arbitrary<Path> = fc.oneof(
  { weight: 5, arbitrary: fc.tuple(firstArb) },
  { weight: 5, arbitrary: fc.tuple(firstArb, nameArb) },
  { weight: 3, arbitrary: fc.tuple(firstArb, nameArb, nameArb) },
);
export const pathArb: fc.Arbitrary<PathArg> = fc.oneof(
  { weight: 1, arbitrary: concretePathArb },
  { weight: 1, arbitrary: fc.record({ pick: fc.nat({ max: 1000 }) }) },
);
const callerArb: fc.Arbitrary<CallerName> = fc.oneof(
  { weight: 4, arbitrary: fc.constant("root" as const) },
  { weight: 3, arbitrary: fc.constant("u1000" as const) },
  { weight: 2, arbitrary: fc.constant("u1001" as const) },
);
const anyMode = fc.integer({ min: 0, max: 0o7777 });
const fileModeArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(0o644, 0o600, 0o666, 0o755, 0o777, 0o000, 0o444, 0o640, 0o604, 0o4755, 0o2755, 0o2644, 0o6777, 0o2666, 0o4666, 0o2600, 0o2775, 0o6644) },
  { weight: 1, arbitrary: anyMode },
);
const dirModeArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(0o755, 0o777, 0o700, 0o1777, 0o2775, 0o2777, 0o555, 0o711, 0o733, 0o3777, 0o4755, 0o2755, 0o770) },
  { weight: 1, arbitrary: anyMode },
);
const chmodArb = fc.oneof(fileModeArb, dirModeArb);
const accArb = fc.constantFrom<Access>(2, 1, 0);
const handleArb = fc.nat({ max: 7 });
const offsetArb = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 8 * KiB }) },
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 70 * KiB }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 4 * MiB }) }, // sparse, far past the end
);
const sizeArb = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 1, max: 600 }) },
  { weight: 3, arbitrary: fc.integer({ min: 1, max: 8 * KiB }) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 70 * KiB }) },
);
const truncArb = fc.oneof(
  { weight: 2, arbitrary: fc.constant(0) },
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 8 * KiB }) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 100 * KiB }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 4 * MiB }) },
);
const xattrNameArb = fc.constantFrom("user.a", "user.b", "trusted.t", "security.s");
const idArb = fc.constantFrom(0, 1000, 1001);

export const opArb: fc.Arbitrary<GenOp> = fc.oneof(
  { weight: 12, arbitrary: fc.record({ op: fc.constant("create" as const), as: callerArb, path: pathArb, mode: fileModeArb, acc: accArb, excl: fc.boolean(), trunc: fc.boolean(), append: fc.boolean() }) },
  { weight: 7, arbitrary: fc.record({ op: fc.constant("open" as const), as: callerArb, path: pathArb, acc: accArb, trunc: fc.boolean(), append: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant("close" as const), as: callerArb, h: handleArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("fsync" as const), as: callerArb, h: handleArb }) },
  { weight: 14, arbitrary: fc.record({ op: fc.constant("write" as const), as: callerArb, h: handleArb, offset: offsetArb, size: sizeArb, seed: fc.nat({ max: 1000 }) }) },
  { weight: 6, arbitrary: fc.record({ op: fc.constant("read" as const), as: callerArb, h: handleArb, offset: offsetArb, length: fc.integer({ min: 0, max: 80 * KiB }) }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant("truncate" as const), as: callerArb, path: pathArb, size: truncArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant("ftruncate" as const), as: callerArb, h: handleArb, size: truncArb }) },
  { weight: 8, arbitrary: fc.record({ op: fc.constant("rename" as const), as: callerArb, from: pathArb, to: pathArb }) },
  { weight: 8, arbitrary: fc.record({ op: fc.constant("link" as const), as: callerArb, from: pathArb, to: pathArb }) },
  { weight: 6, arbitrary: fc.record({ op: fc.constant("unlink" as const), as: callerArb, path: pathArb }) },
  { weight: 10, arbitrary: fc.record({ op: fc.constant("mkdir" as const), as: callerArb, path: pathArb, mode: dirModeArb }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant("rmdir" as const), as: callerArb, path: pathArb }) },
  { weight: 6, arbitrary: fc.record({ op: fc.constant("chmod" as const), as: callerArb, path: pathArb, mode: chmodArb }) },
  {
    weight: 8,
    // chown(-1, -1) is left out: the inode API cannot tell it from an empty setattr.
    arbitrary: fc
      .record({ op: fc.constant("chown" as const), as: callerArb, path: pathArb, uid: fc.option(idArb, { nil: undefined }), gid: fc.option(idArb, { nil: undefined }) })
      .filter((o) => o.uid !== undefined || o.gid !== undefined),
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant("symlink" as const), as: callerArb, path: pathArb, target: fc.string({ minLength: 1, maxLength: 30, unit: fc.constantFrom(..."xyz/-_.0") }).map((s) => `${NOWHERE}${s}t`) }) }, // never ending in "/" (O_CREAT through it would give EISDIR)
  { weight: 4, arbitrary: fc.record({ op: fc.constant("setxattr" as const), as: callerArb, path: pathArb, name: xattrNameArb, value: fc.string({ maxLength: 24 }), flags: fc.constantFrom<0 | 1 | 2>(0, 0, 1, 2) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("removexattr" as const), as: callerArb, path: pathArb, name: xattrNameArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("getxattr" as const), as: callerArb, path: pathArb, name: xattrNameArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("listxattr" as const), as: callerArb, path: pathArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("readdir" as const), as: callerArb, path: pathArb }) },
  { weight: 2, arbitrary: fc.constant({ op: "restart" as const }) },
);

/** Directories and open files most sequences start from, so that deeper paths exist. */
const preludeDirs: readonly Path[] = [["a"], ["b"], ["a", "b"], ["a", "a"], ["b", "c"], ["a", "b", "c"]];
const preludeArb: fc.Arbitrary<GenOp[]> = fc
  .tuple(
    fc.subarray([...preludeDirs]).chain((paths) =>
      fc.tuple(...paths.map((path) => fc.record({ op: fc.constant("mkdir" as const), as: callerArb, path: fc.constant(path), mode: fc.oneof({ weight: 3, arbitrary: fc.constantFrom(0o777, 0o1777, 0o755, 0o2777) }, { weight: 1, arbitrary: dirModeArb }) }))),
    ),
    fc.array(fc.record({ op: fc.constant("create" as const), as: callerArb, path: concretePathArb, mode: fileModeArb, acc: fc.constantFrom<Access>(2, 2, 1, 0), excl: fc.constant(false), trunc: fc.constant(false), append: fc.boolean() }), { maxLength: 4 }),
    // mkdir cannot make a set-group-ID directory; chmod can
    fc.array(fc.record({ op: fc.constant("chmod" as const), as: fc.constant("root" as const), path: fc.constantFrom(...preludeDirs), mode: fc.constantFrom(0o2777, 0o3777, 0o1777, 0o2775, 0o2755) }), { maxLength: 3 }),
  )
  .map(([dirs, files, chmods]) => [...dirs, ...chmods, ...files]);

export function sequenceArb(maxOps: number): fc.Arbitrary<Sequence> {
  return fc.record({
    rootMode: fc.constantFrom(0o777, 0o1777, 0o2777, 0o777, 0o755, 0o3777),
    ops: fc.tuple(preludeArb, fc.array(opArb, { minLength: 1, maxLength: maxOps, size: "max" })).map(([prelude, ops]) => [...prelude, ...ops]),
  });
}

// ---- results and trees --------------------------------------------------------------

/** What a step gave: an errno, or a value (undefined for calls that return nothing worth comparing). */
export type StepResult = { readonly errno: string } | { readonly value: unknown };

export interface EntrySnap {
  readonly kind: string;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly nlink: number;
  /** Files and symlinks (directory sizes are not comparable across implementations). */
  readonly size?: number;
  readonly data?: Uint8Array;
  readonly target?: string;
  /** name → value as hex. */
  readonly xattrs: Readonly<Record<string, string>>;
  /** The first path (in walk order) of the same inode: hard links share it. */
  readonly same: string;
}

/** Path ("/" for the root, "/a/b") → entry. */
export type Tree = Map<string, EntrySnap>;

export interface Subject {
  readonly name: string;
  step(op: Op): Promise<StepResult>;
  snapshot(): Promise<Tree>;
  /** Checks of the subject's own consistency (fsck), after a restart and at the end. */
  verify?(): Promise<void>;
  close(): Promise<void>;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

function showValue(v: unknown): string {
  if (v instanceof Uint8Array) return `${v.length} bytes${v.length <= 16 ? ` ${hex(v)}` : ""}`;
  return JSON.stringify(v) ?? "undefined";
}

export function showResult(r: StepResult): string {
  return "errno" in r ? r.errno : `ok ${showValue(r.value)}`;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  const A = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  const B = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (A.subarray(0, n).equals(B.subarray(0, n))) return a.length === b.length ? -1 : n;
  let lo = 0;
  let hi = n;
  // binary search on equal prefixes
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (A.subarray(0, mid).equals(B.subarray(0, mid))) lo = mid;
    else hi = mid;
  }
  return lo;
}

export function sameResult(a: StepResult, b: StepResult): boolean {
  if ("errno" in a || "errno" in b) return "errno" in a && "errno" in b && a.errno === b.errno;
  if (a.value instanceof Uint8Array || b.value instanceof Uint8Array) {
    return a.value instanceof Uint8Array && b.value instanceof Uint8Array && firstDifference(a.value, b.value) === -1;
  }
  return JSON.stringify(a.value) === JSON.stringify(b.value);
}

/** Differences between two trees, as sentences (at most `max`). */
export function compareTrees(want: Tree, got: Tree, names: [string, string], max = 12): string[] {
  const out: string[] = [];
  const [wn, gn] = names;
  for (const [path, w] of want) {
    if (out.length >= max) break;
    const g = got.get(path);
    if (!g) {
      out.push(`${path}: ${wn} has a ${w.kind}, ${gn} has nothing`);
      continue;
    }
    for (const k of ["kind", "mode", "uid", "gid", "nlink", "size", "target", "same"] as const) {
      if (w[k] !== g[k]) out.push(`${path}: ${k} is ${k === "mode" ? (w[k] as number).toString(8) : w[k]} in ${wn}, ${k === "mode" ? (g[k] as number).toString(8) : g[k]} in ${gn}`);
    }
    if (w.data && g.data) {
      const at = firstDifference(w.data, g.data);
      if (at >= 0) out.push(`${path}: contents differ first at byte ${at} (${wn} ${w.data[at]}, ${gn} ${g.data[at]}; lengths ${w.data.length}/${g.data.length})`);
    }
    if (JSON.stringify(w.xattrs) !== JSON.stringify(g.xattrs)) out.push(`${path}: xattrs ${JSON.stringify(w.xattrs)} in ${wn}, ${JSON.stringify(g.xattrs)} in ${gn}`);
  }
  for (const [path, g] of got) {
    if (out.length >= max) break;
    if (!want.has(path)) out.push(`${path}: ${gn} has a ${g.kind}, ${wn} has nothing`);
  }
  return out;
}

function sortedXattrs(entries: Iterable<[string, Uint8Array]>): Record<string, string> {
  return Object.fromEntries([...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => [k, hex(v)]));
}

const childPath = (dir: string, name: string) => (dir === "/" ? `/${name}` : `${dir}/${name}`);

// ---- the model as a subject -----------------------------------------------------------------

export class ModelSubject implements Subject {
  readonly name = "model";
  readonly model: Model;
  private handles: ModelHandle[] = [];

  constructor(rootMode: number) {
    this.model = new Model(rootMode);
  }

  private handle(h: number): ModelHandle | undefined {
    return this.handles.length === 0 ? undefined : this.handles[h % this.handles.length];
  }

  async step(op: Op): Promise<StepResult> {
    if (op.op === "restart") {
      this.handles = []; // no handle survives; inodes unlinked while open are gone with them
      return { value: undefined };
    }
    const c = CALLERS[op.as];
    const m = this.model;
    try {
      switch (op.op) {
        case "create":
          this.handles.push(m.create(c, op.path, op.mode, op.acc, op));
          return { value: undefined };
        case "open":
          this.handles.push(m.open(c, op.path, op.acc, op));
          return { value: undefined };
        case "close": {
          const h = this.handle(op.h);
          if (!h) return { value: "no handle" };
          this.handles.splice(this.handles.indexOf(h), 1);
          return { value: undefined };
        }
        case "fsync":
          return { value: this.handle(op.h) ? undefined : "no handle" };
        case "write": {
          const h = this.handle(op.h);
          return { value: h ? m.write(c, h, op.offset, bytesFor(op.seed, op.size)) : "no handle" };
        }
        case "read": {
          const h = this.handle(op.h);
          return { value: h ? m.read(c, h, op.offset, op.length) : "no handle" };
        }
        case "truncate":
          m.truncate(c, op.path, op.size);
          return { value: undefined };
        case "ftruncate": {
          const h = this.handle(op.h);
          if (!h) return { value: "no handle" };
          m.ftruncate(c, h, op.size);
          return { value: undefined };
        }
        case "rename":
          m.rename(c, op.from, op.to);
          return { value: undefined };
        case "link":
          m.link(c, op.from, op.to);
          return { value: undefined };
        case "unlink":
          m.unlink(c, op.path);
          return { value: undefined };
        case "mkdir":
          m.mkdir(c, op.path, op.mode);
          return { value: undefined };
        case "rmdir":
          m.rmdir(c, op.path);
          return { value: undefined };
        case "chmod":
          m.chmod(c, op.path, op.mode);
          return { value: undefined };
        case "chown":
          m.chown(c, op.path, op.uid, op.gid);
          return { value: undefined };
        case "symlink":
          m.symlink(c, op.path, op.target);
          return { value: undefined };
        case "setxattr":
          m.setxattr(c, op.path, op.name, Buffer.from(op.value), op.flags);
          return { value: undefined };
        case "removexattr":
          m.removexattr(c, op.path, op.name);
          return { value: undefined };
        case "getxattr":
          return { value: m.getxattr(c, op.path, op.name) };
        case "listxattr":
          return { value: m.listxattr(c, op.path) };
        case "readdir":
          return { value: m.readdir(c, op.path) };
      }
    } catch (e) {
      if (e instanceof ModelError) return { errno: e.code };
      throw e;
    }
  }

  async snapshot(): Promise<Tree> {
    const tree: Tree = new Map();
    const seen = new Map<number, string>();
    const visit = (path: string, n: Node) => {
      if (!seen.has(n.id)) seen.set(n.id, path);
      tree.set(path, {
        kind: n.kind,
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        nlink: Model.nlink(n),
        ...(n.kind === "dir" ? {} : { size: n.size }),
        ...(n.kind === "file" ? { data: n.size <= n.data.length ? n.data.subarray(0, n.size) : padded(n.data, n.size) } : {}),
        ...(n.kind === "symlink" ? { target: n.target } : {}),
        xattrs: sortedXattrs(n.xattrs),
        same: seen.get(n.id)!,
      });
      if (n.kind === "dir") for (const name of [...n.children.keys()].sort()) visit(childPath(path, name), n.children.get(name)!);
    };
    visit("/", this.model.root);
    return tree;
  }

  async close(): Promise<void> {}
}

function padded(data: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  out.set(data);
  return out;
}

// ---- a real Filesystem as a subject ------------------------------------------------------------

const ROOT_CTX: Ctx = { uid: 0, gid: 0, pid: 1 };

interface FsHandle {
  readonly fh: number;
  readonly ino: Ino;
  readonly writable: boolean;
}

export class FsSubject implements Subject {
  readonly name: string;
  private handles: FsHandle[] = [];
  restarts = 0;

  private constructor(
    public fs: Filesystem,
    readonly dir: string,
    readonly durability: Durability,
    readonly cacheEntries: number | undefined,
  ) {
    this.name = `Filesystem(${durability}${cacheEntries !== undefined ? `, cache ${cacheEntries}` : ""})`;
  }

  /**
   * A Filesystem in `dir` whose root directory is owned by root with
   * `rootMode`; a small `cacheEntries` makes it drop and reload rows often.
   */
  static async open(dir: string, durability: Durability, rootMode: number, cacheEntries?: number): Promise<FsSubject> {
    const fs = await Filesystem.open(dir, { durability, rootOwner: { uid: 0, gid: 0 }, rootMode, ...(cacheEntries !== undefined ? { cacheEntries } : {}) });
    return new FsSubject(fs, dir, durability, cacheEntries);
  }

  private ctx(as: CallerName): Ctx {
    return { ...CALLERS[as], pid: 4242 };
  }

  private handle(h: number): FsHandle | undefined {
    return this.handles.length === 0 ? undefined : this.handles[h % this.handles.length];
  }

  /** The kernel's walk to the last component's parent, done with lookups. */
  private async parentOf(ctx: Ctx, path: Path): Promise<{ parent: Ino; name: string }> {
    let cur = ROOT_INO;
    for (let i = 0; i < path.length - 1; i++) {
      const a = await this.fs.lookup(ctx, cur, path[i]!);
      if (a.kind === "symlink") throw new FsError("ENOENT", "followed a dangling symlink");
      cur = a.ino;
    }
    await this.fs.lookup(ctx, cur, "."); // the walk checks search permission on the last directory too
    return { parent: cur, name: path[path.length - 1]! };
  }

  private async resolve(ctx: Ctx, path: Path, follow: boolean): Promise<{ ino: Ino; kind: string }> {
    const { parent, name } = await this.parentOf(ctx, path);
    const a = await this.fs.lookup(ctx, parent, name);
    if (follow && a.kind === "symlink") throw new FsError("ENOENT", "followed a dangling symlink");
    return a;
  }

  async step(op: Op): Promise<StepResult> {
    if (op.op === "restart") {
      await this.restart();
      return { value: undefined };
    }
    const ctx = this.ctx(op.as);
    const fs = this.fs;
    try {
      switch (op.op) {
        case "create": {
          const { parent, name } = await this.parentOf(ctx, op.path);
          const existing = await fs.lookup(ctx, parent, name).catch((e) => {
            if (e instanceof FsError && e.code === "ENOENT") return undefined;
            throw e;
          });
          if (existing?.kind === "symlink") throw new FsError(op.excl ? "EEXIST" : "ENOENT");
          const { attr, fh } = await fs.create(ctx, parent, name, op.mode, openFlags({ ...op, creat: true }));
          this.handles.push({ fh, ino: attr.ino, writable: op.acc !== 0 });
          return { value: undefined };
        }
        case "open": {
          const { ino } = await this.resolve(ctx, op.path, true);
          const fh = await fs.open(ctx, ino, openFlags(op));
          this.handles.push({ fh, ino, writable: op.acc !== 0 });
          return { value: undefined };
        }
        case "close": {
          const h = this.handle(op.h);
          if (!h) return { value: "no handle" };
          this.handles.splice(this.handles.indexOf(h), 1);
          try {
            await fs.flush(ctx, h.fh);
          } finally {
            await fs.release(ctx, h.fh);
          }
          return { value: undefined };
        }
        case "fsync": {
          const h = this.handle(op.h);
          if (!h) return { value: "no handle" };
          await fs.fsync(ctx, h.fh);
          return { value: undefined };
        }
        case "write": {
          const h = this.handle(op.h);
          return { value: h ? await fs.write(ctx, h.fh, op.offset, bytesFor(op.seed, op.size)) : "no handle" };
        }
        case "read": {
          const h = this.handle(op.h);
          return { value: h ? await fs.read(ctx, h.fh, op.offset, op.length) : "no handle" };
        }
        case "truncate": {
          const { ino } = await this.resolve(ctx, op.path, true);
          await fs.setattr(ctx, ino, { size: op.size });
          return { value: undefined };
        }
        case "ftruncate": {
          const h = this.handle(op.h);
          if (!h) return { value: "no handle" };
          // The kernel refuses ftruncate on a descriptor not open for writing before any filesystem sees it.
          if (!h.writable) throw new FsError("EINVAL");
          await fs.setattr(ctx, h.ino, { size: op.size }, h.fh);
          return { value: undefined };
        }
        case "rename": {
          const from = await this.parentOf(ctx, op.from);
          const to = await this.parentOf(ctx, op.to);
          await fs.rename(ctx, from.parent, from.name, to.parent, to.name);
          return { value: undefined };
        }
        case "link": {
          const { ino } = await this.resolve(ctx, op.from, false);
          const to = await this.parentOf(ctx, op.to);
          await fs.link(ctx, ino, to.parent, to.name);
          return { value: undefined };
        }
        case "unlink": {
          const { parent, name } = await this.parentOf(ctx, op.path);
          await fs.unlink(ctx, parent, name);
          return { value: undefined };
        }
        case "mkdir": {
          const { parent, name } = await this.parentOf(ctx, op.path);
          await fs.mkdir(ctx, parent, name, op.mode);
          return { value: undefined };
        }
        case "rmdir": {
          const { parent, name } = await this.parentOf(ctx, op.path);
          await fs.rmdir(ctx, parent, name);
          return { value: undefined };
        }
        case "chmod": {
          const { ino } = await this.resolve(ctx, op.path, true);
          await fs.setattr(ctx, ino, { mode: op.mode });
          return { value: undefined };
        }
        case "chown": {
          const { ino } = await this.resolve(ctx, op.path, false);
          await fs.setattr(ctx, ino, { ...(op.uid !== undefined ? { uid: op.uid } : {}), ...(op.gid !== undefined ? { gid: op.gid } : {}) });
          return { value: undefined };
        }
        case "symlink": {
          const { parent, name } = await this.parentOf(ctx, op.path);
          await fs.symlink(ctx, parent, name, op.target);
          return { value: undefined };
        }
        case "setxattr": {
          const { ino } = await this.resolve(ctx, op.path, false);
          await fs.setxattr(ctx, ino, op.name, Buffer.from(op.value), op.flags);
          return { value: undefined };
        }
        case "removexattr": {
          const { ino } = await this.resolve(ctx, op.path, false);
          await fs.removexattr(ctx, ino, op.name);
          return { value: undefined };
        }
        case "getxattr": {
          const { ino } = await this.resolve(ctx, op.path, false);
          return { value: await fs.getxattr(ctx, ino, op.name) };
        }
        case "listxattr": {
          const { ino } = await this.resolve(ctx, op.path, false);
          return { value: (await fs.listxattr(ctx, ino)).sort() };
        }
        case "readdir": {
          const { ino } = await this.resolve(ctx, op.path, true);
          await fs.opendir(ctx, ino);
          const entries = await fs.readdir(ctx, ino);
          return { value: entries.map((e) => e.name).filter((n) => n !== "." && n !== "..").sort() };
        }
      }
    } catch (e) {
      if (e instanceof FsError) return { errno: e.code };
      throw e;
    }
  }

  /** Close and reopen the same directory: every handle is gone. */
  async restart(): Promise<void> {
    this.handles = [];
    await this.fs.close();
    this.fs = await Filesystem.open(this.dir, { durability: this.durability, ...(this.cacheEntries !== undefined ? { cacheEntries: this.cacheEntries } : {}) });
    this.restarts++;
    await this.verify();
  }

  async verify(): Promise<void> {
    const report = await this.fs.fsck();
    if (!report.ok) throw new Error(`fsck of ${this.name} found differences:\n  ${report.differences.join("\n  ")}`);
  }

  async snapshot(): Promise<Tree> {
    const fs = this.fs;
    const tree: Tree = new Map();
    const seen = new Map<number, string>();
    const visit = async (path: string, ino: Ino) => {
      const a = await fs.getattr(ROOT_CTX, ino);
      if (!seen.has(ino)) seen.set(ino, path);
      let data: Uint8Array | undefined;
      let target: string | undefined;
      if (a.kind === "file") {
        const fh = await fs.open(ROOT_CTX, ino, 0);
        try {
          data = await fs.read(ROOT_CTX, fh, 0, a.size);
          // one more byte must not exist
          const past = await fs.read(ROOT_CTX, fh, a.size, 1);
          if (past.length !== 0) throw new Error(`${path}: read past the end of a ${a.size}-byte file gave ${past.length} bytes`);
        } finally {
          await fs.release(ROOT_CTX, fh);
        }
      }
      if (a.kind === "symlink") target = await fs.readlink(ROOT_CTX, ino);
      const names = await fs.listxattr(ROOT_CTX, ino);
      const xattrs: [string, Uint8Array][] = [];
      for (const n of names) xattrs.push([n, await fs.getxattr(ROOT_CTX, ino, n)]);
      tree.set(path, {
        kind: a.kind,
        mode: a.mode & 0o7777,
        uid: a.uid,
        gid: a.gid,
        nlink: a.nlink,
        ...(a.kind === "dir" ? {} : { size: a.size }),
        ...(data ? { data } : {}),
        ...(target !== undefined ? { target } : {}),
        xattrs: sortedXattrs(xattrs),
        same: seen.get(ino)!,
      });
      if (a.kind === "dir") {
        const entries = await fs.readdir(ROOT_CTX, ino);
        const names = entries.map((e) => e.name);
        if (names[0] !== "." || names[1] !== "..") throw new Error(`${path}: readdir does not start with "." and "..": ${JSON.stringify(names.slice(0, 2))}`);
        if (new Set(names).size !== names.length) throw new Error(`${path}: readdir lists a name twice: ${JSON.stringify(names)}`);
        const offsets = entries.map((e) => e.offset);
        if (offsets.some((o, i) => i > 0 && o <= offsets[i - 1]!)) throw new Error(`${path}: readdir offsets do not increase: ${JSON.stringify(offsets)}`);
        for (const e of entries.slice(2).sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0))) {
          const looked = await fs.lookup(ROOT_CTX, ino, e.name);
          if (looked.ino !== e.ino || looked.kind !== e.kind) throw new Error(`${childPath(path, e.name)}: readdir says inode ${e.ino} (${e.kind}), lookup says ${looked.ino} (${looked.kind})`);
          await visit(childPath(path, e.name), e.ino);
        }
      }
    };
    await visit("/", ROOT_INO);
    return tree;
  }

  async close(): Promise<void> {
    this.handles = [];
    await this.fs.close();
  }
}

// ---- the runner ------------------------------------------------------------------------------

export interface RunOptions {
  /** Compare the whole trees after every step (else only at the end). @default true */
  readonly treesEveryStep?: boolean;
  /** Steps to leave out on every subject (an oracle that cannot express them). */
  readonly skip?: (op: Op) => boolean;
  /** Counts outcomes ("mkdir ok", "rename ENOTEMPTY") to show what the sequences reached. */
  readonly stats?: Map<string, number>;
}

/**
 * Run `ops` on every subject in turn, comparing each step's result and the
 * whole trees with the first subject's; throw on the first difference.
 * Returns the first subject's results (undefined for a skipped step) and its final tree.
 */
export async function runSequence(ops: readonly GenOp[], subjects: readonly Subject[], options: RunOptions = {}): Promise<{ results: (StepResult | undefined)[]; tree: Tree }> {
  const everyStep = options.treesEveryStep ?? true;
  const [ref, ...rest] = subjects;
  if (!ref) throw new Error("runSequence needs at least one subject");
  const done: string[] = [];
  let op: Op | undefined;
  const fail = (i: number, what: string): never => {
    throw new Error(`step ${i} ${JSON.stringify(op)}: ${what}\nsteps so far (concrete):\n  ${done.join("\n  ")}`);
  };
  let refTree = await ref.snapshot();
  const results: (StepResult | undefined)[] = [];
  for (let i = 0; i < ops.length; i++) {
    op = concretize(ops[i]!, refTree);
    if (options.skip?.(op)) {
      done.push(`${i}: skipped ${JSON.stringify(op)}`);
      results.push(undefined);
      continue;
    }
    const want = await ref.step(op);
    results.push(want);
    for (const s of rest) {
      const got = await s.step(op);
      if (!sameResult(want, got)) fail(i, `${ref.name} gave ${showResult(want)}, ${s.name} gave ${showResult(got)}`);
    }
    done.push(`${i}: ${JSON.stringify(op)} → ${showResult(want)}`);
    if (options.stats) {
      const k = `${op.op} ${"errno" in want ? want.errno : typeof want.value === "string" ? want.value : "ok"}`;
      options.stats.set(k, (options.stats.get(k) ?? 0) + 1);
    }
    refTree = await ref.snapshot();
    if (everyStep || op.op === "restart" || i === ops.length - 1) {
      for (const s of rest) {
        const diff = compareTrees(refTree, await s.snapshot(), [ref.name, s.name]);
        if (diff.length > 0) fail(i, `the trees differ after it:\n    ${diff.join("\n    ")}`);
      }
    }
  }
  for (const s of subjects) await s.verify?.();
  return { results, tree: refTree };
}
