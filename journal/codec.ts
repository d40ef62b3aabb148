/**
 * Event codec: one schema-version byte, then MessagePack (msgpackr).
 *
 * Wire format, version 2 (current):
 *   [0x02][msgpack array: typeCode, seq, time, caller | nil, body map]
 * where typeCode is the index of the type in {@link TYPE_CODES} (append-only
 * list: never reorder), caller is [uid, gid, pid] or [uid, gid, pid, comm], and body holds the remaining
 * fields of the event.
 *
 * Version 1 (the first release) was the event object as one MessagePack map,
 * type as a string, caller as a map, and `Unmounted` without `clean`. Version 1
 * records are upcast on decode, so journals and segments written by it stay
 * readable.
 */
import { Packr } from "msgpackr";
import { JournalError } from "./errors.ts";
import type { EventType, JournalEvent } from "./events.ts";

export const SCHEMA_VERSION = 2;

/** Type codes of schema version 2. Append only. */
const TYPE_CODES: readonly EventType[] = [
  "InodeCreated",
  "DirentLinked",
  "DirentUnlinked",
  "Renamed",
  "AttrsChanged",
  "ExtentWritten",
  "Truncated",
  "XattrSet",
  "XattrRemoved",
  "InodeDropped",
  "ObjectDiscovered",
  "ObjectChanged",
  "ObjectDeleted",
  "SegmentSealed",
  "SegmentReplicated",
  "ObjectMaterialized",
  "ConflictDetected",
  "Mounted",
  "Unmounted",
  "RemoteListed",
  "Reconciled",
];
const CODE_OF = new Map<EventType, number>(TYPE_CODES.map((t, i) => [t, i]));

const PACKR_OPTIONS = { useRecords: false, moreTypes: false, mapsAsObjects: true, int64AsType: "number" } as const;
const packr = new Packr(PACKR_OPTIONS);
/**
 * Short records are decoded from one reused buffer they are copied into: a view per record
 * (and the DataView msgpackr makes for every new source) cost more than copying 60–90 bytes,
 * and a source that ends below 140 bytes has its strings read in JavaScript (faster for strings
 * this short than msgpackr's native extractor). Binary values are copied out of it.
 */
const SCRATCH_LIMIT = 140;
const scratch = Buffer.alloc(SCRATCH_LIMIT);
const scratchPackr = new Packr({ ...PACKR_OPTIONS, copyBuffers: true });

/** Encode an event with the current schema version. */
export function encodeEvent(event: JournalEvent): Buffer {
  const packed = packBody(event);
  const out = Buffer.allocUnsafe(packed.length + 1);
  out[0] = SCHEMA_VERSION;
  out.set(packed, 1);
  return out;
}

/** Throw the error {@link encodeEvent} would throw for this event's type, if any. */
export function checkEncodable(event: JournalEvent): void {
  if (!CODE_OF.has(event.type)) throw new JournalError("unsupported", `Cannot encode event of unknown type ${event.type}`);
}

/**
 * The MessagePack part of a v2 record, without the version byte: a view of the
 * packer's buffer, valid until its next use.
 */
export function packBody(event: JournalEvent): Uint8Array {
  const { type, seq, time, caller, ...body } = event;
  const code = CODE_OF.get(type);
  if (code === undefined) throw new JournalError("unsupported", `Cannot encode event of unknown type ${type}`);
  const who = caller ? (caller.comm !== undefined ? [caller.uid, caller.gid, caller.pid, caller.comm] : [caller.uid, caller.gid, caller.pid]) : null;
  return packr.pack([code, seq, time, who, body]);
}

/** Decode an event of any known schema version, upcasting older ones. */
export function decodeEvent(bytes: Uint8Array): JournalEvent {
  return decodeEventAt(bytes, 0, bytes.length);
}

