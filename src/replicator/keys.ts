/**
 * Mapping between S3 keys and names under the mount, and POSIX attributes in user metadata
 * (`x-amz-meta-mode`, `-uid`, `-gid`, `-mtime`, `-rdev`: the s3fs and rclone convention).
 *
 * A key maps to a name only if every path segment is one a POSIX directory can hold: not
 * empty, not "." or "..", no NUL, at most 255 bytes, valid UTF-8. Other keys are hidden and
 * reported with the reason; they never escape the mount.
 */
import type { InodeKind } from "../../journal/mod.ts";

/** Where objectfs keeps its own objects under the mount's prefix: never shown as files. */
export const META_DIR = ".objectfs";
const NAME_MAX = 255;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Why `name` cannot be a directory entry, or undefined if it can. */
export function badName(name: string): string | undefined {
  if (name === "") return "has an empty path segment";
  if (name === "." || name === "..") return `has a "${name}" path segment`;
  if (name.includes("\0")) return "contains a NUL byte";
  if (name.includes("\uFFFD") || LONE_SURROGATE.test(name)) return "is not valid UTF-8";
  if (Buffer.byteLength(name) > NAME_MAX) return `has a path segment longer than ${NAME_MAX} bytes`;
  return undefined;
}

/** The object key of a path under the mount ("a/b"), given the mount prefix ("" or "p/"). */
export const keyOf = (prefix: string, path: string) => prefix + path;

export const TYPE_OF_MODE: Readonly<Record<number, InodeKind>> = {
  0o100000: "file",
  0o040000: "dir",
  0o120000: "symlink",
  0o010000: "fifo",
  0o020000: "char",
  0o060000: "block",
  0o140000: "socket",
};

export interface PosixMeta {
  readonly kind?: InodeKind;
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly mtime?: number;
  readonly rdev?: number;
}

const int = (v: string | undefined) => (v !== undefined && /^\d+$/.test(v.trim()) ? Number(v.trim()) : undefined);

/** POSIX attributes from user metadata (keys lower case, without `x-amz-meta-`). */
export function parseMeta(meta: Readonly<Record<string, string>>): PosixMeta {
  const mode = int(meta.mode);
  const mtimeText = meta.mtime?.trim();
  // s3fs writes whole seconds, rclone fractional seconds.
  const mtime = mtimeText && /^\d+(\.\d+)?$/.test(mtimeText) ? Math.round(Number(mtimeText) * 1000) : undefined;
  return {
    ...(mode !== undefined ? { mode: mode & 0o7777, kind: TYPE_OF_MODE[mode & 0o170000] } : {}),
    ...(int(meta.uid) !== undefined ? { uid: int(meta.uid) } : {}),
    ...(int(meta.gid) !== undefined ? { gid: int(meta.gid) } : {}),
    ...(mtime !== undefined ? { mtime } : {}),
    ...(int(meta.rdev) !== undefined ? { rdev: int(meta.rdev) } : {}),
  };
}

/** User metadata for an inode: full st_mode, owner, mtime in seconds with milliseconds. */
export function formatMeta(inode: { mode: number; uid: number; gid: number; mtime: number; rdev?: number }): Record<string, string> {
  return {
    mode: String(inode.mode),
    uid: String(inode.uid),
    gid: String(inode.gid),
    mtime: (inode.mtime / 1000).toFixed(3),
    ...(inode.rdev ? { rdev: String(inode.rdev) } : {}),
  };
}
