/**
 * evolve(state, event): apply one journal event to the projection state.
 * Deterministic and free of I/O; the projection equals fold(evolve, events).
 */
import { DROPPED_DATA_REF, ROOT_INO, type Ino, type InodeKind, type JournalEvent, type ObjectVersion } from "../../journal/mod.ts";
import { validAfter, type Inode, type RemoteBase, type TreeState } from "./state.ts";

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
  indexEvent(state, event);
  switch (event.type) {
    case "InodeCreated": {
      const inode: Inode = {
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
      };
      if (event.target !== undefined) inode.target = event.target;
      if (event.kind === "dir") {
        inode.nextCookie = FIRST_COOKIE;
        inode.entries = 0;
        if (event.remotePrefix !== undefined) inode.pending = event.remotePrefix;
      }
      inode.changedAt = event.seq;
      state.putInode(inode);
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
      if (event.mode !== undefined || event.uid !== undefined || event.gid !== undefined || event.mtime !== undefined) inode.changedAt = event.seq;
      inode.ctime = event.ctime ?? event.time;
      state.touchInode(inode);
      return;
    }
    case "ExtentWritten": {
      const inode = must(state, event.ino);
      const ref = event.ref ?? (event.dataDropped ? DROPPED_DATA_REF : undefined);
      if (!ref) throw new Error(`ExtentWritten ${event.seq} has no data reference`);
      if (event.length > 0) state.writeExtent(event.ino, { offset: event.offset, length: event.length, file: ref.file, pos: ref.pos });
      inode.size = Math.max(inode.size, event.offset + event.length);
      inode.changedAt = event.seq;
      stamp(state, inode, event.time, true);
      return;
    }
    case "Truncated": {
      const inode = must(state, event.ino);
      if (event.size < inode.size) state.truncateExtents(event.ino, event.size);
      if (inode.remote && event.size < inode.remote.valid) {
        inode.remote = { ...inode.remote, valid: event.size };
        // Keep sizes increasing: a smaller truncation hides every earlier, larger one.
        const truncs = (inode.truncs ?? []).filter(([, size]) => size < event.size);
        truncs.push([event.seq, event.size]);
        inode.truncs = truncs;
      }
      inode.size = event.size;
      inode.changedAt = event.seq;
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
    case "RemoteListed": {
      const dir = must(state, event.dir);
      for (const entry of event.entries) {
        const kind = entry.kind;
        const object = entry.object;
        state.putInode({
          ino: entry.ino,
          kind,
          mode: (entry.mode & ~S_IFMT) | TYPE_BITS[kind],
          uid: entry.uid,
          gid: entry.gid,
          size: kind === "file" ? (object?.size ?? 0) : entry.target !== undefined ? Buffer.byteLength(entry.target) : 0,
          nlink: 0,
          atime: entry.mtime,
          mtime: entry.mtime,
          ctime: entry.mtime,
          rdev: entry.rdev ?? 0,
          ...(entry.target !== undefined ? { target: entry.target } : {}),
          // A directory is its prefix: no marker object needs writing while it is unchanged.
          ...(kind === "dir" ? { nextCookie: FIRST_COOKIE, entries: 0, pending: entry.prefix ?? "", remote: { key: entry.prefix ?? "", etag: "", size: 0, mtime: entry.mtime, valid: 0, asOf: event.seq } } : {}),
          ...(object ? { remote: { ...remoteBase(object, event.seq), valid: kind === "file" ? object.size : 0 } } : {}),
          changedAt: event.seq,
        });
        link(state, dir, entry.name, must(state, entry.ino));
        if (object) state.setRemoteKey(object.key, [entry.ino, object.etag, event.seq]);
      }
      if (event.complete) {
        delete dir.pending;
        state.touchInode(dir);
      }
      if (event.skipped.length > 0) state.setSync({}, event.skipped);
      return;
    }
    case "ObjectMaterialized": {
      const o = event.object;
      state.setRemoteKey(o.key, [event.ino, o.etag, event.asOf]);
      const inode = state.inode(event.ino);
      if (!inode) return;
      if (inode.kind !== "file") {
        inode.remote = { ...remoteBase(o, event.asOf), valid: 0 };
        state.touchInode(inode);
        return;
      }
      // Bytes truncated away after `asOf` must not come back from the object.
      const valid = Math.min(o.size, validAfter(inode.truncs, event.asOf));
      inode.remote = { ...remoteBase(o, event.asOf), valid };
      if (inode.truncs) {
        const left = inode.truncs.filter(([seq]) => seq > event.asOf);
        if (left.length > 0) inode.truncs = left;
        else delete inode.truncs;
      }
      state.touchInode(inode);
      return;
    }
    case "ObjectDeleted":
      state.setRemoteKey(event.key, null);
      return;
    case "SegmentReplicated":
      state.setSync({ replicated: { seq: event.maxSeq, checksum: event.checksum ?? 0, key: event.key } });
      for (const [file, pos, length, at] of event.runs ?? []) state.addSegmentRun(file, pos, [length, event.key, at]);
      return;
    case "Reconciled":
      state.setSync({ reconciled: Math.max(state.sync.reconciled, event.through) });
      return;
    case "ConflictDetected":
      state.setSync({ conflicts: state.sync.conflicts + 1, lastConflict: { key: event.key, conflictKey: event.conflictKey, time: event.time } });
      return;
    case "ObjectDiscovered":
    case "ObjectChanged":
    case "SegmentSealed":
    case "Mounted":
    case "Unmounted":
      // Facts for the audit log; the projected tree does not change.
      return;
    default: {
      const never: never = event;
      throw new Error(`evolve: unknown event ${(never as { type: string }).type}`);
    }
  }
}

/** Record the event in the audit index of each inode it touched (without building a list). */
function indexEvent(state: TreeState, e: JournalEvent): void {
  switch (e.type) {
    case "InodeCreated":
    case "DirentLinked":
    case "DirentUnlinked":
    case "AttrsChanged":
    case "ExtentWritten":
    case "Truncated":
    case "XattrSet":
    case "XattrRemoved":
    case "InodeDropped":
    case "ObjectMaterialized":
    case "ConflictDetected":
      state.indexEvent(e.ino, e.seq);
      return;
    default:
      for (const ino of inodesTouched(e)) state.indexEvent(ino, e.seq);
  }
}

/** The inodes an event is about (the audit index): whose history it is part of. */
export function inodesTouched(e: JournalEvent): readonly number[] {
  switch (e.type) {
    case "InodeCreated":
    case "DirentLinked":
    case "DirentUnlinked":
    case "AttrsChanged":
    case "ExtentWritten":
    case "Truncated":
    case "XattrSet":
    case "XattrRemoved":
    case "InodeDropped":
    case "ObjectMaterialized":
    case "ConflictDetected":
      return [e.ino];
    case "Renamed":
      return e.replaced !== undefined ? [e.ino, e.replaced] : [e.ino];
    case "RemoteListed":
      return e.entries.map((x) => x.ino);
    default:
      return [];
  }
}

function remoteBase(o: ObjectVersion, asOf: number): RemoteBase {
  return { key: o.key, etag: o.etag, size: o.size, mtime: o.mtime, ...(o.versionId !== undefined ? { versionId: o.versionId } : {}), valid: o.size, asOf };
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
