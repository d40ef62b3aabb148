/**
 * `objectfs log` on a real mount: who wrote which bytes of a file, answered after the file was
 * renamed; filters by uid, pid and time; the same answers from the unmounted data directory and
 * from the journal segments in S3 (any machine can audit).
 */
import { expect, test } from "bun:test";
import { OBJECTFS, sh, startMount } from "../support/mount_harness.ts";
import { createBucket } from "../support/s3_servers.ts";
import { s3Testbed } from "../support/testbed.ts";
import { s3Env } from "../support/s3_client.ts";

const bed = s3Testbed(["ceph-rgw"]);

interface Entry { seq: number; time: number; op: string; uid?: number; pid?: number; paths: string[]; range?: [number, number] }
const parse = (out: string): Entry[] => out.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));

test("who wrote bytes X–Y of a renamed file: through the mount, from the data directory and from S3", async () => {
  const server = await bed.server("ceph-rgw");
  const bucket = await createBucket(server);
  const env = s3Env(server);
  const mnt = await bed.tmp("logmnt");
  const dataDir = await bed.tmp("logdata");
  const m = await startMount({ source: `s3://${bucket}`, mnt, dataDir, args: ["--endpoint", server.endpoint, "--write-back", "0.2", "--seal-interval", "0.2", "--allow-other"], env });
  const as1000 = "setpriv --reuid=1000 --regid=1000 --clear-groups";
  const w = await sh(
    `mkdir -m 777 ${mnt}/w && head -c 4096 /dev/zero > ${mnt}/w/report.txt && chmod 666 ${mnt}/w/report.txt && ` +
      `${as1000} bash -c 'echo $$ > /tmp/objectfs-log-pid; exec dd if=/dev/urandom of=${mnt}/w/report.txt bs=100 seek=10 count=1 conv=notrunc status=none' && ` +
      `mv ${mnt}/w/report.txt ${mnt}/w/final.txt && echo other > ${mnt}/w/other.txt && cat /tmp/objectfs-log-pid`,
    { env },
  );
  expect(w.stderr).toBe("");
  const writerPid = Number(w.stdout.trim());
  const viaMount = await sh(`${OBJECTFS} log ${mnt} --path /w/final.txt --json`, { env });
  expect(viaMount.stderr).toBe("");
  expect(viaMount.code).toBe(0);
  const entries = parse(viaMount.stdout);
  const byUser = entries.filter((e) => e.op === "ExtentWritten" && e.uid === 1000);
  expect(byUser).toHaveLength(1);
  expect(byUser[0]).toMatchObject({ pid: writerPid, comm: "dd", paths: ["/w/report.txt"], range: [1000, 1100] });
  expect(entries.some((e) => e.op === "Renamed" && e.paths[0] === "/w/report.txt" && e.paths[1] === "/w/final.txt")).toBe(true);
  expect(entries.some((e) => e.paths.includes("/w/other.txt"))).toBe(false);

  const byUid = parse((await sh(`${OBJECTFS} log ${mnt} --uid 1000 --json`, { env })).stdout);
  expect(byUid.length).toBeGreaterThan(0);
  expect(byUid.every((e) => e.uid === 1000)).toBe(true);
  expect(parse((await sh(`${OBJECTFS} log ${mnt} --pid ${writerPid} --json`, { env })).stdout).every((e) => e.pid === writerPid)).toBe(true);
  const future = await sh(`${OBJECTFS} log ${mnt} --since 2999-01-01T00:00:00Z --json`, { env });
  expect(future.stdout).toBe("");
  const text = await sh(`${OBJECTFS} log ${mnt} --path /w/final.txt`, { env });
  expect(text.stdout).toContain("(dd)  ExtentWritten  /w/report.txt bytes 1000-1100");
  expect(text.stderr).toContain("operations");

  expect((await sh(`${OBJECTFS} sync ${mnt} --timeout 60`, { env })).code).toBe(0);
  expect(await m.stop()).toBe(0);

  // The same answers without the mount: the data directory, and S3's segments.
  const fromDir = parse((await sh(`${OBJECTFS} log --data-dir ${dataDir} --path /w/final.txt --json`, { env })).stdout);
  expect(fromDir).toEqual(entries);
  const fromS3 = await sh(`${OBJECTFS} log s3://${bucket} --endpoint ${server.endpoint} --path /w/final.txt --json`, { env });
  expect(fromS3.stderr).toBe("");
  expect(parse(fromS3.stdout)).toEqual(entries);
  // A time window: the data directory answers through its indexes, S3 by a scan; the same.
  const window = `--since ${new Date(byUser[0]!.time - 1).toISOString()} --until ${new Date(byUser[0]!.time + 2000).toISOString()}`;
  const windowDir = await sh(`${OBJECTFS} log --data-dir ${dataDir} ${window} --json`, { env });
  const windowS3 = await sh(`${OBJECTFS} log s3://${bucket} --endpoint ${server.endpoint} ${window} --json`, { env });
  expect(parse(windowDir.stdout).length).toBeGreaterThan(2);
  expect(parse(windowDir.stdout)).toEqual(parse(windowS3.stdout));

  const bad = await sh(`${OBJECTFS} log ${mnt} --since yesterday-ish`, { env });
  expect(bad.code).toBe(2);
  expect(bad.stderr).toContain("is not a time");
}, 120_000);
