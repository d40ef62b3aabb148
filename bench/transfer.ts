/**
 * The adaptive multipart engine on emulated links (bench/netlab), beside fixed configurations
 * in the same run: lib-storage defaults (5 MiB parts, 4 in flight) and 16 MiB × 8, uploading
 * to Ceph RGW through each profile. Per profile: a 64 MiB object, a large object (1 GiB on
 * the LAN and far links; 256 MiB on home; none on slow, which would take 7 minutes a
 * configuration and push the run past 15 minutes), and a stream of 32 × 1 MiB segments.
 * Prints MB/s, the ratio to the link rate and to the best fixed configuration, and the
 * engine's peak memory. The rate-change profile changes tbf from 100 to 30 Mbit 8 s into a
 * 192 MiB upload and measures how long the engine takes to run within 10% of the new rate.
 *
 *   bun bench/transfer.ts [--profiles lan,home,far,slow,throttled,change]   (root: it makes network namespaces)
 */
import { randomBytes } from "node:crypto";
import { makeObjectStore, type ObjectStore } from "../src/s3/mod.ts";
import { TransferEngine } from "../src/transfer/engine.ts";
import { createBucket, startCephRgw, storeConfig } from "../test/support/s3_servers.ts";
import { startFaultProxy } from "../test/support/fault_proxy.ts";
import { startLab } from "./netlab/lab.ts";

const MiB = 1024 * 1024;
const log = (m: string) => process.stderr.write(`${m}\n`);
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

interface Profile {
  readonly name: string;
  readonly mbit: number;
  readonly rttMs: number;
  readonly large?: number;
  readonly throttle?: number;
}
const ALL_PROFILES: readonly Profile[] = [
  { name: "lan", mbit: 1000, rttMs: 1, large: 1024 * MiB },
  { name: "home", mbit: 100, rttMs: 30, large: 256 * MiB },
  { name: "far", mbit: 200, rttMs: 80, large: 1024 * MiB },
  { name: "slow", mbit: 20, rttMs: 150 },
  { name: "throttled", mbit: 100, rttMs: 30, throttle: 0.1 },
];

/** `--profiles lan,far` runs only those (and the rate change with `change`). */
const only = process.argv.includes("--profiles") ? process.argv[process.argv.indexOf("--profiles") + 1]!.split(",") : undefined;
const PROFILES = ALL_PROFILES.filter((p) => !only || only.includes(p.name));

const body = Buffer.alloc(1024 * MiB);
for (let at = 0; at < body.length; at += 64 * MiB) randomBytes(64 * MiB).copy(body, at);

type Config = "engine" | "libstorage" | "fixed16x8";
const CONFIGS: readonly Config[] = ["engine", "libstorage", "fixed16x8"];

async function upload(config: Config, store: ObjectStore, engine: TransferEngine, key: string, size: number): Promise<{ mibs: number; peak?: number; bound?: number }> {
  const t = performance.now();
  let peak: number | undefined;
  let bound: number | undefined;
  if (config === "engine") {
    let maxInflight = 0;
    const r = await engine.upload({ key, size, read: async (at, n) => body.subarray(at, at + n) });
    maxInflight = Math.max(maxInflight, r.final.inflight, r.final.bestInflight);
    peak = r.peakBytes;
    bound = 2 * r.final.partSize * Math.max(1, maxInflight);
  } else {
    await store.upload(key, body.subarray(0, size), config === "libstorage" ? { partSize: 5 * MiB, queueSize: 4 } : { partSize: 16 * MiB, queueSize: 8 });
  }
  const mibs = size / MiB / ((performance.now() - t) / 1000);
  await store.delete(key).catch(() => {});
  return { mibs, ...(peak !== undefined ? { peak, bound } : {}) };
}

/** 32 × 1 MiB segments: the engine at the parts in flight it learned, lib-storage one at a time, 16×8 eight at a time. */
async function stream(config: Config, store: ObjectStore, engine: TransferEngine, prefix: string): Promise<number> {
  const n = 32;
  const width = config === "libstorage" ? 1 : config === "fixed16x8" ? 8 : Math.max(1, Math.min(16, engine.learned(store.endpoint)?.inflight ?? 4));
  const t = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < n) {
      const i = next++;
      await store.put(`${prefix}/${i}`, body.subarray(i * MiB, (i + 1) * MiB));
    }
  }));
  const mibs = n / ((performance.now() - t) / 1000);
  await store.deleteMany(Array.from({ length: n }, (_, i) => `${prefix}/${i}`)).catch(() => {});
  return mibs;
}

