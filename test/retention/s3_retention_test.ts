/**
 * Retention of an S3 mount, through a real mount, on both servers: after `objectfs compact`,
 * the journal in S3 is a checkpoint and compacted segments in levels; a restore from S3 alone
 * of every point in the data window equals the tree captured then, an older point is refused
 * naming the oldest that can be restored, the audit log from S3 keeps the events of the events
 * window (and none older), bytes no retained point shows are gone from S3, and the data
 * directory stays consistent (fsck clean).
 */
import { expect, test } from "bun:test";
import { join } from "node:path";
import { makeObjectStore } from "../../src/s3/mod.ts";
import { fsckDataDir, OBJECTFS, sh, startMount } from "../support/mount_harness.ts";
import { createBucket, S3_SERVER_KINDS, storeConfig } from "../support/s3_servers.ts";
import { s3Env } from "../support/s3_client.ts";
import { s3Testbed } from "../support/testbed.ts";

const bed = s3Testbed();

async function capture(dir: string): Promise<string> {
  const r = await sh(`cd ${dir} && find . -mindepth 1 -printf '%p %y %m %s %l %n\\n' | sort && find . -type f -print0 | sort -z | xargs -0 -r md5sum`);
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout;
}

async function journalObjects(server: Parameters<typeof storeConfig>[0], bucket: string): Promise<{ key: string; size: number }[]> {
  const store = makeObjectStore(storeConfig(server, bucket));
  const out: { key: string; size: number }[] = [];
  for await (const e of store.list({ prefix: ".objectfs/journal/" })) if (e.kind === "object") out.push({ key: e.key, size: e.size });
  store.close();
  return out;
}

const PHASES = [
  (m: string) => `mkdir ${m}/d && head -c 6000000 /dev/urandom > ${m}/big && echo one > ${m}/a && echo two > ${m}/d/b && ln -s a ${m}/ln`,
  (m: string) => `head -c 6000000 /dev/urandom > ${m}/big && mv ${m}/d/b ${m}/d/b2 && echo more >> ${m}/a && rm ${m}/ln && mkdir ${m}/e`,
  (m: string) => `echo three > ${m}/e/c && chmod 600 ${m}/a && dd if=/dev/zero of=${m}/big bs=1000 seek=7 count=3 conv=notrunc status=none`,
];

