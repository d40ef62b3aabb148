/**
 * Journal append throughput: synced events/s and MB/s for small metadata events
 * and 4 KiB / 128 KiB data events at 1, 8 and 64 concurrent writers; segment
 * seal and decode+verify MB/s; beside raw classic-level batched puts measured
 * in the same run. Last line: one JSON object with figures and targets.
 *
 *   bun bench/journal_append.ts [--seconds S]
 */
import { Level } from "level";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { crc32 } from "node:zlib";
import { asIno, decodeSegment, Journal, sealSegment, type JournalEvent, type NewEvent } from "../journal/mod.ts";

const { values } = parseArgs({ options: { seconds: { type: "string", default: "2" } } });
const SECONDS = Number(values.seconds);
const root = await mkdtemp(join(tmpdir(), "objectfs-bench-journal-"));

type Kind = "small" | "4k" | "128k";
const payload = (kind: Kind) => (kind === "4k" ? 4096 : kind === "128k" ? 131072 : 0);
function makeEvent(kind: Kind, i: number, data: Uint8Array): NewEvent {
  if (kind === "small") return { type: "AttrsChanged", ino: asIno(i), mtime: i, caller: { uid: 1000, gid: 1000, pid: 4242 } };
  return { type: "ExtentWritten", ino: asIno(i), offset: i * data.length, length: data.length, crc: 0, data, caller: { uid: 1000, gid: 1000, pid: 4242 } };
}

async function appendRun(kind: Kind, writers: number) {
  const dir = await mkdtemp(join(root, `${kind}-${writers}-`));
  const j = await Journal.open(dir);
  const data = new Uint8Array(payload(kind)).map((_, i) => (i * 31) & 0xff);
  let events = 0;
  const until = performance.now() + SECONDS * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: writers }, async (_, w) => {
      let i = w;
      while (performance.now() < until) {
        await j.append([makeEvent(kind, i, data)], { sync: true });
        i += writers;
        events++;
      }
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  const res = {
    kind,
    writers,
    events_per_s: Math.round(events / secs),
    mb_per_s: +((events * payload(kind)) / 1e6 / secs).toFixed(1),
    synced_batches: j.stats.syncedCommits,
  };
  await j.close();
  await rm(dir, { recursive: true, force: true });
  return res;
}

async function rawLevel() {
  const dir = await mkdtemp(join(root, "raw-"));
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: "buffer", valueEncoding: "buffer" });
  await db.open();
  const value = Buffer.alloc(40, 1);
  const n = 200_000;
  let t0 = performance.now();
  for (let b = 0; b < n; b += 1000) {
    const ops = [];
    for (let i = b; i < b + 1000; i++) {
      const k = Buffer.alloc(8);
      k.writeUInt32BE(i, 4);
      ops.push({ type: "put" as const, key: k, value });
    }
    await db.batch(ops);
  }
  const batched = n / ((performance.now() - t0) / 1000);
  t0 = performance.now();
  let synced = 0;
  const until = performance.now() + SECONDS * 1000;
  while (performance.now() < until) {
    const k = Buffer.alloc(8);
    k.writeUInt32BE(n + synced, 4);
    await db.put(k, value, { sync: true } as never);
    synced++;
  }
  const syncedPerS = synced / ((performance.now() - t0) / 1000);
  await db.close();
  await rm(dir, { recursive: true, force: true });
  return { batched_puts_per_s: Math.round(batched), synced_single_puts_per_s: Math.round(syncedPerS) };
}

function segments() {
  // 64 MiB worth of mixed events: mostly 128 KiB data, some metadata.
  const events: JournalEvent[] = [];
  const data = new Uint8Array(131072).map((_, i) => (i * 13) & 0xff);
  const dataCrc = crc32(data);
  let seq = 1;
  let bytes = 0;
  while (bytes < 64 << 20) {
    events.push({ type: "ExtentWritten", seq: seq as never, time: Date.now(), ino: asIno(5), offset: bytes, length: data.length, crc: dataCrc, data } as JournalEvent);
    events.push({ type: "AttrsChanged", seq: (seq + 1) as never, time: Date.now(), ino: asIno(5), mtime: seq } as JournalEvent);
    seq += 2;
    bytes += data.length;
  }
  let t0 = performance.now();
  let sealed = sealSegment(events, { prevChecksum: 0 });
  for (let r = 0; r < 4; r++) sealed = sealSegment(events, { prevChecksum: 0 });
  const sealMBs = (5 * sealed.bytes.length) / 1e6 / ((performance.now() - t0) / 1000);
  t0 = performance.now();
  for (let r = 0; r < 5; r++) decodeSegment(sealed.bytes);
  const decodeMBs = (5 * sealed.bytes.length) / 1e6 / ((performance.now() - t0) / 1000);
  // Small-event segments: the per-event cost.
  const small: JournalEvent[] = Array.from({ length: 100_000 }, (_, i) => ({ type: "AttrsChanged", seq: i + 1, time: Date.now(), ino: i, mode: 0o644, caller: { uid: 1, gid: 1, pid: 1 } }) as unknown as JournalEvent);
  t0 = performance.now();
  const s2 = sealSegment(small, { prevChecksum: 0 });
  decodeSegment(s2.bytes);
  const smallEventsPerS = small.length / ((performance.now() - t0) / 1000);
  return { seal_mb_per_s: Math.round(sealMBs), decode_verify_mb_per_s: Math.round(decodeMBs), small_seal_plus_decode_events_per_s: Math.round(smallEventsPerS) };
}

const runs = [];
for (const kind of ["small", "4k", "128k"] as Kind[]) {
  for (const writers of [1, 8, 64]) {
    const r = await appendRun(kind, writers);
    runs.push(r);
    console.log(`${kind.padEnd(5)} ${String(writers).padStart(2)} writers: ${String(r.events_per_s).padStart(7)} events/s ${String(r.mb_per_s).padStart(7)} MB/s (${r.synced_batches} synced batches)`);
  }
}
const raw = await rawLevel();
console.log(`raw classic-level: ${raw.batched_puts_per_s} puts/s in 1000-batches, ${raw.synced_single_puts_per_s} synced single puts/s`);
const seg = segments();
console.log(`segments: seal ${seg.seal_mb_per_s} MB/s, decode+verify ${seg.decode_verify_mb_per_s} MB/s, small events seal+decode ${seg.small_seal_plus_decode_events_per_s}/s`);
await rm(root, { recursive: true, force: true });

const small64 = runs.find((r) => r.kind === "small" && r.writers === 64)!;
const best128 = Math.max(...runs.filter((r) => r.kind === "128k").map((r) => r.mb_per_s));
const ratio = (small64.events_per_s / raw.synced_single_puts_per_s).toFixed(2);
console.log(`small events at 64 writers vs raw synced single puts: ${ratio}x`);
console.log(
  JSON.stringify({
    runs,
    raw_level: raw,
    segments: seg,
    small64_vs_raw_synced_puts: +ratio,
    targets: {
      small_events_per_s_64_writers: { value: small64.events_per_s, goal: ">= 50000", met: small64.events_per_s >= 50000 },
      data_128k_mb_per_s: { value: best128, goal: ">= 300", met: best128 >= 300 },
      segment_decode_verify_mb_per_s: { value: seg.decode_verify_mb_per_s, goal: ">= 500", met: seg.decode_verify_mb_per_s >= 500 },
    },
  }),
);
