/**
 * What the fs core needs from a remote object store, without knowing S3:
 * listing a prefix as directory entries, and reading bytes of an object.
 * `src/replicator` implements it over `src/s3`.
 */
import type { RemoteEntry, SkippedKey } from "../../journal/mod.ts";
import type { RemoteBase } from "../projection/state.ts";

export interface RemoteListing {
  /** Entries without inode numbers: the fs core assigns them when it journals the listing. */
  readonly entries: readonly Omit<RemoteEntry, "ino">[];
  readonly skipped: readonly SkippedKey[];
}

export interface RemoteSource {
  /** The key prefix of the mount's root ("" or ending in "/"). */
  readonly prefix: string;
  /** Every name directly under `prefix`, across all pages. */
  list(prefix: string): Promise<RemoteListing>;
  /** Bytes [offset, offset+length) of the object, into `into` at `at`. */
  read(base: RemoteBase, offset: number, length: number, into: Uint8Array, at: number): Promise<void>;
  /**
   * Bytes [offset, offset+length) of the object as they are held in memory, without a copy,
   * or undefined where they are not in one piece (then `read`). The bytes stay valid until
   * `release()`, which must be called once they are used.
   */
  view?(base: RemoteBase, offset: number, length: number): Promise<RemoteView | undefined>;
}

export interface RemoteView {
  readonly bytes: Uint8Array;
  release(): void;
}
