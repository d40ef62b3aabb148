/**
 * Audit and restore, in one run:
 * 1. `objectfs log` queries over a journal of about 1M events (made in-process with the fs core:
 *    files created, written, renamed, chmodded by two users): by path (following renames), by
 *    uid, and by time, each three times (the best run counts; all are printed). Target: a query ≤ 1 s.
 * 2. Restore from S3 (Ceph RGW started here) of a tree of large files into a directory, beside
 *    a plain SDK download of the same bytes (the materialized objects, 4 in parallel) into files
 *    of a directory on the same disk, in the same run: what one would do without objectfs.
 *    The files are written in 1 MiB pieces, as the kernel hands writes to a mount (so each
 *    ExtentWritten carries at most 1 MiB, as in a journal made through one).
 *    Each is run four times, alternately (which goes first changes each round), each one's
 *    files removed after it, and the best of each counts. Target: restore throughput
 *    ≥ 80% of the plain download.
 *
 *   bun bench/audit.ts [--events N] [--restore-mib N] [--only queries|restore]
 *
 * `--only` runs one part (its figures and target alone): `--only restore` takes about 40 s.
 */
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ROOT_INO, type Ino } from "../journal/mod.ts";
import { auditLog, type LogFilter } from "../src/audit/log.ts";
import { restoreHistory } from "../src/audit/restore.ts";
import { openHistory } from "../src/cli/history.ts";
import { Filesystem } from "../src/fs/filesystem.ts";
import { createBucket, startCephRgw, storeConfig } from "../test/support/s3_servers.ts";
import { openClient, ROOT } from "../test/support/s3_client.ts";

const { values } = parseArgs({ options: { events: { type: "string", default: "1000000" }, "restore-mib": { type: "string", default: "256" }, only: { type: "string" } } });
if (values.only !== undefined && values.only !== "queries" && values.only !== "restore") {
  throw new Error(`--only ${values.only} is not a part of this benchmark; use --only queries or --only restore`);
}
const EVENTS = Number(values.events);
const RESTORE_MIB = Number(values["restore-mib"]);
const MiB = 1024 * 1024;
const log = (m: string) => process.stderr.write(`${m}\n`);
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;
const cleanups: (() => Promise<unknown>)[] = [];

/** A query run three times: the best run counts (this machine's neighbours are noisy), every run is printed. */
async function timeQuery(fs: Filesystem, filter: LogFilter): Promise<{ seconds: number; runs: number[]; entries: number }> {
  const runs: number[] = [];
  let entries = 0;
  for (let r = 0; r < 3; r++) {
    const t = performance.now();
    entries = 0;
    for await (const _ of auditLog(() => fs.journal.read(), filter, { resolveNow: (p) => fs.resolvePath(p), index: fs.auditIndex() })) entries++;
    runs.push((performance.now() - t) / 1000);
  }
  return { seconds: Math.min(...runs), runs: runs.map((x) => round(x, 3)), entries };
}

async function queries() {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-bench-audit-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const fs = await Filesystem.open(dir);
  const users = [{ uid: 0, gid: 0, pid: 100 }, { uid: 1000, gid: 1000, pid: 200 }];
  const d = await fs.mkdir(users[0]!, ROOT_INO, "d", 0o777);
  const O_RDWR_CREAT = 0o102;
  const block = randomBytes(512);
  let i = 0;
  const t0 = performance.now();
  // Per file: InodeCreated, DirentLinked, ExtentWritten, Renamed, AttrsChanged = 5 events.
  while (fs.journal.staged < EVENTS) {
    const who = users[i % 2]!;
    const { fh, attr } = await fs.create(who, d.ino as Ino, `f${i}`, 0o644, O_RDWR_CREAT);
    await fs.write(who, fh, 0, block);
    await fs.release(who, fh);
    await fs.rename(who, d.ino as Ino, `f${i}`, d.ino as Ino, `g${i}`);
    await fs.setattr(who, attr.ino, { mode: 0o600 });
    i++;
  }
  await fs.close();
  log(`   built ${i} files, about ${EVENTS} events, in ${round((performance.now() - t0) / 1000, 1)} s`);
  const ro = await Filesystem.open(dir, { readOnly: true });
  cleanups.push(() => ro.close());
  const mid = (await ro.journal.get(Math.floor(EVENTS / 2)))!.time;
  const byPath = await timeQuery(ro, { path: `/d/g${Math.floor(i / 2)}` });
  const byUid = await timeQuery(ro, { uid: 1000, since: mid });
  const byTime = await timeQuery(ro, { since: mid, until: mid + 50 });
  return {
    events: ro.journal.head,
    log_by_path_s: round(byPath.seconds, 3),
    log_by_path_entries: byPath.entries,
    log_by_uid_s: round(byUid.seconds, 3),
    log_by_uid_entries: byUid.entries,
    log_by_time_s: round(byTime.seconds, 3),
    log_by_time_entries: byTime.entries,
    log_runs_s: { by_path: byPath.runs, by_uid: byUid.runs, by_time: byTime.runs },
  };
}

