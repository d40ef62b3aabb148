/**
 * Segments: an immutable, self-checking blob holding a contiguous seq range of
 * events, with their data inline. The replicator ships them to
 * `.objectfs/journal/<clientId>/<minSeq:016x>-<maxSeq:016x>.seg`.
 *
 * Layout, format version 2 (integers big-endian):
 *
 *   header   0  magic "OFSSEG\0\1"         8 bytes
 *            8  format version (2)         u16
 *           10  flags (0)                  u16
 *           12  event count                u32
 *           16  minSeq                     u64
 *           24  maxSeq                     u64
 *           32  previous segment checksum  u32   (0 for the first segment)
 *           36  header CRC-32              u32   (of bytes 0..35)
 *   events  per event: payload length u32, payload CRC-32 u32, payload (codec.ts; an
 *           ExtentWritten's bytes are not in it but in the data area)
 *   data     length u64, then the bytes of every ExtentWritten in event order, back to back,
 *            each checked by its event's CRC-32. A file written sequentially is one contiguous
 *            run here, so S3 can assemble the file's object from segment ranges server-side
 *            (UploadPartCopy) and its bytes cross the network once.
 *   trailer  magic "OFSEND\0\1"            8 bytes
 *            state checksum slot           32 bytes (supplied by the projections; zeros if none)
 *            segment checksum              u32   CRC-32 of every byte before it, seeded with
 *                                                the previous segment checksum (a chain)
 *
 * Version 3 (written by compaction, see src/replicator/compaction.ts) adds, right after the
 * header, 8 bytes: level u16, reserved u16, tail checksum u32. A compacted segment stands for
 * the run of level-0 segments it replaced: it may leave events out (retention dropped them),
 * so its seqs only increase within [minSeq, maxSeq]; an ExtentWritten marked `dataDropped`
 * has no bytes in the data area; its previous-checksum field is the level-0 chain's value
 * before minSeq, and the tail checksum the chain's value at maxSeq (the checksum of the last
 * level-0 segment it replaced), so a chain can mix levels. A level-0 segment's tail is its
 * own checksum.
 *
 * Version 1 had no data area (the bytes were inline in each event); it is still read.
 *
 * Any single flipped byte is detected: CRC-32 catches every burst of up to 32
 * bits, and the segment checksum covers every byte but itself.
 */
import { crc32 } from "node:zlib";
import { decodeEvent, encodeEvent } from "./codec.ts";
import { crc32Combine } from "./crc32_combine.ts";
import { JournalError, SegmentCorruptError } from "./errors.ts";
import { asSeq, type JournalEvent, type Seq } from "./events.ts";
import { readU64, writeU64 } from "./keys.ts";

const HEADER_MAGIC = Buffer.from("OFSSEG\x00\x01", "latin1");
const TRAILER_MAGIC = Buffer.from("OFSEND\x00\x01", "latin1");
const FORMAT_VERSION = 2;
const COMPACTED_VERSION = 3;
export const SEGMENT_HEADER_BYTES = 40;
const COMPACTED_EXTRA_BYTES = 8;
export const SEGMENT_TRAILER_BYTES = 8 + 32 + 4;
export const STATE_CHECKSUM_BYTES = 32;

export interface SealOptions {
  /** Checksum of the segment this one follows (0 for the first). */
  readonly prevChecksum: number;
  /** Up to 32 bytes that summarize the projected state after `maxSeq`. */
  readonly stateChecksum?: Uint8Array;
  /**
   * A compacted segment (format 3): its level (1 and up), the range it stands for (events may
   * be missing from it), and the level-0 chain's checksum at `maxSeq`.
   */
  readonly compacted?: { readonly level: number; readonly minSeq: number; readonly maxSeq: number; readonly tailChecksum: number };
}

