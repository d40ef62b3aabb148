/**
 * Retention is safe to kill: a mount is SIGKILLed at a random moment of `objectfs compact`
 * (checkpoint written, events being removed, payloads dropped, data log files rewritten),
 * cycle after cycle; after each, the next mount shows the tree byte for byte, the latest
 * state restores from the data directory alone, and fsck is clean.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cleanup, fsckDataDir, OBJECTFS, sh, startMount, type MountHandle } from "../support/mount_harness.ts";

const CYCLES = Number(process.env.OBJECTFS_TEST_RETENTION_CRASH_CYCLES ?? 6);
const dirs: string[] = [];
const live: MountHandle[] = [];
afterAll(async () => {
  for (const m of live) await m.kill().catch(() => {});
  await cleanup(...dirs);
});
const tmp = async (name: string) => {
  const d = await mkdtemp(join(tmpdir(), `objectfs-retcrash-${name}-`));
  dirs.push(d);
  return d;
};

const tree = async (dir: string) => (await sh(`cd ${dir} && find . -printf '%p %y %m %s %l\\n' | sort && find . -type f -print0 | sort -z | xargs -0 -r md5sum`)).stdout;

test(`SIGKILL during retention passes, ${CYCLES} cycles: the tree survives whole, restorable, fsck clean`, async () => {
  const mnt = await tmp("mnt");
  const dataDir = await tmp("data");
  for (let cycle = 0; cycle < CYCLES; cycle++) {
    const m = await startMount({ mnt, dataDir });
    live.push(m);
    // New bytes over old ones: work for the pass (dead data, events to remove).
    const w = await sh(
      `mkdir -p ${mnt}/d${cycle} && head -c 6000000 /dev/urandom > ${mnt}/big && head -c 300000 /dev/urandom > ${mnt}/d${cycle}/f && ` +
        `for i in 1 2 3 4 5; do echo "$i $RANDOM" > ${mnt}/d${cycle}/s$i; done && rm -f ${mnt}/d${Math.max(0, cycle - 1)}/s1`,
    );
    expect(w.stderr).toBe("");
    const before = await tree(mnt);
    await Bun.sleep(300);
    const pass = Bun.spawn(["bash", "-c", `${OBJECTFS} compact ${mnt} --retain-data 200ms --retain-events 200ms`], { stdout: "ignore", stderr: "ignore" });
    await Bun.sleep(Math.floor(Math.random() * 400));
    await m.kill();
    live.splice(live.indexOf(m), 1);
    await pass.exited;
    await sh(`fusermount -uz ${mnt}`);
    const again = await startMount({ mnt, dataDir });
    live.push(again);
    expect(await tree(mnt)).toBe(before);
    expect(await again.stop()).toBe(0);
    live.splice(live.indexOf(again), 1);
    const f = await fsckDataDir(dataDir);
    expect(f.output).toContain("clean");
    const into = join(await tmp("into"), "t");
    const r = await sh(`${OBJECTFS} restore --data-dir ${dataDir} ${into}`);
    expect(r.stderr).toBe("");
    expect(await tree(into)).toBe(before);
  }
}, 600_000);
