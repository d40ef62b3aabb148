/**
 * The adaptive multipart engine on emulated links (bench/netlab), beside fixed configurations
 * measured in the same run: lib-storage defaults (5 MiB parts, 4 in flight) and 16 MiB × 8.
 * Every profile gets a fresh Ceph RGW on loopback and a lab (a client network namespace, a
 * router namespace with the packet delay line and tbf); the uploads run in a worker process
 * inside the client namespace (this file with `--worker`), so each TCP connection crosses the
 * emulated link end to end. Each measurement uses a new client (new connections) and a new
 * engine (nothing learned before: a cold start).
 *
 * Per profile: a 64 MiB object, a large object (1 GiB where the link makes three of them fit
 * the run's 15 minutes, see PROFILES), and a stream of 1 MiB objects (the engine's `putMany`;
 * lib-storage one object per Upload, 4 at a time; 16 × 8: 8 at a time). Printed: MiB/s, the
 * ratio to the link rate and to the best fixed configuration, and the worker's peak RSS growth
 * during the transfer beside the engine's bound (2 × part size × parts in flight). The rate
 * change profile uploads 384 MiB (engine and lib-storage) while tbf goes 100 → 30 → 100 Mbit,
 * and measures from the bytes the host forwarder passes how long after each change the
 * transfer's rate over 3 s is within 10% of what the new rate leaves for TCP payload. The last line is one JSON object with the figures and "targets".
 * No measurement starts after 13.5 minutes (`OBJECTFS_BENCH_BUDGET_MIN`), so a run on a busy
 * machine still ends within 15: what was skipped is listed ("skipped") and the targets that need
 * every measurement are then not met.
 *
 * `--workloads download` (not part of the default run, which fills the 15 minutes) downloads the
 * 64 MiB and large objects instead: the engine's ranged GETs beside one plain SDK GetObject
 * streamed (the `libstorage` column: lib-storage has no downloads) and 16 MiB ranges × 8.
 *
 *   bun bench/transfer.ts [--profiles lan,home,far,slow,throttled,change] [--workloads 64mib,large,stream,download]
 *                         [--configs engine,libstorage,fixed16x8,fixed:P:Q] [--copy-parts]   (root: it makes network namespaces)
 *
 * `--copy-parts` gives the engine a file-like source that copies each part into the engine's
 * buffers (`readInto`); by default it reads views of the body in memory, as lib-storage does.
 */
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { randomBytes } from "node:crypto";
import { loadavg } from "node:os";
import { makeObjectStore, type ObjectStoreConfig } from "../src/s3/mod.ts";
import { TransferEngine, type TransferStats } from "../src/transfer/engine.ts";
import { createBucket, startCephRgw, storeConfig } from "../test/support/s3_servers.ts";
import { startFaultProxy } from "../test/support/fault_proxy.ts";
import { startLab, type Lab, type TrafficSample } from "./netlab/lab.ts";

const MiB = 1024 * 1024;
const log = (m: string) => process.stderr.write(`${m}\n`);
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

/** `fixed:P:Q` (P MiB parts, Q in flight, with lib-storage) can be asked for with --configs, to explore. */
type Config = "engine" | "libstorage" | "fixed16x8" | `fixed:${number}:${number}`;
const ALL_CONFIGS: readonly Config[] = ["engine", "libstorage", "fixed16x8"];
const FIXED: Record<"libstorage" | "fixed16x8", { partSize: number; queueSize: number }> = {
  libstorage: { partSize: 5 * MiB, queueSize: 4 },
  fixed16x8: { partSize: 16 * MiB, queueSize: 8 },
};
const fixedOf = (c: Exclude<Config, "engine">) => {
  if (c === "libstorage" || c === "fixed16x8") return FIXED[c];
  const [, p, q] = c.split(":");
  return { partSize: Number(p) * MiB, queueSize: Number(q) };
};

// ---------------------------------------------------------------------------------------------
// The worker: runs inside the client namespace, one job per stdin line, one result per stdout line.