async function restoreVsDownload() {
  const server = await startCephRgw({ memstoreBytes: 3 * 1024 ** 3 });
  cleanups.push(() => server.stop());
  const bucket = await createBucket(server);
  const c = await openClient(server, bucket, "");
  cleanups.push(() => c.close());
  const files = 16;
  const each = Math.floor((RESTORE_MIB * MiB) / files);
  for (let f = 0; f < files; f++) {
    const { fh } = await c.fs.create(ROOT, ROOT_INO as Ino, `f${f}`, 0o644, 0o101); // O_WRONLY | O_CREAT
    const bytes = randomBytes(each);
    for (let at = 0; at < each; at += MiB) await c.fs.write(ROOT, fh, at, bytes.subarray(at, Math.min(each, at + MiB)));
    await c.fs.release(ROOT, fh);
  }
  await c.replication.sync({ timeoutMs: 600_000 });
  const client = new S3Client({ endpoint: server.endpoint, region: server.region, forcePathStyle: true, credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey } });
  cleanups.push(async () => client.destroy());
  const download = async () => {
    const plain = join(await mkdtemp(join(tmpdir(), "objectfs-bench-download-")), "t");
    cleanups.push(() => rm(join(plain, ".."), { recursive: true, force: true }));
    await mkdir(plain);
    const t1 = performance.now();
    let got = 0;
    const next = { f: 0 };
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (next.f < files) {
          const name = `f${next.f++}`;
          const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: name }));
          const fh = await open(join(plain, name), "w");
          try {
            for await (const chunk of out.Body as AsyncIterable<Uint8Array>) {
              await fh.write(chunk);
              got += chunk.length;
            }
          } finally {
            await fh.close();
          }
        }
      }),
    );
    const mibs = got / MiB / ((performance.now() - t1) / 1000);
    await rm(join(plain, ".."), { recursive: true, force: true });
    return mibs;
  };
  const restore = async () => {
    const into = join(await mkdtemp(join(tmpdir(), "objectfs-bench-restore-")), "t");
    cleanups.push(() => rm(join(into, ".."), { recursive: true, force: true }));
    const t2 = performance.now();
    const h = await openHistory({ kind: "s3", bucket, prefix: "", store: { endpoint: server.endpoint, region: server.region, forcePathStyle: true, credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey } } }, log);
    const done = await restoreHistory(h.history, undefined, into, h.remote ? { remote: h.remote } : {});
    await h.close();
    const mibs = done.bytes / MiB / ((performance.now() - t2) / 1000);
    await rm(join(into, ".."), { recursive: true, force: true });
    return { bytes: done.bytes, mibs, direct: done.direct };
  };
  // Alternately, four times each, which goes first changing each round; the best of each
  // counts. Each one's files are removed after it, so that neither runs beside the other's
  // page cache and writeback (the first download, on a machine with nothing of either
  // written yet, ran at 1.8 times the later ones).
  let best = 0;
  let restored = { bytes: 0, mibs: 0, direct: 0 };
  const rounds: string[] = [];
  for (let round = 0; round < 4; round++) {
    let d: number;
    let r: Awaited<ReturnType<typeof restore>>;
    if (round % 2 === 0) {
      d = await download();
      r = await restore();
    } else {
      r = await restore();
      d = await download();
    }
    rounds.push(`download ${d.toFixed(1)}, restore ${r.mibs.toFixed(1)}`);
    best = Math.max(best, d);
    if (r.mibs > restored.mibs) restored = r;
  }
  log(`   rounds (MiB/s): ${rounds.join("; ")}`);
  const downloadMiBs = best;
  const restoreMiBs = restored.mibs;
  const done = restored;
  void storeConfig;
  return { restore_mib: round(done.bytes / MiB), restore_direct_mib: round(done.direct / MiB), download_mib_s: round(downloadMiBs, 1), restore_mib_s: round(restoreMiBs, 1), restore_vs_download: round(restoreMiBs / downloadMiBs, 3) };
}

try {
  const out: Record<string, unknown> = { bench: "audit" };
  const targets: Record<string, { value: number; goal: string; met: boolean }> = {};
  if (values.only !== "restore") {
    log(`1. log queries over about ${EVENTS} events`);
    const q = await queries();
    log(`   best of 3: by path ${q.log_by_path_s} s (${q.log_by_path_entries} entries), by uid since the middle ${q.log_by_uid_s} s (${q.log_by_uid_entries} entries), by a 50 ms window ${q.log_by_time_s} s (${q.log_by_time_entries} entries); runs ${JSON.stringify(q.log_runs_s)}`);
    const worst = Math.max(q.log_by_path_s, q.log_by_uid_s, q.log_by_time_s);
    Object.assign(out, q);
    targets.log_query_s = { value: worst, goal: "a log query over 1M events <= 1 s", met: worst <= 1 && q.events >= 1_000_000 };
  }
  if (values.only !== "queries") {
    log(`2. restore of ${RESTORE_MIB} MiB from S3 beside a plain download`);
    const r = await restoreVsDownload();
    log(`   download ${r.download_mib_s} MiB/s, restore ${r.restore_mib_s} MiB/s (${r.restore_vs_download})`);
    Object.assign(out, r);
    targets.restore_vs_download = { value: r.restore_vs_download, goal: ">= 0.8 of a plain download", met: r.restore_vs_download >= 0.8 };
  }
  console.log(JSON.stringify({ ...out, targets }));
} finally {
  for (const c of cleanups.reverse()) await c().catch(() => {});
}
