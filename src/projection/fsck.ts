/**
 * fsck: rebuild every projection from the journal alone and compare it with
 * the persisted rows, naming each difference.
 */
import { readU64 } from "../../journal/keys.ts";
import { unpackValue } from "../../journal/codec.ts";
import type { Journal } from "../../journal/mod.ts";
import { evolve } from "./evolve.ts";
import { auditSeqs, SUBLEVELS, TreeState, type Backing } from "./state.ts";

export interface FsckReport {
  /** True when the persisted rows equal the journal's replay. */
  readonly ok: boolean;
  /** Events replayed. */
  readonly events: number;
  /** One sentence per difference. */
  readonly differences: readonly string[];
}

const NAMES: Record<string, string> = {
  [SUBLEVELS.inodes]: "inode",
  [SUBLEVELS.dirents]: "dirent",
  [SUBLEVELS.cookies]: "readdir entry",
  [SUBLEVELS.extents]: "extent",
  [SUBLEVELS.orphans]: "orphan",
  [SUBLEVELS.remote]: "remote index entry",
  [SUBLEVELS.segmentData]: "segment data run",
  [SUBLEVELS.audit]: "audit index entry",
  [SUBLEVELS.meta]: "projection meta",
};

export async function fsck(journal: Journal, backing: Backing, options: { maxDifferences?: number; start?: ReplayStart } = {}): Promise<FsckReport> {
  const max = options.maxDifferences ?? 100;
  const differences: string[] = [];
  const first = await journal.firstSeq();
  if (first > 1 && !options.start) {
    return {
      ok: false,
      events: 0,
      differences: [`The local journal starts at seq ${first} (older events were removed by retention) and no checkpoint stands for them, so the projections cannot be rebuilt from it`],
    };
  }
  const { memory, events } = await replay(journal, options.start);
  const expected = memory.rows();
  for (const [sub, level] of Object.entries(bySublevelName(backing))) {
    if (sub === SUBLEVELS.audit) {
      await compareAudit(level, memory.auditEntries(), differences, max);
      if (differences.length >= max) break;
      continue;
    }
    const want = new Map(expected.get(sub)!);
    for await (const [k, v] of level.iterator()) {
      const hex = (k as Buffer).toString("hex");
      const w = want.get(hex);
      want.delete(hex);
      if (!w) {
        differences.push(`${describe(sub, k as Buffer)} is persisted but the journal does not produce it: ${show(v as Buffer)}`);
      } else if (canonical(w) !== canonical(v as Buffer)) {
        differences.push(`${describe(sub, k as Buffer)} differs: persisted ${show(v as Buffer)}, the journal gives ${show(w)}`);
      }
      if (differences.length >= max) break;
    }
    for (const [hex, w] of want) {
      if (differences.length >= max) break;
      differences.push(`${describe(sub, Buffer.from(hex, "hex"))} is missing from the persisted rows; the journal gives ${show(w)}`);
    }
  }
  return { ok: differences.length === 0, events, differences };
}

/**
 * The audit index as a set of (inode, seq) entries: how they are grouped into rows
 * depends on how events were committed, so rows are compared by what they hold.
 */
async function compareAudit(level: Backing["audit"], want: Set<string>, differences: string[], max: number): Promise<void> {
  const what = NAMES[SUBLEVELS.audit];
  for await (const [k, v] of level.iterator()) {
    const ino = readU64(k as Buffer);
    let seqs: number[];
    try {
      seqs = auditSeqs(k as Buffer, v as Buffer);
    } catch {
      differences.push(`${what} of inode ${ino} at seq ${readU64(k as Buffer, 8)} cannot be read: ${show(v as Buffer)}`);
      continue;
    }
    for (const seq of seqs) {
      if (!want.delete(`${ino}:${seq}`)) differences.push(`${what} of inode ${ino} for seq ${seq} is persisted but the journal does not produce it`);
      if (differences.length >= max) return;
    }
  }
  for (const entry of want) {
    if (differences.length >= max) return;
    const [ino, seq] = entry.split(":");
    differences.push(`${what} of inode ${ino} for seq ${seq} is missing from the persisted rows`);
  }
}

