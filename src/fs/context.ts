/** Who is calling: from the FUSE request (uid, gid, pid) and, where known, supplementary groups. */
export interface Ctx {
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  readonly groups?: readonly number[];
  /** The calling process's name, where known (recorded on events for the audit log). */
  readonly comm?: string;
}

export const R_OK = 4;
export const W_OK = 2;
export const X_OK = 1;

export const S_ISUID = 0o4000;
export const S_ISGID = 0o2000;
export const S_ISVTX = 0o1000;

export function inGroup(ctx: Ctx, gid: number): boolean {
  return ctx.gid === gid || (ctx.groups?.includes(gid) ?? false);
}

/** POSIX permission check of `mask` (R_OK|W_OK|X_OK) on an inode for a caller. */
export function permits(ctx: Ctx, inode: { readonly mode: number; readonly uid: number; readonly gid: number; readonly kind: string }, mask: number): boolean {
  if (mask === 0) return true;
  if (ctx.uid === 0) {
    // root may do anything, but execute needs some x bit on non-directories
    return (mask & X_OK) === 0 || inode.kind === "dir" || (inode.mode & 0o111) !== 0;
  }
  const bits = ctx.uid === inode.uid ? (inode.mode >> 6) & 7 : inGroup(ctx, inode.gid) ? (inode.mode >> 3) & 7 : inode.mode & 7;
  return (bits & mask) === mask;
}
