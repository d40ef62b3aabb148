/**
 * Replication through a real mount against a real S3 server (Ceph RGW started here; s3rver if
 * RGW cannot start, said in the output), in one run:
 *
 * 1. Lag under a steady write load: a writer subprocess closes a 4 KiB file every 50 ms for
 *    `--seconds`; the bench polls the mount's control socket (replicatedThrough) and the
 *    bucket listing. Segment lag: from a file's close to the first poll where a segment in S3
 *    covers it (its seq is bounded by the journal head seen at the first poll after the close,
 *    so the figure errs long). Object lag: from close to the first listing that shows the file.
 *    Mount defaults: --write-back 2, --seal-interval 1. Target: segment lag p50 ≤ 2 s.
 * 2. Upload ÷ written: body bytes sent to S3, counted by a proxy between the mount and the
 *    server, after `objectfs sync`, divided by bytes the workload wrote: 4 × 64 MiB files
 *    (dd), and 2,000 × 4 KiB files. Target (large files, where part copy exists) ≤ 1.1.
 * 3. Sequential read of a 256 MiB object put with the SDK: cold (fresh mount, empty cache) and
 *    cached (again) through the mount with dd, beside a plain SDK GetObject of it streamed and
 *    discarded. Cold and SDK are measured twice each and the best of each counts. Target: cold
 *    ≥ 80% of the SDK download. Beside it, CPU seconds per GiB of the SDK client (this process)
 *    and of the mount's serving process (the least of the two runs each): steadier than MiB/s
 *    on a busy machine, and what the mount costs on top of the download.
 *
 *   bun bench/replication.ts [--seconds N] [--large-mib N] [--read-mib N] [--only 1|2|3]
 */
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { request as control, type Status } from "../src/cli/control.ts";
import { makeObjectStore, type ObjectStore } from "../src/s3/mod.ts";
import { cleanup, OBJECTFS, sh, startMount, type MountHandle } from "../test/support/mount_harness.ts";
import { startCephRgw, startS3rver, createBucket, storeConfig, type S3Server } from "../test/support/s3_servers.ts";
import { startFaultProxy, type FaultProxy } from "../test/support/fault_proxy.ts";
import { s3Env } from "../test/support/s3_client.ts";

const { values } = parseArgs({
  options: { seconds: { type: "string", default: "30" }, "large-mib": { type: "string", default: "64" }, "read-mib": { type: "string", default: "256" }, only: { type: "string" } },
});
/** `--only 3`: run just that part (figures of the others are absent and their targets unmet). */
const ONLY = values.only === undefined ? undefined : Number(values.only);
const part = (n: number) => ONLY === undefined || ONLY === n;
const SECONDS = Number(values.seconds);
const LARGE_MIB = Number(values["large-mib"]);
const READ_MIB = Number(values["read-mib"]);
const MiB = 1024 * 1024;
const log = (m: string) => process.stderr.write(`${m}\n`);
const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

const cleanups: (() => Promise<unknown> | unknown)[] = [];
const dirs: string[] = [];
/** Control sockets of this run's mounts: a directory of its own, not the one tests share (removing that would cut off mounts of tests running meanwhile). */
const RUN_DIR = await mkdtemp(join(tmpdir(), "objectfs-bench-run-"));
const benchEnv = (server: S3Server): Record<string, string> => ({ ...s3Env(server), OBJECTFS_RUN_DIR: RUN_DIR });
const mounts: MountHandle[] = [];

async function status(mnt: string, env: Record<string, string>): Promise<Status> {
  const saved = process.env.OBJECTFS_RUN_DIR;
  process.env.OBJECTFS_RUN_DIR = env.OBJECTFS_RUN_DIR;
  try {
    let s: Status | undefined;
    await control(mnt, { op: "status" }, (r) => {
      if (r.status) s = r.status as Status;
    });
    if (!s) throw new Error("no status");
    return s;
  } finally {
    if (saved === undefined) delete process.env.OBJECTFS_RUN_DIR;
    else process.env.OBJECTFS_RUN_DIR = saved;
  }
}

