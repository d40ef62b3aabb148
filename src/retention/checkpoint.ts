/**
 * Checkpoints: the whole projected state at one seq, so that a journal whose oldest events
 * were removed by retention can still be replayed. A checkpoint at seq M, with data kept from
 * seq B (M ≤ B), stands for every event up to M: a past state at any point P ≥ B is
 * `fold(evolve, checkpoint ++ events (M, P])`.
 *
 * The state is exactly the projection at M, so its extents point into the data log of the
 * client that wrote the journal; `dataMap` says which event's bytes each of those positions
 * are ([seq, file, pos, length] of every ExtentWritten a checkpoint extent points into), so a
 * replay elsewhere finds them in that event's copy (a segment's data area). Those events
 * ("carriers") are kept by retention, bytes included, while some point still retained needs
 * their bytes; every other event up to M is removed, and the bytes of every other event up to
 * B are dropped (the event stays, for the audit log).
 *
 * Layout (integers big-endian):
 *   0  magic "OFSCKPT\1"   8 bytes
 *   8  format version (1)  u16
 *  10  flags (0)           u16
 *  12  reserved            u32
 *  16  seq M               u64
 *  24  data-from seq B     u64
 *  32  time of seq B (ms)  u64
 *  40  body length         u64
 *  48  body                msgpack {dump: StateDump, dataMap: [seq, file, pos, length][], carriers: number[]
 *                          (sorted), time: time of M}
 *  ..  CRC-32 of every byte before it   u32
 *
 * Stored as `<M:016x>-<B:016x>.ckpt` in the data directory's `checkpoints/` and, for S3 mounts,
 * under `PREFIX/.objectfs/checkpoints/<clientId>/`.
 */
import { crc32 } from "node:zlib";
import { JournalError } from "../../journal/mod.ts";
import { packValue, unpackValue } from "../../journal/codec.ts";
import { readU64, writeU64 } from "../../journal/keys.ts";
import type { TreeState, StateDump } from "../projection/state.ts";

const MAGIC = Buffer.from("OFSCKPT\x01", "latin1");
const VERSION = 1;
const HEADER = 48;

export interface Checkpoint {
  /** Every event up to this seq is in the checkpoint. */
  readonly seq: number;
  /** Time of the event at `seq` (ms), 0 for an empty journal. */
  readonly time: number;
  /** Points from this seq on keep their bytes: the oldest point that can be restored. */
  readonly dataFrom: number;
  /** Time of the event at `dataFrom`. */
  readonly dataFromTime: number;
  readonly dump: StateDump;
  /** Every ExtentWritten whose bytes the dump's extents point into: [seq, file, pos, length], by position. */
  readonly dataMap: readonly (readonly [number, number, number, number])[];
  /** Seqs of the events whose bytes the state at `dataFrom` still shows (sorted). */
  readonly carriers: readonly number[];
}

export const checkpointName = (seq: number, dataFrom: number) => `${seq.toString(16).padStart(16, "0")}-${dataFrom.toString(16).padStart(16, "0")}.ckpt`;

export function parseCheckpointName(name: string): { seq: number; dataFrom: number } | undefined {
  const m = /^([0-9a-f]{16})-([0-9a-f]{16})\.ckpt$/.exec(name);
  return m ? { seq: parseInt(m[1]!, 16), dataFrom: parseInt(m[2]!, 16) } : undefined;
}

export function encodeCheckpoint(c: Checkpoint): Uint8Array {
  const body = packValue({ dump: c.dump, dataMap: c.dataMap, carriers: c.carriers, time: c.time });
  const out = Buffer.allocUnsafe(HEADER + body.length + 4);
  MAGIC.copy(out, 0);
  out.writeUInt16BE(VERSION, 8);
  out.writeUInt16BE(0, 10);
  out.writeUInt32BE(0, 12);
  writeU64(out, 16, c.seq);
  writeU64(out, 24, c.dataFrom);
  writeU64(out, 32, c.dataFromTime);
  writeU64(out, 40, body.length);
  out.set(body, HEADER);
  out.writeUInt32BE(crc32(out.subarray(0, HEADER + body.length)), HEADER + body.length);
  return out;
}

