/** planParts: multipart plans that copy what S3 already has and upload the rest, within S3's rules. */
import { expect, test } from "bun:test";
import fc from "fast-check";
import { planParts, type Source } from "../../src/replicator/materializer.ts";

const MiB = 1024 * 1024;

const sourcesArb = (size: number) =>
  fc.array(fc.tuple(fc.integer({ min: 0, max: size }), fc.integer({ min: 1, max: 40 * MiB }), fc.constantFrom("s1", "s2", "base"), fc.nat({ max: 1 << 30 })), { maxLength: 8 }).map((xs) => {
    // Non-overlapping, ordered runs.
    const out: Source[] = [];
    let at = 0;
    for (const [gap, len, key, from] of xs.sort((a, b) => a[0] - b[0])) {
      const start = Math.max(at, Math.min(size, gap));
      const end = Math.min(size, start + len);
      if (end <= start) continue;
      out.push({ start, end, key, from });
      at = end;
    }
    return out;
  });

test("parts cover the file in order, every part but the last is ≥ 5 MiB, copies come from the right bytes", () => {
  fc.assert(
    fc.property(fc.integer({ min: 5 * MiB, max: 200 * MiB }).chain((size) => fc.tuple(fc.constant(size), sourcesArb(size))), ([size, sources]) => {
      const parts = planParts(sources, size, 8 * MiB);
      let at = 0;
      parts.forEach((p, i) => {
        expect(p.start).toBe(at);
        expect(p.end).toBeGreaterThan(p.start);
        if (i < parts.length - 1) expect(p.end - p.start).toBeGreaterThanOrEqual(5 * MiB);
        if (p.copy) {
          // Every copied byte is where a source says it is.
          for (let b = p.start; b < p.end; b += Math.max(1, Math.floor((p.end - p.start) / 7))) {
            const s = sources.find((x) => x.start <= b && b < x.end)!;
            expect(s).toBeDefined();
            expect(s.key).toBe(p.copy.key);
            expect(p.copy.from + (b - p.start)).toBe(s.from + (b - s.start));
          }
        } else expect(p.end - p.start).toBeLessThanOrEqual(8 * MiB + 5 * MiB);
        at = p.end;
      });
      expect(at).toBe(size);
    }),
    { numRuns: 300 },
  );
});

test("a file written in one run of a segment is all copied; short runs are uploaded", () => {
  const size = 64 * MiB + 100;
  expect(planParts([{ start: 0, end: size, key: "seg", from: 777 }], size, 8 * MiB)).toEqual([{ start: 0, end: size, copy: { key: "seg", from: 777 } }]);
  const short = planParts([{ start: 0, end: 3 * MiB, key: "seg", from: 0 }], 20 * MiB, 8 * MiB);
  expect(short.every((p) => !p.copy)).toBe(true);
});