interface ObjectJob {
  readonly kind: "object";
  readonly config: Config;
  readonly key: string;
  readonly size: number;
  readonly store: ObjectStoreConfig;
}
interface StreamJob {
  readonly kind: "stream";
  readonly config: Config;
  readonly prefix: string;
  readonly count: number;
  readonly store: ObjectStoreConfig;
}
/** The object is put first (not timed), then downloaded into memory. */
interface DownloadJob {
  readonly kind: "download";
  readonly config: Config;
  readonly key: string;
  readonly size: number;
  readonly store: ObjectStoreConfig;
}
/** Raw TCP over the same link: `flows` connections to the lab's sink, `bytes` in all. */
interface TcpJob {
  readonly kind: "tcp";
  readonly sink: string;
  readonly flows: number;
  readonly bytes: number;
}
type Job = ObjectJob | StreamJob | DownloadJob | TcpJob;

interface JobResult {
  readonly seconds: number;
  readonly bytes: number;
  /** Growth of the worker's RSS during the transfer (peak minus before). */
  readonly rssGrowth: number;
  readonly engine?: Omit<TransferStats, "final"> & { readonly finalInflight: number; readonly finalPartSize: number };
  readonly error?: string;
}

const COPY_PARTS = process.argv.includes("--copy-parts");

async function worker(bodyBytes: number): Promise<void> {
  const body = Buffer.allocUnsafe(bodyBytes);
  for (let at = 0; at < body.length; at += 64 * MiB) randomBytes(Math.min(64 * MiB, body.length - at)).copy(body, at);
  process.stdout.write("ready\n");
  for await (const line of console) {
    if (line.trim() === "") continue;
    const job = JSON.parse(line) as Job;
    process.stdout.write(`${JSON.stringify(await runJob(job, body))}\n`);
  }
}

/**
 * The first S3 request of a worker process took about 180 ms more than the next ones (code
 * loaded and compiled on first use, the first connection, the hashing thread starting): whichever
 * configuration came first paid it, the engine in the default order. Before its first measured
 * S3 job each worker sends, untimed, a small multipart upload through lib-storage and one
 * through the engine, so every configuration starts from the same warm process.
 */
let warmedUp = false;
async function warmUp(job: Exclude<Job, TcpJob>, body: Buffer): Promise<void> {
  if (warmedUp) return;
  warmedUp = true;
  const store = makeObjectStore(job.store);
  const key = `${"key" in job ? job.key : job.prefix}.warm-up`;
  const size = Math.min(body.length, 12 * MiB);
  try {
    await store.upload(key, body.subarray(0, size), FIXED.libstorage);
    await new TransferEngine(store).upload({ key, size, read: async (at, n) => body.subarray(at, at + n) });
    await store.delete(key);
  } finally {
    store.close();
  }
}

