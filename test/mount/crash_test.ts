/**
 * Crash test through a real mount: a writer process writes and fsyncs files
 * on the mount while the mount process is killed with SIGKILL at a random
 * moment; after every crash the next mount must show every file reported
 * synced, byte for byte, read nothing with an error, and pass fsck after a
 * clean stop.
 *
 * OBJECTFS_TEST_CRASH_CYCLES (default 20) and OBJECTFS_TEST_CRASH_SEED (default: random,
 * printed) make a run longer or repeatable.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtemp, readdir, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { contentFor } from "../support/fsync_writer.ts";
import { cleanup, fsckDataDir, startMount, type MountHandle } from "../support/mount_harness.ts";

const CYCLES = Number(process.env.OBJECTFS_TEST_CRASH_CYCLES ?? 20);
const SEED = Number(process.env.OBJECTFS_TEST_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
const WRITER = join(import.meta.dir, "../support/fsync_writer.ts");

const dirs: string[] = [];
const live: MountHandle[] = [];
afterAll(async () => {
  for (const m of live) await m.kill().catch(() => {});
  await cleanup(...dirs);
});

/** A small seeded PRNG for the test's own choices (kill moments, writer seeds). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x = (x + 0x6d2b79f5) >>> 0;
    let t = Math.imul(x ^ (x >>> 15), 1 | x);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

interface Written {
  readonly size: number;
  readonly seed: number;
}

/** Digests of expected contents, computed once per file (regenerating megabytes every cycle is slow). */
const digests = new Map<number, bigint | number>();
function expectedDigest(w: Written): bigint | number {
  let d = digests.get(w.seed);
  if (d === undefined) digests.set(w.seed, (d = Bun.hash(contentFor(w.seed, w.size))));
  return d;
}

/** Run `work` over `items`, at most `n` at a time. */
async function inParallel<T>(items: readonly T[], n: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await work(items[next++]!);
  }));
}

/** Read lines from a stream as they come; `lines` fills in, `done` resolves at EOF. */
function lineReader(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
  return (async () => {
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of stream) {
      buf += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        onLine(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    }
  })();
}

test(`after ${CYCLES} SIGKILLs of the mount process during fsynced writes, every file reported synced is there byte for byte, the rest reads without error as a prefix, and fsck is clean`, async () => {
  console.log(`crash test seed ${SEED} (set OBJECTFS_TEST_CRASH_SEED to repeat)`);
  const random = rng(SEED);
  const mnt = await mkdtemp(join(tmpdir(), "objectfs-crash-mnt-"));
  const dataDir = await mkdtemp(join(tmpdir(), "objectfs-crash-data-"));
  dirs.push(mnt, dataDir);

  const synced = new Map<string, Written>(); // reported durable, in any cycle
  const begun = new Map<string, Written>(); // announced, maybe not durable
  let cyclesWithSyncs = 0;
  let syncedBytes = 0;

  for (let cycle = 0; cycle < CYCLES; cycle++) {
    const where = `cycle ${cycle} (seed ${SEED})`;
    const m = await startMount({ mnt, dataDir });
    live.push(m);

    const writer = Bun.spawn([process.execPath, WRITER, mnt, `c${cycle}`, String(Math.floor(random() * 2 ** 31))], { stdout: "pipe", stderr: "pipe" });
    let ready!: () => void;
    const isReady = new Promise<void>((r) => (ready = r));
    let syncedThisCycle = 0;
    const reading = lineReader(writer.stdout, (line) => {
      const [kind, name, size, seed] = line.split(" ");
      if (kind === "ready") ready();
      else if (kind === "writing") begun.set(name!, { size: Number(size), seed: Number(seed) });
      else if (kind === "synced") {
        synced.set(name!, { size: Number(size), seed: Number(seed) });
        syncedThisCycle++;
        syncedBytes += Number(size);
      }
    });
    const stderr = new Response(writer.stderr).text();
    const early = await Promise.race([isReady.then(() => false), writer.exited.then(() => true)]);
    if (early) throw new Error(`${where}: the writer exited (${await writer.exited}) before it was ready: ${await stderr}`);

    // The crash: the mount process dies at a random moment while the writer works.
    await Bun.sleep(50 + random() * 750);
    await m.kill();
    live.splice(live.indexOf(m), 1);
    writer.kill("SIGKILL");
    await writer.exited;
    await reading;
    if (syncedThisCycle > 0) cyclesWithSyncs++;

    // The next mount must clear the stale mount and show everything that was synced.
    const m2 = await startMount({ mnt, dataDir });
    live.push(m2);
    const t0 = performance.now();
    const names = new Set(await readdir(mnt));
    for (const name of names) {
      if (!begun.has(name)) throw new Error(`${where}: ${name} is on the mount but was never written`);
    }
    const problems: string[] = [];
    await inParallel([...synced], 8, async ([name, w]) => {
      if (!names.has(name)) return void problems.push(`${name} (${w.size} bytes) was reported synced but is gone`);
      const got = await readFile(join(mnt, name));
      if (got.length !== w.size) problems.push(`${name} was synced with ${w.size} bytes but has ${got.length}`);
      else if (Bun.hash(got) !== expectedDigest(w)) problems.push(`${name} (${w.size} bytes) was synced but its bytes differ`);
    });
    await inParallel([...begun].filter(([name]) => !synced.has(name) && names.has(name)), 8, async ([name, w]) => {
      // Not reported durable: any length is allowed, but it must read, and what is there must be what was written.
      const got = await readFile(join(mnt, name)).catch((e: Error) => e);
      if (got instanceof Error) problems.push(`reading unsynced ${name} failed: ${got.message}`);
      else if (got.length > w.size) problems.push(`unsynced ${name} has ${got.length} bytes, more than the ${w.size} written`);
      else if (!got.equals(contentFor(w.seed, w.size).subarray(0, got.length))) problems.push(`unsynced ${name} (${got.length} of ${w.size} bytes) is not a prefix of what was written`);
    });
    if (problems.length > 0) throw new Error(`${where}: ${problems.length} problem(s):\n  ${problems.slice(0, 20).join("\n  ")}`);
    const t1 = performance.now();
    expect(await m2.stop()).toBe(0);
    live.splice(live.indexOf(m2), 1);
    const t2 = performance.now();
    const fsck = await fsckDataDir(dataDir);
    if (process.env.OBJECTFS_TEST_VERBOSE) console.log(`cycle ${cycle}: verify ${(t1 - t0).toFixed(0)} ms, stop ${(t2 - t1).toFixed(0)} ms, fsck ${(performance.now() - t2).toFixed(0)} ms`);
    if (fsck.code !== 0) throw new Error(`${where}: fsck after a clean stop exited ${fsck.code}: ${fsck.output}`);
  }
  console.log(`${synced.size} files (${(syncedBytes / 2 ** 20).toFixed(1)} MiB) synced over ${CYCLES} crashes; ${cyclesWithSyncs} crashes came after at least one sync`);
  // The test proves little if the crashes never hit a working writer.
  expect(cyclesWithSyncs).toBeGreaterThanOrEqual(Math.ceil(CYCLES / 2));
  expect(synced.size).toBeGreaterThan(CYCLES);
}, 60_000 + CYCLES * 15_000);
