import { afterEach, expect, test } from "bun:test";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Journal } from "../../journal/mod.ts";
import { ROOT_INO } from "../../journal/mod.ts";
import { Filesystem } from "../../src/fs/filesystem.ts";

const child = join(import.meta.dir, "../support/unclean_child.ts");
const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

/** Run the child until it reports, then SIGKILL it: an unclean stop. */
async function runAndKill(mode: string, dir: string): Promise<any> {
  const proc = Bun.spawn([process.execPath, child, mode, dir], { stdout: "pipe", stderr: "inherit" });
  const reader = proc.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`child exited early: ${await proc.exited}`);
    text += new TextDecoder().decode(value);
  }
  proc.kill("SIGKILL");
  await proc.exited;
  return JSON.parse(text);
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** What a power loss can do to data that was written but never synced. */
async function loseBytes(dir: string, ref: { file: number; pos: number }, length: number) {
  const fh = await open(join(dir, "data", `${ref.file.toString(16).padStart(8, "0")}.dat`), "r+");
  await fh.write(new Uint8Array(length), 0, length, ref.pos);
  await fh.close();
}

test("after an unclean stop whose unsynced data did not survive, the journal is cut back before it and synced events stay", async () => {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-recover-"));
  dirs.push(dir);
  const { synced, unsynced } = await runAndKill("journal", dir);
  await loseBytes(dir, unsynced.ref, 1000);
  const j = await Journal.open(dir);
  expect(j.recovery?.truncatedFrom as number | undefined).toBe(unsynced.seq);
  expect(j.head as number).toBe(synced.seq);
  const events = [];
  for await (const e of j.read({ data: true })) events.push(e);
  expect(events.length).toBe(synced.seq);
  const last = events[events.length - 1]!;
  expect(last.type === "ExtentWritten" && Array.from(last.data!.subarray(0, 3))).toEqual([1, 1, 1]);
  // Appends continue from the cut.
  const [next] = await j.append([{ type: "InodeDropped", ino: 9 as never }], { sync: true });
  expect(next!.seq as number).toBe(synced.seq + 1);
  await j.close();
});

test("an unclean stop that lost data in the middle of a commit's group of events keeps the events before it", async () => {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-recover-"));
  dirs.push(dir);
  const { synced, group } = await runAndKill("group", dir);
  const [before, lost] = group;
  await loseBytes(dir, lost.ref, 1000);
  const j = await Journal.open(dir);
  expect(j.recovery?.truncatedFrom as number | undefined).toBe(lost.seq);
  expect(j.head as number).toBe(before.seq);
  expect((await collect(j.read())).map((e) => [e.seq, e.type])).toEqual([
    [synced.seq, "ExtentWritten"],
    [before.seq, "InodeDropped"],
  ]);
  expect((await j.get(lost.seq))).toBeUndefined();
  const [next] = await j.append([{ type: "InodeDropped", ino: 9 as never }], { sync: true });
  expect(next!.seq as number).toBe(lost.seq);
  expect((await j.get(lost.seq))?.type).toBe("InodeDropped");
  await j.close();
});

test("after an unclean stop whose unsynced data survived, nothing is cut", async () => {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-recover-"));
  dirs.push(dir);
  const { unsynced } = await runAndKill("journal", dir);
  const j = await Journal.open(dir);
  expect(j.recovery?.truncatedFrom).toBeUndefined();
  expect(j.recovery?.checked).toBeGreaterThan(0);
  expect(j.head as number).toBe(unsynced.seq + 1);
  await j.close();
});

test("a filesystem whose unsynced tail was lost reopens at its last fsync with projections rebuilt and fsck clean", async () => {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-recover-"));
  dirs.push(dir);
  const { ino, ref } = await runAndKill("fs", dir);
  await loseBytes(dir, ref, 9);
  const fs = await Filesystem.open(dir);
  const ctx = { uid: 0, gid: 0, pid: process.pid };
  const attr = await fs.lookup(ctx, ROOT_INO, "f");
  expect(attr.ino).toBe(ino);
  expect(attr.size).toBe(7);
  const fh = await fs.open(ctx, attr.ino, 0);
  expect(new TextDecoder().decode(await fs.read(ctx, fh, 0, 100))).toBe("durable");
  await fs.release(ctx, fh);
  await expect(fs.lookup(ctx, ROOT_INO, "later")).rejects.toMatchObject({ code: "ENOENT" });
  expect(await fs.fsck()).toMatchObject({ ok: true });
  await fs.close();
});

test("a clean close records everything as synced: the next open checks nothing, and neither does the one after a recovery", async () => {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-recover-"));
  dirs.push(dir);
  const j = await Journal.open(dir);
  // Unsynced writes with data, then a clean close (its final sync carries data).
  for (let i = 0; i < 20; i++) await j.append([{ type: "ExtentWritten", ino: 5 as never, offset: i * 100, length: 100, data: new Uint8Array(100).fill(i) } as never]);
  await j.close();
  const again = await Journal.open(dir);
  expect(again.recovery).toBeUndefined();
  expect(again.head as number).toBe(20);
  await again.close();

  // After an unclean stop the first open checks the tail; it then records it as synced.
  const other = await mkdtemp(join(tmpdir(), "objectfs-recover-"));
  dirs.push(other);
  await runAndKill("journal", other);
  const first = await Journal.open(other);
  expect(first.recovery?.checked).toBeGreaterThan(0);
  await first.close();
  const second = await Journal.open(other);
  expect(second.recovery).toBeUndefined();
  await second.close();
});
