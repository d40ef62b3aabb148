/**
 * Restore writes the whole aligned blocks of large writes with O_DIRECT and the rest through
 * the page cache: every file comes out with exactly the bytes the filesystem shows, whatever
 * the writes' offsets and lengths (unaligned starts and ends, small writes into blocks written
 * directly before, large ones over small ones, truncations), on a filesystem that takes
 * O_DIRECT (the bytes then mostly go around the page cache) and on one that refuses it (a
 * ramfs mounted here: everything through the page cache).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { mkdtemp, open, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT_INO, type Ino } from "../../journal/mod.ts";
import { restoreHistory } from "../../src/audit/restore.ts";
import { openHistory } from "../../src/cli/history.ts";
import { Filesystem } from "../../src/fs/filesystem.ts";
import { sh } from "../support/mount_harness.ts";
import { ROOT } from "../support/s3_client.ts";

const MiB = 1 << 20;
const cleanups: (() => Promise<unknown>)[] = [];
let dataDir: string;
/** What each file must hold. */
const expected = new Map<string, Buffer>();

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), "objectfs-restore-direct-"));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  const fs = await Filesystem.open(dataDir);
  const O_RDWR_CREAT = 0o102;
  // [offset, length] per write, per file: aligned and unaligned, large and small, overlapping.
  const plans: [number, number][][] = [
    [[0, 4 * MiB]], // aligned, whole pieces
    [[123, MiB + 777], [MiB + 5000, 3 * MiB + 1]], // unaligned both ends
    [[0, 2 * MiB], [4096 + 10, 20], [MiB - 3, 7], [8192, MiB + 4096]], // small writes into direct blocks, a large one over them
    [[5, 100], [0, MiB], [MiB * 2 + 4095, 2 * MiB]], // a large write over a small one; a hole before the last
    [[0, 3 * MiB], [-1, 0], [MiB / 2, 2 * MiB]], // truncated (-1: to 1.5 MiB), then written across the cut
  ];
  for (let f = 0; f < plans.length; f++) {
    const { fh, attr } = await fs.create(ROOT, ROOT_INO as Ino, `f${f}`, 0o644, O_RDWR_CREAT);
    let model = Buffer.alloc(0);
    for (const [offset, length] of plans[f]!) {
      if (offset === -1) {
        const size = Math.floor(model.length / 2);
        await fs.setattr(ROOT, attr.ino, { size });
        model = model.subarray(0, size);
        continue;
      }
      const data = randomBytes(length);
      await fs.write(ROOT, fh, offset, data);
      if (model.length < offset + length) model = Buffer.concat([model, Buffer.alloc(offset + length - model.length)]);
      data.copy(model, offset);
    }
    await fs.release(ROOT, fh);
    expected.set(`f${f}`, Buffer.from(model));
  }
  await fs.close();
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/** Whether files in `dir` can be opened with O_DIRECT. */
async function takesDirect(dir: string): Promise<boolean> {
  const probe = join(dir, "probe");
  try {
    await (await open(probe, constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT, 0o600)).close();
    return true;
  } catch {
    return false;
  } finally {
    await rm(probe, { force: true });
  }
}

async function restoreInto(base: string) {
  const parent = await mkdtemp(join(base, "objectfs-restore-direct-into-"));
  cleanups.push(() => rm(parent, { recursive: true, force: true }));
  const into = join(parent, "t");
  const h = await openHistory({ kind: "local", dataDir }, () => {});
  try {
    const done = await restoreHistory(h.history, undefined, into);
    return { into, done, direct: await takesDirect(parent) };
  } finally {
    await h.close();
  }
}

async function checkFiles(into: string) {
  expect((await readdir(into)).sort()).toEqual([...expected.keys()].sort());
  for (const [name, want] of expected) {
    const got = await readFile(join(into, name));
    expect(got.length).toBe(want.length);
    expect(got.equals(want)).toBe(true);
  }
}