// RGW frees deleted multipart objects lazily (garbage collection), so every upload of the run
// stays in its memstore for now: room for all of them.
const server = await startCephRgw({ memstoreBytes: 12 * 1024 ** 3 });
const results: Record<string, Record<string, number>> = {};
const targets: Record<string, { value: number; goal: string; met: boolean }> = {};
try {
  const bucket = await createBucket(server);
  const target = new URL(server.endpoint).host;
  let index = 1;
  for (const p of PROFILES) {
    const lab = await startLab(index++, target, p.mbit, p.rttMs);
    const proxy = p.throttle ? await startFaultProxy(lab.endpoint, { seed: 5 }) : undefined;
    proxy?.setRules([{ method: "PUT", fault: { kind: "status", status: 503 }, probability: p.throttle! }]);
    const store = makeObjectStore({ ...storeConfig(server, bucket), endpoint: proxy?.endpoint ?? lab.endpoint, maxAttempts: p.throttle ? 5 : 3 });
    const engine = new TransferEngine(store);
    const link = (p.mbit * 1e6) / 8 / MiB;
    const row: Record<string, number> = { link_mib_s: round(link) };
    try {
      for (const [what, size] of [["64mib", 64 * MiB], ...(p.large ? [["large", p.large]] : [])] as [string, number][]) {
        for (const c of CONFIGS) {
          const r = await upload(c, store, engine, `${p.name}-${what}-${c}`, size);
          row[`${what}_${c}_mib_s`] = round(r.mibs);
          if (r.peak !== undefined) {
            row[`${what}_engine_peak_mib`] = round(r.peak / MiB);
            row[`${what}_engine_peak_bound_mib`] = round(r.bound! / MiB);
          }
          log(`${p.name.padEnd(10)} ${what.padEnd(6)} ${c.padEnd(11)} ${r.mibs.toFixed(1).padStart(7)} MiB/s  (${(r.mibs / link).toFixed(2)} of the link)`);
        }
        const best = Math.max(row[`${what}_libstorage_mib_s`]!, row[`${what}_fixed16x8_mib_s`]!);
        row[`${what}_engine_vs_best_fixed`] = round(row[`${what}_engine_mib_s`]! / best, 3);
        row[`${what}_engine_vs_link`] = round(row[`${what}_engine_mib_s`]! / link, 3);
      }
      for (const c of CONFIGS) row[`stream_${c}_mib_s`] = round(await stream(c, store, engine, `${p.name}-stream-${c}`));
      log(`${p.name.padEnd(10)} stream ${CONFIGS.map((c) => `${c} ${row[`stream_${c}_mib_s`]}`).join(", ")} MiB/s`);
    } finally {
      store.close();
      await proxy?.close();
      await lab.close();
    }
    results[p.name] = row;
  }

  // A rate change mid-transfer: 100 → 30 Mbit 8 s in.
  if (!only || only.includes("change")) await rateChange(index++);
  async function rateChange(labIndex: number) {
  const lab = await startLab(labIndex, target, 100, 30);
  const store = makeObjectStore({ ...storeConfig(server, bucket), endpoint: lab.endpoint });
  let settle = NaN;
  try {
    const samples: { t: number; bytes: number }[] = [];
    const t0 = performance.now();
    let changedAt = Infinity;
    const timer = setTimeout(() => {
      changedAt = (performance.now() - t0) / 1000;
      void lab.setRate(30);
    }, 8000);
    const engine = new TransferEngine(store, { onProgress: (bytes) => samples.push({ t: (performance.now() - t0) / 1000, bytes }) });
    await engine.upload({ key: "change", size: 192 * MiB, read: async (at, n) => body.subarray(at, at + n) });
    clearTimeout(timer);
    const newRate = (30e6 / 8 / MiB) * 0.97; // what tbf leaves for payload
    // Seconds after the change until a 4 s window runs within 10% of the new rate (progress
    // comes per finished part, so shorter windows see too few parts).
    for (let w = changedAt; w + 4 <= (samples.at(-1)?.t ?? 0); w += 0.25) {
      const inside = samples.filter((s) => s.t >= w && s.t <= w + 4);
      if (inside.length < 2) continue;
      const rate = (inside.at(-1)!.bytes - inside[0]!.bytes) / MiB / (inside.at(-1)!.t - inside[0]!.t);
      if (Math.abs(rate - newRate) <= 0.1 * newRate) {
        settle = w - changedAt;
        break;
      }
    }
    log(`change     100 → 30 Mbit at ${changedAt.toFixed(1)} s: within 10% of the new rate after ${settle.toFixed(1)} s`);
  } finally {
    store.close();
    await lab.close();
  }
  results.change = { settle_s: round(settle) };
  }

  const limited = ["home", "far", "slow"];
  const linkRatios = limited.filter((n) => results[n]).map((n) => results[n]![results[n]!.large_engine_vs_link !== undefined ? "large_engine_vs_link" : "64mib_engine_vs_link"]!);
  const vsBest = Object.values(results).flatMap((r) => Object.entries(r).filter(([k]) => k.endsWith("_engine_vs_best_fixed")).map(([, v]) => v));
  const farVsLib = results.far ? results.far.large_engine_mib_s! / results.far.large_libstorage_mib_s! : NaN;
  const settle = results.change?.settle_s ?? NaN;
  const complete = !only;
  const memoryOk = Object.values(results).every((r) => Object.keys(r).filter((k) => k.endsWith("_engine_peak_mib")).every((k) => r[k]! <= r[k.replace("_peak_mib", "_peak_bound_mib")]!));
  targets.link_rate = { value: round(Math.min(...linkRatios), 3), goal: ">= 0.9 of the link rate on every rate-limited profile (home, far, slow)", met: complete && Math.min(...linkRatios) >= 0.9 };
  targets.vs_best_fixed = { value: round(Math.min(...vsBest), 3), goal: ">= 0.95 of the best fixed configuration everywhere", met: complete && Math.min(...vsBest) >= 0.95 };
  targets.far_vs_libstorage = { value: round(farVsLib, 2), goal: ">= 1.5 x lib-storage defaults on the far profile", met: farVsLib >= 1.5 };
  targets.rate_change_s = { value: round(settle, 2), goal: "within 10% of a new rate <= 5 s after it changes", met: settle <= 5 };
  targets.memory = { value: memoryOk ? 1 : 0, goal: "engine memory <= 2 x part size x parts in flight", met: complete && memoryOk };
  console.log(JSON.stringify({ bench: "transfer", server: "ceph-rgw", ...Object.fromEntries(Object.entries(results).map(([k, v]) => [k, v])), targets }));
} finally {
  await server.stop();
}
