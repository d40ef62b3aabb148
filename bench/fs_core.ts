/**
 * Filesystem core, in-process, beside the same workload on a tmpfs directory
 * through node:fs in the same run: small-file creates/s, stat/s, readdir of
 * 10k entries, sequential write and read of 1 GiB, and the time to reopen a
 * store holding 1M inodes. The sequential write is also put beside the disk's
 * own figures, measured in each round just before ours with `dd` of the same size
 * into the same directory: `conv=fsync` (everything into the page cache, then one
 * fsync: the flush does not overlap the writing) and `oflag=direct` (the device's
 * rate without the page cache, the bound for a writer that keeps it busy). Small files and
 * sequential writes run in several rounds (this machine is shared and noisy);
 * the figures are the medians, every round is printed (small files after a warm-up round of
 * each, printed and not counted: the JIT compiles the paths during the first). Last line: one JSON
 * object with figures and targets.
 *
 *   bun bench/fs_core.ts [--gib N] [--inodes N] [--workers N] [--rounds N]
 */
import { mkdtemp, open as openFile, readdir as readdirTmp, rm, stat as statTmp, writeFile, mkdir as mkdirTmp } from "node:fs/promises";
import { loadavg } from "node:os";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ROOT_INO, type Ino } from "../journal/mod.ts";
import { Filesystem } from "../src/fs/filesystem.ts";

const { values } = parseArgs({
  options: { gib: { type: "string", default: "1" }, inodes: { type: "string", default: "1000000" }, workers: { type: "string", default: "32" }, rounds: { type: "string", default: "3" } },
});
const SEQ_BYTES = Number(values.gib) * 2 ** 30;
const INODES = Number(values.inodes);
const WORKERS = Number(values.workers);
const ROUNDS = Math.max(1, Number(values.rounds));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const rounds: Record<string, number[]> = {};
const record = (name: string, v: number) => (rounds[name] ??= []).push(v);
const ctx = { uid: 0, gid: 0, pid: process.pid };
const O_RDWR_CREAT = 0o2 | 0o100;
const disk = await mkdtemp(join(tmpdir(), "objectfs-bench-fs-"));
const shm = await mkdtemp("/dev/shm/objectfs-bench-fs-");
const figures: Record<string, number> = {};
const line = (what: string, ours: number, tmpfs: number, unit: string) =>
  console.log(`${what.padEnd(34)} objectfs ${ours.toFixed(1).padStart(10)} ${unit.padEnd(6)} tmpfs ${tmpfs.toFixed(1).padStart(10)} ${unit.padEnd(6)} ratio ${(ours / tmpfs).toFixed(2)}`);

async function parallel(n: number, work: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: WORKERS }, async () => {
      for (let i = next++; i < n; i = next++) await work(i);
    }),
  );
  return (performance.now() - t0) / 1000;
}

const block4k = new Uint8Array(4096).fill(7);
const load = () => loadavg().map((x) => x.toFixed(2)).join(" ");
console.log(`load average at start: ${load()} (${ROUNDS} rounds, ${WORKERS} workers)`);
let fs = await Filesystem.open(join(disk, "fs"));

// --- small files: create + write 4 KiB + close (flush makes it durable) ---
{
  const N = 20_000;
  let d: { ino: Ino } = { ino: ROOT_INO };
  // Round 0 warms up both (the JIT compiles the paths while it runs): printed, not counted.
  for (let r = 0; r <= ROUNDS; r++) {
    d = await fs.mkdir(ctx, ROOT_INO, `small${r}`, 0o755);
    const dir = d;
    const secs = await parallel(N, async (i) => {
      const { fh } = await fs.create(ctx, dir.ino, `f${i}`, 0o644, O_RDWR_CREAT);
      await fs.write(ctx, fh, 0, block4k);
      await fs.flush(ctx, fh);
      await fs.release(ctx, fh);
    });
    await mkdirTmp(join(shm, `small${r}`));
    const tsecs = await parallel(N, async (i) => {
      const fh = await openFile(join(shm, `small${r}`, `f${i}`), "w+");
      await fh.write(block4k);
      await fh.close();
    });
    if (r === 0) {
      line("create+write 4KiB+close, warm-up", N / secs, N / tsecs, "/s");
      continue;
    }
    record("small_files_per_s", N / secs);
    record("tmpfs_small_files_per_s", N / tsecs);
    line(`create+write 4KiB+close, round ${r}`, N / secs, N / tsecs, "/s");
  }
  figures.small_files_per_s = median(rounds.small_files_per_s!);
  figures.tmpfs_small_files_per_s = median(rounds.tmpfs_small_files_per_s!);
  line(`create+write 4KiB+close (${WORKERS} workers)`, figures.small_files_per_s, figures.tmpfs_small_files_per_s, "/s");

  // --- stat ---
  const S = 200_000;
  const ssecs = await parallel(S, async (i) => {
    await fs.lookup(ctx, d.ino, `f${i % N}`);
  });
  const tssecs = await parallel(S, async (i) => {
    await statTmp(join(shm, `small${ROUNDS}`, `f${i % N}`));
  });
  figures.stat_per_s = S / ssecs;
  figures.tmpfs_stat_per_s = S / tssecs;
  line("stat (lookup+getattr)", S / ssecs, S / tssecs, "/s");

  // --- readdir of 10k entries ---
  const r = await fs.mkdir(ctx, ROOT_INO, "r", 0o755);
  await parallel(10_000, async (i) => void (await fs.mknod(ctx, r.ino, `e${i}`, 0o100644)));
  await mkdirTmp(join(shm, "r"));
  await parallel(10_000, async (i) => void (await writeFile(join(shm, "r", `e${i}`), "")));
  let t0 = performance.now();
  for (let k = 0; k < 5; k++) if ((await fs.readdir(ctx, r.ino)).length !== 10_002) throw new Error("readdir lost entries");
  const rd = (performance.now() - t0) / 5;
  t0 = performance.now();
  for (let k = 0; k < 5; k++) await readdirTmp(join(shm, "r"), { withFileTypes: true });
  const trd = (performance.now() - t0) / 5;
  figures.readdir_10k_ms = rd;
  figures.tmpfs_readdir_10k_ms = trd;
  line("readdir 10k entries", rd, trd, "ms");
}

