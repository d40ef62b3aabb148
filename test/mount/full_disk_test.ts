import { afterAll, expect, test } from "bun:test";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cleanup, fsckDataDir, sh, startMount } from "../support/mount_harness.ts";

const q = (s: string) => JSON.stringify(s);
let disk = "";
let mnt = "";
afterAll(async () => {
  if (mnt) await cleanup(mnt);
  if (disk) {
    await sh(`umount -l ${q(disk)}`);
    await cleanup(disk);
  }
});

test("a full disk stops the mount with ENOSPC and one clear log line, loses nothing fsynced, and it works again once remounted with space", async () => {
  disk = await mkdtemp(join(tmpdir(), "objectfs-small-disk-"));
  mnt = await mkdtemp(join(tmpdir(), "objectfs-mnt-"));
  const made = await sh(`mount -t tmpfs -o size=24m objectfs-test ${q(disk)}`);
  if (made.code !== 0) throw new Error(`cannot make a small tmpfs for the data directory (needs root): ${made.stderr}`);
  const dataDir = join(disk, "data");

  const m = await startMount({ mnt, dataDir });
  const kept = await sh(`cd ${q(mnt)} && head -c 4000000 /dev/urandom > kept && sync kept && md5sum kept`);
  expect(kept.code).toBe(0);
  const sum = kept.stdout.split(" ")[0];
  // More than the disk holds.
  const big = await sh(`cd ${q(mnt)} && dd if=/dev/urandom of=big bs=1M count=40 conv=fsync`);
  expect(big.code).not.toBe(0);
  expect(big.stderr).toMatch(/No space left on device|Input\/output error/);
  // Stopped (fail-stop: what is in memory may be ahead of the disk), not corrupted.
  const after = await sh(`cd ${q(mnt)} && touch another`);
  expect(after.code).not.toBe(0);
  expect(after.stderr).toContain("No space left on device");
  await m.stop();
  expect(m.stderr()).toContain("the disk is full; nothing acknowledged is lost, free space and remount");

  // Make room (as a user would) and mount again: everything fsynced is there, fsck is clean.
  expect((await sh(`mount -o remount,size=96m ${q(disk)}`)).code).toBe(0);
  const again = await startMount({ mnt, dataDir });
  const back = await sh(`cd ${q(mnt)} && md5sum kept && echo more > another && cat another`);
  expect(back.code).toBe(0);
  expect(back.stdout).toContain(sum!);
  expect(back.stdout).toContain("more");
  expect(await again.stop()).toBe(0);
  const fsck = await fsckDataDir(dataDir);
  expect(fsck.output).toContain("clean");
  expect(fsck.code).toBe(0);
}, 120_000);
