import { afterAll, beforeAll, expect, test } from "bun:test";
import { chmod, copyFile, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { cleanup, fsckDataDir, sh, startMount, type MountHandle } from "../support/mount_harness.ts";

const SOURCE = join(import.meta.dir, "../support/op_runner.ts");
/** The runner, copied where uid 1000 can read it (the checkout may sit in a 0700 directory). */
let RUNNER = SOURCE;
let runnerDir = "";
const SEEDS = Array.from({ length: 24 }, (_, i) => 1000 + i * 7919);
/** Sequences run as an unprivileged user, in a directory it owns: permission checks matter. */
const USER_SEEDS = Array.from({ length: 12 }, (_, i) => 5000 + i * 104729);
const STEPS = 200;
let m: MountHandle;

beforeAll(async () => {
  runnerDir = await mkdtemp("/dev/shm/objectfs-runner-");
  await chmod(runnerDir, 0o755);
  RUNNER = join(runnerDir, "op_runner.ts");
  await copyFile(SOURCE, RUNNER);
  await chmod(RUNNER, 0o644);
  m = await startMount({ args: ["--allow-other"] }); // other users reach a root-served mount only with allow_other
});
afterAll(async () => {
  if (runnerDir) await rm(runnerDir, { recursive: true, force: true });
  if (m) {
    await m.stop();
    const fsck = await fsckDataDir(m.dataDir);
    await cleanup(m.mnt, m.dataDir);
    expect(fsck.code).toBe(0);
  }
});

async function run(root: string, seed: number, asUser?: number): Promise<{ log: [string, unknown][]; tree: Record<string, unknown> }> {
  const as = asUser === undefined ? "" : `setpriv --reuid=${asUser} --regid=${asUser} --clear-groups `;
  const r = await sh(`${as}${JSON.stringify(process.execPath)} ${JSON.stringify(RUNNER)} ${JSON.stringify(root)} ${seed} ${STEPS}`);
  if (r.code !== 0) throw new Error(`op runner failed on ${root}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const cases = [...SEEDS.map((seed) => ({ seed, user: undefined as number | undefined })), ...USER_SEEDS.map((seed) => ({ seed, user: 1000 }))];
for (const { seed, user } of cases) {
  const who = user === undefined ? "root" : `uid ${user}`;
  test(`random operation sequence ${seed} run as ${who} gives the same results, errnos and final tree on the mount as on tmpfs`, async () => {
    const onMount = join(m.mnt, `seq-${seed}`);
    const onTmpfs = await mkdtemp("/dev/shm/objectfs-diff-");
    try {
      const owner = user === undefined ? "" : ` && chown ${user}:${user} ${JSON.stringify(onMount)} ${JSON.stringify(onTmpfs)}`;
      const made = await sh(`mkdir ${JSON.stringify(onMount)} && chmod 755 ${JSON.stringify(onTmpfs)}${owner}`);
      if (made.code !== 0) throw new Error(made.stderr);
      const [ours, theirs] = [await run(onMount, seed, user), await run(onTmpfs, seed, user)];
      for (let i = 0; i < theirs.log.length; i++) {
        const [op, want] = theirs.log[i]!;
        const got = ours.log[i]![1];
        if (JSON.stringify(got) !== JSON.stringify(want)) {
          throw new Error(`seed ${seed} step ${i} "${op}": tmpfs gave ${JSON.stringify(want)}, objectfs gave ${JSON.stringify(got)}`);
        }
      }
      expect(ours.tree).toEqual(theirs.tree);
    } finally {
      await sh(`chmod -R u+rwx ${JSON.stringify(onTmpfs)}`);
      await rm(onTmpfs, { recursive: true, force: true });
    }
  });
}
