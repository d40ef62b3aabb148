/**
 * Model-based test of the Filesystem: generated operation sequences run on
 * the reference model (model.ts) and on a real Filesystem over LevelDB in a
 * temp dir; every step's result or errno, and the whole tree after every
 * step, must be the model's. fsck must be clean after every restart and at
 * the end of every sequence. Shrunk failures are pinned in regressions_test.ts.
 */
import { afterEach, expect, test } from "bun:test";
import fc from "fast-check";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FsSubject, ModelSubject, runSequence, sequenceArb } from "./ops.ts";

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

/** Runs per durability mode; sequences are up to MAX_OPS long. */
const NUM_RUNS = Number(process.env.OBJECTFS_TEST_MODEL_RUNS ?? 250);
const MAX_OPS = 60;

for (const durability of ["fsync", "strict"] as const) {
  test(`generated sequences give the model's results, errnos and trees at every step (durability ${durability})`, async () => {
    let sequences = 0;
    const stats = new Map<string, number>();
    let restarts = 0;
    await fc.assert(
      // A cache of a few entries makes the Filesystem evict and reload rows from LevelDB all the time.
      fc.asyncProperty(sequenceArb(MAX_OPS), fc.constantFrom(undefined, undefined, 4, 32), async (seq, cacheEntries) => {
        const dir = await mkdtemp(join(tmpdir(), "objectfs-model-"));
        dirs.push(dir);
        const sut = await FsSubject.open(dir, durability, seq.rootMode, cacheEntries);
        try {
          await runSequence(seq.ops, [new ModelSubject(seq.rootMode), sut], { stats });
          sequences++;
          restarts += sut.restarts;
        } finally {
          await sut.close().catch(() => {});
          await rm(dir, { recursive: true, force: true });
        }
      }),
      { numRuns: NUM_RUNS, ...(process.env.OBJECTFS_TEST_MODEL_SEED ? { seed: Number(process.env.OBJECTFS_TEST_MODEL_SEED) } : {}) },
    );
    if (process.env.OBJECTFS_TEST_MODEL_STATS) console.log([...stats].sort().map(([k, n]) => `${k}: ${n}`).join("\n"));
    expect(sequences).toBe(NUM_RUNS);
    expect(restarts).toBeGreaterThan(0);
  }, 600_000);
}