// --- sequential write and read of 1 GiB in 128 KiB requests (what FUSE sends) ---
/** `dd` of `bytes` into `dir` with `flags` (conv=fsync, oflag=direct): the disk's own durable sequential write, MB/s. */
async function ddWrite(dir: string, bytes: number, ...flags: string[]): Promise<number> {
  const file = join(dir, "dd.bin");
  const p = Bun.spawn(["dd", "if=/dev/zero", `of=${file}`, "bs=1M", `count=${Math.round(bytes / 2 ** 20)}`, ...flags], { stderr: "pipe", stdout: "ignore" });
  const err = await new Response(p.stderr).text();
  if ((await p.exited) !== 0) throw new Error(`dd failed: ${err}`);
  await rm(file);
  const m = /(\d+) bytes .* copied, ([\d.]+) s/.exec(err);
  if (!m) throw new Error(`cannot read dd's output: ${err}`);
  return Number(m[1]) / 1e6 / Number(m[2]);
}

{
  const chunk = new Uint8Array(128 * 1024).map((_, i) => (i * 131) & 0xff);
  // Reads land in a buffer of the caller's, as the FUSE adapter passes FUSE's own.
  const into = new Uint8Array(chunk.length);
  for (let r = 0; r < ROUNDS; r++) {
    const ddMBs = await ddWrite(disk, SEQ_BYTES, "conv=fsync");
    const directMBs = await ddWrite(disk, SEQ_BYTES, "oflag=direct", "conv=fsync");
    const { fh } = await fs.create(ctx, ROOT_INO, "big", 0o644, O_RDWR_CREAT);
    let t0 = performance.now();
    for (let off = 0; off < SEQ_BYTES; off += chunk.length) await fs.write(ctx, fh, off, chunk);
    await fs.flush(ctx, fh);
    const wsecs = (performance.now() - t0) / 1000;
    t0 = performance.now();
    for (let off = 0; off < SEQ_BYTES; off += chunk.length) {
      const got = await fs.read(ctx, fh, off, chunk.length, into);
      if (got.length !== chunk.length) throw new Error("short read");
    }
    const rsecs = (performance.now() - t0) / 1000;
    if (!Buffer.from(await fs.read(ctx, fh, SEQ_BYTES - chunk.length, chunk.length)).equals(Buffer.from(chunk))) throw new Error("read back other bytes");
    await fs.release(ctx, fh);
    await fs.unlink(ctx, ROOT_INO, "big");
    const tfh = await openFile(join(shm, "big"), "w+");
    t0 = performance.now();
    for (let off = 0; off < SEQ_BYTES; off += chunk.length) await tfh.write(chunk, 0, chunk.length, off);
    await tfh.sync();
    const twsecs = (performance.now() - t0) / 1000;
    const buf = new Uint8Array(chunk.length);
    t0 = performance.now();
    for (let off = 0; off < SEQ_BYTES; off += chunk.length) await tfh.read(buf, 0, buf.length, off);
    const trsecs = (performance.now() - t0) / 1000;
    await tfh.close();
    await rm(join(shm, "big"));
    record("disk_seq_write_mb_per_s", ddMBs);
    record("disk_direct_seq_write_mb_per_s", directMBs);
    record("seq_write_mb_per_s", SEQ_BYTES / 1e6 / wsecs);
    record("seq_read_mb_per_s", SEQ_BYTES / 1e6 / rsecs);
    record("tmpfs_seq_write_mb_per_s", SEQ_BYTES / 1e6 / twsecs);
    record("tmpfs_seq_read_mb_per_s", SEQ_BYTES / 1e6 / trsecs);
    console.log(
      `sequential write ${values.gib} GiB, round ${r + 1}: disk (dd conv=fsync) ${ddMBs.toFixed(0)} MB/s, (dd oflag=direct) ${directMBs.toFixed(0)} MB/s, objectfs ${(SEQ_BYTES / 1e6 / wsecs).toFixed(0)} MB/s (${(SEQ_BYTES / 1e6 / wsecs / ddMBs).toFixed(2)} of conv=fsync), tmpfs ${(SEQ_BYTES / 1e6 / twsecs).toFixed(0)} MB/s`,
    );
  }
  for (const k of ["disk_seq_write_mb_per_s", "disk_direct_seq_write_mb_per_s", "seq_write_mb_per_s", "seq_read_mb_per_s", "tmpfs_seq_write_mb_per_s", "tmpfs_seq_read_mb_per_s"]) figures[k] = median(rounds[k]!);
  line(`sequential write ${values.gib} GiB (+fsync)`, figures.seq_write_mb_per_s!, figures.tmpfs_seq_write_mb_per_s!, "MB/s");
  console.log(
    `${"".padEnd(34)} disk: dd conv=fsync ${figures.disk_seq_write_mb_per_s!.toFixed(1)} MB/s (objectfs ${(figures.seq_write_mb_per_s! / figures.disk_seq_write_mb_per_s!).toFixed(2)} of it), dd oflag=direct ${figures.disk_direct_seq_write_mb_per_s!.toFixed(1)} MB/s (objectfs ${(figures.seq_write_mb_per_s! / figures.disk_direct_seq_write_mb_per_s!).toFixed(2)} of it)`,
  );
  line(`sequential read ${values.gib} GiB`, figures.seq_read_mb_per_s!, figures.tmpfs_seq_read_mb_per_s!, "MB/s");
}

