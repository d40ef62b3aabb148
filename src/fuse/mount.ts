/**
 * Mounting: fuse-native options, stale-mount recovery, and finding the
 * process that serves a mountpoint.
 *
 * The mount is a low-level (inode-based) libfuse 2.9 session (./lowlevel.ts):
 * one kernel inode per file, hard links included. Names, absent names and
 * attributes are cached by the kernel for `cacheTimeout` (1 s by default) and
 * file pages across opens, which is safe because every change reaches the
 * kernel through this mount, except those the core makes by itself, which
 * are sent to the kernel as invalidations (`invalidations`).
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { readFile, stat, writeFile } from "node:fs/promises";
import { resolve as resolvePath } from "node:path";
import type { JournalEvent } from "../../journal/mod.ts";
import type { Filesystem } from "../fs/filesystem.ts";
import { makeAdapter } from "./adapter.ts";
import { MAX_WRITE, Session } from "./lowlevel.ts";

export interface MountOptions {
  /** Let other users see the mount (needs user_allow_other in /etc/fuse.conf when not root). @default false */
  readonly allowOther?: boolean;
  /** Seconds the kernel may cache names, their absence, and attributes. @default 1 */
  readonly cacheTimeout?: number;
  /**
   * Mount read-only in the kernel too (MS_RDONLY): every change is refused
   * with EROFS before it reaches us, as on any read-only mount, and statvfs
   * reports ST_RDONLY. @default false
   */
  readonly readOnly?: boolean;
  /** libfuse debug output. @default false */
  readonly debug?: boolean;
  readonly log?: (message: string) => void;
  /** Told about every answered operation (metrics). */
  readonly onOperation?: (op: string, seconds: number, ok: boolean, bytes: number) => void;
}

export interface Mounted {
  readonly mountpoint: string;
  /** Unmount (lazily if busy). */
  unmount(): Promise<void>;
  /** Resolves when the kernel connection ended (unmounted by anyone, or aborted). */
  readonly ended: Promise<void>;
  /** Drop what the kernel cached of an inode (attributes, pages) after a change made behind it. */
  invalidateInode(ino: number): void;
  /** Drop a name the kernel cached (or its cached absence) after a change made behind it. */
  invalidateEntry(parent: number, name: string): void;
  /** The kernel's lookup count of each inode it holds (FORGET brings them down). */
  readonly lookups: ReadonlyMap<number, number>;
  /** Requests not yet answered, invalidations sent (and failed), protocol features the kernel took (FEATURES bits). */
  stats(): { outstanding: number; notified: number; notifyFailed: number; granted: number; answeredNatively: number };
}

/**
 * Largest write/read request libfuse 2.9 itself grants (it caps max_write at
 * 128 KiB); the session raises it to MAX_WRITE (1 MiB) in its INIT reply when
 * the kernel offers max_pages (./lowlevel.ts).
 */
export const MAX_REQUEST_BYTES = 128 * 1024;

export interface MountEntry {
  readonly mountpoint: string;
  readonly fstype: string;
  readonly source: string;
  /** The device ("major:minor") the kernel gave the mount. */
  readonly device: string;
}

/**
 * How far the kernel may read ahead of a sequential reader. A FUSE mount gets the default
 * 128 KiB: two 128 KiB requests in flight at most, which caps a cold read of a remote file at a
 * fraction of what S3 serves. 4 MiB lets it send 1 MiB requests several at once; readers at
 * random offsets are not read ahead for (the kernel sees that they are not sequential).
 */
const READAHEAD_KB = 4096;

/** Raise the mount's readahead (root only: elsewhere the default stays, with a log line). */
async function raiseReadahead(mountpoint: string, log: (m: string) => void): Promise<void> {
  const entry = await mountEntry(mountpoint);
  if (!entry?.device) return;
  const file = `/sys/class/bdi/${entry.device}/read_ahead_kb`;
  await writeFile(file, `${READAHEAD_KB}\n`).catch((e: Error) => log(`objectfs: cannot raise the readahead of ${mountpoint} (${file}: ${e.message}); sequential reads of remote files will be slower`));
}

/** Decode the octal escapes /proc/self/mountinfo uses for spaces and the like. */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));

export async function mountEntry(mountpoint: string): Promise<MountEntry | undefined> {
  const target = resolvePath(mountpoint);
  const text = await readFile("/proc/self/mountinfo", "utf8");
  let found: MountEntry | undefined;
  for (const line of text.split("\n")) {
    const [pre, post] = line.split(" - ");
    if (!pre || !post) continue;
    const mp = unescape(pre.split(" ")[4] ?? "");
    if (mp !== target) continue;
    const [fstype = "", source = ""] = post.split(" ");
    found = { mountpoint: mp, fstype, source: unescape(source), device: pre.split(" ")[2] ?? "" }; // the last one is on top
  }
  return found;
}

/** pid of the objectfs process serving a mountpoint (from the fsname objectfs@PID), if any. */
export async function servingPid(mountpoint: string): Promise<number | undefined> {
  const e = await mountEntry(mountpoint);
  const m = e && /^objectfs@(\d+)$/.exec(e.source);
  return m ? Number(m[1]) : undefined;
}