async function mountVia(server: S3Server, bucket: string, endpoint: string, extra: string[] = []): Promise<MountHandle> {
  const mnt = await mkdtemp(join(tmpdir(), "objectfs-bench-mnt-"));
  const dataDir = await mkdtemp(join(tmpdir(), "objectfs-bench-data-"));
  dirs.push(mnt, dataDir);
  const m = await startMount({ source: `s3://${bucket}`, mnt, dataDir, args: ["--endpoint", endpoint, ...extra], env: benchEnv(server) });
  mounts.push(m);
  return m;
}

async function run(script: string, env: Record<string, string>, what: string): Promise<string> {
  const r = await sh(script, { env });
  if (r.code !== 0) throw new Error(`${what} failed (exit ${r.code}): ${r.stderr.trim().split("\n").slice(-4).join("\n")}`);
  return r.stdout;
}

/** Seconds a shell command takes, timed inside the shell. */
async function timed(script: string, env: Record<string, string>, what: string): Promise<number> {
  const out = await run(`set -e -o pipefail; s=$(date +%s%N); ${script}; e=$(date +%s%N); echo $(( e - s ))`, env, what);
  return Number(out.trim().split("\n").pop()) / 1e9;
}

// ---- 1. lag ----------------------------------------------------------------------------------

async function lag(server: S3Server, store: ObjectStore, bucket: string) {
  const m = await mountVia(server, bucket, server.endpoint);
  const env = benchEnv(server);
  await run(`mkdir ${m.mnt}/lag`, env, "mkdir");
  const writer = Bun.spawn(["bash", "-c", `for i in $(seq 1 ${Math.round(SECONDS * 20)}); do head -c 4096 /dev/urandom > ${m.mnt}/lag/f$i; echo "$i $(date +%s%3N)"; sleep 0.05; done`], { stdout: "pipe", stderr: "pipe" });
  const closes = new Map<number, number>();
  const polls: { t: number; head: number; replicated: number }[] = [];
  const seen = new Map<number, number>();
  let writing = true;
  const reader = (async () => {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of writer.stdout) {
      buf += dec.decode(chunk);
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const [i, t] = buf.slice(0, nl).split(" ").map(Number);
        closes.set(i!, t!);
        buf = buf.slice(nl + 1);
      }
    }
    writing = false;
  })();
  const poller = (async () => {
    const until = () => !writing && closes.size > 0 && seen.size >= closes.size && (polls.at(-1)?.replicated ?? 0) >= (polls.at(-1)?.head ?? 1) - 5;
    const deadline = Date.now() + (SECONDS + 60) * 1000;
    while (!until() && Date.now() < deadline) {
      const t = Date.now();
      const s = await status(m.mnt, env);
      polls.push({ t, head: s.head, replicated: s.replicatedThrough });
      for await (const e of store.list({ prefix: "lag/" })) {
        if (e.kind !== "object") continue;
        const i = Number(e.key.slice(5).replace("f", ""));
        if (!seen.has(i)) seen.set(i, Date.now());
      }
      await Bun.sleep(Math.max(0, 100 - (Date.now() - t)));
    }
  })();
  await Promise.all([reader, writer.exited, poller]);
  const segmentLag: number[] = [];
  const objectLag: number[] = [];
  for (const [i, tc] of closes) {
    const after = polls.find((p) => p.t >= tc);
    if (after) {
      const covered = polls.find((p) => p.t >= tc && p.replicated >= after.head);
      if (covered) segmentLag.push((covered.t - tc) / 1000);
    }
    const s = seen.get(i);
    if (s !== undefined) objectLag.push((s - tc) / 1000);
  }
  await m.stop();
  return {
    files: closes.size,
    segment_lag_p50_s: round(pct(segmentLag, 50)),
    segment_lag_p99_s: round(pct(segmentLag, 99)),
    object_lag_p50_s: round(pct(objectLag, 50)),
    object_lag_p99_s: round(pct(objectLag, 99)),
    segment_lag_samples: segmentLag.length,
    object_lag_samples: objectLag.length,
  };
}