test("restore onto a filesystem that takes O_DIRECT: the bytes exactly, most of them written around the page cache", async () => {
  const { into, done, direct } = await restoreInto(tmpdir());
  await checkFiles(into);
  if (!direct) throw new Error(`${tmpdir()} refuses O_DIRECT, so this test cannot see direct writes; point TMPDIR at a disk filesystem (ext4, xfs)`);
  // Every write of 1 MiB or more has its whole aligned blocks written directly.
  expect(done.direct).toBeGreaterThan(10 * MiB);
  expect(done.direct % 4096).toBe(0);
});

test("restore onto ramfs (no O_DIRECT): the same bytes, all through the page cache", async () => {
  const ramfs = await mkdtemp(join(tmpdir(), "objectfs-restore-ramfs-"));
  const mounted = await sh(`mount -t ramfs ramfs ${ramfs}`);
  if (mounted.code !== 0) throw new Error(`cannot mount a ramfs at ${ramfs} (this test needs root): ${mounted.stderr.trim()}`);
  cleanups.push(async () => {
    await sh(`umount ${ramfs}`);
    await rm(ramfs, { recursive: true, force: true });
  });
  const { into, done, direct } = await restoreInto(ramfs);
  expect(direct).toBe(false);
  await checkFiles(into);
  expect(done.direct).toBe(0);
});

test("restore onto a filesystem that fills up: one sentence naming the directory, the fix and what is left (nothing)", async () => {
  const small = await mkdtemp(join(tmpdir(), "objectfs-restore-small-"));
  const mounted = await sh(`mount -t tmpfs -o size=4m objectfs-test ${small}`);
  if (mounted.code !== 0) throw new Error(`cannot mount a small tmpfs at ${small} (this test needs root): ${mounted.stderr.trim()}`);
  cleanups.push(async () => {
    await sh(`umount ${small}`);
    await rm(small, { recursive: true, force: true });
  });
  const into = join(small, "a", "b", "t"); // parents the restore makes, and must remove again
  const h = await openHistory({ kind: "local", dataDir }, () => {});
  const failure = await restoreHistory(h.history, undefined, into).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  await h.close();
  expect(failure?.message).toMatch(new RegExp(`^the filesystem of ${into} is full \\(no space\\) after [0-9.]+ MiB of file bytes; free space there or restore into a directory on a larger filesystem \\(nothing was left in ${into}\\)$`));
  expect(await readdir(small)).toEqual([]); // the directories it made are gone too
});

test("restore onto a read-only filesystem: one sentence naming the directory and the fix", async () => {
  const ro = await mkdtemp(join(tmpdir(), "objectfs-restore-ro-"));
  const mounted = await sh(`mount -t tmpfs -o ro,size=1m objectfs-test ${ro}`);
  if (mounted.code !== 0) throw new Error(`cannot mount a read-only tmpfs at ${ro} (this test needs root): ${mounted.stderr.trim()}`);
  cleanups.push(async () => {
    await sh(`umount ${ro}`);
    await rm(ro, { recursive: true, force: true });
  });
  const into = join(ro, "t");
  const h = await openHistory({ kind: "local", dataDir }, () => {});
  const failure = await restoreHistory(h.history, undefined, into).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  await h.close();
  expect(failure?.message).toStartWith(`cannot write into ${into} (EROFS: `);
  expect(failure?.message).toEndWith("); restore into a directory this user may write, on a writable filesystem");
});

test("a restore makes its filesystem durable before it reports done; one whose sync fails is an error that leaves nothing behind", async () => {
  // Done: the files are there (and `sync --file-system` ran: without it on PATH, below, the restore fails).
  const { into } = await restoreInto(tmpdir());
  await checkFiles(into);
  const parent = await mkdtemp(join(tmpdir(), "objectfs-restore-nosync-"));
  cleanups.push(() => rm(parent, { recursive: true, force: true }));
  const target = join(parent, "t");
  const h = await openHistory({ kind: "local", dataDir }, () => {});
  const path = process.env.PATH;
  process.env.PATH = parent; // no `sync` here
  const failure = await restoreHistory(h.history, undefined, target).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  process.env.PATH = path;
  await h.close();
  expect(failure?.message).toStartWith(`cannot make the restored files in ${target} durable (sync --file-system: `);
  expect(failure?.message).toEndWith("); check that filesystem, then restore again");
  expect(await readdir(parent)).toEqual([]);
});