async function runJob(job: Job, body: Buffer): Promise<JobResult> {
  if (job.kind === "tcp") return rawTcp(job, body);
  await warmUp(job, body);
  // The engine retries itself, visibly; the fixed configurations keep the SDK's retries.
  const store = makeObjectStore(job.config === "engine" ? { ...job.store, maxAttempts: 1 } : job.store);
  let etag = "";
  if (job.kind === "download") {
    const up = makeObjectStore(job.store);
    etag = (await up.upload(job.key, body.subarray(0, job.size), FIXED.fixed16x8)).etag;
    up.close();
  }
  Bun.gc(true);
  const before = process.memoryUsage.rss();
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
  const t = performance.now();
  let stats: TransferStats | undefined;
  let bytes = 0;
  let error: string | undefined;
  try {
    if (job.kind === "object") {
      bytes = job.size;
      if (job.config === "engine") {
        // The body in memory, as lib-storage is given it (a file source would add one part-sized
        // buffer per part in flight: `readInto`, or with --copy-parts).
        const r = await new TransferEngine(store).upload({
          key: job.key,
          size: job.size,
          read: async (at, n) => body.subarray(at, at + n),
          ...(COPY_PARTS ? { readInto: async (at: number, target: Uint8Array) => void body.copy(target, 0, at, at + target.length) } : {}),
        });
        stats = r;
      } else {
        await store.upload(job.key, body.subarray(0, job.size), fixedOf(job.config));
      }
    } else if (job.kind === "download") {
      bytes = job.size;
      const into = Buffer.allocUnsafe(job.size);
      if (job.config === "engine") {
        stats = await new TransferEngine(store).download({ key: job.key, size: job.size, etag, write: async (at, part) => void into.set(part, at) });
      } else if (job.config === "libstorage") {
        const c = job.store;
        const client = new S3Client({ endpoint: c.endpoint, region: c.region, forcePathStyle: true, ...(c.credentials ? { credentials: c.credentials } : {}) });
        const out = await client.send(new GetObjectCommand({ Bucket: c.bucket, Key: job.key }));
        let at = 0;
        for await (const chunk of out.Body as AsyncIterable<Uint8Array>) {
          into.set(chunk, at);
          at += chunk.length;
        }
        client.destroy();
        if (at !== job.size) throw new Error(`got ${at} of ${job.size} bytes`);
      } else {
        const { partSize, queueSize } = fixedOf(job.config);
        let next = 0;
        await Promise.all(
          Array.from({ length: queueSize }, async () => {
            while (next < job.size) {
              const at = next;
              next += partSize;
              const r = await store.get(job.key, { range: { start: at, end: Math.min(job.size, at + partSize) - 1 } });
              into.set(r.bytes, at);
            }
          }),
        );
      }
    } else {
      bytes = job.count * MiB;
      const segment = (i: number) => Buffer.from(body.subarray((i * MiB) % (body.length - MiB), ((i * MiB) % (body.length - MiB)) + MiB));
      if (job.config === "engine") {
        const items = function* () {
          for (let i = 0; i < job.count; i++) yield { key: `${job.prefix}/${i}`, body: segment(i) };
        };
        stats = await new TransferEngine(store).putMany(items(), { totalBytes: job.count * MiB });
      } else {
        const fixed = fixedOf(job.config);
        const width = fixed.queueSize;
        let next = 0;
        await Promise.all(
          Array.from({ length: width }, async () => {
            while (next < job.count) {
              const i = next++;
              await store.upload(`${job.prefix}/${i}`, segment(i), fixed);
            }
          }),
        );
      }
    }
  } catch (e) {
    error = (e as Error).message;
  }
  const seconds = (performance.now() - t) / 1000;
  clearInterval(sampler);
  peak = Math.max(peak, process.memoryUsage.rss());
  if (job.kind === "object" || job.kind === "download") await store.delete(job.key).catch(() => {});
  else await store.deleteMany(Array.from({ length: job.count }, (_, i) => `${job.prefix}/${i}`)).catch(() => {});
  store.close();
  const { final, ...engine } = stats ?? ({} as TransferStats);
  return {
    seconds,
    bytes,
    rssGrowth: peak - before,
    ...(stats ? { engine: { ...engine, finalInflight: final.inflight, finalPartSize: final.partSize } } : {}),
    ...(error ? { error } : {}),
  };
}

async function rawTcp(job: TcpJob, body: Buffer): Promise<JobResult> {
  const { connect } = await import("node:net");
  const [host, port] = job.sink.split(":");
  const t = performance.now();
  const per = Math.floor(job.bytes / job.flows);
  await Promise.all(
    Array.from({ length: job.flows }, () => new Promise<void>((resolve, reject) => {
      const c = connect({ host: host!, port: Number(port) }, () => {
        let sent = 0;
        const pump = () => {
          while (sent < per) {
            const n = Math.min(1024 * 1024, per - sent);
            const ok = c.write(body.subarray(sent % (body.length - n), (sent % (body.length - n)) + n));
            sent += n;
            if (!ok) return void c.once("drain", pump);
          }
          c.end();
        };
        pump();
      });
      c.on("data", () => {});
      c.on("close", () => resolve());
      c.on("error", reject);
    })),
  );
  return { seconds: (performance.now() - t) / 1000, bytes: per * job.flows, rssGrowth: 0 };
}