export interface Segment {
  readonly minSeq: Seq;
  readonly maxSeq: Seq;
  readonly prevChecksum: number;
  readonly checksum: number;
  /** The level-0 chain's checksum at maxSeq: what the next segment's previous checksum must be. */
  readonly tailChecksum: number;
  /** 0 for segments as shipped, 1 and up for compacted ones. */
  readonly level: number;
  readonly stateChecksum: Uint8Array;
  readonly events: readonly JournalEvent[];
}

export interface SealedSegment {
  readonly bytes: Uint8Array;
  readonly minSeq: Seq;
  readonly maxSeq: Seq;
  readonly checksum: number;
  /** See {@link Segment.tailChecksum}. */
  readonly tailChecksum: number;
  /**
   * Where each ExtentWritten's bytes landed: runs of the local data log (file, pos, length)
   * that are contiguous both there and in the segment, at byte `at` of the segment.
   */
  readonly runs: readonly DataRun[];
}

/** Bytes [pos, pos+length) of data log file `file` are at byte `at` of the segment. */
export type DataRun = readonly [file: number, pos: number, length: number, at: number];

/** `<minSeq:016x>-<maxSeq:016x>.seg` */
export function segmentName(minSeq: number, maxSeq: number): string {
  return `${minSeq.toString(16).padStart(16, "0")}-${maxSeq.toString(16).padStart(16, "0")}.seg`;
}

/** Parse a segment name back into its range, or undefined if it is not one. */
export function parseSegmentName(name: string): { minSeq: Seq; maxSeq: Seq } | undefined {
  const m = /^([0-9a-f]{16})-([0-9a-f]{16})\.seg$/.exec(name);
  if (!m) return undefined;
  return { minSeq: asSeq(parseInt(m[1]!, 16)), maxSeq: asSeq(parseInt(m[2]!, 16)) };
}

/**
 * Seal contiguous events (ExtentWritten with `data` inline) into a segment.
 */
