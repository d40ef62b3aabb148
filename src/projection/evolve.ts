/**
 * evolve(state, event): apply one journal event to the projection state.
 * Deterministic and free of I/O; the projection equals fold(evolve, events).
 */
import { ROOT_INO, type Ino, type InodeKind, type JournalEvent } from "../../journal/mod.ts";
import type { Inode, TreeState } from "./state.ts";

export const S_IFMT = 0o170000;
/** Readdir cookies 1 and 2 belong to "." and "..". */
export const FIRST_COOKIE = 3;
export const TYPE_BITS: Record<InodeKind, number> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  fifo: 0o010000,
  char: 0o020000,
  block: 0o060000,
  socket: 0o140000,
};

export function evolve(state: TreeState, event: JournalEvent): void {
  switch (event.type) {
    case "InodeCreated": {
      state.putInode({
        ino: event.ino,
        kind: event.kind,
        mode: (event.mode & ~S_IFMT) | TYPE_BITS[event.kind],
        uid: event.uid,
        gid: event.gid,
        size: event.kind === "symlink" ? Buffer.byteLength(event.target ?? "") : 0,
        nlink: 0,
        atime: event.time,
        mtime: event.time,
        ctime: event.time,
        rdev: event.rdev ?? 0,
        ...(event.target !== undefined ? { target: event.target } : {}),
        ...(event.kind === "dir" ? { nextCookie: FIRST_COOKIE, entries: 0 } : {}),
      });
      if (event.ino === ROOT_INO && event.kind === "dir") {
        // The root has no dirent: it is its own parent.
        const root = must(state, event.ino);
        root.nlink = 2;
        root.parent = root.ino;
      }
      return;
    }
    case "DirentLinked": {
      const parent = must(state, event.parent);
      const child = must(state, event.ino);
      link(state, parent, event.name, child);
      stamp(state, parent, event.time, true);
      stamp(state, child, event.time, false);
      return;
    }
    case "DirentUnlinked": {
      const parent = must(state, event.parent);
      const child = must(state, event.ino);
      unlink(state, parent, event.name, child);
      stamp(state, parent, event.time, true);
      stamp(state, child, event.time, false);
      return;
    }
    case "Renamed": {
      const from = must(state, event.fromParent);
      const to = must(state, event.toParent);
      const child = must(state, event.ino);
      if (event.replaced !== undefined) unlink(state, to, event.toName, must(state, event.replaced));
      state.delDirent(from.ino, event.fromName);
      from.entries = (from.entries ?? 0) - 1;
      to.entries = (to.entries ?? 0) + 1;
      state.putDirent(to.ino, event.toName, { ino: child.ino, cookie: nextCookie(state, to), kind: child.kind });
      if (child.kind === "dir" && from.ino !== to.ino) {
        from.nlink -= 1;
        to.nlink += 1;
        child.parent = to.ino;
      }
      stamp(state, from, event.time, true);
      stamp(state, to, event.time, true);
      stamp(state, child, event.time, false);
      if (event.replaced !== undefined) stamp(state, must(state, event.replaced), event.time, false);
      return;
    }
    case "AttrsChanged": {
      const inode = must(state, event.ino);
      if (event.mode !== undefined) inode.mode = (inode.mode & S_IFMT) | (event.mode & ~S_IFMT);
      if (event.uid !== undefined) inode.uid = event.uid;
      if (event.gid !== undefined) inode.gid = event.gid;
      if (event.atime !== undefined) inode.atime = event.atime;
      if (event.mtime !== undefined) inode.mtime = event.mtime;
      inode.ctime = event.ctime ?? event.time;
      state.touchInode(inode);
      return;
    }
    case "ExtentWritten": {
      const inode = must(state, event.ino);
      if (!event.ref) throw new Error(`ExtentWritten ${event.seq} has no data reference`);
      if (event.length > 0) state.writeExtent(event.ino, { offset: event.offset, length: event.length, file: event.ref.file, pos: event.ref.pos });
      inode.size = Math.max(inode.size, event.offset + event.length);
      stamp(state, inode, event.time, true);
      return;
    }
    case "Truncated": {
      const inode = must(state, event.ino);
      if (event.size < inode.size) state.truncateExtents(event.ino, event.size);
      inode.size = event.size;
      stamp(state, inode, event.time, true);
      return;
    }
    case "XattrSet": {
      const inode = must(state, event.ino);
      inode.xattrs = { ...inode.xattrs, [event.name]: event.value };
      stamp(state, inode, event.time, false);
      return;
    }
    case "XattrRemoved": {
      const inode = must(state, event.ino);
      if (inode.xattrs) {
        const { [event.name]: _gone, ...rest } = inode.xattrs;
        inode.xattrs = rest;
      }
      stamp(state, inode, event.time, false);
      return;
    }
    case "InodeDropped":
      state.dropInode(event.ino);
      return;
    case "ObjectDiscovered":
    case "ObjectChanged":
    case "ObjectDeleted":
    case "SegmentSealed":
    case "SegmentReplicated":
    case "ObjectMaterialized":
    case "ConflictDetected":
    case "Mounted":
    case "Unmounted":
      // Remote and replication state are projected by the replicator's own
      // projection; the local tree does not change.
      return;
    default: {
      const never: never = event;
      throw new Error(`evolve: unknown event ${(never as { type: string }).type}`);
    }
  }
}

function must(state: TreeState, ino: Ino): Inode {
  const inode = state.inode(ino);
  if (!inode) throw new Error(`evolve: inode ${ino} does not exist`);
  return inode;
}

function nextCookie(state: TreeState, dir: Inode): number {
  const c = dir.nextCookie ?? FIRST_COOKIE;
  dir.nextCookie = c + 1;
  state.touchInode(dir);
  return c;
}

function link(state: TreeState, parent: Inode, name: string, child: Inode): void {
  state.putDirent(parent.ino, name, { ino: child.ino, cookie: nextCookie(state, parent), kind: child.kind });
  parent.entries = (parent.entries ?? 0) + 1;
  if (child.kind === "dir") {
    child.nlink = 2;
    child.parent = parent.ino;
    parent.nlink += 1;
  } else child.nlink += 1;
  state.setOrphan(child.ino, false);
  state.touchInode(child);
  state.touchInode(parent);
}

function unlink(state: TreeState, parent: Inode, name: string, child: Inode): void {
  state.delDirent(parent.ino, name);
  parent.entries = (parent.entries ?? 0) - 1;
  if (child.kind === "dir") {
    child.nlink = 0;
    parent.nlink -= 1;
  } else child.nlink -= 1;
  if (child.nlink <= 0) state.setOrphan(child.ino, true);
  state.touchInode(child);
  state.touchInode(parent);
}

/** Set ctime (and mtime when `modified`) to `time`. */
function stamp(state: TreeState, inode: Inode, time: number, modified: boolean): void {
  inode.ctime = time;
  if (modified) inode.mtime = time;
  state.touchInode(inode);
}
