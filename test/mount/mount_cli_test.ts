/**
 * `objectfs mount` / `objectfs unmount` as a user meets them: detaching,
 * refusing a second mount, clearing a stale one, unmounting on command and on
 * SIGTERM, one clear sentence for bad settings, read-only mounts, and the
 * caller's identity on files and in the journal.
 */
import { afterEach, expect, test } from "bun:test";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cleanup, fsckDataDir, OBJECTFS, sh, startMount, type MountHandle } from "../support/mount_harness.ts";

const q = (s: string) => JSON.stringify(s);
const JOURNAL_MOD = join(import.meta.dir, "../../journal/mod.ts");

const dirs: string[] = [];
const mounts: MountHandle[] = [];
/** Mountpoints that a detached objectfs may still serve. */
const detached: string[] = [];

afterEach(async () => {
  for (const mnt of detached.splice(0)) await sh(`${OBJECTFS} unmount ${q(mnt)} --timeout 20`);
  for (const m of mounts.splice(0)) await m.kill().catch(() => {});
  await cleanup(...dirs.splice(0));
});

async function tempDirs(): Promise<{ mnt: string; dataDir: string }> {
  const mnt = await mkdtemp(join(tmpdir(), "objectfs-cli-mnt-"));
  const dataDir = await mkdtemp(join(tmpdir(), "objectfs-cli-data-"));
  dirs.push(mnt, dataDir);
  return { mnt, dataDir };
}

async function mount(options: Parameters<typeof startMount>[0] = {}): Promise<MountHandle> {
  const m = await startMount(options);
  mounts.push(m);
  if (!dirs.includes(m.mnt)) dirs.push(m.mnt, m.dataDir);
  return m;
}

async function stop(m: MountHandle): Promise<number> {
  mounts.splice(mounts.indexOf(m), 1);
  return m.stop();
}

/** The mountinfo line for a mountpoint, as objectfs finds it (its source names the serving pid). */
async function mountSource(mnt: string): Promise<string | undefined> {
  const r = await sh(`findmnt -n -o SOURCE --mountpoint ${q(mnt)}`);
  return r.code === 0 ? r.stdout.trim() : undefined;
}

/** Whether a process has exited (a zombie that nobody reaped yet counts as gone). */
async function gone(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => undefined);
  return stat === undefined || stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
}