// ---- 2. upload ÷ written -----------------------------------------------------------------------

async function amplification(server: S3Server, bucket: string, proxy: FaultProxy) {
  const m = await mountVia(server, bucket, proxy.endpoint);
  const env = benchEnv(server);
  await run(`mkdir ${m.mnt}/large ${m.mnt}/small && ${OBJECTFS} sync ${m.mnt} --timeout 120`, env, "prepare");
  proxy.resetStats();
  const large = 4 * LARGE_MIB * MiB;
  await run(`for i in 1 2 3 4; do dd if=/dev/urandom of=${m.mnt}/large/f$i bs=1M count=${LARGE_MIB} status=none; done && ${OBJECTFS} sync ${m.mnt} --timeout 600`, env, "large files");
  const largeUp = proxy.stats().upBytes;
  const afterLarge = await status(m.mnt, env);
  proxy.resetStats();
  const small = 2000 * 4096;
  await run(`for i in $(seq 1 2000); do head -c 4096 /dev/urandom > ${m.mnt}/small/f$i; done && ${OBJECTFS} sync ${m.mnt} --timeout 600`, env, "small files");
  const smallUp = proxy.stats().upBytes;
  await m.stop();
  return {
    large_written_mib: round(large / MiB),
    large_uploaded_mib: round(largeUp / MiB),
    upload_ratio_large: round(largeUp / large, 3),
    large_copied_server_side_mib: round(afterLarge.objects.copiedBytes / MiB),
    small_written_mib: round(small / MiB),
    small_uploaded_mib: round(smallUp / MiB),
    upload_ratio_small: round(smallUp / small, 3),
  };
}

// ---- 3. reads ----------------------------------------------------------------------------------

async function reads(server: S3Server, bucket: string) {
  const size = READ_MIB * MiB;
  const env = benchEnv(server);
  const store = makeObjectStore(storeConfig(server, bucket));
  cleanups.push(() => store.close());
  await store.upload("read/big.bin", randomBytes(size), { partSize: 16 * MiB });
  const client = new S3Client({ endpoint: server.endpoint, region: server.region, forcePathStyle: true, credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey } });
  cleanups.push(() => client.destroy());
  // CPU seconds (user + system) per GiB beside the figures: on a shared 2-core machine they
  // vary less than MiB/s. The SDK's is this process's; the mount's is its serving process's.
  let sdkCpu = Infinity;
  let coldCpu = Infinity;
  const sdk = async () => {
    const c0 = process.cpuUsage();
    const t = performance.now();
    const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: "read/big.bin" }));
    let n = 0;
    for await (const c of out.Body as AsyncIterable<Uint8Array>) n += c.length;
    if (n !== size) throw new Error(`SDK read ${n} bytes of ${size}`);
    const mibs = size / MiB / ((performance.now() - t) / 1000);
    const c = process.cpuUsage(c0);
    sdkCpu = Math.min(sdkCpu, (c.user + c.system) / 1e6 / (size / 1024 / MiB));
    return mibs;
  };
  const sdkMBs = Math.max(await sdk(), await sdk());
  // Cold twice, each on a fresh mount with an empty cache (the best counts, as for the SDK).
  let cold = 0;
  let cached = 0;
  let peakRss = 0;
  for (let round = 0; round < 2; round++) {
    const m = await mountVia(server, bucket, server.endpoint);
    const c0 = cpuSeconds(m.pid);
    cold = Math.max(cold, READ_MIB / (await timed(`dd if=${m.mnt}/read/big.bin of=/dev/null bs=1M status=none`, env, "cold read")));
    coldCpu = Math.min(coldCpu, (cpuSeconds(m.pid) - c0) / (READ_MIB / 1024));
    if (round === 0) cached = READ_MIB / (await timed(`dd if=${m.mnt}/read/big.bin of=/dev/null bs=1M status=none`, env, "cached read"));
    peakRss = Math.max(peakRss, peakRssMiB(m.pid));
    await m.stop();
  }
  return {
    sdk_download_mib_s: round(sdkMBs, 1),
    cold_read_mib_s: round(cold, 1),
    cached_read_mib_s: round(cached, 1),
    cold_read_vs_sdk: round(cold / sdkMBs, 3),
    sdk_cpu_s_per_gib: round(sdkCpu),
    cold_read_cpu_s_per_gib: round(coldCpu),
    mount_peak_rss_mib: round(peakRss, 1),
  };
}