export function sealSegment(events: readonly JournalEvent[], options: SealOptions): SealedSegment {
  const compacted = options.compacted;
  if (events.length === 0 && !compacted) throw new JournalError("unsupported", "Cannot seal an empty segment");
  const payloads: Uint8Array[] = [];
  const datas: { data: Uint8Array; ref?: { file: number; pos: number } }[] = [];
  let eventBytes = 0;
  let dataBytes = 0;
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (i > 0 && (compacted ? e.seq <= events[i - 1]!.seq : e.seq !== events[i - 1]!.seq + 1)) {
      throw new JournalError("discontinuous", `Cannot seal a segment with a gap: seq ${events[i - 1]!.seq} is followed by ${e.seq}`);
    }
    if (compacted && (e.seq < compacted.minSeq || e.seq > compacted.maxSeq)) {
      throw new JournalError("unsupported", `Cannot seal event ${e.seq} into a compacted segment for seqs ${compacted.minSeq}-${compacted.maxSeq}`);
    }
    let stored: JournalEvent = e;
    if (e.type === "ExtentWritten" && e.dataDropped) {
      if (!compacted) throw new JournalError("unsupported", `Cannot seal event ${e.seq}: its data was dropped, and only compacted segments hold such events`);
      const { ref: _ref, data: _data, ...rest } = e;
      stored = rest as JournalEvent;
    } else if (e.type === "ExtentWritten") {
      if (!e.data) throw new JournalError("unsupported", `Cannot seal event ${e.seq}: its data is not inline (read it with data: true)`);
      const { ref, data, ...rest } = e;
      stored = rest as JournalEvent;
      datas.push({ data, ...(ref ? { ref } : {}) });
      dataBytes += data.length;
    }
    const p = encodeEvent(stored);
    payloads.push(p);
    eventBytes += 8 + p.length;
  }
  const minSeq = (compacted?.minSeq ?? events[0]!.seq) as Seq;
  const maxSeq = (compacted?.maxSeq ?? events[events.length - 1]!.seq) as Seq;
  const extra = compacted ? COMPACTED_EXTRA_BYTES : 0;
  const out = Buffer.allocUnsafe(SEGMENT_HEADER_BYTES + extra + eventBytes + 8 + dataBytes + SEGMENT_TRAILER_BYTES);
  HEADER_MAGIC.copy(out, 0);
  out.writeUInt16BE(compacted ? COMPACTED_VERSION : FORMAT_VERSION, 8);
  out.writeUInt16BE(0, 10);
  out.writeUInt32BE(events.length, 12);
  writeU64(out, 16, minSeq);
  writeU64(out, 24, maxSeq);
  out.writeUInt32BE(options.prevChecksum >>> 0, 32);
  out.writeUInt32BE(crc32(out.subarray(0, 36)), 36);
  let at = SEGMENT_HEADER_BYTES;
  if (compacted) {
    if (!(compacted.level >= 1 && compacted.level < 0x10000)) throw new JournalError("unsupported", `Cannot seal a compacted segment of level ${compacted.level}`);
    out.writeUInt16BE(compacted.level, at);
    out.writeUInt16BE(0, at + 2);
    out.writeUInt32BE(compacted.tailChecksum >>> 0, at + 4);
    at += COMPACTED_EXTRA_BYTES;
  }
  for (const p of payloads) {
    out.writeUInt32BE(p.length, at);
    out.writeUInt32BE(crc32(p), at + 4);
    out.set(p, at + 8);
    at += 8 + p.length;
  }
  writeU64(out, at, dataBytes);
  at += 8;
  const runs: [number, number, number, number][] = [];
  for (const { data, ref } of datas) {
    out.set(data, at);
    const last = runs[runs.length - 1];
    if (ref && last && last[0] === ref.file && last[1] + last[2] === ref.pos && last[3] + last[2] === at) last[2] += data.length;
    else if (ref && data.length > 0) runs.push([ref.file, ref.pos, data.length, at]);
    at += data.length;
  }
  TRAILER_MAGIC.copy(out, at);
  at += 8;
  out.fill(0, at, at + STATE_CHECKSUM_BYTES);
  if (options.stateChecksum) {
    if (options.stateChecksum.length > STATE_CHECKSUM_BYTES) throw new JournalError("unsupported", `A state checksum holds at most ${STATE_CHECKSUM_BYTES} bytes`);
    out.set(options.stateChecksum, at);
  }
  at += STATE_CHECKSUM_BYTES;
  const checksum = crc32(out.subarray(0, at), options.prevChecksum >>> 0);
  out.writeUInt32BE(checksum, at);
  return { bytes: out, minSeq, maxSeq, checksum, tailChecksum: compacted ? compacted.tailChecksum >>> 0 : checksum, runs };
}

export interface DecodeOptions {
  /** Name used in error messages. @default "(unnamed)" */
  readonly name?: string;
  /** The segment this one must follow: its maxSeq and its tail (level-0 chain) checksum. */
  readonly after?: { readonly maxSeq: number; readonly checksum: number };
  /** Work done on these bytes while they arrived, which decoding reuses (see {@link SegmentIntake}). */
  readonly intake?: SegmentIntake;
}

/**
 * Work on a segment's bytes done while they arrive, each piece while it is still in the
 * processor's cache: the CRCs of its events' payloads and data and of everything before its
 * data area, and its decoded events. {@link decodeSegment} then takes these instead of
 * reading the bytes again. They are pure functions of byte ranges, kept by where the range
 * is, and only a range it asks for exactly is taken: whatever the intake guessed about a
 * damaged segment, the checks and their verdicts are decodeSegment's own.
 */
