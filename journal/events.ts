/**
 * The journal's event schema: every filesystem mutation, remote observation,
 * replication fact and session marker, as readonly plain data.
 *
 * Events are past-tense facts. Each has a `seq` (its position in the journal,
 * assigned by the store), a `time` (milliseconds since the epoch, assigned by
 * the store) and, when an application caused it, the `caller` (uid, gid, pid).
 *
 * This is the product's core contract: segments in S3 carry these events, and
 * any past state is `fold(evolve, events)`. Changing a shape means a new schema
 * version in `codec.ts` with an upcaster from the old one.
 */

/** Position of an event in the journal: 1, 2, 3, … without gaps. */
export type Seq = number & { readonly __brand: "Seq" };
/** Inode number. The root directory is {@link ROOT_INO}. */
export type Ino = number & { readonly __brand: "Ino" };

export const ROOT_INO = 1 as Ino;

export const asSeq = (n: number): Seq => n as Seq;
export const asIno = (n: number): Ino => n as Ino;

/** Who asked for the operation, from the FUSE request context. */
export interface Caller {
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  /** The process's name (its comm, from /proc), where known. */
  readonly comm?: string;
}

export type InodeKind = "file" | "dir" | "symlink" | "fifo" | "char" | "block" | "socket";

/**
 * Where the bytes of an {@link ExtentWritten} live in the local data log.
 * Bulk data is kept out of LevelDB (it would be written twice there); the
 * event points at it and carries its CRC-32.
 */
export interface DataRef {
  /** Data log file number. */
  readonly file: number;
  /** Byte position inside that file. */
  readonly pos: number;
}

/**
 * Where the bytes of an ExtentWritten whose data retention dropped "are": nowhere. Projections
 * built from such an event point at this; reading it fails with a `dropped` JournalError.
 * Only past states older than the retained window contain it.
 */
export const DROPPED_DATA_REF: DataRef = Object.freeze({ file: -1, pos: 0 });

interface Base {
  readonly seq: Seq;
  /** Milliseconds since the Unix epoch. */
  readonly time: number;
  readonly caller?: Caller;
}

// ---- POSIX mutations -------------------------------------------------------

export interface InodeCreated extends Base {
  readonly type: "InodeCreated";
  readonly ino: Ino;
  readonly kind: InodeKind;
  /** Full st_mode: file type bits and permission bits. */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Device number for character and block special files. */
  readonly rdev?: number;
  /** Symlink target. */
  readonly target?: string;
  /**
   * Directories backed by S3: the key prefix (ending in "/", or "" for a bucket's root)
   * whose objects appear in it once it is first used (see {@link RemoteListed}).
   */
  readonly remotePrefix?: string;
}

export interface DirentLinked extends Base {
  readonly type: "DirentLinked";
  readonly parent: Ino;
  readonly name: string;
  readonly ino: Ino;
}

export interface DirentUnlinked extends Base {
  readonly type: "DirentUnlinked";
  readonly parent: Ino;
  readonly name: string;
  readonly ino: Ino;
}

/** An atomic rename; `replaced` is the inode that was at the target name, if any. */
export interface Renamed extends Base {
  readonly type: "Renamed";
  readonly ino: Ino;
  readonly fromParent: Ino;
  readonly fromName: string;
  readonly toParent: Ino;
  readonly toName: string;
  readonly replaced?: Ino;
}

export interface AttrsChanged extends Base {
  readonly type: "AttrsChanged";
  readonly ino: Ino;
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly atime?: number;
  readonly mtime?: number;
  readonly ctime?: number;
}

/**
 * Bytes written at `offset`. On append `data` is given; the store copies it to
 * the data log and keeps `ref` instead. Segments carry `data` inline.
 */
export interface ExtentWritten extends Base {
  readonly type: "ExtentWritten";
  readonly ino: Ino;
  readonly offset: number;
  readonly length: number;
  /** CRC-32 of the bytes. */
  readonly crc: number;
  readonly data?: Uint8Array;
  readonly ref?: DataRef;
  /**
   * Retention dropped the bytes (they were needed by no point still kept for restore): the
   * event stays for the audit log, with neither `data` nor `ref`.
   */
  readonly dataDropped?: true;
}

export interface Truncated extends Base {
  readonly type: "Truncated";
  readonly ino: Ino;
  readonly size: number;
}

export interface XattrSet extends Base {
  readonly type: "XattrSet";
  readonly ino: Ino;
  readonly name: string;
  readonly value: Uint8Array;
}

export interface XattrRemoved extends Base {
  readonly type: "XattrRemoved";
  readonly ino: Ino;
  readonly name: string;
}

/** The last link and the last open handle are gone: the inode and its data are freed. */
export interface InodeDropped extends Base {
  readonly type: "InodeDropped";
  readonly ino: Ino;
}

// ---- remote observations ---------------------------------------------------

/** Identity of one version of a remote object. */
export interface ObjectVersion {
  readonly key: string;
  readonly size: number;
  readonly etag: string;
  /** Milliseconds since the epoch (Last-Modified or x-amz-meta-mtime). */
  readonly mtime: number;
  readonly versionId?: string;
  /** POSIX attributes found in user metadata, if any. */
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
}

