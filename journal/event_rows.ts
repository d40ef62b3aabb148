/**
 * How events are stored in LevelDB: under `!e!<seq>`, either one event (its codec
 * record, whose first byte is the schema version: 1 or 2) or a group of consecutive
 * events that were committed together, keyed by the first one's seq:
 *
 *   [GROUP_MARK][count: u32][length: u32] × count, then the count records back to back
 *
 * where the i-th record is the event with seq `key + i`. A commit of many small
 * operations then writes one row instead of one per event (each row costs LevelDB and
 * its binding about as much as the bytes of a whole group). Rows written before groups
 * existed are single events, and stay readable as they are.
 */
import { JournalError } from "./errors.ts";
import { readU64, u64Key } from "./keys.ts";
import type { Sublevel } from "./store.ts";

/** First byte of a group row (schema versions are small numbers: never this). */
export const GROUP_MARK = 0xef;
/** A group is closed at this many bytes of records, or this many events. */
export const GROUP_BYTES = 64 << 10;
export const GROUP_EVENTS = 1024;

type Bytes = Buffer;

/** One stored row: the seq of its first event and its value. */
export interface EventRow {
  readonly first: number;
  readonly value: Uint8Array;
}

/** Number of events in a row. */
export function rowCount(value: Uint8Array): number {
  if (value[0] !== GROUP_MARK) return 1;
  return readU32(value, 1);
}

/** The codec records of a row, in seq order, as views of `value`. */
export function rowRecords(value: Uint8Array): Uint8Array[] {
  if (value[0] !== GROUP_MARK) return [value];
  const out: Uint8Array[] = [];
  forEachRecord({ first: 0, value }, 0, Number.MAX_SAFE_INTEGER, (_, start, end) => out.push(value.subarray(start, end)));
  return out;
}

/** The record of event `seq` in a row that starts at `first`, or undefined if the row does not hold it. */
export function rowRecord(first: number, value: Uint8Array, seq: number): Uint8Array | undefined {
  const i = seq - first;
  if (i < 0) return undefined;
  if (value[0] !== GROUP_MARK) return i === 0 ? value : undefined;
  const count = readU32(value, 1);
  if (i >= count) return undefined;
  let at = 5 + 4 * count;
  for (let k = 0; k < i; k++) at += readU32(value, 5 + 4 * k);
  return value.subarray(at, at + readU32(value, 5 + 4 * i));
}

/** A row holding `records` (consecutive events): the record itself when there is one. */
export function groupValue(records: readonly Uint8Array[]): Uint8Array {
  if (records.length === 1) return records[0]!;
  let size = 5 + 4 * records.length;
  for (const r of records) size += r.length;
  const out = Buffer.allocUnsafe(size);
  writeGroupHeader(out, records.map((r) => r.length));
  let at = 5 + 4 * records.length;
  for (const r of records) {
    out.set(r, at);
    at += r.length;
  }
  return out;
}

/** Header of a group of records with these lengths; returns its size. */
export function writeGroupHeader(into: Uint8Array, lengths: readonly number[], offset = 0): number {
  into[offset] = GROUP_MARK;
  writeU32(into, offset + 1, lengths.length);
  for (let i = 0; i < lengths.length; i++) writeU32(into, offset + 5 + 4 * i, lengths[i]!);
  return 5 + 4 * lengths.length;
}

/** The row that holds `seq` (or, without one, undefined): the last row whose key is at most seq. */
export async function rowAt(events: Sublevel, seq: number): Promise<EventRow | undefined> {
  for await (const [k, v] of events.iterator({ lte: u64Key(seq), reverse: true, limit: 1 } as never)) {
    const first = readU64(k as Bytes);
    return first + rowCount(v as Bytes) > seq ? { first, value: v as Bytes } : undefined;
  }
  return undefined;
}

/** Key of the row to start a forward scan at so that `seq` is included. */
export async function scanStart(events: Sublevel, seq: number): Promise<number> {
  for await (const k of events.keys({ lte: u64Key(seq), reverse: true, limit: 1 } as never)) return readU64(k as Bytes);
  return seq;
}

const readU32 = (b: Uint8Array, at: number) => ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;

function writeU32(b: Uint8Array, at: number, n: number): void {
  b[at] = n >>> 24;
  b[at + 1] = (n >>> 16) & 0xff;
  b[at + 2] = (n >>> 8) & 0xff;
  b[at + 3] = n & 0xff;
}

/**
 * Bytes a scan's iterator reads from LevelDB per call into its worker thread (classic-level's
 * default is 16 KiB: about 40 rows of a journal of small commits, so a scan of 110k rows paid
 * 2,700 thread hand-offs; with 1 MiB a scan of 500k events reads in half the time).
 */
