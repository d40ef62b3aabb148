/**
 * The mount's commit interval: what was written without fsync is made durable within seconds
 * anyway, so after a SIGKILL (or a power loss) the next open has nothing to check or cut.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Journal } from "../../journal/mod.ts";
import { cleanup, sh, startMount, type MountHandle } from "../support/mount_harness.ts";

const dirs: string[] = [];
const live: MountHandle[] = [];
afterAll(async () => {
  for (const m of live) await m.kill().catch(() => {});
  await cleanup(...dirs);
});

test("writes nobody fsynced are durable within the commit interval: the open after a SIGKILL checks nothing", async () => {
  const mnt = await mkdtemp(join(tmpdir(), "objectfs-settle-mnt-"));
  const dataDir = await mkdtemp(join(tmpdir(), "objectfs-settle-data-"));
  dirs.push(mnt, dataDir);
  const m = await startMount({ mnt, dataDir });
  live.push(m);
  // A closed file (durable on close), then a rename, a chmod and the bytes of a file still
  // open: nothing asks for these to be synced.
  const w = await sh(`mkdir ${mnt}/d && echo hello > ${mnt}/d/a && mv ${mnt}/d/a ${mnt}/d/b && chmod 600 ${mnt}/d/b && (exec 3>${mnt}/d/open; head -c 70000 /dev/urandom >&3; sleep 9) >/dev/null 2>&1 &`);
  expect(w.stderr).toBe("");
  await Bun.sleep(7000);
  await m.kill();
  await sh(`fusermount -uz ${mnt} 2>/dev/null; true`);
  const j = await Journal.open(dataDir);
  try {
    expect(j.recovery).toBeUndefined();
  } finally {
    await j.close();
  }
  const again = await startMount({ mnt, dataDir });
  live.push(again);
  expect((await sh(`stat -c '%a %s' ${mnt}/d/b ${mnt}/d/open`)).stdout).toBe("600 6\n644 70000\n");
  expect(await again.stop()).toBe(0);
}, 60_000);
