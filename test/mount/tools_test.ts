/**
 * Real tools on a real mount (git, tar, cp, rsync, sqlite3), each result
 * compared with the same commands run in a plain tmpfs directory.
 *
 * The tools are Debian packages that scripts/dev.sh installs; a missing one
 * fails the test that needs it, with the package to install.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdir, mkdtemp } from "node:fs/promises";
import { join } from "node:path";
import { cleanup, fsckDataDir, sh, startMount, type MountHandle } from "../support/mount_harness.ts";

const TOOLS: Record<string, string> = {
  git: "git",
  rsync: "rsync",
  sqlite3: "sqlite3",
  tar: "tar",
  cp: "coreutils",
  md5sum: "coreutils",
  find: "findutils",
  diff: "diffutils",
  setpriv: "util-linux",
};

/** Fail (never skip) when a tool is missing, naming the package. */
async function requireTools(...names: string[]): Promise<void> {
  const missing: string[] = [];
  for (const n of names) if ((await sh(`command -v ${n}`)).code !== 0) missing.push(n);
  if (missing.length > 0) {
    const pkgs = [...new Set(missing.map((n) => TOOLS[n] ?? n))].join(" ");
    throw new Error(`${missing.join(", ")} not installed: these tests drive the real tools; run "bash scripts/dev.sh" or "apt-get install ${pkgs}"`);
  }
}