export class SegmentIntake {
  private readonly crcs = new Map<number, readonly [end: number, crc: number]>();
  private readonly events = new Map<number, readonly [end: number, event: JournalEvent]>();
  private prefixSum: readonly [end: number, seed: number, crc: number] | undefined;
  private next = SEGMENT_HEADER_BYTES;
  private left = -1;
  private dataAt = -1;
  /** Lengths of the data of the events read so far that have bytes in the data area. */
  private readonly lengths: number[] = [];
  private running: { start: number; end: number; upTo: number; crc: number } | undefined;
  private lengthIndex = 0;
  private stopped = false;
  private end = 0;
  /** Where each event record read so far starts, in order. */
  private readonly records: number[] = [];
  /** For each of those with bytes in the data area, where its bytes start (worked out by {@link early} once the data area begins). */
  private dataStarts: Map<number, number> | undefined;
  /** Events handed out by {@link early}; -1: none can be (a header check failed, or version 1). */
  private given = 0;
  /** The seq of the last event handed out early (minSeq - 1 before the first); -1: the header is not checked yet. */
  private givenSeq = -1;

  /** `bytes` is the buffer the segment is being read into. */
  constructor(private readonly bytes: Uint8Array) {}

  /** Whether this intake's work is about `bytes` (the same buffer, from the same byte). */
  for(bytes: Uint8Array): boolean {
    return bytes.buffer === this.bytes.buffer && bytes.byteOffset === this.bytes.byteOffset && bytes.byteLength <= this.bytes.byteLength;
  }

  /** Bytes [0, end) of the buffer are in place. */
  advance(end: number): void {
    if (this.stopped || end <= this.end) return;
    this.end = end;
    try {
      this.work();
    } catch {
      this.stopped = true; // damaged or not understood: decodeSegment finds out what
    }
  }

  private work(): void {
    const b = this.bytes;
    const end = this.end;
    if (this.left < 0) {
      if (end < SEGMENT_HEADER_BYTES + COMPACTED_EXTRA_BYTES) return;
      const version = (b[8]! << 8) | b[9]!;
      this.left = ((b[12]! << 24) | (b[13]! << 16) | (b[14]! << 8) | b[15]!) >>> 0;
      if (version === COMPACTED_VERSION) this.next += COMPACTED_EXTRA_BYTES;
      if (version < 2) this.stopped = true; // no data area: nothing worth doing early
    }
    while (this.left > 0 && this.next + 8 <= end) {
      const at = this.next;
      const len = ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
      if (at + 8 + len > end) return;
      this.crcs.set(at + 8, [at + 8 + len, crc32(b.subarray(at + 8, at + 8 + len))]);
      const e = decodeEvent(b.subarray(at + 8, at + 8 + len));
      this.events.set(at + 8, [at + 8 + len, e]);
      this.records.push(at);
      if (e.type === "ExtentWritten" && !e.dataDropped) this.lengths.push(e.length);
      this.next = at + 8 + len;
      this.left--;
    }
    if (this.left > 0) return;
    if (this.dataAt < 0) {
      if (this.next + 8 > end) return;
      this.dataAt = this.next + 8;
      const seed = ((b[32]! << 24) | (b[33]! << 16) | (b[34]! << 8) | b[35]!) >>> 0;
      this.prefixSum = [this.dataAt, seed, crc32(b.subarray(0, this.dataAt), seed)];
      this.next = this.dataAt;
    }
    // The data area: each event's bytes as far as they are here.
    for (;;) {
      if (!this.running) {
        if (this.lengthIndex >= this.lengths.length) return;
        const start = this.next;
        this.running = { start, end: start + this.lengths[this.lengthIndex++]!, upTo: start, crc: 0 };
      }
      const r = this.running;
      const to = Math.min(end, r.end);
      if (to > r.upTo) {
        r.crc = crc32(b.subarray(r.upTo, to), r.crc);
        r.upTo = to;
      }
      if (r.upTo < r.end) return;
      this.crcs.set(r.start, [r.end, r.crc]);
      this.next = r.end;
      this.running = undefined;
    }
  }

