/**
 * Writing a tree (a past state) into a plain directory: directories, files with their bytes,
 * symlinks, hard links, fifos, modes, owners and times.
 */
import { spawnSync } from "node:child_process";
import { chmod, lchown, link, lutimes, mkdir, open, readdir, symlink } from "node:fs/promises";
import { join } from "node:path";
import type { Filesystem } from "../fs/filesystem.ts";

export interface RestoreProgress {
  files: number;
  bytes: number;
}

/** Restore `fs`'s tree into `dir`, which must be empty or absent. */
export async function restoreTree(fs: Filesystem, dir: string, onProgress?: (p: RestoreProgress) => void): Promise<RestoreProgress> {
  await mkdir(dir, { recursive: true });
  if ((await readdir(dir)).length > 0) throw new Error(`${dir} is not empty; restore into an empty or new directory, so nothing there is overwritten`);
  const root = process.getuid?.() === 0;
  const progress: RestoreProgress = { files: 0, bytes: 0 };
  const seen = new Map<number, string>(); // ino → first path, for hard links
  const dirs: { path: string; mode: number; uid: number; gid: number; atime: number; mtime: number }[] = [];
  const CHUNK = 8 * 1024 * 1024;
  for await (const e of fs.walk()) {
    const path = join(dir, e.path);
    const i = e.inode;
    if (i.kind === "dir") {
      await mkdir(path, { mode: 0o700 });
      dirs.push({ path, mode: i.mode & 0o7777, uid: i.uid, gid: i.gid, atime: i.atime, mtime: i.mtime });
      continue;
    }
    const first = seen.get(i.ino);
    if (first !== undefined) {
      await link(first, path);
      continue;
    }
    seen.set(i.ino, path);
    if (i.kind === "file") {
      const view = await fs.view(i.ino);
      if (!view) continue;
      const fh = await open(path, "wx", 0o600);
      try {
        for (let at = 0; at < view.inode.size; at += CHUNK) {
          const bytes = await fs.readView(view, at, CHUNK);
          await fh.write(bytes, 0, bytes.length, at);
          progress.bytes += bytes.length;
          onProgress?.(progress);
        }
        await fh.truncate(view.inode.size);
      } finally {
        await fh.close();
      }
    } else if (i.kind === "symlink") {
      await symlink(i.target ?? "", path);
    } else {
      const type = i.kind === "fifo" ? ["p"] : i.kind === "char" ? ["c", String(i.rdev >> 8), String(i.rdev & 0xff)] : i.kind === "block" ? ["b", String(i.rdev >> 8), String(i.rdev & 0xff)] : undefined;
      if (!type) continue; // sockets exist only while a process listens
      const r = spawnSync("mknod", [path, ...type], { stdio: "pipe" });
      if (r.status !== 0) throw new Error(`cannot make ${i.kind} ${path}: ${r.stderr.toString().trim()}`);
    }
    if (root) await lchown(path, i.uid, i.gid);
    if (i.kind !== "symlink") await chmod(path, i.mode & 0o7777);
    await lutimes(path, i.atime / 1000, i.mtime / 1000);
    progress.files++;
    onProgress?.(progress);
  }
  // Directories last, deepest first: their modes may forbid writing, their times change with entries.
  for (const d of dirs.reverse()) {
    if (root) await lchown(d.path, d.uid, d.gid);
    await chmod(d.path, d.mode);
    await lutimes(d.path, d.atime / 1000, d.mtime / 1000);
  }
  return progress;
}