export interface ObjectDiscovered extends Base {
  readonly type: "ObjectDiscovered";
  readonly ino: Ino;
  readonly object: ObjectVersion;
}

export interface ObjectChanged extends Base {
  readonly type: "ObjectChanged";
  readonly ino: Ino;
  readonly object: ObjectVersion;
}

/** One name found by listing a prefix: an object (a file) or a common prefix (a directory). */
export interface RemoteEntry {
  readonly name: string;
  /** The inode it gets (assigned when the listing is journaled). */
  readonly ino: Ino;
  /** From the type bits of x-amz-meta-mode: a file unless they say otherwise. */
  readonly kind: InodeKind;
  /** Permission bits (x-amz-meta-mode, or the mount's default). */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Milliseconds since the epoch. */
  readonly mtime: number;
  /** Files: the object. */
  readonly object?: ObjectVersion;
  /** Directories: the key prefix of their contents, ending in "/". */
  readonly prefix?: string;
  /** Symlinks: the target (the object's body). */
  readonly target?: string;
  /** Character and block devices: x-amz-meta-rdev. */
  readonly rdev?: number;
}

/** A key that cannot be a name under the mount, and why it is hidden. */
export interface SkippedKey {
  readonly key: string;
  readonly reason: string;
}

/**
 * What a listing of `prefix` (or, with `complete: false`, a single lookup) found for directory
 * `dir`. The entries become inodes; a complete listing marks the directory as listed.
 */
export interface RemoteListed extends Base {
  readonly type: "RemoteListed";
  readonly dir: Ino;
  readonly prefix: string;
  readonly entries: readonly RemoteEntry[];
  readonly skipped: readonly SkippedKey[];
  readonly complete: boolean;
}

export interface ObjectDeleted extends Base {
  readonly type: "ObjectDeleted";
  readonly ino: Ino;
  readonly key: string;
}

// ---- replication facts -----------------------------------------------------

export interface SegmentSealed extends Base {
  readonly type: "SegmentSealed";
  readonly minSeq: Seq;
  readonly maxSeq: Seq;
  readonly bytes: number;
  readonly checksum: number;
}

export interface SegmentReplicated extends Base {
  readonly type: "SegmentReplicated";
  readonly minSeq: Seq;
  readonly maxSeq: Seq;
  readonly key: string;
  readonly etag: string;
  /** The segment's chained checksum, which the next segment names as its predecessor. */
  readonly checksum?: number;
  /**
   * Where the data log's bytes are in the segment: [file, pos, length, at] runs (see
   * `DataRun` in segment.ts), so objects can be assembled from segment ranges server-side.
   */
  readonly runs?: readonly (readonly [number, number, number, number])[];
}

/**
 * Every change up to `through` is in S3 as plain objects: the materializer's checkpoint.
 */
export interface Reconciled extends Base {
  readonly type: "Reconciled";
  readonly through: Seq;
}

export interface ObjectMaterialized extends Base {
  readonly type: "ObjectMaterialized";
  readonly ino: Ino;
  /** The journal position whose state the object reflects. */
  readonly asOf: Seq;
  readonly object: ObjectVersion;
}

export interface ConflictDetected extends Base {
  readonly type: "ConflictDetected";
  readonly ino: Ino;
  readonly key: string;
  readonly localEtag?: string;
  readonly remoteEtag?: string;
  /** Where the losing version was kept. */
  readonly conflictKey: string;
}

// ---- session markers -------------------------------------------------------

export interface Mounted extends Base {
  readonly type: "Mounted";
  readonly clientId: string;
  readonly host: string;
  readonly version: string;
  readonly pid: number;
}

export interface Unmounted extends Base {
  readonly type: "Unmounted";
  readonly clientId: string;
  readonly clean: boolean;
}

export type JournalEvent =
  | InodeCreated
  | DirentLinked
  | DirentUnlinked
  | Renamed
  | AttrsChanged
  | ExtentWritten
  | Truncated
  | XattrSet
  | XattrRemoved
  | InodeDropped
  | ObjectDiscovered
  | ObjectChanged
  | ObjectDeleted
  | SegmentSealed
  | SegmentReplicated
  | ObjectMaterialized
  | ConflictDetected
  | Mounted
  | Unmounted
  | RemoteListed
  | Reconciled;

export type EventType = JournalEvent["type"];

/** Every event type, for exhaustive tests and tools. */
export const EVENT_TYPES: readonly EventType[] = [
  "InodeCreated",
  "DirentLinked",
  "DirentUnlinked",
  "Renamed",
  "AttrsChanged",
  "ExtentWritten",
  "Truncated",
  "XattrSet",
  "XattrRemoved",
  "InodeDropped",
  "ObjectDiscovered",
  "ObjectChanged",
  "ObjectDeleted",
  "SegmentSealed",
  "SegmentReplicated",
  "ObjectMaterialized",
  "ConflictDetected",
  "Mounted",
  "Unmounted",
  "RemoteListed",
  "Reconciled",
];

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** An event as handed to `append`: the store assigns `seq` and `time`. */
export type NewEvent = DistributiveOmit<JournalEvent, "seq" | "time"> & { readonly time?: number };
