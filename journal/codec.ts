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

const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true, int64AsType: "number" });

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
  const version = bytes[0];
  let value: unknown;
  try {
    value = packr.unpack(bytes.subarray(1));
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
  const event: Record<string, unknown> = { type, seq, time };
  if (caller) event.caller = caller.length > 3 ? { uid: caller[0], gid: caller[1], pid: caller[2], comm: caller[3] } : { uid: caller[0], gid: caller[1], pid: caller[2] };
  Object.assign(event, body);
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
