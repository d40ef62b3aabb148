import { afterEach, describe, expect, test } from "bun:test";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DataLog, DIRECT_BLOCK, DIRECT_MIN_BYTES, type DataLogPosition } from "../../journal/data_log.ts";
import { landing, patternByte, patternBytes } from "../support/data_log_pattern.ts";

const dirs: string[] = [];
/** Child processes to kill after a test that failed before it killed them (they would recreate its directory). */
const children: Bun.Subprocess[] = [];
const mounts: string[] = [];
async function freshDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), "objectfs-datalog-"));
  dirs.push(d);
  return d;
}
/** Logs opened by a test, closed after it even if it failed (an unclosed handle fails a later test when collected). */
const logs: DataLog[] = [];
async function openLog(dir: string, pos: DataLogPosition, max: number): Promise<DataLog> {
  const log = await DataLog.open(dir, pos, max);
  logs.push(log);
  return log;
}
afterEach(async () => {
  for (const c of children.splice(0)) {
    c.kill("SIGKILL");
    await c.exited;
  }
  for (const log of logs.splice(0)) await log.close().catch(() => {});
  // Lazily if a failed test left files open in it.
  for (const m of mounts.splice(0)) if (Bun.spawnSync(["umount", m]).exitCode !== 0) Bun.spawnSync(["umount", "-l", m]);
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

const fileName = (n: number) => `${n.toString(16).padStart(8, "0")}.dat`;

/**
 * Every data file up to `pos.file` holds exactly the pattern, the last one up to `pos.end`, the
 * others up to their end in `ends` (or at least that far, unless `exact`); none after it.
 */
async function expectFiles(dir: string, pos: DataLogPosition, ends: Map<number, number>, exact = true): Promise<void> {
  const names = (await readdir(dir)).filter((n) => n.endsWith(".dat")).sort();
  expect(names.at(-1)).toBe(fileName(pos.file));
  for (const name of names) {
    const file = parseInt(name, 16);
    const bytes = await readFile(join(dir, name));
    if (file === pos.file) expect(bytes.length).toBe(pos.end);
    else if (exact) expect(bytes.length).toBe(ends.get(file)!);
    else expect(bytes.length).toBeGreaterThanOrEqual(ends.get(file) ?? 0);
    let bad = -1;
    for (let i = 0; i < bytes.length && bad < 0; i++) if (bytes[i] !== patternByte(file, i)) bad = i;
    expect({ name, bad }).toEqual({ name, bad: -1 });
  }
}

/** Reserve pattern bytes of each size, reading each back at once and again once written. */
async function appendAndCheck(log: DataLog, sizes: readonly number[], maxFileBytes: number, ends: Map<number, number>): Promise<void> {
  const checks: Promise<void>[] = [];
  const check = async (file: number, pos: number, n: number) => {
    const got = await log.read({ file, pos }, 0, n);
    expect(Buffer.from(got).equals(Buffer.from(patternBytes(file, pos, n)))).toBe(true);
  };
  for (let i = 0; i < sizes.length; i++) {
    const n = sizes[i]!;
    const at = landing(log.reservedEnd, n, maxFileBytes);
    const ref = log.reserve(patternBytes(at.file, at.pos, n));
    expect(ref).toEqual(at);
    ends.set(ref.file, ref.pos + n);
    checks.push(check(ref.file, ref.pos, n)); // from the slab
    if (i % 3 !== 0) {
      const w = log.write();
      checks.push(check(ref.file, ref.pos, n), w.then(() => check(ref.file, ref.pos, n)));
    }
  }
  await log.write();
  await Promise.all(checks);
  await log.sync();
}

// Ends inside blocks, runs shorter than a block, runs spanning slabs (4 MiB) and files.
const SIZES = [1, 4095, 100_000, 4096, 1 << 20, 3, (1 << 20) + 4097, 77, 8192, 30_000, 5 << 20, 4096 * 3, 1, (4 << 20) - 1, 12_345];

describe("data log writes", () => {
  test("runs that end inside a block and go on read back right at every moment and across a reopen; whole blocks go past the page cache", async () => {
    const dir = await freshDir();
    const max = 6 << 20;
    const ends = new Map<number, number>();
    let log = await openLog(dir, { file: 0, end: 0 }, max);
    await appendAndCheck(log, [...SIZES, ...SIZES], max, ends);
    const s = log.writeStats;
    expect(s.direct).toBe(true); // never refused: every direct write was aligned
    expect(s.directBytes).toBeGreaterThan(s.bufferedBytes);
    expect(s.bufferedBytes).toBeGreaterThan(0);
    const pos = log.position;
    expect(pos).toEqual(log.reservedEnd);
    expect(pos.end % DIRECT_BLOCK).not.toBe(0);
    await log.close();
    await expectFiles(dir, pos, ends);

    // Reopened at an end inside a block: the first slab starts there, and aligned blocks after it still go direct.
    log = await openLog(dir, pos, max);
    await appendAndCheck(log, SIZES, max, ends);
    expect(log.writeStats.direct).toBe(true);
    expect(log.writeStats.directBytes).toBeGreaterThan(0);
    const pos2 = log.position;
    await log.close();
    await expectFiles(dir, pos2, ends);
  }, 60_000);

  test("a run with fewer whole blocks than DIRECT_MIN_BYTES goes through the page cache, a larger one direct but for its partial blocks", async () => {
    const dir = await freshDir();
    const log = await openLog(dir, { file: 0, end: 0 }, 64 << 20);
    const small = DIRECT_MIN_BYTES - DIRECT_BLOCK + 10; // whole blocks short of the threshold, then 10 bytes
    log.reserve(patternBytes(0, 0, small));
    await log.write();
    expect(log.writeStats).toMatchObject({ directBytes: 0, bufferedBytes: small });
    // From inside a block to inside another: the aligned blocks between go direct.
    log.reserve(patternBytes(0, small, 100));
    log.reserve(patternBytes(0, small + 100, DIRECT_MIN_BYTES * 2));
    await log.write();
    const end = small + 100 + DIRECT_MIN_BYTES * 2;
    const direct = Math.floor(end / DIRECT_BLOCK) * DIRECT_BLOCK - DIRECT_MIN_BYTES;
    expect(log.writeStats).toMatchObject({ direct: true, directBytes: direct, bufferedBytes: end - direct });
    await log.sync();
    await log.close();
    await expectFiles(dir, { file: 0, end }, new Map());
  });

  test("after SIGKILLs mid-write, opening at the last synced end cuts off the rest and the bytes before it are intact", async () => {
    const dir = await freshDir();
    const max = 8 << 20;
    const child = join(import.meta.dir, "../support/data_log_child.ts");
    let pos: DataLogPosition = { file: 0, end: 0 };
    const ends = new Map<number, number>();
    let insideBlock = 0;
    for (let cycle = 0; cycle < 6; cycle++) {
      const proc = Bun.spawn([process.execPath, child, dir, String(pos.file), String(pos.end), String(max)], { stdout: "pipe", stderr: "inherit" });
      children.push(proc);
      const reader = proc.stdout.getReader();
      const want = 1 + (cycle % 4);
      let synced = 0;
      let text = "";
      let last: DataLogPosition | undefined;
      const fileEnds = new Map<number, number>();
      while (synced < want) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`data log child exited early with code ${await proc.exited}`);
        text += new TextDecoder().decode(value);
        let nl: number;
        while ((nl = text.indexOf("\n")) >= 0) {
          const [kind, f, e, stats] = text.slice(0, nl).split(" ");
          text = text.slice(nl + 1);
          if (kind !== "synced") continue;
          synced++;
          last = { file: Number(f), end: Number(e) };
          fileEnds.set(last.file, last.end);
          expect(JSON.parse(stats!).direct).toBe(true);
        }
      }
      proc.kill("SIGKILL"); // with writes (unsynced ones too) under way
      await proc.exited;
      children.splice(children.indexOf(proc), 1);
      pos = last!;
      for (const [f, e] of fileEnds) ends.set(f, e);
      if (pos.end % DIRECT_BLOCK !== 0) insideBlock++;
      const size = (await stat(join(dir, fileName(pos.file)))).size;
      expect(size).toBeGreaterThanOrEqual(pos.end);
      const log = await openLog(dir, pos, max);
      await log.close();
      // Where an earlier file ended is not printed (only synced ends are): at least the last one seen.
      await expectFiles(dir, pos, ends, false);
    }
    expect(insideBlock).toBeGreaterThan(0);
  }, 120_000);

  test("on a filesystem that refuses O_DIRECT (ramfs) every write goes through the page cache", async () => {
    if (process.getuid?.() !== 0) return; // mounting ramfs needs root, as the FUSE tests do
    const dir = await freshDir();
    if (Bun.spawnSync(["mount", "-t", "ramfs", "objectfs-test", dir]).exitCode !== 0) return;
    mounts.push(dir);
    const max = 6 << 20;
    const ends = new Map<number, number>();
    let log = await openLog(dir, { file: 0, end: 0 }, max);
    await appendAndCheck(log, SIZES, max, ends);
    expect(log.writeStats).toMatchObject({ direct: false, directBytes: 0 });
    const pos = log.position;
    await log.close();
    await expectFiles(dir, pos, ends);
    log = await openLog(dir, pos, max);
    await appendAndCheck(log, SIZES.slice(0, 5), max, ends);
    const pos2 = log.position;
    await log.close();
    await expectFiles(dir, pos2, ends);
  }, 60_000);
});