/** A process's peak resident memory (VmHWM) in MiB. */
function peakRssMiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** User + system CPU seconds a process has used (from /proc: not a file of any mount). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

// ---- main --------------------------------------------------------------------------------------

let server: S3Server;
let serverNote = "ceph-rgw";
try {
  server = await startCephRgw({ memstoreBytes: 4 * 1024 ** 3 });
} catch (e) {
  serverNote = `s3rver (Ceph RGW did not start: ${(e as Error).message.split("\n")[0]})`;
  server = await startS3rver();
}
cleanups.push(() => server.stop());
try {
  log(`server: ${serverNote} at ${server.endpoint}`);
  let l: Awaited<ReturnType<typeof lag>> | undefined;
  if (part(1)) {
    const lagBucket = await createBucket(server);
    const lagStore = makeObjectStore(storeConfig(server, lagBucket));
    cleanups.push(() => lagStore.close());
    log(`1. lag: a 4 KiB file every 50 ms for ${SECONDS} s`);
    l = await lag(server, lagStore, lagBucket);
    log(`   segment lag p50 ${l.segment_lag_p50_s} s, p99 ${l.segment_lag_p99_s} s; object lag p50 ${l.object_lag_p50_s} s, p99 ${l.object_lag_p99_s} s (${l.files} files)`);
  }
  let a: Awaited<ReturnType<typeof amplification>> | undefined;
  if (part(2)) {
    const proxy = await startFaultProxy(server.endpoint);
    cleanups.push(() => proxy.close());
    log(`2. upload ÷ written: 4 × ${LARGE_MIB} MiB, then 2,000 × 4 KiB`);
    a = await amplification(server, await createBucket(server), proxy);
    log(`   large: ${a.large_uploaded_mib} MiB sent for ${a.large_written_mib} MiB written (${a.upload_ratio_large}; ${a.large_copied_server_side_mib} MiB copied server-side); small: ${a.small_uploaded_mib} MiB for ${a.small_written_mib} MiB (${a.upload_ratio_small})`);
  }
  let r: Awaited<ReturnType<typeof reads>> | undefined;
  if (part(3)) {
    log(`3. sequential read of ${READ_MIB} MiB`);
    r = await reads(server, await createBucket(server));
    log(`   SDK download ${r.sdk_download_mib_s} MiB/s; through the mount cold ${r.cold_read_mib_s} MiB/s (${r.cold_read_vs_sdk} of the SDK), cached ${r.cached_read_mib_s} MiB/s`);
    log(`   CPU per GiB: SDK client ${r.sdk_cpu_s_per_gib} s, mount process cold ${r.cold_read_cpu_s_per_gib} s; mount peak RSS ${r.mount_peak_rss_mib} MiB; load average ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  }
  const targets = {
    lag_p50_s: { value: l?.segment_lag_p50_s ?? null, goal: "segment lag p50 <= 2 s", met: l !== undefined && l.segment_lag_p50_s <= 2 },
    upload_ratio_large: { value: a?.upload_ratio_large ?? null, goal: "<= 1.1 where part copy exists", met: a !== undefined && a.upload_ratio_large <= 1.1 },
    cold_read_vs_sdk: { value: r?.cold_read_vs_sdk ?? null, goal: ">= 0.8 of a plain SDK download", met: r !== undefined && r.cold_read_vs_sdk >= 0.8 },
  };
  console.log(JSON.stringify({ bench: "replication", server: serverNote, ...l, ...a, ...r, targets }));
} finally {
  for (const m of mounts) await m.stop().catch(() => {});
  await cleanup(...dirs);
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
  await rm(RUN_DIR, { recursive: true, force: true }).catch(() => {});
}
