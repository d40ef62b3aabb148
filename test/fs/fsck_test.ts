import { afterEach, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Journal, key, ROOT_INO } from "../../journal/mod.ts";
import { Filesystem } from "../../src/fs/filesystem.ts";
import { auditSeqs, SUBLEVELS } from "../../src/projection/state.ts";
import { sh } from "../support/mount_harness.ts";

const MAIN = join(import.meta.dir, "../../src/main.ts");
const ctx = { uid: 0, gid: 0, pid: process.pid };
const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

test("fsck names a damaged projection row, exits 1, and --repair rebuilds it from the journal", async () => {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-fsck-"));
  dirs.push(dir);
  const fs = await Filesystem.open(dir);
  const a = await fs.mkdir(ctx, ROOT_INO, "a", 0o755);
  const { fh, attr } = await fs.create(ctx, a.ino, "f", 0o644, 0o102);
  await fs.write(ctx, fh, 0, new TextEncoder().encode("kept"));
  await fs.release(ctx, fh);
  await fs.close();

  // Damage: lose the file's inode row and invent a dirent.
  const j = await Journal.open(dir);
  await j.sublevel(SUBLEVELS.inodes).del(key(attr.ino));
  await j.sublevel(SUBLEVELS.dirents).put(key(ROOT_INO, "ghost"), Buffer.from([0x93, 0x63, 0x03, 0xa4, 0x66, 0x69, 0x6c, 0x65]));
  await j.close();

  const cli = (args: string) => sh(`${JSON.stringify(process.execPath)} ${JSON.stringify(MAIN)} fsck --data-dir ${JSON.stringify(dir)} ${args}`);
  const broken = await cli("");
  expect(broken.code).toBe(1);
  expect(broken.stdout).toContain(`inode ${attr.ino} is missing from the persisted rows`);
  expect(broken.stdout).toContain(`dirent 1/"ghost" is persisted but the journal does not produce it`);

  const repaired = await cli("--repair");
  expect(repaired.code).toBe(0);
  expect(repaired.stdout).toContain("projections rebuilt");
  expect((await cli("")).stdout).toContain("fsck: clean");

  const again = await Filesystem.open(dir);
  const f = await again.lookup(ctx, a.ino, "f");
  const h = await again.open(ctx, f.ino, 0);
  expect(new TextDecoder().decode(await again.read(ctx, h, 0, 10))).toBe("kept");
  await again.release(ctx, h);
  await expect(again.lookup(ctx, ROOT_INO, "ghost")).rejects.toMatchObject({ code: "ENOENT" });
  await again.close();
});

test("the audit index lists every event that touched a file, one row per file and commit, and fsck checks it entry by entry", async () => {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-fsck-"));
  dirs.push(dir);
  const fs = await Filesystem.open(dir);
  const { fh, attr } = await fs.create(ctx, ROOT_INO, "f", 0o644, 0o102);
  // Several events of one file staged together: one commit.
  await Promise.all([0, 1, 2, 3].map((i) => fs.write(ctx, fh, i * 10, new Uint8Array(10).fill(i))));
  await fs.flush(ctx, fh);
  await fs.setattr(ctx, attr.ino, { mode: 0o600 });
  await fs.rename(ctx, ROOT_INO, "f", ROOT_INO, "g");
  await fs.release(ctx, fh);
  await fs.journal.flushed();
  const touching: number[] = [];
  for await (const e of fs.journal.read()) if ("ino" in e && e.ino === attr.ino) touching.push(e.seq);
  expect(touching.length).toBe(8); // created, linked, 4 writes, chmod, renamed
  expect(await fs.eventsOf(attr.ino)).toEqual(touching);
  const rows: Buffer[] = [];
  for await (const k of fs.journal.sublevel(SUBLEVELS.audit).keys({ gte: key(attr.ino, 0), lt: key(attr.ino + 1, 0) } as never)) rows.push(k as Buffer);
  expect(rows.length).toBeLessThan(touching.length);
  expect((await fs.fsck()).ok).toBe(true);
  await fs.close();

  // Damage: lose the row that holds the writes.
  const j = await Journal.open(dir);
  const audit = j.sublevel(SUBLEVELS.audit);
  let lost: number[] = [];
  let lostKey: Buffer | undefined;
  for await (const [k, v] of audit.iterator({ gte: key(attr.ino, 0), lt: key(attr.ino + 1, 0) } as never)) {
    const seqs = auditSeqs(k as Buffer, v as Buffer);
    if (seqs.length > lost.length) {
      lost = seqs;
      lostKey = k as Buffer;
    }
  }
  expect(lost.length).toBeGreaterThan(1);
  await audit.del(lostKey!);
  await j.close();
  const again = await Filesystem.open(dir);
  const report = await again.fsck();
  expect(report.ok).toBe(false);
  for (const seq of lost) expect(report.differences).toContain(`audit index entry of inode ${attr.ino} for seq ${seq} is missing from the persisted rows`);
  expect(report.differences.length).toBe(lost.length);
  await again.close();
});