// --- reopen with 1M inodes ---
{
  const perDir = 1000;
  let t0 = performance.now();
  const dirs = Math.ceil(INODES / perDir);
  for (let d = 0; d < dirs; d++) {
    const dir = await fs.mkdir(ctx, ROOT_INO, `m${d}`, 0o755);
    await parallel(Math.min(perDir, INODES - d * perDir), async (i) => void (await fs.mknod(ctx, dir.ino, `n${i}`, 0o100644)));
  }
  await fs.syncAll();
  const fill = (performance.now() - t0) / 1000;
  console.log(`filled ${INODES} inodes in ${fill.toFixed(1)} s (${Math.round(INODES / fill)}/s)`);
  await fs.close();
  t0 = performance.now();
  fs = await Filesystem.open(join(disk, "fs"));
  const a = await fs.lookup(ctx, ROOT_INO, `m${dirs - 1}`);
  await fs.lookup(ctx, a.ino, "n0");
  figures.reopen_1m_inodes_ms = performance.now() - t0;
  console.log(`reopen with ${INODES} inodes and first lookup: ${figures.reopen_1m_inodes_ms.toFixed(0)} ms`);
  await fs.close();
}

await rm(disk, { recursive: true, force: true });
await rm(shm, { recursive: true, force: true });
console.log(`load average at the end: ${load()}`);
const round = (o: Record<string, number>) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, Math.round(v * 10) / 10]));
console.log(
  JSON.stringify({
    ...round(figures),
    rounds: Object.fromEntries(Object.entries(rounds).map(([k, v]) => [k, v.map((x) => Math.round(x * 10) / 10)])),
    loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
    ratios: round({
      small_files: figures.small_files_per_s! / figures.tmpfs_small_files_per_s!,
      seq_write_vs_disk: figures.seq_write_mb_per_s! / figures.disk_seq_write_mb_per_s!,
      seq_write_vs_disk_direct: figures.seq_write_mb_per_s! / figures.disk_direct_seq_write_mb_per_s!,
      stat: figures.stat_per_s! / figures.tmpfs_stat_per_s!,
      seq_write: figures.seq_write_mb_per_s! / figures.tmpfs_seq_write_mb_per_s!,
      seq_read: figures.seq_read_mb_per_s! / figures.tmpfs_seq_read_mb_per_s!,
    }),
    targets: {
      small_files_per_s: { value: Math.round(figures.small_files_per_s!), goal: ">= 20000", met: figures.small_files_per_s! >= 20000 },
      seq_write_mb_per_s: { value: Math.round(figures.seq_write_mb_per_s!), goal: ">= 500", met: figures.seq_write_mb_per_s! >= 500 },
      reopen_1m_inodes_ms: { value: Math.round(figures.reopen_1m_inodes_ms!), goal: "< 1000", met: figures.reopen_1m_inodes_ms! < 1000 },
    },
  }),
);