if (process.argv[2] === "--worker") {
  await worker(Number(process.argv[3]) * MiB);
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------
// The run

interface Profile {
  readonly name: string;
  readonly mbit: number;
  readonly rttMs: number;
  /** Share of packets lost each way. */
  readonly loss?: number;
  /** The large object; absent where three of them would not fit the run's time. */
  readonly large?: number;
  readonly segments: number;
  /** Share of PUTs answered 503 SlowDown by a proxy in front of the server. */
  readonly throttle?: number;
  /** Rate changes: [seconds after the start, Mbit]. */
  readonly changes?: readonly (readonly [number, number])[];
  readonly size?: number;
  readonly note?: string;
}

const PROFILES: readonly Profile[] = [
  { name: "lan", mbit: 1000, rttMs: 1, large: 1024 * MiB, segments: 256 },
  { name: "home", mbit: 100, rttMs: 30, large: 256 * MiB, segments: 64, note: "large = 256 MiB: three 1 GiB uploads take 4.3 min here, past the run's 15 minutes" },
  { name: "far", mbit: 200, rttMs: 80, large: 1024 * MiB, segments: 128 },
  { name: "slow", mbit: 20, rttMs: 150, segments: 32, note: "no large object: 1 GiB takes 7 min per configuration at 20 Mbit" },
  { name: "throttled", mbit: 100, rttMs: 30, throttle: 0.1, large: 256 * MiB, segments: 64, note: "home with 10% of PUTs answered 503 SlowDown; large = 256 MiB" },
  { name: "change", mbit: 100, rttMs: 30, changes: [[8, 30], [20, 100]], size: 384 * MiB, segments: 0, note: "384 MiB while tbf goes 100 → 30 Mbit at 8 s and back to 100 at 20 s (engine and lib-storage)" },
];

const arg = (name: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1]!.split(",") : undefined);
const onlyProfiles = arg("--profiles");
const workloads = arg("--workloads") ?? ["64mib", "large", "stream"];
const configs = (arg("--configs") ?? ALL_CONFIGS) as Config[];
const selected = PROFILES.filter((p) => !onlyProfiles || onlyProfiles.includes(p.name));
const complete = !onlyProfiles && !arg("--workloads") && !arg("--configs");

/** What tbf leaves for TCP payload: 1448 of every 1514 bytes on the wire. */
const payloadMiBs = (mbit: number) => ((mbit * 1e6) / 8 / MiB) * (1448 / 1514);
const linkMiBs = (mbit: number) => (mbit * 1e6) / 8 / MiB;

interface Worker {
  run(job: Job): Promise<JobResult>;
  close(): Promise<void>;
}

async function startWorker(lab: Lab, bodyMiB: number): Promise<Worker> {
  const p = Bun.spawn(lab.exec([process.execPath, import.meta.path, "--worker", String(bodyMiB), ...(process.argv.includes("--copy-parts") ? ["--copy-parts"] : [])]), { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  const lines: string[] = [];
  const waiters: ((line: string | undefined) => void)[] = [];
  void (async () => {
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of p.stdout) {
      buffered += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        const w = waiters.shift();
        if (w) w(line);
        else lines.push(line);
      }
    }
    for (const w of waiters.splice(0)) w(undefined);
  })();
  const nextLine = () => (lines.length > 0 ? Promise.resolve(lines.shift()) : new Promise<string | undefined>((r) => waiters.push(r)));
  if ((await nextLine()) !== "ready") throw new Error("The upload worker did not start in the client namespace (see its error above)");
  return {
    async run(job) {
      p.stdin.write(`${JSON.stringify(job)}\n`);
      await p.stdin.flush();
      const line = await nextLine();
      if (line === undefined) throw new Error("The upload worker exited in the middle of a job (see its error above)");
      return JSON.parse(line) as JobResult;
    },
    async close() {
      p.kill("SIGKILL");
      await p.exited;
    },
  };
}

/**
 * Seconds after `from` until the rate over a 3 s window (windows start every 100 ms) is within
 * 10% of `rate` (MiB/s); NaN if none is before `until`. (Over 1 s the bytes the forwarder
 * passes swing by ±20% on this loaded machine, with raw TCP too.)
 */
function settleTime(traffic: readonly TrafficSample[], from: number, until: number, rate: number): number {
  const at = (t: number) => {
    // bytes up at time t, interpolated between samples
    let i = traffic.findIndex((s) => s.t >= t);
    if (i <= 0) i = Math.max(1, i === -1 ? traffic.length - 1 : 1);
    const a = traffic[i - 1]!;
    const b = traffic[i]!;
    return b.t === a.t ? b.up : a.up + ((b.up - a.up) * (t - a.t)) / (b.t - a.t);
  };
  for (let w = from; w + 3000 <= until; w += 100) {
    if (Math.abs((at(w + 3000) - at(w)) / MiB / 3 - rate) <= 0.1 * rate) return (w - from) / 1000;
  }
  return NaN;
}

