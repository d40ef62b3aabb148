import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { decodeEvent, encodeEvent, EVENT_TYPES, JournalError, SCHEMA_VERSION } from "../../journal/mod.ts";
import { decodeEventAt, encodeEventV1, type MutableRecordHead, peekRecordHead } from "../../journal/codec.ts";
import { anyEvent, eventOf, normalize } from "../support/event_arbitraries.ts";


describe("codec", () => {
  for (const type of EVENT_TYPES) {
    test(`${type} round-trips through the current schema`, () => {
      fc.assert(
        fc.property(eventOf(type), (event) => {
          const bytes = encodeEvent(event);
          expect(bytes[0]).toBe(SCHEMA_VERSION);
          expect(normalize(decodeEvent(bytes))).toEqual(normalize(event));
        }),
        { numRuns: 200 },
      );
    });
  }

  test("a record's head (type, seq, time, caller) read without decoding equals the decoded event's", () => {
    const timeOrSeq = fc.oneof(fc.nat(), fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.double({ min: 0, max: 4e12, noNaN: true }));
    fc.assert(
      fc.property(anyEvent, timeOrSeq, fc.nat({ max: 2 ** 32 - 1 }), (event, time, pid) => {
        const e = { ...event, time, ...(event.caller ? { caller: { ...event.caller, pid } } : {}) } as typeof event;
        const bytes = encodeEvent(e);
        const head = peekRecordHead(bytes);
        const decoded = decodeEvent(bytes);
        expect(head).toEqual({ type: decoded.type, seq: decoded.seq, time: decoded.time, uid: decoded.caller?.uid, pid: decoded.caller?.pid });
        // The same record inside a larger buffer decodes in place.
        const row = new Uint8Array(bytes.length + 7);
        row.set(bytes, 3);
        expect(peekRecordHead(row, 3)).toEqual(head);
        // Filled in place: every field is overwritten (a stale head from another record never shows through).
        const into: MutableRecordHead = { type: "Mounted", seq: -1, time: -1, uid: -1, pid: -1 };
        expect(peekRecordHead(row, 3, into)).toBe(into);
        expect({ ...into }).toEqual({ ...head! });
        expect(normalize(decodeEventAt(row, 3, 3 + bytes.length))).toEqual(normalize(decoded));
      }),
      { numRuns: 1000 },
    );
    // Records of the first schema have no such head: the caller decodes them.
    const [sample] = fc.sample(anyEvent, 1);
    expect(peekRecordHead(encodeEventV1(sample!))).toBeUndefined();
  });

  test("events decoded one after another from a row keep their own values: nothing decoded aliases the bytes of the next record", () => {
    fc.assert(
      fc.property(fc.array(anyEvent, { minLength: 2, maxLength: 12 }), (events) => {
        const records = events.map((e) => encodeEvent(e));
        const row = Buffer.concat(records);
        const decoded = [];
        let at = 0;
        for (const r of records) {
          decoded.push(decodeEventAt(row, at, at + r.length));
          at += r.length;
        }
        row.fill(0xff); // the row's buffer reused for other rows, as a scan does
        expect(decoded.map(normalize)).toEqual(events.map(normalize));
      }),
      { numRuns: 500 },
    );
  });

  test("version 1 records are upcast to the current shape", () => {
    fc.assert(
      fc.property(anyEvent, (event) => {
        const v1 = encodeEventV1(event);
        expect(v1[0]).toBe(1);
        const expected = event.type === "Unmounted" ? { ...event, clean: true } : event;
        expect(normalize(decodeEvent(v1))).toEqual(normalize(expected));
      }),
      { numRuns: 500 },
    );
  });

  test("an unknown schema version is refused with a message naming it", () => {
    const bytes = encodeEvent({ type: "InodeDropped", seq: 1, time: 0, ino: 5 } as never);
    bytes[0] = 99;
    expect(() => decodeEvent(bytes)).toThrow(/schema version 99/);
  });

  test("garbage is reported as corrupt, not thrown as a random error", () => {
    const bytes = new Uint8Array([2, 0xc1, 0xc1, 0xc1]);
    try {
      decodeEvent(bytes);
      throw new Error("decoded garbage");
    } catch (e) {
      expect(e).toBeInstanceOf(JournalError);
      expect((e as JournalError).reason).toBe("corrupt");
    }
  });
});