/**
 * Decode the event whose record is bytes [start, end) of `buf` (a row holding several). It is
 * decoded from a source of just the record, never from the whole row: msgpackr reads the
 * strings of a source that ends past 140 bytes through its native extractor, one native call
 * per record (and no key cache), where a short source is read in JavaScript, 40% faster for
 * our records (60–90 bytes; measured over 500k events of a real journal). A short record is
 * copied into a reused buffer for that (25% off a scan of 500k events against a view per
 * record); a longer one is decoded from a view of it.
 */
export function decodeEventAt(buf: Uint8Array, start: number, end: number): JournalEvent {
  if (end <= start) throw new JournalError("corrupt", "Cannot decode event: empty record");
  const version = buf[start];
  let value: unknown;
  try {
    const length = end - start - 1;
    if (length < SCRATCH_LIMIT) {
      for (let i = 0; i < length; i++) scratch[i] = buf[start + 1 + i]!;
      value = scratchPackr.unpack(scratch, length);
    } else value = packr.unpack((buf as Buffer).subarray(start + 1, end));
  } catch (cause) {
    throw new JournalError("corrupt", `Cannot decode event: not valid MessagePack (${String(cause)})`, { cause });
  }
  switch (version) {
    case 2:
      return fromV2(value);
    case 1:
      return upcastV1(value);
    default:
      throw new JournalError(
        "unsupported",
        `Cannot decode event with schema version ${version}: this build reads versions 1 to ${SCHEMA_VERSION}; upgrade objectfs`,
      );
  }
}

function fromV2(value: unknown): JournalEvent {
  if (!Array.isArray(value) || value.length !== 5) throw new JournalError("corrupt", "Cannot decode event: bad v2 record shape");
  const [code, seq, time, caller, body] = value as [number, number, number, [number, number, number, string?] | null, Record<string, unknown>];
  const type = TYPE_CODES[code];
  if (type === undefined) throw new JournalError("corrupt", `Cannot decode event: unknown type code ${code}`);
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw new JournalError("corrupt", "Cannot decode event: bad v2 record body");
  // The body (made by this decode, so ours to complete) becomes the event: one object fewer
  // per event than copying it into a new one, which long scans feel.
  const event = body;
  event.type = type;
  event.seq = seq;
  event.time = time;
  if (caller) event.caller = caller.length > 3 ? { uid: caller[0], gid: caller[1], pid: caller[2], comm: caller[3] } : { uid: caller[0], gid: caller[1], pid: caller[2] };
  return event as unknown as JournalEvent;
}

function upcastV1(value: unknown): JournalEvent {
  if (value === null || typeof value !== "object" || typeof (value as { type?: unknown }).type !== "string") {
    throw new JournalError("corrupt", "Cannot decode event: bad v1 record shape");
  }
  const event = { ...(value as Record<string, unknown>) };
  if (!CODE_OF.has(event.type as EventType)) throw new JournalError("corrupt", `Cannot decode event: unknown type ${String(event.type)}`);
  if (event.type === "Unmounted" && event.clean === undefined) event.clean = true;
  return event as unknown as JournalEvent;
}

/** Encode in schema version 1. Kept only so upcasting can be tested against real v1 bytes. */
export function encodeEventV1(event: JournalEvent): Uint8Array {
  const { ...copy } = event as unknown as Record<string, unknown>;
  if (copy.type === "Unmounted") delete copy.clean;
  const packed = packr.pack(copy);
  const out = new Uint8Array(packed.length + 1);
  out[0] = 1;
  out.set(packed, 1);
  return out;
}

/** Plain MessagePack for projection rows and metadata (no version byte). */
export const packValue = (value: unknown): Uint8Array => packr.pack(value);
export const unpackValue = <T>(bytes: Uint8Array): T => packr.unpack(bytes) as T;

/**
 * The type of an encoded event without decoding it, where the record says it in its first
 * bytes (version 2, a type code below 128); undefined means "decode to know". Lets long scans
 * skip the events they do not need.
 */