const SCAN_BYTES = 1024 * 1024;
/** Rows asked for per `nextv` call: about what SCAN_BYTES holds of small rows. */
const SCAN_ROWS = 1024;

/** The key range of a forward scan of events in [gte, lte]: from the row that holds `gte`. */
async function forwardRange(events: Sublevel, gte: number | undefined, lte: number): Promise<Record<string, unknown>> {
  const range: Record<string, unknown> = { lte: u64Key(lte), highWaterMarkBytes: SCAN_BYTES };
  if (gte !== undefined) range.gte = u64Key(await scanStart(events, gte));
  return range;
}

/** One event's record as found by {@link scanRecords}. */
export interface FoundRecord {
  readonly seq: number;
  readonly record: Uint8Array;
}

/**
 * The records of events in [gte, lte], in seq order (or reverse), at most `limit`,
 * expanding groups; rows that straddle a bound are cut to it.
 */
export async function* scanRecords(
  events: Sublevel,
  options: { gte?: number; lte?: number; reverse?: boolean; limit?: number },
): AsyncGenerator<FoundRecord> {
  const gte = options.gte ?? 0;
  const lte = options.lte ?? Number.MAX_SAFE_INTEGER;
  let left = options.limit === undefined || options.limit < 0 ? Infinity : options.limit;
  if (left === 0 || gte > lte) return;
  if (!options.reverse) {
    for await (const [k, v] of events.iterator((await forwardRange(events, options.gte, lte)) as never)) {
      const first = readU64(k as Bytes);
      const records = rowRecords(v as Bytes);
      for (let i = 0; i < records.length; i++) {
        const seq = first + i;
        if (seq < gte) continue;
        if (seq > lte) return;
        yield { seq, record: records[i]! };
        if (--left === 0) return;
      }
    }
    return;
  }
  for await (const [k, v] of events.iterator({ lte: u64Key(lte), reverse: true } as never)) {
    const first = readU64(k as Bytes);
    const records = rowRecords(v as Bytes);
    for (let i = records.length - 1; i >= 0; i--) {
      const seq = first + i;
      if (seq > lte) continue;
      if (seq < gte) return;
      yield { seq, record: records[i]! };
      if (--left === 0) return;
    }
    if (first <= gte) return;
  }
}

/**
 * The stored rows holding events in [gte, lte], in seq order, many per array: for scans that
 * want no promise per event (or per row: a journal of single-event commits has a row each).
 * Walk a row's records with {@link forEachRecord}.
 */
export async function* scanRows(events: Sublevel, options: { gte?: number; lte?: number }): AsyncGenerator<EventRow[]> {
  const gte = options.gte ?? 0;
  const lte = options.lte ?? Number.MAX_SAFE_INTEGER;
  if (gte > lte) return;
  const it = events.iterator((await forwardRange(events, options.gte, lte)) as never) as unknown as { nextv(n: number): Promise<[Bytes, Bytes][]>; close(): Promise<void> };
  // The next rows are read while the caller works on these ones.
  let next: Promise<[Bytes, Bytes][]> | undefined;
  try {
    // A failed read is thrown where it is awaited, not reported as unhandled before that.
    const read = () => {
      const p = it.nextv(SCAN_ROWS);
      p.catch(() => {});
      return p;
    };
    next = read();
    for (;;) {
      const rows = await next;
      next = undefined;
      if (rows.length === 0) return;
      next = read();
      yield rows.map(([k, v]) => ({ first: readU64(k), value: v }));
    }
  } finally {
    await next?.catch(() => undefined);
    await it.close();
  }
}

/** Call `fn` with the bounds in `row.value` of each record of seq in [gte, lte], in order (no copies, no views). */
export function forEachRecord(row: EventRow, gte: number, lte: number, fn: (seq: number, start: number, end: number) => void): void {
  const v = row.value;
  if (v[0] !== GROUP_MARK) {
    if (row.first >= gte && row.first <= lte) fn(row.first, 0, v.length);
    return;
  }
  if (v.length < 5) throw new JournalError("corrupt", "Cannot read event group: truncated header");
  const count = readU32(v, 1);
  let at = 5 + 4 * count;
  if (at > v.length) throw new JournalError("corrupt", `Cannot read event group of ${count} events: truncated length table`);
  for (let i = 0; i < count; i++) {
    const len = readU32(v, 5 + 4 * i);
    if (at + len > v.length) throw new JournalError("corrupt", `Cannot read event ${i} of a group of ${count}: truncated record`);
    const seq = row.first + i;
    if (seq > lte) return;
    if (seq >= gte) fn(seq, at, at + len);
    at += len;
  }
}