const cleanups = new Set<() => Promise<unknown>>();
const cleanAll = async () => {
  for (const c of [...cleanups].reverse()) await c().catch((e) => log(`cleanup: ${(e as Error).message}`));
  cleanups.clear();
};
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    log(`${sig}: removing the labs and servers`);
    void cleanAll().finally(() => process.exit(130));
  });
}
/** Registers `close` to run if the run is interrupted, and runs it at the end of `use`. */
async function using<T extends { close(): Promise<unknown> } | { stop(): Promise<unknown> }, R>(resource: T, use: (r: T) => Promise<R>): Promise<R> {
  const close = () => ("close" in resource ? resource.close() : resource.stop());
  cleanups.add(close);
  try {
    return await use(resource);
  } finally {
    cleanups.delete(close);
    await close();
  }
}

const results: Record<string, Record<string, number | string>> = {};
const memoryRatios: number[] = [];
const startedAt = performance.now();
/**
 * Past this many minutes no new measurement starts, so a run on a busy machine still ends
 * within its 15 minutes; what was skipped is listed, and the run then counts as incomplete
 * (targets that need every measurement are not met).
 */
const BUDGET_MIN = Number(process.env.OBJECTFS_BENCH_BUDGET_MIN ?? 13.5);
const skipped: string[] = [];
function late(what: string): boolean {
  if ((performance.now() - startedAt) / 60000 < BUDGET_MIN) return false;
  skipped.push(what);
  log(`${what}: skipped, the run is past ${BUDGET_MIN} min`);
  return true;
}
let index = 1;

function line(p: Profile, what: string, c: Config, r: JobResult, row: Record<string, number | string>) {
  const mibs = r.bytes / MiB / r.seconds;
  const link = linkMiBs(p.mbit);
  row[`${what}_${c}_mib_s`] = r.error ? NaN : round(mibs);
  row[`${what}_${c}_rss_growth_mib`] = round(r.rssGrowth / MiB, 1);
  if (c !== "engine" && what !== "stream" && !what.startsWith("get-")) {
    const f = fixedOf(c);
    row[`${what}_${c}_rss_per_byte_in_flight`] = round(r.rssGrowth / (f.partSize * Math.min(f.queueSize, Math.ceil(r.bytes / f.partSize))), 2);
  }
  let extra = "";
  if (r.engine) {
    const bound = 2 * r.engine.peakPartSize * r.engine.peakInflight;
    row[`${what}_engine_memory_bound_mib`] = round(bound / MiB, 1);
    row[`${what}_engine_held_peak_mib`] = round(r.engine.peakBytes / MiB, 1);
    row[`${what}_engine_retries`] = r.engine.retries;
    row[`${what}_engine_faults`] = r.engine.faults;
    row[`${what}_engine_sdk_retries`] = r.engine.sdkRetries;
    memoryRatios.push(r.engine.peakBytes / bound);
    row[`${what}_engine_rss_per_byte_in_flight`] = round(r.rssGrowth / (r.engine.peakPartSize * r.engine.peakInflight), 2);
    extra = `  parts ≤ ${round(r.engine.peakPartSize / MiB, 1)} MiB × ≤ ${r.engine.peakInflight} (ended at ${round(r.engine.finalPartSize / MiB, 1)} MiB × ${r.engine.finalInflight}), held ≤ ${round(r.engine.peakBytes / MiB)} MiB, bound ${round(bound / MiB)} MiB, retries ${r.engine.retries}, faults ${r.engine.faults}`;
  }
  log(
    `${p.name.padEnd(9)} ${what.padEnd(6)} ${c.padEnd(10)} ${r.error ? `FAILED: ${r.error}` : `${mibs.toFixed(1).padStart(6)} MiB/s  ${(mibs / link).toFixed(2)} of the link`}  RSS +${round(r.rssGrowth / MiB, 1)} MiB${extra}`,
  );
}

