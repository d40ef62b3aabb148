/**
 * The audit log through the projections' indexes (a local data directory) answers exactly as
 * a replay of the whole journal does (what S3's segments get): for time windows, uid and pid
 * filters and the whole log, on a history with renamed directories, hard links, replacing
 * renames and unlinks before and inside the window, and with more old inodes touched in the
 * window than are looked up one by one (the names before the window then come from a scan).
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT_INO, type Ino } from "../../journal/mod.ts";
import { auditLog, type LogEntry, type LogFilter } from "../../src/audit/log.ts";
import { Filesystem } from "../../src/fs/filesystem.ts";

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const root = { uid: 0, gid: 0, pid: 100 };
const user = { uid: 1000, gid: 1000, pid: 200 };
const RDWR_CREAT = 0o102;

async function collect(it: AsyncIterable<LogEntry>): Promise<LogEntry[]> {
  const out: LogEntry[] = [];
  for await (const e of it) out.push(e);
  return out;
}

test("indexed log queries equal a full replay, across renames, hard links and many old inodes", async () => {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-logindex-"));
  dirs.push(dir);
  const fs = await Filesystem.open(dir);
  const file = async (who: typeof root, parent: Ino, name: string, bytes = 10) => {
    const { fh, attr } = await fs.create(who, parent, name, 0o666, RDWR_CREAT);
    await fs.write(who, fh, 0, new Uint8Array(bytes).fill(7));
    await fs.release(who, fh);
    return attr.ino as Ino;
  };
  // Before any window: a tree, hard links, a directory renamed, files replaced and unlinked.
  const a = (await fs.mkdir(root, ROOT_INO, "a", 0o777)).ino as Ino;
  const b = (await fs.mkdir(root, a, "b", 0o777)).ino as Ino;
  const old: Ino[] = [];
  for (let i = 0; i < 1200; i++) old.push(await file(i % 3 ? user : root, b, `old${i}`));
  const shared = await file(user, a, "shared");
  await fs.link(root, shared, b, "shared-link");
  await fs.rename(root, ROOT_INO, "a", ROOT_INO, "c");
  await file(user, b, "victim");
  await fs.rename(user, b, "old1", b, "victim");
  await fs.unlink(user, b, "old2");
  await Bun.sleep(20);
  const mark1 = fs.journal.staged;
  // Inside the windows: the hard-linked file written, every old file touched (more than are
  // looked up one by one), more renames.
  const w = await fs.open(user, shared, 0o2);
  await fs.write(user, w, 3, new Uint8Array(5));
  await fs.release(user, w);
  for (const [i, ino] of old.entries()) if (i !== 1 && i !== 2) await fs.setattr(i % 3 ? user : root, ino, { mode: 0o640 });
  await fs.rename(root, ROOT_INO, "c", ROOT_INO, "d");
  await fs.unlink(root, b, "shared-link");
  await Bun.sleep(20);
  const mark2 = fs.journal.staged;
  const fresh = await file(user, b, "fresh");
  await fs.rename(root, b, "fresh", ROOT_INO, "moved");
  await fs.setattr(user, fresh, { mode: 0o600 });
  await fs.close();

  const ro = await Filesystem.open(dir, { readOnly: true });
  try {
    const t1 = (await ro.journal.get(mark1 + 1))!.time;
    const t2 = (await ro.journal.get(mark2 + 1))!.time;
    const filters: LogFilter[] = [
      {},
      { uid: 1000 },
      { pid: 100 },
      { since: t1 },
      { since: t1, until: t2 - 1 },
      { since: t2, uid: 1000 },
      { since: t1, all: true },
      { until: t1 - 1 },
    ];
    for (const filter of filters) {
      const viaIndex = await collect(auditLog(() => ro.journal.read(), filter, { resolveNow: (p) => ro.resolvePath(p), index: ro.auditIndex() }));
      const viaReplay = await collect(auditLog(() => ro.journal.read(), filter));
      expect({ filter, entries: viaIndex }).toEqual({ filter, entries: viaReplay });
      expect(viaIndex.length).toBeGreaterThan(0);
    }
    // The names inside the window are those of the time: the renamed directory, then the new name.
    const window = await collect(auditLog(() => ro.journal.read(), { since: t1, until: t2 - 1 }, { index: ro.auditIndex() }));
    expect(window.some((e) => e.op === "AttrsChanged" && e.paths[0] === "/c/b/old0")).toBe(true);
    expect(window.some((e) => e.op === "Renamed" && e.paths[0] === "/c" && e.paths[1] === "/d")).toBe(true);
    expect(window.some((e) => e.op === "DirentUnlinked" && e.paths[0] === "/d/b/shared-link")).toBe(true);
    const late = await collect(auditLog(() => ro.journal.read(), { since: t2 }, { index: ro.auditIndex() }));
    expect(late.some((e) => e.op === "AttrsChanged" && e.paths[0] === "/moved")).toBe(true);
  } finally {
    await ro.close();
  }
}, 120_000);

test("paths are the ones at the time, through directory renames, replacing renames and a directory removed and made again", async () => {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-logpaths-"));
  dirs.push(dir);
  const fs = await Filesystem.open(dir);
  const put = async (ino: Ino, offset: number) => {
    const fh = await fs.open(user, ino, 0o2);
    await fs.write(user, fh, offset, new Uint8Array(1));
    await fs.release(user, fh);
  };
  const a = (await fs.mkdir(root, ROOT_INO, "a", 0o777)).ino as Ino;
  const b = (await fs.mkdir(root, a, "b", 0o777)).ino as Ino;
  const { fh, attr } = await fs.create(user, b, "f", 0o666, RDWR_CREAT);
  await fs.release(user, fh);
  const f = attr.ino as Ino;
  await put(f, 0); // /a/b/f
  await fs.rename(root, ROOT_INO, "a", ROOT_INO, "x");
  await put(f, 1); // /x/b/f
  await fs.rename(root, a, "b", ROOT_INO, "y");
  await Bun.sleep(20);
  const from = Date.now();
  await put(f, 2); // /y/f
  const empty = (await fs.mkdir(root, ROOT_INO, "z", 0o777)).ino as Ino;
  await fs.rename(root, ROOT_INO, "y", ROOT_INO, "z"); // replaces the empty directory z
  await put(f, 3); // /z/f
  await fs.rename(user, b, "f", a, "g");
  await put(f, 4); // /x/g
  await fs.rmdir(root, ROOT_INO, "z");
  const z2 = (await fs.mkdir(root, ROOT_INO, "z", 0o777)).ino as Ino;
  await fs.rename(user, a, "g", z2, "h");
  await put(f, 5); // /z/h (another directory of the same name)
  await fs.rename(root, ROOT_INO, "x", z2, "x");
  const { fh: fh2, attr: a2 } = await fs.create(user, a, "k", 0o666, RDWR_CREAT);
  await fs.release(user, fh2);
  await put(a2.ino as Ino, 6); // /z/x/k
  const want = ["/a/b/f", "/x/b/f", "/y/f", "/z/f", "/x/g", "/z/h", "/z/x/k"];
  expect(empty).not.toBe(z2);
  const writes = (entries: LogEntry[]) => entries.filter((e) => e.op === "ExtentWritten").map((e) => `${e.paths.join(",")}@${e.range![0]}`);
  const expected = want.map((p, i) => `${p}@${i}`);
  await fs.journal.settle();
  const index = fs.auditIndex();
  const filters: LogFilter[] = [{}, { uid: 1000 }, { since: 0 }];
  for (const filter of filters) {
    expect(writes(await collect(auditLog(() => fs.journal.read(), filter, { index })))).toEqual(expected);
    expect(writes(await collect(auditLog(() => fs.journal.read(), filter)))).toEqual(expected);
  }
  // Starting inside the history (names before the window learnt from the index): the same paths.
  expect(writes(await collect(auditLog(() => fs.journal.read(), { since: from }, { index })))).toEqual(expected.slice(2));
  expect(writes(await collect(auditLog(() => fs.journal.read(), { since: from })))).toEqual(expected.slice(2));
  await fs.close();
});