/** A one-sentence error on stderr: a single line, naming `what`. */
function expectOneSentence(r: { code: number; stdout: string; stderr: string }, ...what: string[]): void {
  expect(r.code).not.toBe(0);
  const lines = r.stderr.trim().split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toStartWith("objectfs ");
  for (const w of what) expect(lines[0]).toContain(w);
  // one sentence: no ". " inside it
  expect(lines[0]!.replace(/"[^"]*"/g, "")).not.toMatch(/\.\s+[A-Z]/);
}

test("objectfs mount without --foreground returns 0 once the mount is ready, a file written right after is there, and objectfs unmount flushes it for the next mount", async () => {
  const { mnt, dataDir } = await tempDirs();
  const r = await sh(`${OBJECTFS} mount ${q(mnt)} --data-dir ${q(dataDir)} && printf 'written at once\\n' > ${q(mnt)}/first && cat ${q(mnt)}/first`);
  detached.push(mnt);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  expect(r.stdout).toContain(`objectfs: mounted at ${mnt}`);
  expect(r.stdout).toEndWith("written at once\n");
  const source = await mountSource(mnt);
  expect(source).toMatch(/^objectfs@\d+$/);
  const pid = Number(source!.split("@")[1]);
  // The daemon is on its own: the leader of its own session, no longer the shell's.
  const [, , , session] = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ");
  expect(Number(session)).toBe(pid);

  const u = await sh(`${OBJECTFS} unmount ${q(mnt)}`);
  expect(u.code).toBe(0);
  expect(u.stdout).toContain(`unmounted ${mnt}`);
  detached.splice(detached.indexOf(mnt), 1);
  expect(await mountSource(mnt)).toBeUndefined();
  expect(await gone(pid)).toBe(true);
  const log = await readFile(join(dataDir, "objectfs.log"), "utf8");
  expect(log).toContain("unmounted cleanly");
  expect((await fsckDataDir(dataDir)).code).toBe(0);

  const again = await mount({ mnt, dataDir });
  expect((await sh(`cat ${q(mnt)}/first`)).stdout).toBe("written at once\n");
  expect(await stop(again)).toBe(0);
  // And unmount of what is not mounted says so.
  const none = await sh(`${OBJECTFS} unmount ${q(mnt)}`);
  expect(none.code).toBe(1);
  expect(none.stderr).toContain(`nothing is mounted at ${mnt}`);
}, 60_000);

test("a second mount of a data directory in use is refused with a non-zero exit and a message naming the data directory, in the foreground and detached", async () => {
  // The first one detached, so that its log (which the refused one shares) has lines of its own.
  const first = await tempDirs();
  expect((await sh(`${OBJECTFS} mount ${q(first.mnt)} --data-dir ${q(first.dataDir)}`)).code).toBe(0);
  detached.push(first.mnt);
  const pid = Number((await mountSource(first.mnt))?.split("@")[1]);
  const other = await mkdtemp(join(tmpdir(), "objectfs-cli-mnt2-"));
  const data2 = await mkdtemp(join(tmpdir(), "objectfs-cli-data2-"));
  dirs.push(other, data2);
  // Each refusal first gives a dying process a moment (3 s) to go away: run them side by side.
  const [fg, bg, same] = await Promise.all([
    sh(`${OBJECTFS} mount ${q(other)} --data-dir ${q(first.dataDir)} --foreground`),
    sh(`${OBJECTFS} mount ${q(other)} --data-dir ${q(first.dataDir)}`),
    // The same mountpoint with another data directory: refused too, naming the mountpoint.
    sh(`${OBJECTFS} mount ${q(first.mnt)} --data-dir ${q(data2)} --foreground`),
  ]);
  expectOneSentence(fg, `data directory ${first.dataDir} is in use`, `pid ${pid}`);
  expectOneSentence(bg, `data directory ${first.dataDir} is in use`, `pid ${pid}`);
  expectOneSentence(same, `${first.mnt} is already mounted by objectfs (pid ${pid})`);
  expect(await mountSource(other)).toBeUndefined();
  // The first mount is unharmed.
  expect((await sh(`echo ok > ${q(first.mnt)}/still && cat ${q(first.mnt)}/still`)).stdout).toBe("ok\n");
  expect(await mountSource(first.mnt)).toBe(`objectfs@${pid}`);
}, 60_000);

test("a mount left stale by kill -9 is cleared by the next objectfs mount, and what was closed before the crash is there", async () => {
  const m = await mount();
  await sh(`printf 'before the crash\\n' > ${q(m.mnt)}/kept`);
  await m.kill();
  mounts.splice(mounts.indexOf(m), 1);
  // Stale: still in the mount table, and unusable.
  expect(await mountSource(m.mnt)).toBe(`objectfs@${m.pid}`);
  const dead = await sh(`ls ${q(m.mnt)}`);
  expect(dead.code).not.toBe(0);
  expect(dead.stderr).toContain("Transport endpoint is not connected");

  const r = await sh(`${OBJECTFS} mount ${q(m.mnt)} --data-dir ${q(m.dataDir)} && cat ${q(m.mnt)}/kept`);
  detached.push(m.mnt);
  expect(r.code).toBe(0);
  expect(r.stdout).toEndWith("before the crash\n");
  const source = await mountSource(m.mnt);
  expect(source).toMatch(/^objectfs@\d+$/);
  expect(source).not.toBe(`objectfs@${m.pid}`);
  expect(await readFile(join(m.dataDir, "objectfs.log"), "utf8")).toContain(`clearing a stale mount at ${m.mnt}`);
  expect((await sh(`${OBJECTFS} unmount ${q(m.mnt)}`)).code).toBe(0);
  detached.splice(detached.indexOf(m.mnt), 1);
  expect((await fsckDataDir(m.dataDir)).code).toBe(0);
}, 60_000);

test("SIGTERM to a foreground mount flushes, unmounts cleanly and exits 0; the data is there after remount and fsck is clean", async () => {
  const m = await mount();
  await sh(`cd ${q(m.mnt)} && mkdir -p d/e && seq 1 20000 > d/e/numbers && ln -s e/numbers d/link && mv d/e/numbers d/e/n`);
  expect(await stop(m)).toBe(0);
  expect(m.stderr()).toContain(`objectfs: SIGTERM: unmounting ${m.mnt}`);
  expect(m.stderr()).toContain("objectfs: unmounted cleanly");
  expect(await mountSource(m.mnt)).toBeUndefined();
  expect(await readFile(join(m.dataDir, "objectfs.pid"), "utf8").catch(() => "gone")).toBe("gone");
  expect((await fsckDataDir(m.dataDir)).code).toBe(0);
  const again = await mount({ mnt: m.mnt, dataDir: m.dataDir });
  expect((await sh(`cd ${q(m.mnt)} && wc -l < d/e/n && readlink d/link && ls d/e`)).stdout).toBe("20000\ne/numbers\nn\n");
  expect(await stop(again)).toBe(0);
}, 60_000);

test("bad settings are refused with one clear sentence and a non-zero exit: unknown YAML key, bad OBJECTFS_DURABILITY, unknown flag, missing mountpoint", async () => {
  const { mnt, dataDir } = await tempDirs();
  const config = join(dataDir, "objectfs.yaml");
  await Bun.write(config, "durability: strict\ncache-timout: 3\n");
  for (const fg of ["--foreground", ""]) {
    expectOneSentence(await sh(`${OBJECTFS} mount ${q(mnt)} --data-dir ${q(dataDir)} --config ${q(config)} ${fg}`), 'unknown key "cache-timout"', config);
    expectOneSentence(
      await sh(`${OBJECTFS} mount ${q(mnt)} --data-dir ${q(dataDir)} ${fg}`, { env: { OBJECTFS_DURABILITY: "sometimes" } }),
      "durability must be one of fsync, strict",
      '"sometimes"',
      "OBJECTFS_DURABILITY",
    );
    expectOneSentence(await sh(`${OBJECTFS} mount ${q(mnt)} --data-dir ${q(dataDir)} --durablity fsync ${fg}`), "unknown option --durablity");
    expectOneSentence(await sh(`${OBJECTFS} mount ${q(mnt)}/missing --data-dir ${q(dataDir)} ${fg}`), `mountpoint ${mnt}/missing does not exist`);
    expectOneSentence(await sh(`${OBJECTFS} mount ${q(mnt)} --data-dir ${q(dataDir)} --cache-timeout soon ${fg}`), "cache-timeout must be a non-negative number");
  }
  expectOneSentence(await sh(`${OBJECTFS} mount --data-dir ${q(dataDir)}`), "missing MOUNTPOINT");
  expectOneSentence(await sh(`${OBJECTFS} mount ${q(mnt)} --config ${q(dataDir)}/nope.yaml`), `cannot read config file ${dataDir}/nope.yaml`);
  // Nothing was mounted by any of them.
  expect(await mountSource(mnt)).toBeUndefined();
  // A good config file is used.
  await Bun.write(config, "durability: strict\nread-only: true\n");
  const m = await mount({ mnt, dataDir, args: ["--config", config] });
  expect((await sh(`touch ${q(mnt)}/x`)).stderr).toContain("Read-only file system");
  expect(await stop(m)).toBe(0);
}, 60_000);

test("a --read-only mount serves reads and refuses every change with EROFS, and adds nothing to the journal", async () => {
  const rw = await mount();
  await sh(`cd ${q(rw.mnt)} && mkdir dir && printf 'content\\n' > dir/file && ln -s file dir/link`);
  expect(await stop(rw)).toBe(0);
  const before = await journalEvents(rw.dataDir);

  const ro = await mount({ mnt: rw.mnt, dataDir: rw.dataDir, args: ["--read-only"] });
  // Read-only in the kernel too: findmnt and statvfs say so.
  expect((await sh(`findmnt -n -o OPTIONS --mountpoint ${q(ro.mnt)}`)).stdout).toStartWith("ro,");
  expect((await sh(`stat -f -c '%d' ${q(ro.mnt)} >/dev/null && python3 -c 'import os,sys; print(os.statvfs(sys.argv[1]).f_flag & os.ST_RDONLY)' ${q(ro.mnt)}`)).stdout).toBe("1\n");
  const read = await sh(`cd ${q(ro.mnt)} && cat dir/file && cat dir/link && ls dir && stat -c '%a %s' dir/file`);
  expect(read.stdout).toBe("content\ncontent\nfile\nlink\n644 8\n");
  for (const change of [
    "touch new",
    "printf x > new",
    "printf x >> dir/file",
    ": > dir/file",
    "mkdir d2",
    "rm dir/file",
    "rmdir dir",
    "mv dir/file dir/moved",
    "ln dir/file hard",
    "ln -s x sym",
    "chmod 600 dir/file",
    "chown 1:1 dir/file",
    "touch -d 2001-01-01 dir/file",
    "truncate -s 0 dir/file",
    "mkfifo fifo",
  ]) {
    const r = await sh(`cd ${q(ro.mnt)} && ${change}`);
    expect({ change, code: r.code }).toEqual({ change, code: 1 });
    expect({ change, stderr: r.stderr }).toEqual({ change, stderr: expect.stringContaining("Read-only file system") });
  }
  expect((await sh(`cd ${q(ro.mnt)} && cat dir/file && ls`)).stdout).toBe("content\ndir\n");
  expect(await stop(ro)).toBe(0);
  const after = await journalEvents(ro.dataDir);
  const added = after.slice(before.length);
  expect(added.filter((e) => e.caller !== undefined)).toEqual([]);
  expect((await fsckDataDir(ro.dataDir)).code).toBe(0);
}, 60_000);

test("without --allow-other another user cannot enter a root-served mount; with it, a file that user creates is owned by them and the journal records their uid, gid, pid and executable name", async () => {
  if (process.getuid?.() !== 0) throw new Error("this test switches users with setpriv and must run as root (bash scripts/dev.sh test does)");
  if ((await sh("command -v setpriv")).code !== 0) throw new Error('setpriv not installed: run "apt-get install util-linux"');
  const as1000 = (cmd: string) => sh(`setpriv --reuid=1000 --regid=1000 --clear-groups bash -c ${q(cmd)}`);

  const priv = await mount();
  await sh(`chmod 755 ${q(priv.mnt)}`);
  const refused = await as1000(`ls ${q(priv.mnt)}`);
  expect(refused.code).not.toBe(0);
  expect(refused.stderr).toContain("Permission denied");
  expect(await stop(priv)).toBe(0);

  // Root may use allow_other without user_allow_other in /etc/fuse.conf.
  const m = await mount({ mnt: priv.mnt, dataDir: priv.dataDir, args: ["--allow-other"] });
  await sh(`mkdir -m 1777 ${q(m.mnt)}/pub`);
  // exec: the pid printed is the pid that creates the file.
  const made = await as1000(`echo $$; exec touch ${q(m.mnt)}/pub/by-1000`);
  expect(made.stderr).toBe("");
  const pid = Number(made.stdout.trim());
  expect(pid).toBeGreaterThan(1);
  expect((await sh(`stat -c '%u %g' ${q(m.mnt)}/pub/by-1000`)).stdout).toBe("1000 1000\n");
  // user 1000 cannot remove root's files in the sticky directory, root can remove theirs
  await sh(`touch ${q(m.mnt)}/pub/by-root`);
  expect((await as1000(`rm -f ${q(m.mnt)}/pub/by-root`)).stderr).toContain("Operation not permitted");
  expect(await stop(m)).toBe(0);

  const events = await journalEvents(m.dataDir);
  const linked = events.filter((e) => e.type === "DirentLinked" && e.name === "by-1000");
  expect(linked).toHaveLength(1);
  const created = events.filter((e) => e.type === "InodeCreated" && e.ino === linked[0]!.ino);
  expect(created).toHaveLength(1);
  for (const e of [...linked, ...created]) expect(e.caller as unknown).toEqual({ uid: 1000, gid: 1000, pid, comm: "touch" });
  expect(created[0]).toMatchObject({ uid: 1000, gid: 1000, kind: "file" });
  // And root's own operations are recorded as root's.
  const rootLinked = events.find((e) => e.type === "DirentLinked" && e.name === "by-root");
  expect(rootLinked?.caller).toMatchObject({ uid: 0, gid: 0 });
}, 60_000);

interface EventRow {
  type: string;
  seq: number;
  name?: string;
  ino?: number;
  uid?: number;
  gid?: number;
  kind?: string;
  caller?: { uid: number; gid: number; pid: number };
}

/** Every event of a data directory (not mounted), read by a separate process through Journal.open. */
async function journalEvents(dataDir: string): Promise<EventRow[]> {
  const script = `
    const { Journal } = await import(${q(JOURNAL_MOD)});
    const j = await Journal.open(${q(dataDir)});
    const out = [];
    for await (const e of j.read()) { const { data, ...rest } = e; out.push(rest); }
    await j.close();
    process.stdout.write(JSON.stringify(out));
  `;
  const proc = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`reading the journal of ${dataDir} failed: ${stderr}`);
  return JSON.parse(stdout) as EventRow[];
}

test("the serving process runs with mimalloc's purging off (MIMALLOC_PURGE_DELAY=-1), in the pid that was started, and a value the user set is kept", async () => {
  const environ = async (pid: number) =>
    Object.fromEntries((await readFile(`/proc/${pid}/environ`, "utf8")).split("\0").filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
  const plain = await mount();
  // The harness started this pid; the mount's fsname names the pid that serves it: the same.
  expect(await mountSource(plain.mnt)).toBe(`objectfs@${plain.pid}`);
  expect((await environ(plain.pid)).MIMALLOC_PURGE_DELAY).toBe(process.env.MIMALLOC_PURGE_DELAY ?? "-1");
  expect(await stop(plain)).toBe(0);

  const set = await mount({ env: { MIMALLOC_PURGE_DELAY: "25" } });
  expect(await mountSource(set.mnt)).toBe(`objectfs@${set.pid}`);
  expect((await environ(set.pid)).MIMALLOC_PURGE_DELAY).toBe("25");
  expect(await stop(set)).toBe(0);
}, 60_000);