  /**
   * The next events that can be handed out before the whole segment is here, in order, data
   * as views into the buffer: each checked on its own as {@link decodeSegment} checks it (the
   * header's magic, CRC, version and range, continuity with `after`, the event's CRC and seq,
   * the framing of the data area and the CRC of the event's data). What only the whole segment
   * can show (its trailer and checksum) is left to decodeSegment, which must still be run on
   * it: a reader that takes events early must be able to undo what it did with them if that
   * fails. Once a check fails here, nothing more is handed out early (decodeSegment names the
   * damage).
   */
  early(after: { readonly maxSeq: number; readonly checksum: number }): JournalEvent[] {
    if (this.given < 0 || this.end < SEGMENT_HEADER_BYTES + COMPACTED_EXTRA_BYTES) return [];
    const b = this.bytes;
    const u32 = (at: number) => ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
    const version = (b[8]! << 8) | b[9]!;
    const count = u32(12);
    const minSeq = readU64(b, 16);
    const maxSeq = readU64(b, 24);
    if (this.givenSeq < 0) {
      const ok =
        HEADER_MAGIC.equals(b.subarray(0, 8)) &&
        u32(36) === crc32(b.subarray(0, 36)) >>> 0 &&
        (version === FORMAT_VERSION || version === COMPACTED_VERSION) &&
        maxSeq >= minSeq &&
        (version === COMPACTED_VERSION ? count <= maxSeq - minSeq + 1 : maxSeq - minSeq + 1 === count) &&
        minSeq === after.maxSeq + 1 &&
        u32(32) === after.checksum >>> 0;
      if (!ok) {
        this.given = -1;
        return [];
      }
      this.givenSeq = minSeq - 1;
    }
    const out: JournalEvent[] = [];
    const trailerAt = b.length - SEGMENT_TRAILER_BYTES;
    while (this.given < count && this.given < this.records.length) {
      const k = this.given;
      const at = this.records[k]!;
      const len = u32(at);
      const crc = this.crc(at + 8, at + 8 + len);
      const e = this.events.get(at + 8)?.[1];
      if (crc === undefined || e === undefined) break;
      const seqOk = version === COMPACTED_VERSION ? e.seq > this.givenSeq && e.seq <= maxSeq : e.seq === minSeq + k;
      if (crc !== u32(at + 4) || !seqOk) {
        this.given = -1;
        return out;
      }
      let event = e;
      if (e.type === "ExtentWritten" && !e.dataDropped) {
        if (this.dataAt < 0) break; // the data area has not begun
        if (this.dataAt + readU64(b, this.dataAt - 8) !== trailerAt) {
          this.given = -1;
          return out;
        }
        const start = this.dataStart(k);
        // (Runs of no bytes share their start with the next run: their CRC is that of nothing.)
        const dataCrc = e.length === 0 ? 0 : this.crc(start, start + e.length);
        if (dataCrc === undefined) break;
        if (dataCrc !== e.crc || start + e.length > trailerAt) {
          this.given = -1;
          return out;
        }
        event = { ...e, data: b.subarray(start, start + e.length) };
      }
      out.push(event);
      this.givenSeq = e.seq;
      this.given++;
    }
    return out;
  }

  /** Where the bytes of event record `k` start in the data area (which has begun: every record is read). */
  private dataStart(k: number): number {
    if (!this.dataStarts) {
      this.dataStarts = new Map();
      let start = this.dataAt;
      for (let r = 0, d = 0; r < this.records.length; r++) {
        const e = this.events.get(this.records[r]! + 8)?.[1];
        if (e?.type === "ExtentWritten" && !e.dataDropped) {
          this.dataStarts.set(r, start);
          start += this.lengths[d++]!;
        }
      }
    }
    return this.dataStarts.get(k)!;
  }

  /** The CRC-32 of bytes [start, end), if worked out already. */
  crc(start: number, end: number): number | undefined {
    const c = this.crcs.get(start);
    return c && c[0] === end ? c[1] : undefined;
  }

  /** The event whose payload is bytes [start, end), if decoded already (each is handed out once). */
  event(start: number, end: number): JournalEvent | undefined {
    const e = this.events.get(start);
    if (!e || e[0] !== end) return undefined;
    this.events.delete(start);
    return e[1];
  }