/** Verify and decode a checkpoint; `name` is for messages. */
export function decodeCheckpoint(bytes: Uint8Array, name: string): Checkpoint {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const corrupt = (detail: string) => new JournalError("corrupt", `Checkpoint ${name} is corrupt: ${detail}`);
  if (b.length < HEADER + 4) throw corrupt(`${b.length} bytes is shorter than its header`);
  if (!b.subarray(0, 8).equals(MAGIC)) throw corrupt("the magic is wrong (not an objectfs checkpoint)");
  const version = b.readUInt16BE(8);
  if (version !== VERSION) throw corrupt(`format version ${version} is not supported (this build reads ${VERSION})`);
  const length = readU64(b, 40);
  if (HEADER + length + 4 !== b.length) throw corrupt(`the body of ${length} bytes does not fit its ${b.length} bytes`);
  const crc = crc32(b.subarray(0, HEADER + length));
  if (b.readUInt32BE(HEADER + length) !== crc) throw corrupt(`CRC expected ${b.readUInt32BE(HEADER + length)}, computed ${crc}`);
  const body = unpackValue<{ dump: StateDump; dataMap: [number, number, number, number][]; carriers: number[]; time: number }>(b.subarray(HEADER, HEADER + length));
  return { seq: readU64(b, 16), dataFrom: readU64(b, 24), dataFromTime: readU64(b, 32), time: body.time, dump: body.dump, dataMap: body.dataMap, carriers: body.carriers };
}

/**
 * Where the bytes of ExtentWritten events are in their client's data log, by position (events
 * reserve data log space in seq order, so positions grow with seqs and are never reused).
 */
export class DataIndex {
  private readonly rows: number[] = []; // seq, file, pos, length, …

  /** Add an event's bytes; positions must come in increasing order. */
  add(seq: number, file: number, pos: number, length: number): void {
    if (length <= 0 || file < 0) return;
    this.rows.push(seq, file, pos, length);
  }

  get size(): number {
    return this.rows.length / 4;
  }

  /** The events whose bytes overlap [pos, pos+length) of `file`, as [seq, file, pos, length]. */
  overlapping(file: number, pos: number, length: number): [number, number, number, number][] {
    const r = this.rows;
    const n = r.length / 4;
    // Last row starting at or before (file, pos).
    let lo = 0;
    let hi = n - 1;
    let start = 0;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const f = r[mid * 4 + 1]!;
      const p = r[mid * 4 + 2]!;
      if (f < file || (f === file && p <= pos)) {
        start = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    const out: [number, number, number, number][] = [];
    for (let i = start; i < n; i++) {
      const f = r[i * 4 + 1]!;
      const p = r[i * 4 + 2]!;
      const l = r[i * 4 + 3]!;
      if (f > file || (f === file && p >= pos + length)) break;
      if (f === file && p + l > pos) out.push([r[i * 4]!, f, p, l]);
    }
    return out;
  }
}

/** Seqs of the events whose bytes the extents of a state point into (sorted). */
export function carriersOf(state: TreeState, index: DataIndex): number[] {
  const set = new Set<number>();
  for (const [, e] of state.allExtents()) for (const [seq] of index.overlapping(e.file, e.pos, e.length)) set.add(seq);
  return [...set].sort((a, b) => a - b);
}

/** [seq, file, pos, length] of every event the state's extents point into, by position. */
export function dataMapOf(state: TreeState, index: DataIndex): [number, number, number, number][] {
  const seen = new Map<number, [number, number, number, number]>();
  for (const [, e] of state.allExtents()) for (const row of index.overlapping(e.file, e.pos, e.length)) seen.set(row[0], row);
  return [...seen.values()].sort((a, b) => a[1] - b[1] || a[2] - b[2]);
}

/** Binary search in a sorted list. */
export function hasSeq(sorted: readonly number[], seq: number): boolean {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const v = sorted[mid]!;
    if (v === seq) return true;
    if (v < seq) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}