/** Where a replay starts: a state (a checkpoint's) and the first seq to evolve on it. */
export interface ReplayStart {
  readonly initial: TreeState;
  readonly fromSeq: number;
}

/** fold(evolve, events) over the whole journal (or from a start), in memory. */
async function replay(journal: Journal, start?: ReplayStart): Promise<{ memory: TreeState; events: number }> {
  const memory = start?.initial ?? TreeState.memory();
  let events = 0;
  for await (const e of journal.read(start ? { gte: start.fromSeq } : {})) {
    evolve(memory, e);
    events++;
  }
  return { memory, events };
}

function bySublevelName(b: Backing): Record<string, Backing[keyof Backing]> {
  return {
    [SUBLEVELS.inodes]: b.inodes,
    [SUBLEVELS.dirents]: b.dirents,
    [SUBLEVELS.cookies]: b.cookies,
    [SUBLEVELS.extents]: b.extents,
    [SUBLEVELS.orphans]: b.orphans,
    [SUBLEVELS.remote]: b.remote,
    [SUBLEVELS.segmentData]: b.segmentData,
    [SUBLEVELS.audit]: b.audit,
    [SUBLEVELS.meta]: b.meta,
  };
}

function describe(sub: string, k: Buffer): string {
  const what = NAMES[sub] ?? sub;
  switch (sub) {
    case SUBLEVELS.inodes:
    case SUBLEVELS.orphans:
      return `${what} ${readU64(k)}`;
    case SUBLEVELS.dirents:
      return `${what} ${readU64(k)}/${JSON.stringify(k.subarray(8).toString("utf8"))}`;
    case SUBLEVELS.cookies:
      return `${what} ${readU64(k)}#${readU64(k, 8)}`;
    case SUBLEVELS.extents:
      return `${what} of inode ${readU64(k)} at byte ${readU64(k, 8)}`;
    case SUBLEVELS.segmentData:
      return `${what} of data file ${readU64(k)} at byte ${readU64(k, 8)}`;
    case SUBLEVELS.audit:
      return `${what} of inode ${readU64(k)} for seq ${readU64(k, 8)}`;
    default:
      return `${what} ${k.toString("utf8")}`;
  }
}

function decode(v: Uint8Array): unknown {
  try {
    return v.length === 0 ? null : unpackValue(v);
  } catch {
    return Buffer.from(v).toString("hex");
  }
}

/** A stable string for comparing decoded rows: keys sorted, undefined dropped, bytes as hex. */
function canonical(v: Uint8Array): string {
  return stable(decode(v));
}

function stable(x: unknown): string {
  if (x instanceof Uint8Array) return `0x${Buffer.from(x).toString("hex")}`;
  if (Array.isArray(x)) return `[${x.map(stable).join(",")}]`;
  if (x && typeof x === "object") {
    return `{${Object.keys(x)
      .filter((k) => (x as Record<string, unknown>)[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stable((x as Record<string, unknown>)[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(x) ?? "null";
}

const show = (v: Uint8Array) => {
  const s = stable(decode(v));
  return s.length > 200 ? `${s.slice(0, 200)}…` : s;
};

/**
 * Replace every projection row with what the journal alone produces. Used
 * after the journal was cut back on open (an unclean stop lost unsynced
 * data), and by `fsck --repair`.
 */
export async function rebuild(journal: Journal, backing: Backing, start?: ReplayStart): Promise<{ events: number }> {
  const { memory, events } = await replay(journal, start);
  const rows = memory.rows();
  for (const [sub, level] of Object.entries(bySublevelName(backing))) {
    await level.clear();
    let ops: { type: "put"; key: Buffer; value: Buffer }[] = [];
    for (const [hex, value] of rows.get(sub)!) {
      ops.push({ type: "put", key: Buffer.from(hex, "hex"), value });
      if (ops.length >= 10_000) {
        await level.batch(ops);
        ops = [];
      }
    }
    if (ops.length > 0) await level.batch(ops);
  }
  await journal.sync();
  return { events };
}
