/**
 * Workloads for bench/mount.ts. Run as a subprocess against a directory,
 * never from the process that serves a mount; each prints one JSON line.
 *
 *   bun bench/support/workload.ts creates DIR N THREADS        create+write 4 KiB+close DIR/f0 … f(N-1)
 *   bun bench/support/workload.ts stat DIR N PASSES THREADS    stat DIR/f0 … f(N-1), PASSES times
 *   bun bench/support/workload.ts readdir DIR EXPECTED REPS    readdir DIR, REPS times
 *   bun bench/support/workload.ts fsync FILE COUNT             COUNT × {write 4 KiB, FileHandle.sync()}
 *
 * creates and stat run in THREADS worker threads making plain (sync)
 * syscalls, like THREADS concurrent C programs would. fs/promises is not used
 * for them: Bun runs its calls through a thread pool that, measured here,
 * keeps well under one call in flight on average, so it would time the client
 * rather than the filesystem (about half the creates/s a threaded client gets).
 */
import { closeSync, constants, mkdirSync, openSync, statSync, writeSync } from "node:fs";
import { open, readdir } from "node:fs/promises";
import { join } from "node:path";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";

interface Job {
  readonly kind: "creates" | "stat";
  readonly dir: string;
  readonly n: number;
  readonly total: number;
  /** Int32Array over a SharedArrayBuffer: [next item, go flag]. */
  readonly shared: SharedArrayBuffer;
}

/** Run `total` items over `threads` workers; seconds from go to the last done. */
async function threaded(kind: Job["kind"], dir: string, n: number, total: number, threads: number): Promise<number> {
  const shared = new SharedArrayBuffer(8);
  const state = new Int32Array(shared);
  const workers = Array.from({ length: threads }, () => new Worker(new URL(import.meta.url), { workerData: { kind, dir, n, total, shared } satisfies Job }));
  try {
    const messages = workers.map((w) => {
      const queue: string[] = [];
      let wake: (() => void) | undefined;
      w.on("message", (m: string) => {
        queue.push(m);
        wake?.();
      });
      w.on("error", (e: Error) => {
        queue.push(`error: ${e.message}`);
        wake?.();
      });
      return async () => {
        while (queue.length === 0) await new Promise<void>((r) => (wake = r));
        wake = undefined;
        return queue.shift()!;
      };
    });
    for (const next of messages) if ((await next()) !== "ready") throw new Error("worker failed to start");
    const t0 = performance.now();
    Atomics.store(state, 1, 1);
    Atomics.notify(state, 1);
    const results = await Promise.all(messages.map((next) => next()));
    const secs = (performance.now() - t0) / 1000;
    const bad = results.find((r) => r !== "done");
    if (bad) throw new Error(`${kind} in ${dir}: ${bad}`);
    return secs;
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;

async function main(): Promise<void> {
  const [what, target = "", ...rest] = process.argv.slice(2);
  const nums = rest.map(Number);
  switch (what) {
    case "creates": {
      const [n = 5000, threads = 8] = nums;
      mkdirSync(target, { recursive: true });
      const secs = await threaded("creates", target, n, n, threads);
      console.log(JSON.stringify({ files: n, threads, seconds: secs, per_s: n / secs }));
      break;
    }
    case "stat": {
      const [n = 5000, passes = 3, threads = 8] = nums;
      const secs = await threaded("stat", target, n, n * passes, threads);
      console.log(JSON.stringify({ stats: n * passes, threads, seconds: secs, per_s: (n * passes) / secs }));
      break;
    }
    case "readdir": {
      const [expected = 0, reps = 5] = nums;
      const ms: number[] = [];
      for (let r = 0; r < reps; r++) {
        const t0 = performance.now();
        const names = await readdir(target);
        ms.push(performance.now() - t0);
        if (names.length !== expected) throw new Error(`readdir ${target}: ${names.length} entries, expected ${expected}`);
      }
      console.log(JSON.stringify({ entries: expected, first_ms: ms[0], median_ms: pct([...ms].sort((a, b) => a - b), 50), all_ms: ms }));
      break;
    }
    case "fsync": {
      const [count = 500] = nums;
      const block = new Uint8Array(4096).fill(0xa5);
      const fh = await open(target, "w", 0o644);
      const lat: number[] = [];
      try {
        for (let i = 0; i < count; i++) {
          await fh.write(block, 0, block.length, i * block.length);
          const t0 = performance.now();
          await fh.sync();
          lat.push(performance.now() - t0);
        }
      } finally {
        await fh.close();
      }
      const sorted = [...lat].sort((a, b) => a - b);
      const mean = lat.reduce((a, b) => a + b, 0) / lat.length;
      console.log(JSON.stringify({ count, p50_ms: pct(sorted, 50), p99_ms: pct(sorted, 99), max_ms: sorted[sorted.length - 1], mean_ms: mean }));
      break;
    }
    default:
      console.error(`unknown workload ${what}; see the comment at the top of bench/support/workload.ts`);
      process.exit(2);
  }
}

if (!isMainThread) {
  const job = workerData as Job;
  const state = new Int32Array(job.shared);
  const block = new Uint8Array(4096).fill(0x5a);
  parentPort!.postMessage("ready");
  Atomics.wait(state, 1, 0); // until the main thread says go
  try {
    for (let i = Atomics.add(state, 0, 1); i < job.total; i = Atomics.add(state, 0, 1)) {
      const path = join(job.dir, `f${i % job.n}`);
      if (job.kind === "creates") {
        const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
        writeSync(fd, block, 0, block.length, 0);
        closeSync(fd);
      } else {
        const size = statSync(path).size;
        if (size !== 4096) throw new Error(`${path}: size ${size}, expected 4096`);
      }
    }
    parentPort!.postMessage("done");
  } catch (e) {
    parentPort!.postMessage(`error: ${(e as Error).message}`);
  }
} else {
  await main();
}