/** Whether a process exists and is not a zombie. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** Wait up to `ms` for a process to be gone (a killed FUSE server takes a moment to exit). */
export async function exited(pid: number, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (alive(pid)) {
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

/** Detach whatever is mounted at `mountpoint` (lazily, so a dead mount never blocks). */
export function forceUnmount(mountpoint: string): boolean {
  const r = spawnSync("fusermount", ["-uz", mountpoint], { stdio: "ignore" });
  if (r.status === 0) return true;
  return spawnSync("umount", ["-l", mountpoint], { stdio: "ignore" }).status === 0;
}

export class MountError extends Error {
  override readonly name = "MountError";
}

/**
 * Make sure `mountpoint` can be mounted: it exists, is a directory, and is
 * not mounted by a live process. A mount left by a crashed objectfs is cleared.
 */
export async function prepareMountpoint(mountpoint: string, log: (m: string) => void = () => {}): Promise<void> {
  const entry = await mountEntry(mountpoint);
  if (entry) {
    const pid = /^objectfs@(\d+)$/.exec(entry.source)?.[1];
    if (pid && Number(pid) !== process.pid && !(await exited(Number(pid), 3000))) {
      throw new MountError(`${mountpoint} is already mounted by objectfs (pid ${pid}); unmount it first with "objectfs unmount ${mountpoint}"`);
    }
    if (!pid && !entry.fstype.startsWith("fuse")) {
      throw new MountError(`${mountpoint} already has a ${entry.fstype} filesystem mounted on it; choose another mountpoint or unmount it first`);
    }
    log(`objectfs: clearing a stale mount at ${mountpoint} left by a process that is gone`);
    if (!forceUnmount(mountpoint)) throw new MountError(`cannot clear the stale mount at ${mountpoint}; run "fusermount -uz ${mountpoint}" as its owner`);
  }
  let st;
  try {
    st = await stat(mountpoint);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new MountError(`mountpoint ${mountpoint} does not exist; create it with "mkdir -p ${mountpoint}"`);
    throw new MountError(`cannot use mountpoint ${mountpoint}: ${(e as Error).message}`);
  }
  if (!st.isDirectory()) throw new MountError(`mountpoint ${mountpoint} is not a directory`);
}

/**
 * What to tell the kernel about one committed event that the core made by
 * itself (no caller: the replicator's conflict renames, remote listings and
 * discoveries). Every change a caller made came through the kernel, which
 * updated or dropped what it had cached.
 */
export function invalidations(e: JournalEvent): { inodes: number[]; entries: [number, string][] } {
  const none = { inodes: [], entries: [] };
  if ("caller" in e && e.caller) return none;
  switch (e.type) {
    case "Renamed":
      return { inodes: [e.ino, e.fromParent, e.toParent], entries: [[e.fromParent, e.fromName], [e.toParent, e.toName]] };
    case "DirentLinked":
    case "DirentUnlinked":
      return { inodes: [e.ino, e.parent], entries: [[e.parent, e.name]] };
    case "RemoteListed":
      // A complete listing is made before the kernel sees anything in the directory.
      return { inodes: [e.dir], entries: e.complete ? [] : e.entries.map((x) => [e.dir, x.name] as [number, string]) };
    case "AttrsChanged":
    case "ExtentWritten":
    case "Truncated":
    case "XattrSet":
    case "XattrRemoved":
    case "ObjectChanged":
    case "ObjectDiscovered":
      return { inodes: [e.ino], entries: [] };
    default:
      return none;
  }
}

/** Mount `fs` at `mountpoint` and serve it from this process. */
export async function mountFilesystem(fs: Filesystem, mountpoint: string, options: MountOptions = {}): Promise<Mounted> {
  const log = options.log ?? ((m: string) => console.error(m));
  await prepareMountpoint(mountpoint, log);
  const timeout = options.cacheTimeout ?? 1;
  let session: Session | undefined;
  const adapter = makeAdapter(fs, () => session!, { timeout, log, ...(options.onOperation ? { onOperation: options.onOperation } : {}) });
  try {
    session = new Session(resolvePath(mountpoint), mountOptions(options), adapter.handle);
  } catch (e) {
    throw new MountError(`cannot mount at ${mountpoint}: ${(e as Error).message}; is /dev/fuse available and fusermount installed (apt-get install fuse3)?`);
  }
  const s = session;
  await raiseReadahead(mountpoint, log);
  const unsubscribe = fs.journal.subscribe((events) => {
    for (const e of events) {
      const { inodes, entries } = invalidations(e);
      for (const [parent, name] of entries) adapter.invalidateEntry(parent, name);
      for (const ino of inodes) adapter.invalidateInode(ino);
    }
  });
  let unmounted: Promise<void> | undefined;
  return {
    mountpoint,
    ended: s.ended,
    invalidateInode: (ino) => adapter.invalidateInode(ino),
    invalidateEntry: (parent, name) => adapter.invalidateEntry(parent, name),
    lookups: adapter.known,
    stats: () => s.stats(),
    unmount() {
      unmounted ??= (async () => {
        unsubscribe();
        if (!(await s.unmount())) forceUnmount(mountpoint);
      })();
      return unmounted;
    },
  };
}

/** The -o options of a mount (mount options for fuse_mount, session options for fuse_lowlevel_new). */
export function mountOptions(options: Pick<MountOptions, "allowOther" | "readOnly" | "debug">, fsname = `objectfs@${process.pid}`): string[] {
  return [
    `fsname=${fsname}`,
    "subtype=objectfs",
    // The core checks every permission itself; the kernel checks too, with the
    // caller's supplementary groups, before asking.
    "default_permissions",
    ...(options.allowOther ? ["allow_other"] : []),
    ...(options.readOnly ? ["ro"] : []),
    "big_writes",
    `max_write=${MAX_REQUEST_BYTES}`,
    `max_read=${MAX_WRITE}`,
    ...(options.debug ? ["debug"] : []),
  ];
}