export function peekEventType(record: Uint8Array, start = 0): EventType | undefined {
  return record[start] === 2 && record[start + 1] === 0x95 && record[start + 2]! < 0x80 ? TYPE_CODES[record[start + 2]!] : undefined;
}

/** What the first bytes of a version-2 record say, read without decoding the record. */
export interface RecordHead {
  readonly type: EventType;
  readonly seq: number;
  readonly time: number;
  /** The caller's uid and pid; undefined when the event has no caller. */
  readonly uid: number | undefined;
  readonly pid: number | undefined;
}

/** A {@link RecordHead} that {@link peekRecordHead} may fill in place. */
export type MutableRecordHead = { -readonly [K in keyof RecordHead]: RecordHead[K] };

/**
 * The head of an encoded event (type, seq, time, caller) without decoding its body, or
 * undefined where the record does not have the usual version-2 shape (then decode it).
 * With `into`, that object is filled and returned (a scan of millions of records then
 * allocates no head per record).
 */
export function peekRecordHead(record: Uint8Array, start = 0, into?: MutableRecordHead): RecordHead | undefined {
  const type = peekEventType(record, start);
  if (type === undefined) return undefined;
  const seq = readNumber(record, start + 3);
  const time = readNumber(record, numberEnd);
  const at = numberEnd;
  if (seq === undefined || time === undefined) return undefined;
  const c = record[at];
  let uid: number | undefined;
  let pid: number | undefined;
  if (c !== 0xc0) {
    if (c !== 0x93 && c !== 0x94) return undefined;
    uid = readNumber(record, at + 1);
    if (uid === undefined || readNumber(record, numberEnd) === undefined) return undefined;
    pid = readNumber(record, numberEnd);
    if (pid === undefined) return undefined;
  }
  if (!into) return { type, seq, time, uid, pid };
  into.type = type;
  into.seq = seq;
  into.time = time;
  into.uid = uid;
  into.pid = pid;
  return into;
}

const f64 = new Float64Array(1);
const f64Bytes = new Uint8Array(f64.buffer);
const f32 = new Float32Array(1);
const f32Bytes = new Uint8Array(f32.buffer);
const u32 = (b: Uint8Array, at: number) => ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
/** Where the number {@link readNumber} read last ends. */
let numberEnd = 0;

/** The MessagePack number at `at` (its end in {@link numberEnd}), or undefined if there is none or it is cut short. */
function readNumber(b: Uint8Array, at: number): number | undefined {
  const v = b[at];
  if (v === undefined) return undefined;
  if (v < 0x80) {
    numberEnd = at + 1;
    return v;
  }
  if (v >= 0xe0) {
    numberEnd = at + 1;
    return v - 256;
  }
  const size = NUMBER_SIZES[v - 0xca];
  if (v < 0xca || v > 0xd3 || size === undefined || at + 1 + size > b.length) return undefined;
  const x = at + 1;
  numberEnd = x + size;
  switch (v) {
    case 0xcc:
      return b[x]!;
    case 0xcd:
      return (b[x]! << 8) | b[x + 1]!;
    case 0xce:
      return u32(b, x);
    case 0xcf:
      return u32(b, x) * 2 ** 32 + u32(b, x + 4);
    case 0xd0:
      return (b[x]! << 24) >> 24;
    case 0xd1:
      return (((b[x]! << 8) | b[x + 1]!) << 16) >> 16;
    case 0xd2:
      return u32(b, x) | 0;
    case 0xcb:
      for (let k = 0; k < 8; k++) f64Bytes[7 - k] = b[x + k]!;
      return f64[0]!;
    case 0xca:
      for (let k = 0; k < 4; k++) f32Bytes[3 - k] = b[x + k]!;
      return f32[0]!;
    default:
      return undefined; // int64 (0xd3): not a seq, time or id we write
  }
}

/** Bytes after the marker of each number type from 0xca (float32) to 0xd3 (int64). */
const NUMBER_SIZES = [4, 8, 1, 2, 4, 8, 1, 2, 4, 8];