  /** The CRC-32 of bytes [0, end) seeded with `seed`, if worked out already. */
  prefix(end: number, seed: number): number | undefined {
    const p = this.prefixSum;
    return p && p[0] === end && p[1] === seed >>> 0 ? p[2] : undefined;
  }
}

/**
 * Verify and decode a segment; throws {@link SegmentCorruptError} or a `discontinuous` JournalError.
 *
 * Every byte is read once: the segment checksum is put together from the CRCs that the checks
 * of the events and their data compute anyway ({@link crc32Combine}). Only a segment that fails
 * some check is read again the plain way, checksum first, so that the error names the first
 * thing wrong in the order the checks have always been made (a damaged segment is reported as
 * such, not as whatever the damage made its contents look like).
 */
export function decodeSegment(bytes: Uint8Array, options: DecodeOptions = {}): Segment {
  try {
    return decode(bytes, options, false);
  } catch {
    return decode(bytes, options, true);
  }
}

function decode(bytes: Uint8Array, options: DecodeOptions, checksumFirst: boolean): Segment {
  const name = options.name ?? "(unnamed)";
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const corrupt = (offset: number, detail: string) => new SegmentCorruptError(name, offset, detail);
  // The work of an intake is for these very bytes only, and never for the checksum-first reading.
  const intake = checksumFirst || !options.intake?.for(bytes) ? undefined : options.intake;
  if (b.length < SEGMENT_HEADER_BYTES + SEGMENT_TRAILER_BYTES) throw corrupt(0, `${b.length} bytes is shorter than an empty segment`);
  if (!b.subarray(0, 8).equals(HEADER_MAGIC)) throw corrupt(0, "header magic is wrong (not an objectfs segment)");
  const headerCrc = crc32(b.subarray(0, 36));
  if (b.readUInt32BE(36) !== headerCrc) throw corrupt(36, `header CRC expected ${b.readUInt32BE(36)}, computed ${headerCrc}`);
  const version = b.readUInt16BE(8);
  if (version < 1 || version > COMPACTED_VERSION) throw corrupt(8, `format version ${version} is not supported (this build reads 1 to ${COMPACTED_VERSION})`);
  const compacted = version === COMPACTED_VERSION;
  const count = b.readUInt32BE(12);
  const minSeq = readU64(b, 16);
  const maxSeq = readU64(b, 24);
  const prevChecksum = b.readUInt32BE(32);
  if (maxSeq < minSeq || (compacted ? count > maxSeq - minSeq + 1 : maxSeq - minSeq + 1 !== count)) throw corrupt(12, `range ${minSeq}-${maxSeq} does not hold ${count} events`);
  const sumAt = b.length - 4;
  const follows = () => {
    if (!options.after) return;
    if (minSeq !== options.after.maxSeq + 1) {
      throw new JournalError("discontinuous", `Segment ${name} starts at seq ${minSeq} but the previous segment ended at seq ${options.after.maxSeq}`);
    }
    if (prevChecksum !== options.after.checksum >>> 0) {
      throw new JournalError("discontinuous", `Segment ${name} follows checksum ${prevChecksum} but the previous segment's checksum is ${options.after.checksum >>> 0}`);
    }
  };
  if (checksumFirst) {
    const checksum = crc32(b.subarray(0, sumAt), prevChecksum);
    if (b.readUInt32BE(sumAt) !== checksum) throw corrupt(sumAt, `segment checksum expected ${b.readUInt32BE(sumAt)}, computed ${checksum}`);
    follows();
  }
  const trailerAt = b.length - SEGMENT_TRAILER_BYTES;
  if (!b.subarray(trailerAt, trailerAt + 8).equals(TRAILER_MAGIC)) throw corrupt(trailerAt, "trailer magic is wrong");
  const events: JournalEvent[] = [];
  let at = SEGMENT_HEADER_BYTES;
  let level = 0;
  let tailChecksum = -1;
  if (compacted) {
    if (at + COMPACTED_EXTRA_BYTES > trailerAt) throw corrupt(at, "the compaction fields run past the trailer");
    level = b.readUInt16BE(at);
    tailChecksum = b.readUInt32BE(at + 4);
    if (level < 1) throw corrupt(at, `a compacted segment has level ${level}`);
    at += COMPACTED_EXTRA_BYTES;
  }
  for (let i = 0; i < count; i++) {
    if (at + 8 > trailerAt) throw corrupt(at, `event #${i} header runs past the trailer`);
    const len = b.readUInt32BE(at);
    const crc = b.readUInt32BE(at + 4);
    if (at + 8 + len > trailerAt) throw corrupt(at, `event #${i} of ${len} bytes runs past the trailer`);
    const payload = b.subarray(at + 8, at + 8 + len);
    const actual = intake?.crc(at + 8, at + 8 + len) ?? crc32(payload);
    if (actual !== crc) throw corrupt(at + 4, `event #${i} CRC expected ${crc}, computed ${actual}`);
    let event: JournalEvent;
    try {
      event = intake?.event(at + 8, at + 8 + len) ?? decodeEvent(payload);
    } catch (cause) {
      throw corrupt(at + 8, `event #${i} does not decode: ${(cause as Error).message}`);
    }
    if (compacted) {
      const after = i === 0 ? minSeq - 1 : events[i - 1]!.seq;
      if (!(event.seq > after && event.seq <= maxSeq)) throw corrupt(at + 8, `event #${i} has seq ${event.seq}, expected one after ${after} and at most ${maxSeq}`);
    } else if (event.seq !== minSeq + i) throw corrupt(at + 8, `event #${i} has seq ${event.seq}, expected ${minSeq + i}`);
    events.push(event);
    at += 8 + len;
  }
  // The checksum of everything before the data area (header and events: small beside the data).
  let sum = 0;
  if (version >= 2) {
    if (at + 8 > trailerAt) throw corrupt(at, "the data area's length runs past the trailer");
    const dataBytes = readU64(b, at);
    at += 8;
    if (at + dataBytes !== trailerAt) throw corrupt(at - 8, `data area of ${dataBytes} bytes does not end at the trailer (${trailerAt - at} bytes are there)`);
    if (!checksumFirst) sum = intake?.prefix(at, prevChecksum) ?? crc32(b.subarray(0, at), prevChecksum);
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!;
      if (e.type !== "ExtentWritten" || e.dataDropped) continue;
      if (at + e.length > trailerAt) throw corrupt(at, `the data of event ${e.seq} runs past the data area`);
      // A view, not a copy: the events hold on to the segment's buffer while they live.
      const data = b.subarray(at, at + e.length);
      const crc = intake?.crc(at, at + e.length) ?? crc32(data);
      if (crc !== e.crc) throw corrupt(at, `the data of event ${e.seq} has CRC ${crc}, its event says ${e.crc}`);
      if (!checksumFirst) sum = crc32Combine(sum, crc, e.length);
      events[i] = { ...e, data };
      at += e.length;
    }
  } else if (!checksumFirst) sum = crc32(b.subarray(0, at), prevChecksum);
  if (at !== trailerAt) throw corrupt(at, `${trailerAt - at} unexpected bytes before the trailer`);
  let checksum = b.readUInt32BE(sumAt);
  if (!checksumFirst) {
    // Every byte before the checksum is covered: header, events, data area, trailer.
    sum = crc32(b.subarray(trailerAt, sumAt), sum);
    if (sum !== checksum) throw corrupt(sumAt, `segment checksum expected ${checksum}, computed ${sum}`);
    follows();
  }
  checksum >>>= 0;
  if (!compacted) tailChecksum = checksum;
  const stateChecksum = new Uint8Array(b.subarray(trailerAt + 8, trailerAt + 8 + STATE_CHECKSUM_BYTES));
  return { minSeq: asSeq(minSeq), maxSeq: asSeq(maxSeq), prevChecksum, checksum, tailChecksum, level, stateChecksum, events };
}