try {
  for (const p of selected) {
    if (late(p.name)) continue;
    const biggest = Math.max(64 * MiB, p.large ?? 0, p.size ?? 0, p.segments * MiB);
    const row: Record<string, number | string> = { link_mib_s: round(linkMiBs(p.mbit)), rtt_ms: p.rttMs, loss: p.loss ?? 0, ...(p.note ? { note: p.note } : {}) };
    results[p.name] = row;
    if (p.note) log(`${p.name}: ${p.note}`);
    // A fresh server per profile: RGW frees deleted multipart data only lazily.
    // Room for every upload of the profile (a full OSD makes RGW hang writes, not fail them).
    const uploads = configs.length * (64 * MiB + (p.large ?? 0) + p.segments * MiB + (p.size ?? 0));
    await using(await startCephRgw({ memstoreBytes: Math.ceil(1.5 * uploads) + 1024 * MiB }), async (server) => {
      const bucket = await createBucket(server);
      const proxy = p.throttle ? await startFaultProxy(server.endpoint, { seed: 5 }) : undefined;
      proxy?.setRules([{ method: "PUT", fault: { kind: "status", status: 503 }, probability: p.throttle! }]);
      try {
        const target = new URL(proxy?.endpoint ?? server.endpoint).host;
        const lab = await startLab(index++, target, p);
        await using(lab, async (lab) => {
          const store: ObjectStoreConfig = { ...storeConfig(server, bucket), endpoint: lab.endpoint, ...(p.throttle ? { maxAttempts: 5 } : {}) };
          await using(await startWorker(lab, biggest / MiB), async (w) => {
            if (p.changes) return rateChange(p, lab, w, store, row);
            // What TCP itself gets over this link now: 4 connections streaming to a sink.
            const tcpBytes = Math.min(256 * MiB, p.large ?? 64 * MiB, Math.ceil((linkMiBs(p.mbit) * 12) / 4) * 4 * MiB);
            const tcp = await w.run({ kind: "tcp", sink: lab.sink, flows: 4, bytes: tcpBytes });
            row.tcp_4_flows_mib_s = round(tcp.bytes / MiB / tcp.seconds);
            log(`${p.name.padEnd(9)} tcp    4 flows    ${(tcp.bytes / MiB / tcp.seconds).toFixed(1).padStart(6)} MiB/s  ${(tcp.bytes / MiB / tcp.seconds / linkMiBs(p.mbit)).toFixed(2)} of the link (${tcpBytes / MiB} MiB, raw TCP for reference)`);
            const sizes = [...(workloads.includes("64mib") ? [["64mib", 64 * MiB] as const] : []), ...(workloads.includes("large") && p.large ? [["large", p.large] as const] : [])];
            for (const [what, size] of sizes) {
              for (const c of configs) if (!late(`${p.name} ${what} ${c}`)) line(p, what, c, await w.run({ kind: "object", config: c, key: `${p.name}-${what}-${c}`, size, store }), row);
              compare(p, what, row);
            }
            if (workloads.includes("download")) {
              const down = [["64mib", 64 * MiB] as const, ...(p.large ? [["large", p.large] as const] : [])];
              for (const [what, size] of down) {
                for (const c of configs) if (!late(`${p.name} get-${what} ${c}`)) line(p, `get-${what}`, c, await w.run({ kind: "download", config: c, key: `${p.name}-get-${what}-${c}`, size, store }), row);
                compare(p, `get-${what}`, row);
              }
            }
            if (workloads.includes("stream")) {
              for (const c of configs) if (!late(`${p.name} stream ${c}`)) line(p, "stream", c, await w.run({ kind: "stream", config: c, prefix: `${p.name}-stream-${c}`, count: p.segments, store }), row);
              compare(p, "stream", row);
            }
          });
        });
        log(`${p.name.padEnd(9)} link: ${lab.counters()}`);
      } finally {
        await proxy?.close();
      }
    });
  }
} finally {
  await cleanAll();
}

function compare(p: Profile, what: string, row: Record<string, number | string>) {
  const engine = row[`${what}_engine_mib_s`] as number | undefined;
  const fixed = (["libstorage", "fixed16x8"] as const).map((c) => row[`${what}_${c}_mib_s`] as number | undefined).filter((x): x is number => x !== undefined && Number.isFinite(x));
  if (engine === undefined || fixed.length === 0) return;
  row[`${what}_engine_vs_best_fixed`] = round(engine / Math.max(...fixed), 3);
  row[`${what}_engine_vs_link`] = round(engine / linkMiBs(p.mbit), 3);
  log(`${p.name.padEnd(9)} ${what.padEnd(6)} engine: ${row[`${what}_engine_vs_link`]} of the link, ${row[`${what}_engine_vs_best_fixed`]} of the best fixed configuration`);
}