/** Run a shell command that must succeed; on failure, say which and show its output. */
async function run(command: string, env?: Record<string, string>): Promise<string> {
  const r = await sh(`set -eo pipefail; ${command}`, { env });
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${command}\n${r.stderr}${r.stdout}`.slice(0, 4000));
  return r.stdout;
}

const q = (s: string) => JSON.stringify(s);

interface Listing {
  /** path, type, mode, owner, and for non-directories size and symlink target; then the md5 of every regular file */
  readonly plain: string;
  /** the same with modification times */
  readonly withTimes: string;
  /** names that are hard links of one another (same inode number), each group sorted */
  readonly linkGroups: string[][];
}

/**
 * A tree listing independent of the filesystem's own choices (inode numbers,
 * directory sizes). `.git` is left out.
 */
async function listing(dir: string): Promise<Listing> {
  // one line per entry: inode|path|type mode owner [size target]|mtime
  const out = await run(
    `cd ${q(dir)} && find . -mindepth 1 -path ./.git -prune -o \\( -type d -printf '%i|%P|%y %m %u:%g|%T@\\n' \\) -o -printf '%i|%P|%y %m %u:%g %s %l|%T@\\n'`,
  );
  const sums = await run(`cd ${q(dir)} && find . -path ./.git -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 -r md5sum`);
  const rows = out
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const [ino, path, attrs, time] = line.split("|") as [string, string, string, string];
      return { ino, path, attrs, time };
    })
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const byIno = new Map<string, string[]>();
  for (const r of rows) if (!r.attrs.startsWith("d ")) byIno.set(r.ino, [...(byIno.get(r.ino) ?? []), r.path]);
  return {
    plain: rows.map((r) => `${r.path} ${r.attrs}\n`).join("") + sums,
    withTimes: rows.map((r) => `${r.path} ${r.attrs} ${r.time}\n`).join("") + sums,
    linkGroups: [...byIno.values()]
      .filter((g) => g.length > 1)
      .map((g) => g.sort())
      .sort((a, b) => (a[0]! < b[0]! ? -1 : 1)),
  };
}

/**
 * A small tree with what trees have: nested and empty directories, odd
 * names, empty, large and sparse files, modes from 0600 to set-uid and
 * sticky, symlinks (dangling too), hard links and a FIFO. Times are whole
 * seconds, as tar stores them.
 */
const SPECIAL_TREE = `
  mkdir -p special/a/b/c special/empty-dir "special/with space" special/unicodé special/sticky special/private
  printf 'hello\\n' > special/a/hello.txt
  : > special/a/empty
  head -c 300000 /dev/urandom > special/a/b/random.bin
  dd if=/dev/urandom of=special/a/b/sparse bs=4096 seek=1200 count=3 status=none
  printf '#!/bin/sh\\necho hi\\n' > special/a/run.sh && chmod 755 special/a/run.sh
  printf 'secret\\n' > special/private/secret && chmod 600 special/private/secret && chmod 700 special/private
  printf 'suid\\n' > special/a/suid && chmod 4755 special/a/suid
  printf 'sgid\\n' > special/a/sgid && chmod 2750 special/a/sgid
  chmod 1777 special/sticky
  printf 'x\\n' > "special/with space/file name" && printf 'y\\n' > special/unicodé/ñame-✓
  printf 'long\\n' > "special/a/$(printf 'n%.0s' $(seq 1 255))"
  ln -s hello.txt special/a/link && ln -s ../a/b special/dirlink && ln -s nowhere special/dangling
  ln special/a/hello.txt special/a/b/hard1 && ln special/a/hello.txt special/hard2
  ln special/a/b/random.bin "special/with space/random-again"
  mkfifo -m 640 special/fifo
  find special -exec touch -h -d '2001-02-03 04:05:06' {} +
`;

const NODE_MODULES = join(import.meta.dir, "../../node_modules");
let work = ""; // tmpfs scratch: reference trees and the tarball
let m: MountHandle | undefined;
const dirs: string[] = [];

beforeAll(async () => {
  await requireTools("tar", "find", "md5sum");
  work = await mkdtemp("/dev/shm/objectfs-tools-");
  dirs.push(work);
  // A real tree from this machine (thousands of files) plus the special one.
  await run(`cd ${q(work)}
${SPECIAL_TREE}
tar -cf T.tar -C ${q(NODE_MODULES)} effect -C ${q(work)} special && rm -rf special`);
  m = await startMount();
  dirs.push(m.mnt, m.dataDir);
}, 60_000);

afterAll(async () => {
  if (m) expect(await m.stop()).toBe(0);
  if (m) {
    const fsck = await fsckDataDir(m.dataDir);
    expect(fsck.output).toContain("clean");
    expect(fsck.code).toBe(0);
  }
  await cleanup(...dirs);
}, 60_000);

const GIT_ENV = {
  GIT_CONFIG_GLOBAL: "/dev/null",
  GIT_CONFIG_NOSYSTEM: "1",
  GIT_AUTHOR_NAME: "Ada",
  GIT_AUTHOR_EMAIL: "ada@example.org",
  GIT_COMMITTER_NAME: "Ada",
  GIT_COMMITTER_EMAIL: "ada@example.org",
  GIT_AUTHOR_DATE: "2024-01-02T03:04:05Z",
  GIT_COMMITTER_DATE: "2024-01-02T03:04:05Z",
  TZ: "UTC",
};

/** Generate a tree, commit it, change it, commit again, gc: the same everywhere. */
const GIT_WORK = `
  git -c init.defaultBranch=main init -q repo && cd repo
  for d in src lib docs; do mkdir -p $d/deep/er; for i in $(seq 1 15); do printf 'line %s of %s/%s\\n' $(seq 1 $i) $d $i > $d/f$i.txt; done; done
  printf 'bin\\n' > src/deep/er/tool && chmod 755 src/deep/er/tool
  ln -s ../docs/f1.txt src/readme-link
  head -c 200000 /dev/zero | tr '\\0' 'z' > lib/big.txt
  git add -A && git -c user.name=Ada -c user.email=ada@example.org commit -qm "first"
  git mv docs/f2.txt docs/renamed.txt && git rm -q lib/f3.txt && printf 'changed\\n' >> src/f1.txt && chmod 644 src/deep/er/tool
  git commit -qam "second" && git gc -q --aggressive
`;

test("git init, add, commit and gc on the mount give the same commits and trees as in a plain directory, and git fsck finds nothing wrong", async () => {
  await requireTools("git");
  const plain = join(work, "git");
  const onMount = join(m!.mnt, "git");
  await mkdir(plain);
  await mkdir(onMount);
  await run(`cd ${q(plain)} && ${GIT_WORK}`, GIT_ENV);
  await run(`cd ${q(onMount)} && ${GIT_WORK}`, GIT_ENV);

  const log = (dir: string) => run(`cd ${q(dir)}/repo && git log --format='%H %T %s'`, GIT_ENV);
  const expected = await log(plain);
  expect(expected.trim().split("\n")).toHaveLength(2);
  expect(await log(onMount)).toBe(expected);
  await run(`cd ${q(onMount)}/repo && git fsck --full --strict --no-progress`, GIT_ENV);
  expect(await run(`cd ${q(onMount)}/repo && git status --porcelain`, GIT_ENV)).toBe("");
  expect((await listing(join(onMount, "repo"))).plain).toBe((await listing(join(plain, "repo"))).plain);
  // And a clone from the plain repository onto the mount checks out the same files.
  await run(`git clone -q ${q(plain)}/repo ${q(plain)}/clone`, GIT_ENV);
  await run(`git clone -q ${q(plain)}/repo ${q(onMount)}/clone && cd ${q(onMount)}/clone && git fsck --full --no-progress`, GIT_ENV);
  expect((await listing(join(onMount, "clone"))).plain).toBe((await listing(join(plain, "clone"))).plain);
}, 60_000);

/** The listing of the tree tar extracted onto the mount, for the tests after that one. */
let extracted: Listing | undefined;

test("a tarball of thousands of files extracted onto the mount matches the same tarball extracted on tmpfs: names, types, modes, owners, sizes, symlinks, hard links and bytes", async () => {
  await run(`mkdir ${q(work)}/x && tar -C ${q(work)}/x -xf ${q(work)}/T.tar`);
  await run(`mkdir ${q(m!.mnt)}/x && tar -C ${q(m!.mnt)}/x -xf ${q(work)}/T.tar`);
  const expected = await listing(join(work, "x"));
  expect(expected.plain.split("\n").length).toBeGreaterThan(2 * 3000);
  extracted = await listing(join(m!.mnt, "x"));
  expect(extracted.plain).toBe(expected.plain);
  expect(extracted.linkGroups).toEqual(expected.linkGroups);
  expect(extracted.linkGroups).toHaveLength(2);
}, 120_000);

test("cp -a of the extracted tree within the mount keeps modes, owners, times, symlinks, hard links and bytes", async () => {
  await requireTools("cp");
  if (!extracted) throw new Error("the tar test did not leave its tree on the mount");
  const src = join(m!.mnt, "x");
  await run(`cp -a ${q(src)} ${q(m!.mnt)}/cp`);
  const copied = await listing(join(m!.mnt, "cp"));
  expect(copied.withTimes).toBe(extracted.withTimes);
  expect(copied.linkGroups).toEqual(extracted.linkGroups);
}, 120_000);

test("rsync -a from a plain directory onto the mount, then rsync -anc --itemize-changes has nothing to do; rsync -aH keeps hard links", async () => {
  await requireTools("rsync");
  // A part of the extracted tree (rsync is as slow as tar here; one real tree is enough) and the special one.
  const src = join(work, "rsync-src");
  await run(`mkdir ${q(src)} && cp -a ${q(work)}/x/effect/src ${q(work)}/x/special ${q(src)}/`);
  await run(`rsync -a ${q(src)}/ ${q(m!.mnt)}/rsync/`);
  expect(await run(`rsync -anc --itemize-changes ${q(src)}/ ${q(m!.mnt)}/rsync/`)).toBe("");
  expect((await listing(join(m!.mnt, "rsync"))).plain).toBe((await listing(src)).plain);

  await run(`rsync -aH ${q(src)}/special/ ${q(m!.mnt)}/rsyncH/`);
  expect(await run(`rsync -ancH --itemize-changes ${q(src)}/special/ ${q(m!.mnt)}/rsyncH/`)).toBe("");
  const groups = (await listing(join(m!.mnt, "rsyncH"))).linkGroups;
  expect(groups).toEqual((await listing(join(src, "special"))).linkGroups);
  expect(groups).toHaveLength(2);
  // A change on the source is the only thing a second run transfers.
  await run(`printf 'more\\n' >> ${q(src)}/special/a/empty && touch -d '2001-02-03 04:05:07' ${q(src)}/special/a/empty`);
  const itemized = await run(`rsync -aH --itemize-changes ${q(src)}/special/ ${q(m!.mnt)}/rsyncH/`);
  expect(itemized.trim().split("\n")).toEqual([expect.stringMatching(/^>f.st\.+ a\/empty$/)]);
  expect(await run(`cat ${q(m!.mnt)}/rsyncH/a/empty`)).toBe("more\n");
}, 120_000);
/** sqlite3 with a fixed script: WAL and rollback-journal databases, transactions, concurrent writers. */
const SQLITE_WORK = `
  sqlite3 wal.db "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, v TEXT);" >/dev/null
  sqlite3 rollback.db "PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, v TEXT);" >/dev/null
  for db in wal rollback; do
    for w in 1 2 3 4; do
      ( for i in $(seq 1 25); do
          echo "BEGIN IMMEDIATE; INSERT INTO t(who, v) VALUES ('w$w', printf('%s-%d', hex(zeroblob(200)), $i)); INSERT INTO t(who, v) VALUES ('w$w', 'second of $i'); COMMIT;"
        done ) | sqlite3 -cmd ".timeout 20000" $db.db &
    done
    wait
  done
`;

test("sqlite3 on the mount: WAL and rollback databases written by concurrent processes in transactions pass integrity_check and read back, also after unmount and remount", async () => {
  await requireTools("sqlite3");
  const own = await startMount();
  dirs.push(own.mnt, own.dataDir);
  const query = (dir: string, db: string) =>
    run(`cd ${q(dir)} && sqlite3 ${db}.db "PRAGMA integrity_check; SELECT who, count(*), sum(length(v)) FROM t GROUP BY who ORDER BY who;"`);
  try {
    await run(`cd ${q(own.mnt)} && ${SQLITE_WORK}`);
    const plain = join(work, "sqlite");
    await mkdir(plain);
    await run(`cd ${q(plain)} && ${SQLITE_WORK}`);
    for (const db of ["wal", "rollback"]) {
      const expected = await query(plain, db);
      expect(expected).toStartWith("ok\nw1|50|");
      expect(await query(own.mnt, db)).toBe(expected);
    }
    expect(await own.stop()).toBe(0);
    const again = await startMount({ mnt: own.mnt, dataDir: own.dataDir });
    try {
      for (const db of ["wal", "rollback"]) expect(await query(again.mnt, db)).toBe(await query(plain, db));
    } finally {
      expect(await again.stop()).toBe(0);
    }
    expect((await fsckDataDir(own.dataDir)).code).toBe(0);
  } finally {
    await own.kill().catch(() => {});
  }
}, 120_000);

test("touch -m, touch -a and tar -x set one time and keep the other (libfuse 2 passes UTIME_OMIT on only because our fuse-native patch sets flag_utime_omit_ok)", async () => {
  const dir = join(m!.mnt, "times");
  await run(`mkdir ${q(dir)} && cd ${q(dir)} && touch -d @1000000000 f && touch -m -d @1100000000 f && touch -a -d @1200000000 f`);
  expect(await run(`stat -c '%X %Y' ${q(dir)}/f`)).toBe("1200000000 1100000000\n");
  // GNU tar sets the modification time with the access time omitted.
  await run(`cd ${q(work)} && mkdir -p tt && touch -d @1300000000 tt/g && tar -cf tt.tar -C tt g && tar -C ${q(dir)} -xf tt.tar`);
  expect(await run(`stat -c '%Y' ${q(dir)}/g`)).toBe("1300000000\n");
});
