/**
 * Retention from the command line, on a real local-only mount: bad windows refused in one
 * sentence; `objectfs compact` through the mount and on an unmounted data directory; after it
 * the latest tree is intact, restorable, the data directory smaller and fsck clean, and the
 * audit log keeps exactly the events of its window.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cleanup, fsckDataDir, OBJECTFS, sh, startMount } from "../support/mount_harness.ts";

const dirs: string[] = [];
afterAll(() => cleanup(...dirs));
const tmp = async (name: string) => {
  const d = await mkdtemp(join(tmpdir(), `objectfs-retcli-${name}-`));
  dirs.push(d);
  return d;
};

test("bad retention windows are refused in one sentence naming the fix", async () => {
  const mnt = await tmp("mnt");
  for (const [args, says] of [
    ["--retain-data 2d --retain-events 1d", "retain-events (1d) is shorter than retain-data (2d)"],
    ["--retain-data forever", "retain-data cannot be forever"],
    ["--retain-data 3x", "retain-data must be a duration like 7d, 12h, 30m, 45s or forever"],
    ["--compact-interval 10ms", "compact-interval 10ms is too short"],
  ] as const) {
    const r = await sh(`${OBJECTFS} mount ${mnt} --data-dir ${await tmp("data")} --foreground ${args}`);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(says);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
  }
  const half = await sh(`${OBJECTFS} compact ${mnt} --retain-data 1h`);
  expect(half.code).toBe(2);
  expect(half.stderr).toContain("give both --retain-data and --retain-events");
});

test("objectfs compact through a mount and on its data directory drops old bytes and events, and nothing the tree shows", async () => {
  const mnt = await tmp("mnt");
  const dataDir = await tmp("data");
  const m = await startMount({ mnt, dataDir });
  const w = await sh(
    `mkdir ${mnt}/d && head -c 8000000 /dev/urandom > ${mnt}/d/old && head -c 8000000 /dev/urandom > ${mnt}/d/old && echo keep > ${mnt}/keep && ln -s keep ${mnt}/ln && rm ${mnt}/d/old && head -c 3000000 /dev/urandom > ${mnt}/big`,
  );
  expect(w.stderr).toBe("");
  const tree = (await sh(`cd ${mnt} && find . -printf '%p %y %m %s %l\\n' | sort && md5sum big keep`)).stdout;
  await Bun.sleep(1200);
  const before = Number((await sh(`du -sk ${dataDir}/data | cut -f1`)).stdout.trim());
  // Everything older than a second: the tree now must be kept whole.
  const c = await sh(`${OBJECTFS} compact ${mnt} --retain-data 1s --retain-events 1s --json`);
  expect(c.stderr).toBe("");
  expect(c.code).toBe(0);
  const report = JSON.parse(c.stdout);
  expect(report.local.eventsRemoved).toBeGreaterThan(0);
  expect(report.local.bytesDead).toBeGreaterThanOrEqual(16_000_000);
  expect((await sh(`cd ${mnt} && find . -printf '%p %y %m %s %l\\n' | sort && md5sum big keep`)).stdout).toBe(tree);
  // Writes go on after the pass.
  expect((await sh(`echo later > ${mnt}/later`)).code).toBe(0);
  expect(await m.stop()).toBe(0);
  const after = Number((await sh(`du -sk ${dataDir}/data | cut -f1`)).stdout.trim());
  expect(after).toBeLessThan(before - 12_000);
  expect((await fsckDataDir(dataDir)).output).toContain("clean");
  // The audit log starts after the checkpoint; the later write is in it.
  const log = (await sh(`${OBJECTFS} log --data-dir ${dataDir} --json`)).stdout.trim().split("\n").map((l) => JSON.parse(l));
  expect(log.every((e) => e.seq > report.checkpoint.seq)).toBe(true);
  expect(log.some((e) => e.paths.includes("/later"))).toBe(true);
  // A restore of the latest state from the data directory alone equals the tree (plus the later file).
  const into = join(await tmp("into"), "t");
  const r = await sh(`${OBJECTFS} restore --data-dir ${dataDir} ${into}`);
  expect(r.stderr).toBe("");
  expect((await sh(`cd ${into} && rm later && find . -printf '%p %y %m %s %l\\n' | sort && md5sum big keep`)).stdout).toBe(tree);
  // Unmounted: a second pass with the same windows later still keeps the latest state.
  await Bun.sleep(1100);
  const off = await sh(`${OBJECTFS} compact --data-dir ${dataDir} --retain-data 1s --retain-events 1s`);
  expect(off.stderr).toContain("retention: checkpoint at seq");
  expect(off.code).toBe(0);
  expect((await fsckDataDir(dataDir)).output).toContain("clean");
  const old = await sh(`${OBJECTFS} restore --data-dir ${dataDir} ${join(await tmp("old"), "t")} --at 3`);
  expect(old.code).toBe(1);
  expect(old.stderr).toContain("older than the retained window");
}, 120_000);