async function rateChange(p: Profile, lab: Lab, w: Worker, store: ObjectStoreConfig, row: Record<string, number | string>) {
  for (const c of configs.filter((c) => c !== "fixed16x8")) {
    const t0 = Date.now();
    const timers = p.changes!.map(([s, mbit]) => setTimeout(() => void lab.setRate(mbit).catch((e) => log(`setRate: ${(e as Error).message}`)), s * 1000));
    const r = await w.run({ kind: "object", config: c, key: `change-${c}`, size: p.size!, store });
    timers.forEach(clearTimeout);
    await lab.setRate(p.mbit);
    line(p, "change", c, r, row);
    const end = Date.now();
    const settles = p.changes!.map(([s, mbit], i) => {
      const from = t0 + s * 1000;
      const until = i + 1 < p.changes!.length ? t0 + p.changes![i + 1]![0] * 1000 : end;
      return settleTime(lab.traffic(), from, until, payloadMiBs(mbit));
    });
    p.changes!.forEach(([s, mbit], i) => (row[`${c}_settle_s_at_${s}s_to_${mbit}mbit`] = round(settles[i]!)));
    const worst = settles.some((x) => Number.isNaN(x)) ? NaN : Math.max(...settles);
    row[`${c}_settle_s`] = round(worst);
    log(`${p.name.padEnd(9)} ${c.padEnd(10)} within 10% of the new rate after ${p.changes!.map(([s, mbit], i) => `${settles[i]!.toFixed(1)} s (${mbit} Mbit at ${s} s)`).join(", ")}`);
    const traffic = lab.traffic().filter((x) => x.t >= t0 && x.t <= end);
    const perSecond: string[] = [];
    for (let i = 10; i < traffic.length; i += 10) perSecond.push(((traffic[i]!.up - traffic[i - 10]!.up) / MiB / ((traffic[i]!.t - traffic[i - 10]!.t) / 1000)).toFixed(1));
    log(`${p.name.padEnd(9)} ${c.padEnd(10)} MiB/s each second: ${perSecond.join(" ")}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Targets

const num = (v: unknown) => (typeof v === "number" ? v : NaN);
const limited = ["home", "far", "slow"];
const linkRatios = limited.map((n) => results[n]).filter((r) => r !== undefined).map((r) => num(r!.large_engine_vs_link ?? r!["64mib_engine_vs_link"]));
const vsBest = Object.values(results).flatMap((r) => Object.entries(r).filter(([k]) => k.endsWith("_engine_vs_best_fixed")).map(([, v]) => num(v)));
const farVsLib = results.far ? num(results.far.large_engine_mib_s) / num(results.far.large_libstorage_mib_s) : NaN;
const settle = num(results.change?.engine_settle_s);
const memory = memoryRatios.length > 0 ? Math.max(...memoryRatios) : NaN;
const minOf = (xs: number[]) => (xs.length === 0 || xs.some(Number.isNaN) ? NaN : Math.min(...xs));
const targets = {
  link_rate: { value: round(minOf(linkRatios), 3), goal: ">= 0.9 of the link rate on every rate-limited profile (home, far, slow; the largest object)", met: complete && skipped.length === 0 && minOf(linkRatios) >= 0.9 },
  vs_best_fixed: { value: round(minOf(vsBest), 3), goal: ">= 0.95 of the best fixed configuration on every profile and workload", met: complete && skipped.length === 0 && minOf(vsBest) >= 0.95 },
  far_vs_libstorage: { value: round(farVsLib, 2), goal: ">= 1.5 x lib-storage defaults on the far profile (1 GiB)", met: farVsLib >= 1.5 },
  rate_change_s: { value: round(settle, 2), goal: "within 10% of a new rate <= 5 s after it changes (100 -> 30 -> 100 Mbit)", met: settle <= 5 },
  memory: {
    value: round(memory, 3),
    goal: "bytes the engine holds in requests <= 2 x part size x parts in flight, for every engine transfer (value: the largest ratio; the worker's RSS growth is in *_rss_per_byte_in_flight, beside lib-storage's)",
    met: complete && skipped.length === 0 && memory <= 1,
  },
};
const minutes = (performance.now() - startedAt) / 60000;
log(`${minutes.toFixed(1)} min, load average ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
if (skipped.length > 0) log(`skipped (past ${BUDGET_MIN} min): ${skipped.join(", ")}`);
console.log(JSON.stringify({ bench: "transfer", server: "ceph-rgw", minutes: round(minutes, 1), load: loadavg().map((x) => round(x)), profiles: results, skipped, targets }));
