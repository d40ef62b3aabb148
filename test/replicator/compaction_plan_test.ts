/** Planning compaction in levels: which runs of segments merge, and which are rewritten alone. */
import { expect, test } from "bun:test";
import { planCompaction, type PlanOptions } from "../../src/replicator/compaction.ts";
import type { RemoteSegment } from "../../src/replicator/segments.ts";

const H = 3_600_000;
const D = 24 * H;
const NOW = 100 * D;
let next = 1;
const seg = (level: number, ageMs: number, size = 1000, span = 10): RemoteSegment => {
  const s = { key: `L${level}/${next}`, level, minSeq: next, maxSeq: next + span - 1, size, lastModified: new Date(NOW - ageMs) };
  next += span;
  return s;
};
const opts = (o: Partial<PlanOptions> = {}): PlanOptions => ({ now: NOW, level1AgeMs: H, level2AgeMs: D, maxSegmentBytes: 10_000, pending: [], dataFrom: 0, ...o });
const keys = (groups: ReturnType<typeof planCompaction>) => groups.map((g) => [g.level, g.members.map((m) => m.key)]);

test("old level-0 segments merge into one level-1 segment per hour of upload; young ones stay", () => {
  next = 1;
  // Two segments 3.5 h ago (same hour), two 2.2 h ago (another hour), two of 10 minutes.
  const chain = [seg(0, 3.5 * H), seg(0, 3.5 * H + 1000), seg(0, 2.2 * H), seg(0, 2.2 * H - 1000), seg(0, H / 6), seg(0, H / 6 - 1)];
  expect(keys(planCompaction(chain, opts()))).toEqual([
    [1, ["L0/1", "L0/11"]],
    [1, ["L0/21", "L0/31"]],
  ]);
});

test("old level-1 segments merge per day; a run of one is left alone; level 2 is last", () => {
  next = 1;
  const chain = [seg(2, 10 * D), seg(1, 3.1 * D), seg(1, 3.1 * D - 5), seg(1, 3.1 * D - 10), seg(1, 1.5 * D), seg(1, 2 * H), seg(0, 3 * H)];
  expect(keys(planCompaction(chain, opts()))).toEqual([[2, ["L1/11", "L1/21", "L1/31"]]]);
});

test("a run is cut where it would pass the size limit", () => {
  next = 1;
  const chain = [seg(0, 5 * H + 1, 6000), seg(0, 5 * H + 2, 3000), seg(0, 5 * H + 3, 3000), seg(0, 5 * H + 4, 3000)];
  expect(keys(planCompaction(chain, opts()))).toEqual([
    [1, ["L0/1", "L0/11"]],
    [1, ["L0/21", "L0/31"]],
  ]);
});

test("a segment holding a seq retention dropped is rewritten even alone, at its level (level 0 as 1)", () => {
  next = 1;
  const chain = [seg(2, 10 * D), seg(1, 2 * H), seg(0, 60_000), seg(0, 30_000)];
  // Seq 5 (in the level-2 one), 15 (level 1), 25 (young level 0); 35 is past dataFrom: ignored.
  const plan = planCompaction(chain, opts({ pending: [5, 15, 25, 35], dataFrom: 30 }));
  expect(keys(plan)).toEqual([
    [2, ["L2/1"]],
    [1, ["L1/11"]],
    [1, ["L0/21"]],
  ]);
  expect(planCompaction(chain, opts({ pending: [35], dataFrom: 30 }))).toEqual([]);
});