for (const kind of S3_SERVER_KINDS) {
  test(`${kind}: after compaction S3 alone restores every point of the data window, refuses older ones, and keeps the audit window`, async () => {
    const server = await bed.server(kind);
    const bucket = await createBucket(server);
    const env = s3Env(server);
    const mnt = await bed.tmp("ret-mnt");
    const dataDir = await bed.tmp("ret-data");
    const m = bed.mount(await startMount({ source: `s3://${bucket}`, mnt, dataDir, args: ["--endpoint", server.endpoint, "--write-back", "0.2", "--seal-interval", "0.2", "--compact-after", "0"], env }));
    const points: { seq: number; tree: string; end: number }[] = [];
    for (const phase of PHASES) {
      const r = await sh(phase(mnt), { env });
      expect(r.stderr).toBe("");
      expect((await sh(`${OBJECTFS} sync ${mnt} --timeout 60`, { env })).code).toBe(0);
      const last = (await sh(`${OBJECTFS} log ${mnt} --json | tail -1`, { env })).stdout;
      points.push({ seq: JSON.parse(last).seq as number, tree: await capture(mnt), end: Date.now() });
      await Bun.sleep(2500);
    }
    expect(new Set(points.map((p) => p.tree)).size).toBe(3);
    const before = await journalObjects(server, bucket);
    const beforeBytes = before.reduce((n, o) => n + o.size, 0);

    // One pass: events older than the end of phase A go, bytes only phase A showed too.
    const now = Date.now();
    const eventsMs = now - points[0]!.end - 150;
    const dataMs = now - points[1]!.end - 150;
    const c = await sh(`${OBJECTFS} compact ${mnt} --json --retain-data ${dataMs}ms --retain-events ${eventsMs}ms`, { env });
    expect(c.stderr).toBe("");
    expect(c.code).toBe(0);
    const report = JSON.parse(c.stdout);
    expect(report.checkpoint.seq).toBeGreaterThanOrEqual(points[0]!.seq);
    expect(report.checkpoint.seq).toBeLessThan(points[1]!.seq);
    expect(report.checkpoint.dataFrom).toBeGreaterThanOrEqual(points[1]!.seq);
    expect(report.checkpoint.dataFrom).toBeLessThan(points[2]!.seq);
    expect(report.local.eventsRemoved).toBeGreaterThan(0);
    expect(report.remote.written).toBeGreaterThan(0);
    // A second pass with the same windows finds nothing more to drop (segments shipped since may merge).
    const now2 = Date.now();
    const again = JSON.parse((await sh(`${OBJECTFS} compact ${mnt} --json --retain-data ${now2 - points[1]!.end - 150}ms --retain-events ${now2 - points[0]!.end - 150}ms`, { env })).stdout);
    expect(again.checkpoint.dataFrom).toBeLessThan(points[2]!.seq);
    expect(again.checkpoint.dataFrom).toBeGreaterThanOrEqual(report.checkpoint.dataFrom);
    const after = await journalObjects(server, bucket);
    expect(after.length).toBeLessThan(before.length);
    expect(after.some((o) => /\/L[12]\//.test(o.key))).toBe(true);
    // big's first 6 MB were shown only by phase A: they are gone from S3.
    expect(after.reduce((n, o) => n + o.size, 0)).toBeLessThan(beforeBytes - 5_000_000);

    // Restore from S3 alone: every retained point; older ones refused by name.
    // (Between phases only replication facts were journaled: the tree at dataFrom is phase B's.)
    const dataFrom = again.checkpoint.dataFrom as number;
    for (const [at, tree] of [[dataFrom, points[1]!.tree], [points[2]!.seq, points[2]!.tree]] as const) {
      const into = join(await bed.tmp("ret-restore"), "t");
      const r = await sh(`${OBJECTFS} restore s3://${bucket} ${into} --at ${at} --endpoint ${server.endpoint}`, { env });
      expect(r.stderr).toBe("");
      expect(await capture(into)).toBe(tree);
    }
    // mount --at on "another machine" replays from the checkpoint too.
    const past = await bed.tmp("ret-past");
    const pm = await startMount({ source: `s3://${bucket}`, mnt: past, dataDir: await bed.tmp("ret-unused"), args: ["--endpoint", server.endpoint, "--at", String(dataFrom)], env });
    expect(await capture(past)).toBe(points[1]!.tree);
    expect(await pm.stop()).toBe(0);
    const old = await sh(`${OBJECTFS} restore s3://${bucket} ${join(await bed.tmp("ret-old"), "t")} --at ${points[0]!.seq} --endpoint ${server.endpoint}`, { env });
    expect(old.code).toBe(1);
    expect(old.stderr).toContain(`older than the retained window: the oldest point that can be restored is seq ${dataFrom}`);

    // The audit log from S3: nothing up to the checkpoint, everything after it, with paths.
    const log = (await sh(`${OBJECTFS} log s3://${bucket} --endpoint ${server.endpoint} --json`, { env })).stdout.trim().split("\n").map((l) => JSON.parse(l));
    expect(Math.min(...log.map((e) => e.seq))).toBeGreaterThan(again.checkpoint.seq);
    expect(log.some((e) => e.op === "ExtentWritten" && e.paths[0] === "/big" && e.seq <= dataFrom && e.seq > again.checkpoint.seq)).toBe(true);
    expect(log.some((e) => e.op === "Renamed" && e.paths[0] === "/d/b" && e.paths[1] === "/d/b2")).toBe(true);

    // The mount goes on: a new write, and the data directory is consistent.
    expect((await sh(`echo four > ${mnt}/e/d && ${OBJECTFS} sync ${mnt} --timeout 60`, { env })).code).toBe(0);
    expect(await m.stop()).toBe(0);
    const f = await fsckDataDir(dataDir);
    expect(f.output).toContain("clean");
  }, 240_000);
}
