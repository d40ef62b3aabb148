/**
 * Time travel and restore: the tree captured at several points of a workload (create, write,
 * rename, delete, chmod, hard link, symlink) equals `mount --at` of that point (by seq and by
 * time) from the local data directory, and `restore --at` from S3 alone into a fresh
 * directory; a corrupted segment is refused by name, or used up to its last good point when
 * asked.
 */
import { expect, test } from "bun:test";
import { join } from "node:path";
import { makeObjectStore } from "../../src/s3/mod.ts";
import { OBJECTFS, sh, startMount } from "../support/mount_harness.ts";
import { createBucket, storeConfig } from "../support/s3_servers.ts";
import { s3Testbed } from "../support/testbed.ts";
import { s3Env } from "../support/s3_client.ts";

const bed = s3Testbed(["ceph-rgw"]);

const tmp = (name: string) => bed.tmp(`tt-${name}`);

/** Names, kinds, modes, sizes, link targets and contents of a tree. */
async function capture(dir: string): Promise<string> {
  const r = await sh(`cd ${dir} && find . -mindepth 1 -printf '%p %y %m %s %l %n\\n' | sort && find . -type f -print0 | sort -z | xargs -0 -r md5sum`);
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout;
}

const PHASES = [
  (m: string) => `mkdir ${m}/d && echo one > ${m}/a && echo two > ${m}/b && head -c 300000 /dev/urandom > ${m}/d/big && ln -s a ${m}/ln`,
  (m: string) => `echo more >> ${m}/a && mv ${m}/b ${m}/d/c && ln ${m}/d/big ${m}/hard && chmod 600 ${m}/a`,
  (m: string) => `rm ${m}/a && echo five > ${m}/e && dd if=/dev/zero of=${m}/d/big bs=1000 seek=5 count=1 conv=notrunc status=none && rmdir ${m}/d 2>/dev/null; mkdir ${m}/f`,
];

test("the tree at each point equals mount --at (seq and time) locally and restore --at from S3; a corrupt segment is named", async () => {
  const server = await bed.server("ceph-rgw");
  const bucket = await createBucket(server);
  const env = s3Env(server);
  const mnt = await tmp("mnt");
  const dataDir = await tmp("data");
  const m = await startMount({ source: `s3://${bucket}`, mnt, dataDir, args: ["--endpoint", server.endpoint, "--write-back", "0.2", "--seal-interval", "0.2"], env });
  const points: { seq: number; time: string; tree: string }[] = [];
  for (const phase of PHASES) {
    const r = await sh(phase(mnt), { env });
    expect(r.code).toBe(0);
    await Bun.sleep(50);
    const last = (await sh(`${OBJECTFS} log ${mnt} --json | tail -1`, { env })).stdout;
    const seq = JSON.parse(last).seq as number;
    const tree = await capture(mnt);
    await Bun.sleep(1100);
    points.push({ seq, time: new Date(Date.now() - 500).toISOString(), tree });
  }
  expect(new Set(points.map((p) => p.tree)).size).toBe(3);
  expect((await sh(`${OBJECTFS} sync ${mnt} --timeout 60`, { env })).code).toBe(0);
  expect(await m.stop()).toBe(0);

  for (const p of points) {
    // Local data directory, by seq and by time.
    for (const at of [String(p.seq), p.time]) {
      const past = await tmp("past");
      const pm = await startMount({ mnt: past, dataDir, args: ["--at", at], env });
      const tree = await capture(past);
      const w = await sh(`touch ${past}/new`, { env });
      expect(await pm.stop()).toBe(0);
      expect(tree).toBe(p.tree);
      expect(w.stderr).toContain("Read-only file system");
    }
    // S3 alone, into a fresh directory.
    const into = join(await tmp("restore"), "tree");
    const r = await sh(`${OBJECTFS} restore s3://${bucket} ${into} --at ${p.seq} --endpoint ${server.endpoint}`, { env });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await capture(into)).toBe(p.tree);
  }
  // A mount of the bucket as it was, on "another machine" (no data directory of its own).
  const past = await tmp("s3past");
  const pm = await startMount({ source: `s3://${bucket}`, mnt: past, dataDir: await tmp("unused"), args: ["--endpoint", server.endpoint, "--at", String(points[1]!.seq)], env });
  expect(await capture(past)).toBe(points[1]!.tree);
  expect(await pm.stop()).toBe(0);

  // Corrupt the last segment: restore names it, or stops before it when asked.
  const store = makeObjectStore(storeConfig(server, bucket));
  const segs: string[] = [];
  for await (const e of store.list({ prefix: ".objectfs/journal/" })) if (e.kind === "object") segs.push(e.key);
  const victim = segs.sort().at(-1)!;
  const bytes = Buffer.from((await store.get(victim)).bytes);
  bytes[60]! ^= 1;
  await store.put(victim, bytes);
  store.close();
  const refused = await sh(`${OBJECTFS} restore s3://${bucket} ${join(await tmp("bad"), "t")} --endpoint ${server.endpoint}`, { env });
  expect(refused.code).toBe(1);
  expect(refused.stderr).toContain(victim);
  expect(refused.stderr).toContain("--stop-at-corruption");
  const partial = await sh(`${OBJECTFS} restore s3://${bucket} ${join(await tmp("partial"), "t")} --endpoint ${server.endpoint} --stop-at-corruption`, { env });
  expect(partial.code).toBe(0);
  expect(partial.stderr).toContain("the last good point");

  const notEmpty = await sh(`${OBJECTFS} restore --data-dir ${dataDir} ${dataDir}`, { env });
  expect(notEmpty.code).toBe(1);
  expect(notEmpty.stderr).toContain("is not empty");
}, 240_000);
