import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { decodeSegment, JournalError, parseSegmentName, sealSegment, SegmentCorruptError, SegmentIntake, segmentName, type JournalEvent } from "../../journal/mod.ts";
import { crc32 } from "node:zlib";
import { crc32Combine } from "../../journal/crc32_combine.ts";
import { anyEvent, eventOf, normalize } from "../support/event_arbitraries.ts";


/** Events renumbered to a contiguous range starting at `first`. */
const contiguous = (events: JournalEvent[], first: number) => events.map((e, i) => ({ ...e, seq: first + i }) as JournalEvent);

describe("segments", () => {
  test("seal then decode returns the same events, range and state checksum", () => {
    fc.assert(
      fc.property(fc.array(anyEvent, { minLength: 1, maxLength: 30 }), fc.integer({ min: 1, max: 2 ** 40 }), fc.uint8Array({ minLength: 32, maxLength: 32 }), (events, first, state) => {
        const evs = contiguous(events, first);
        const sealed = sealSegment(evs, { prevChecksum: 1234, stateChecksum: state });
        const seg = decodeSegment(sealed.bytes);
        expect(seg.minSeq as number).toBe(first);
        expect(seg.maxSeq as number).toBe(first + evs.length - 1);
        expect(seg.checksum).toBe(sealed.checksum);
        expect(Array.from(seg.stateChecksum)).toEqual(Array.from(state));
        expect(normalize(seg.events)).toEqual(normalize(evs));
      }),
      { numRuns: 100 },
    );
  });

  test("format version 1 (no data area; written by the first release) is still read", () => {
    const events = contiguous(fc.sample(fc.array(eventOf("InodeCreated"), { minLength: 2, maxLength: 4 }), { numRuns: 1, seed: 3 })[0]!, 1);
    const v2 = Buffer.from(sealSegment(events, { prevChecksum: 9 }).bytes);
    // v1 = v2 without the data area's length field (it holds no data), version 1, CRCs redone.
    const dataAt = v2.length - 44 - 8;
    const v1 = Buffer.concat([v2.subarray(0, dataAt), v2.subarray(dataAt + 8)]);
    v1.writeUInt16BE(1, 8);
    v1.writeUInt32BE(crc32(v1.subarray(0, 36)), 36);
    v1.writeUInt32BE(crc32(v1.subarray(0, v1.length - 4), 9), v1.length - 4);
    expect(normalize(decodeSegment(v1).events)).toEqual(normalize(events));
  });

  test("flipping any single byte of a segment is detected", () => {
    const events = fc.sample(fc.array(anyEvent, { minLength: 3, maxLength: 6 }), { numRuns: 1, seed: 42 })[0]!;
    const sealed = sealSegment(contiguous(events, 100), { prevChecksum: 7 });
    const bytes = sealed.bytes;
    for (let i = 0; i < bytes.length; i++) {
      for (const mask of [0x01, 0x80, 0xff]) {
        const copy = new Uint8Array(bytes);
        copy[i]! ^= mask;
        let threw: unknown;
        try {
          decodeSegment(copy, { name: "s.seg" });
        } catch (e) {
          threw = e;
        }
        if (!(threw instanceof SegmentCorruptError)) throw new Error(`flip of byte ${i} with mask ${mask} went undetected (${String(threw)})`);
        expect(threw.message).toContain("s.seg");
      }
    }
  });

  test("crc32Combine gives the CRC-32 of a concatenation from the CRCs of its parts", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 3000 }), fc.uint8Array({ maxLength: 3000 }), fc.integer({ min: 0, max: 2 ** 32 - 1 }), (a, b, seed) => {
        const ab = Buffer.concat([a, b]);
        expect(crc32Combine(crc32(a), crc32(b), b.length)).toBe(crc32(ab));
        expect(crc32Combine(crc32(a, seed), crc32(b), b.length)).toBe(crc32(ab, seed));
      }),
      { numRuns: 300 },
    );
    const big = Buffer.alloc(5 << 20, 7);
    expect(crc32Combine(crc32(big.subarray(0, 1 << 20)), crc32(big.subarray(1 << 20)), 4 << 20)).toBe(crc32(big));
  });

  test("a flipped byte after the header is reported as a segment checksum mismatch, wherever it is", () => {
    // Data-bearing events too: their bytes are checked once, their CRCs make up the segment checksum.
    const data = (seq: number, n: number) => {
      const bytes = Buffer.alloc(n, seq);
      return { type: "ExtentWritten", seq, time: 1, ino: 2, offset: 0, length: n, crc: crc32(bytes), data: bytes } as unknown as JournalEvent;
    };
    const sealed = sealSegment([data(1, 300), { type: "InodeDropped", seq: 2, time: 1, ino: 3 } as JournalEvent, data(3, 0), data(4, 77)], { prevChecksum: 5 });
    expect(normalize(decodeSegment(sealed.bytes).events)).toHaveLength(4);
    for (let i = 40; i < sealed.bytes.length; i++) {
      const copy = new Uint8Array(sealed.bytes);
      copy[i]! ^= 0x10;
      expect(() => decodeSegment(copy, { name: "s.seg" })).toThrow(/^Segment s\.seg is corrupt at byte \d+: segment checksum expected \d+, computed \d+$/);
    }
  });

  test("an event whose bytes do not match its CRC is refused even when the segment checksum matches them", () => {
    const bytes = Buffer.alloc(100, 1);
    const wrong = { type: "ExtentWritten", seq: 1, time: 1, ino: 2, offset: 0, length: 100, crc: (crc32(bytes) ^ 1) >>> 0, data: bytes } as unknown as JournalEvent;
    const sealed = sealSegment([wrong], { prevChecksum: 0 });
    expect(() => decodeSegment(sealed.bytes, { name: "w.seg" })).toThrow(/^Segment w\.seg is corrupt at byte \d+: the data of event 1 has CRC \d+, its event says \d+$/);
  });

  /** `bytes` fed to an intake in pieces of the given sizes (cycled), as a reader does while they arrive. */
  const fedIn = (bytes: Uint8Array, sizes: number[]) => {
    const into = new Uint8Array(bytes.length);
    const intake = new SegmentIntake(into);
    for (let at = 0, k = 0; at < bytes.length; k++) {
      const n = Math.min(bytes.length - at, Math.max(1, sizes[k % sizes.length]!));
      into.set(bytes.subarray(at, at + n), at);
      at += n;
      intake.advance(at);
    }
    return { into, intake };
  };
  const withData = (seq: number, n: number, fill: number) => {
    const bytes = Buffer.alloc(n, fill);
    return { type: "ExtentWritten", seq, time: 1, ino: 2, offset: 0, length: n, crc: crc32(bytes), data: bytes } as unknown as JournalEvent;
  };

  test("decoding with the work of an intake (bytes fed in any pieces) gives what decoding alone gives", () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(anyEvent, fc.integer({ min: 0, max: 5000 }).map((n) => withData(0, n, n & 0xff))), { minLength: 1, maxLength: 12 }), fc.array(fc.integer({ min: 1, max: 3000 }), { minLength: 1, maxLength: 5 }), (events, sizes) => {
        const sealed = sealSegment(contiguous(events, 10), { prevChecksum: 77 });
        const { into, intake } = fedIn(sealed.bytes, sizes);
        const plain = decodeSegment(sealed.bytes);
        const fed = decodeSegment(into, { intake });
        expect(fed.checksum).toBe(plain.checksum);
        expect(normalize(fed.events)).toEqual(normalize(plain.events));
      }),
      { numRuns: 150 },
    );
    // It did the work: the first payload's CRC is there.
    const sealed = sealSegment([withData(1, 5000, 3)], { prevChecksum: 0 });
    const { intake } = fedIn(sealed.bytes, [700]);
    const len = Buffer.from(sealed.bytes).readUInt32BE(40);
    expect(intake.crc(48, 48 + len)).toBe(crc32(sealed.bytes.subarray(48, 48 + len)));
  });

  /** `bytes` fed to an intake in pieces, taking what it hands out early after each piece. */
  const takenEarly = (bytes: Uint8Array, sizes: number[], after: { maxSeq: number; checksum: number }) => {
    const into = new Uint8Array(bytes.length);
    const intake = new SegmentIntake(into);
    const taken: JournalEvent[] = [];
    for (let at = 0, k = 0; at < bytes.length; k++) {
      const n = Math.min(bytes.length - at, Math.max(1, sizes[k % sizes.length]!));
      into.set(bytes.subarray(at, at + n), at);
      at += n;
      intake.advance(at);
      for (const e of intake.early(after)) {
        // Handed out only once its own bytes are all here.
        if (e.type === "ExtentWritten" && e.data) expect(crc32(e.data)).toBe(e.crc);
        taken.push(e.type === "ExtentWritten" && e.data ? ({ ...e, data: new Uint8Array(e.data) } as JournalEvent) : e);
      }
    }
    return { into, intake, taken };
  };

  test("events handed out early, as the bytes arrive, are the segment's events in order with their bytes", () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(anyEvent, fc.integer({ min: 0, max: 5000 }).map((n) => withData(0, n, n & 0xff))), { minLength: 1, maxLength: 12 }), fc.array(fc.integer({ min: 1, max: 3000 }), { minLength: 1, maxLength: 5 }), (events, sizes) => {
        const sealed = sealSegment(contiguous(events, 10), { prevChecksum: 77 });
        const { into, intake, taken } = takenEarly(sealed.bytes, sizes, { maxSeq: 9, checksum: 77 });
        const whole = decodeSegment(into, { intake, after: { maxSeq: 9, checksum: 77 } });
        expect(normalize(taken)).toEqual(normalize(whole.events));
      }),
      { numRuns: 150 },
    );
    // The first event comes out before the segment is all here.
    const sealed = sealSegment([withData(1, 5000, 3), withData(2, 5000, 4)], { prevChecksum: 0 });
    const into = new Uint8Array(sealed.bytes.length);
    const intake = new SegmentIntake(into);
    const half = sealed.bytes.length - 5000;
    into.set(sealed.bytes.subarray(0, half));
    intake.advance(half);
    expect(intake.early({ maxSeq: 0, checksum: 0 }).map((e) => e.seq as number)).toEqual([1]);
  });

  test("nothing is handed out early from a segment that does not follow the one before, or whose header is damaged", () => {
    const sealed = sealSegment([withData(5, 100, 1), withData(6, 100, 2)], { prevChecksum: 9 });
    expect(takenEarly(sealed.bytes, [64], { maxSeq: 4, checksum: 9 }).taken.map((e) => e.seq as number)).toEqual([5, 6]);
    expect(takenEarly(sealed.bytes, [64], { maxSeq: 3, checksum: 9 }).taken).toEqual([]);
    expect(takenEarly(sealed.bytes, [64], { maxSeq: 4, checksum: 8 }).taken).toEqual([]);
    for (const at of [0, 9, 13, 20, 28, 33, 37]) {
      const copy = new Uint8Array(sealed.bytes);
      copy[at]! ^= 0x10;
      expect(takenEarly(copy, [64], { maxSeq: 4, checksum: 9 }).taken).toEqual([]);
    }
  });

  test("a flipped byte: every event handed out early is as the undamaged segment has it, and decoding the whole still fails", () => {
    const events = [withData(1, 3000, 1), { type: "InodeDropped", seq: 2, time: 1, ino: 3 } as JournalEvent, withData(3, 1, 9), withData(4, 2500, 4)];
    const sealed = sealSegment(events, { prevChecksum: 5 });
    const good = normalize(decodeSegment(sealed.bytes).events) as unknown[];
    let partly = 0;
    for (let i = 0; i < sealed.bytes.length; i++) {
      const copy = new Uint8Array(sealed.bytes);
      copy[i]! ^= 0x04;
      const { into, intake, taken } = takenEarly(copy, [333], { maxSeq: 0, checksum: 5 });
      expect(normalize(taken)).toEqual(good.slice(0, taken.length));
      if (taken.length > 0 && taken.length < good.length) partly++;
      expect(() => decodeSegment(into, { intake, after: { maxSeq: 0, checksum: 5 } })).toThrow(JournalError);
    }
    expect(partly).toBeGreaterThan(0); // damage in later data stops the hand-out there
  });

  test("a flipped byte fed through an intake is reported exactly as without it", () => {
    const events = [withData(1, 3000, 1), { type: "InodeDropped", seq: 2, time: 1, ino: 3 } as JournalEvent, withData(3, 1, 9), withData(4, 2500, 4)];
    const sealed = sealSegment(events, { prevChecksum: 5 });
    for (let i = 0; i < sealed.bytes.length; i++) {
      const copy = new Uint8Array(sealed.bytes);
      copy[i]! ^= 0x04;
      const message = (f: () => unknown) => {
        try {
          f();
        } catch (e) {
          return (e as Error).message;
        }
        return "accepted";
      };
      const { into, intake } = fedIn(copy, [333, 1, 4096]);
      const want = message(() => decodeSegment(copy, { name: "f.seg" }));
      expect(want).toContain("f.seg is corrupt");
      expect(message(() => decodeSegment(into, { name: "f.seg", intake }))).toBe(want);
    }
  });

  test("the error names the segment, the offset and what was expected", () => {
    const sealed = sealSegment(contiguous([{ type: "InodeDropped", seq: 1, time: 1, ino: 3 } as JournalEvent], 5), { prevChecksum: 0 });
    const copy = new Uint8Array(sealed.bytes);
    copy[50]! ^= 1;
    expect(() => decodeSegment(copy, { name: "0000000000000005-0000000000000005.seg" })).toThrow(
      /Segment 0000000000000005-0000000000000005\.seg is corrupt at byte \d+: .*expected/,
    );
  });

  test("a truncated segment is detected", () => {
    const sealed = sealSegment(contiguous([{ type: "InodeDropped", seq: 1, time: 1, ino: 3 } as JournalEvent], 1), { prevChecksum: 0 });
    for (let n = 0; n < sealed.bytes.length; n++) expect(() => decodeSegment(sealed.bytes.subarray(0, n))).toThrow(SegmentCorruptError);
  });

  test("a segment that does not follow the previous one is rejected", () => {
    const ev = (seq: number) => ({ type: "InodeDropped", seq, time: 1, ino: 3 }) as JournalEvent;
    const a = sealSegment([ev(1), ev(2)], { prevChecksum: 0 });
    const b = sealSegment([ev(3)], { prevChecksum: a.checksum });
    expect(decodeSegment(b.bytes, { after: a }).minSeq as number).toBe(3);
    const gap = sealSegment([ev(4)], { prevChecksum: a.checksum });
    expect(() => decodeSegment(gap.bytes, { after: a, name: "gap" })).toThrow(/starts at seq 4 but the previous segment ended at seq 2/);
    const forked = sealSegment([ev(3)], { prevChecksum: 999 });
    try {
      decodeSegment(forked.bytes, { after: a });
      throw new Error("accepted");
    } catch (e) {
      expect((e as JournalError).reason).toBe("discontinuous");
    }
  });

  test("sealing refuses gaps and events whose data is not inline", () => {
    const ev = (seq: number) => ({ type: "InodeDropped", seq, time: 1, ino: 3 }) as JournalEvent;
    expect(() => sealSegment([ev(1), ev(3)], { prevChecksum: 0 })).toThrow(/gap/);
    expect(() => sealSegment([{ type: "ExtentWritten", seq: 1, time: 1, ino: 2, offset: 0, length: 3, crc: 0, ref: { file: 0, pos: 0 } } as JournalEvent], { prevChecksum: 0 })).toThrow(/not inline/);
  });

  test("names encode the range and parse back", () => {
    expect(segmentName(1, 255)).toBe("0000000000000001-00000000000000ff.seg");
    expect(parseSegmentName(segmentName(2 ** 40, 2 ** 40 + 5))).toEqual({ minSeq: 2 ** 40, maxSeq: 2 ** 40 + 5 } as never);
    expect(parseSegmentName("../x.seg")).toBeUndefined();
  });
});
