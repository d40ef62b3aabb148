/**
 * The kernel as a second oracle: the generated sequences of model_test.ts run
 * on a real tmpfs directory (under /dev/shm, see tmpfs.ts) through
 * node:fs/promises, on the reference model, and on a real Filesystem; every
 * step's result or errno, and the whole trees after every step, must be
 * tmpfs's. This also checks the model against Linux.
 *
 * Non-root callers need seteuid, so the tests are skipped unless they run as
 * root (as `bash scripts/dev.sh test` does); inode numbers, directory sizes
 * and times are not compared, and steps that the kernel's sysctl hardening
 * would refuse are skipped (tmpfs.ts says why).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import fc from "fast-check";
import { existsSync } from "node:fs";
import { chmod, lstat, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FsSubject, ModelSubject, runSequence, sequenceArb } from "./ops.ts";
import { as, canSwitchUsers, hardeningRefuses, TmpfsSubject, xattr } from "./tmpfs.ts";

const NUM_RUNS = Number(process.env.OBJECTFS_TEST_ORACLE_RUNS ?? 150);
const MAX_OPS = 50;

const oracle = canSwitchUsers && existsSync("/dev/shm");
let umask = 0;
beforeAll(() => {
  umask = process.umask(0); // modes are given exactly, as the fs core receives them
});
afterAll(() => {
  process.umask(umask);
});

test.skipIf(!oracle)("a step run as user 1000 on tmpfs is refused what user 1000 may not do", async () => {
  const root = await mkdtemp("/dev/shm/objectfs-oracle-");
  try {
    await chmod(root, 0o755);
    const e = await as("u1000", () => mkdir(join(root, "x"))).catch((err) => err as { code: string });
    expect(e).toMatchObject({ code: "EACCES" });
    await chmod(root, 0o777);
    await as("u1000", () => writeFile(join(root, "f"), "x"));
    expect((await lstat(join(root, "f"))).uid).toBe(1000);
    xattr.set(join(root, "f"), "user.k", Buffer.from("v"), 0);
    expect(Buffer.from(xattr.get(join(root, "f"), "user.k")).toString()).toBe("v");
    expect(() => xattr.get(join(root, "f"), "user.none")).toThrow("ENODATA");
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test.skipIf(!oracle)("generated sequences give tmpfs's results, errnos and trees on the Filesystem and on the model", async () => {
  let sequences = 0;
  let skipped = 0;
  await fc.assert(
    fc.asyncProperty(sequenceArb(MAX_OPS), fc.constantFrom("fsync" as const, "strict" as const), async (seq, durability) => {
      const shm = await mkdtemp("/dev/shm/objectfs-oracle-");
      const dir = await mkdtemp(join(tmpdir(), "objectfs-oracle-"));
      await chmod(dir, 0o777);
      await chmod(shm, seq.rootMode);
      const model = new ModelSubject(seq.rootMode);
      const tmpfs = new TmpfsSubject(shm);
      const sut = await FsSubject.open(dir, durability, seq.rootMode);
      try {
        await runSequence(seq.ops, [tmpfs, model, sut], {
          skip: (op) => {
            const refused = hardeningRefuses(model.model, op);
            if (refused) skipped++;
            return refused;
          },
        });
        sequences++;
      } finally {
        await tmpfs.close().catch(() => {});
        await sut.close().catch(() => {});
        await rm(shm, { recursive: true, force: true });
        await rm(dir, { recursive: true, force: true });
      }
    }),
    { numRuns: NUM_RUNS, ...(process.env.OBJECTFS_TEST_ORACLE_SEED ? { seed: Number(process.env.OBJECTFS_TEST_ORACLE_SEED) } : {}) },
  );
  expect(sequences).toBe(NUM_RUNS);
  if (process.env.OBJECTFS_TEST_MODEL_STATS) console.log(`steps skipped for sysctl hardening: ${skipped}`);
}, 600_000);
