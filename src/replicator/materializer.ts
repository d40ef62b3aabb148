/**
 * The materializer: makes the objects under the mount's prefix match the local tree, one
 * reconcile round at a time.
 *
 * A round walks the tree and the remote index (what this client believes S3 holds). Every
 * path whose object does not reflect its inode's last change is written: a file as one
 * object with its bytes, a directory as a `name/` marker, a symlink as an object holding its
 * target, with the POSIX attributes in user metadata. Then every indexed key that no longer
 * has a path is deleted. Puts come before deletes, so a rename never passes through a state
 * where neither key holds the data.
 *
 * Bytes cross the network about once: a file whose bytes are all an existing object's (a
 * rename, a chmod) is copied server-side; a large file is assembled from parts, those that S3
 * already has (in a journal segment or the unchanged object) copied server-side
 * (UploadPartCopy) where the server can; a large file with nothing to copy goes through the
 * adaptive multipart engine (src/transfer).
 *
 * Nothing is overwritten silently: a write is conditional on the ETag last seen at the key
 * (or on there being none). When that fails someone else changed the object: the local
 * version is renamed to a conflict name (and uploaded there in the next round), the remote
 * version appears under the original name, and a ConflictDetected event is journaled. On
 * servers without conditional writes a HEAD just before the write stands in for the
 * condition (a narrow race remains there).
 */
import type { Ino, NewEvent, ObjectVersion } from "../../journal/mod.ts";
import type { FileView, Filesystem, WalkEntry } from "../fs/filesystem.ts";
import type { Inode } from "../projection/state.ts";
import type { Capabilities, ObjectStore, PartRef, WriteCondition, WriteOutcome } from "../s3/mod.ts";
import { formatMeta, keyOf } from "./keys.ts";
import { TransferEngine } from "../transfer/engine.ts";
import { pool } from "./remote_source.ts";
import type { RemoteListing } from "../fs/remote.ts";

export interface MaterializerOptions {
  readonly fs: Filesystem;
  readonly store: ObjectStore;
  /** The mount's key prefix ("" or ending in "/"). */
  readonly prefix: string;
  readonly capabilities: () => Promise<Capabilities>;
  readonly clientId: string;
  /** Lists one key's parent prefix entry for a conflict (the remote version's attributes). */
  readonly lookup: (prefix: string) => Promise<RemoteListing>;
  /** Ship every segment of what is staged now (so a large file's bytes can be copied from them). */
  readonly shipStaged?: () => Promise<void>;
  /** Objects up to this size go up in one PUT; larger ones in parts of this size. @default 8 MiB */
  readonly partBytes?: number;
  /** Objects written at the same time. @default 8 */
  readonly concurrency?: number;
  readonly log: (message: string) => void;
}

export interface RoundStats {
  /** Objects written (PUT or multipart), copied server-side, deleted. */
  put: number;
  copied: number;
  deleted: number;
  conflicts: number;
  /** Paths left for a later round because they changed too recently. */
  deferred: number;
  /** Bytes sent in request bodies; bytes copied server-side. */
  uploadedBytes: number;
  copiedBytes: number;
}

const MIN_PART = 5 * 1024 * 1024;
const MAX_PART = 5 * 1024 ** 3;

/** File bytes [start, end) are at byte `from` of object `key` in S3 (a segment, or the file's base object). */
export interface Source {
  readonly start: number;
  readonly end: number;
  readonly key: string;
  readonly from: number;
  readonly etag?: string;
  readonly versionId?: string;
}

/** One part of a multipart upload: file bytes [start, end), copied from `copy` or uploaded. */
export interface Part {
  readonly start: number;
  readonly end: number;
  readonly copy?: { readonly key: string; readonly from: number; readonly etag?: string; readonly versionId?: string };
}

/**
 * Parts for a file of `size` bytes: runs of at least 5 MiB that S3 already has are copied
 * server-side, the rest uploaded in parts of about `partBytes`. Every part but the last is at
 * least 5 MiB (S3's rule): an upload part shorter than that before a copy run takes bytes from
 * the run's start.
 */
export function planParts(sources: readonly Source[], size: number, partBytes: number): Part[] {
  // Merge sources that continue each other in the same object.
  const runs: Source[] = [];
  for (const s of sources) {
    const last = runs[runs.length - 1];
    if (last && last.end === s.start && last.key === s.key && last.from + (last.end - last.start) === s.from && last.etag === s.etag) runs[runs.length - 1] = { ...last, end: s.end };
    else runs.push(s);
  }
  const parts: Part[] = [];
  let upload: number | undefined; // start of the upload part being gathered
  const flush = (end: number) => {
    if (upload !== undefined && end > upload) parts.push({ start: upload, end });
    upload = undefined;
  };
  let pos = 0;
  let r = 0;
  while (pos < size) {
    while (r < runs.length && runs[r]!.end <= pos) r++;
    const run = runs[r] && runs[r]!.start <= pos ? runs[r]! : undefined;
    const runEnd = run ? Math.min(run.end, size) : Math.min(runs[r]?.start ?? size, size);
    if (run && runEnd - pos >= MIN_PART) {
      if (upload !== undefined && pos - upload < MIN_PART) {
        pos += Math.min(MIN_PART - (pos - upload), runEnd - pos); // too short to stand alone
        if (runEnd - pos < MIN_PART) continue;
      }
      flush(pos);
      const end = Math.min(runEnd, pos + MAX_PART);
      parts.push({ start: pos, end, copy: { key: run.key, from: run.from + (pos - run.start), ...(run.etag ? { etag: run.etag } : {}), ...(run.versionId ? { versionId: run.versionId } : {}) } });
      pos = end;
      continue;
    }
    upload ??= pos;
    pos = Math.min(runEnd, upload + partBytes);
    if (pos - upload >= partBytes) flush(pos);
  }
  flush(size);
  return parts;
}

export class Materializer {
  readonly totals: RoundStats = { put: 0, copied: 0, deleted: 0, conflicts: 0, deferred: 0, uploadedBytes: 0, copiedBytes: 0 };
  private readonly partBytes: number;
  private readonly engine: TransferEngine;

  constructor(private readonly o: MaterializerOptions) {
    this.partBytes = Math.max(MIN_PART, o.partBytes ?? 8 * 1024 * 1024);
    this.engine = new TransferEngine(o.store);
  }

  /**
   * One round. Returns the seq it covers: every change up to it is in S3 once it resolves,
   * unless `stats.deferred` (paths changed less than `settleMs` ago wait for the next round)
   * or `stats.conflicts` (conflict copies go up in the next round).
   */
  async round(options: { readonly settleMs?: number } = {}): Promise<{ through: number; stats: RoundStats }> {
    const { fs, prefix } = this.o;
    const through = fs.staged;
    const stats: RoundStats = { put: 0, copied: 0, deleted: 0, conflicts: 0, deferred: 0, uploadedBytes: 0, copiedBytes: 0 };
    const settledBefore = Date.now() - (options.settleMs ?? 0);
    const known = new Map<string, { ino: Ino; etag: string; asOf: number }>();
    for await (const r of fs.remoteKeys(prefix)) known.set(r.key, r);
    const local = new Map<string, WalkEntry>();
    for await (const e of fs.walk()) local.set(keyOf(prefix, e.path) + (e.inode.kind === "dir" ? "/" : ""), e);

    const errors: Error[] = [];
    const attempt = (what: () => Promise<void>) => async () => {
      try {
        await what();
      } catch (e) {
        errors.push(e as Error);
      }
    };
    const puts: (() => Promise<void>)[] = [];
    const waiting = new Set<Ino>();
    for (const [key, e] of local) {
      if (this.clean(key, e.inode, known.get(key))) continue;
      // Still changing (written, renamed, chmodded moments ago): written back once it settles.
      if (e.inode.ctime > settledBefore) {
        stats.deferred++;
        waiting.add(e.inode.ino);
        continue;
      }
      puts.push(attempt(() => this.write(key, e, known.get(key), stats)));
    }
    await pool(puts, this.o.concurrency ?? 8);
    if (errors.length > 0) throw errors[0];

    const deletes: (() => Promise<void>)[] = [];
    for (const [key, r] of known) {
      if (local.has(key)) continue;
      // A renamed inode's old key goes only after its new key is written.
      if (waiting.has(r.ino)) stats.deferred++;
      else deletes.push(attempt(() => this.remove(key, r, stats)));
    }
    await pool(deletes, this.o.concurrency ?? 8);
    if (errors.length > 0) throw errors[0];

    for (const k of Object.keys(stats) as (keyof RoundStats)[]) this.totals[k] += stats[k];
    return { through, stats };
  }

  /** The object at `key` reflects the inode's last change. */
  private clean(key: string, inode: Inode, known: { ino: Ino; asOf: number } | undefined): boolean {
    const changedAt = inode.changedAt ?? 0;
    if (known && known.ino === inode.ino && known.asOf >= changedAt) return true;
    // A directory listed from S3 is its prefix: nothing to write until it changes.
    return inode.kind === "dir" && inode.remote !== undefined && inode.remote.etag === "" && inode.remote.asOf >= changedAt && !known;
  }

  private async write(key: string, e: WalkEntry, known: { etag: string } | undefined, stats: RoundStats): Promise<void> {
    const { fs } = this.o;
    const view = await fs.view(e.inode.ino);
    if (!view) return; // gone since the walk: the next round sees it
    const inode = view.inode;
    const metadata = formatMeta(inode);
    const condition: WriteCondition = known ? { ifMatch: known.etag } : { ifNoneMatch: "*" };
    let outcome: WriteOutcome;
    let size = 0;
    await fs.journal.flushed(); // what the view shows is committed before it leaves the machine
    if (inode.kind === "file") {
      size = inode.size;
      outcome = await this.writeFile(key, view, metadata, condition, stats);
    } else {
      const body = inode.kind === "symlink" ? (inode.target ?? "") : "";
      size = Buffer.byteLength(body);
      outcome = await this.putIf(key, body, condition, metadata);
      if (outcome._tag === "Written") stats.uploadedBytes += size;
    }
    if (outcome._tag === "PreconditionFailed") {
      await this.conflict(key, e, known);
      stats.conflicts++;
      return;
    }
    stats.put++;
    const object: ObjectVersion = { key, size, etag: outcome.etag, mtime: inode.mtime, ...(outcome.versionId ? { versionId: outcome.versionId } : {}) };
    await fs.record([{ inode: inode.ino }], () => [{ type: "ObjectMaterialized", ino: inode.ino, asOf: view.asOf as never, object }]);
  }

  private async writeFile(key: string, view: FileView, metadata: Record<string, string>, condition: WriteCondition, stats: RoundStats): Promise<WriteOutcome> {
    const { fs, store } = this.o;
    const inode = view.inode;
    const base = inode.remote;
    const caps = await this.o.capabilities();
    // Every byte is the base object's: a server-side copy.
    if (base && base.etag !== "" && view.extents.length === 0 && base.valid === inode.size && base.size === inode.size && inode.size <= 5 * 1024 ** 3) {
      const blocked = await this.emulateCondition(key, condition, caps);
      if (blocked) return blocked;
      try {
        const w = await store.copy(base.key, key, { ifSourceMatch: base.etag, metadata, ...(base.versionId ? { sourceVersionId: base.versionId } : {}) });
        stats.copied++;
        stats.copiedBytes += inode.size;
        return w;
      } catch (e) {
        this.o.log(`objectfs: server-side copy of ${base.key} to ${key} failed, uploading instead: ${(e as Error).message}`);
      }
    }
    const copyParts = inode.size >= MIN_PART && caps.uploadPartCopy;
    if (copyParts) await this.o.shipStaged?.().catch(() => {}); // if it fails, the bytes are uploaded
    const plan = copyParts ? planParts(await this.sources(view), inode.size, this.partSize(inode.size)) : undefined;
    if (inode.size <= this.partBytes && !plan?.some((part) => part.copy)) {
      const body = await fs.readView(view, 0, inode.size);
      const out = await this.putIf(key, body, condition, metadata);
      if (out._tag === "Written") stats.uploadedBytes += body.length;
      return out;
    }
    if (plan?.some((part) => part.copy)) {
      try {
        return await this.multipart(key, view, metadata, condition, caps, stats, plan);
      } catch (e) {
        // A source may be gone (retention compacted the segment it was in): send the bytes.
        this.o.log(`objectfs: assembling ${key} from copies failed, uploading instead: ${(e as Error).message}`);
      }
    }
    // Nothing to copy: the adaptive engine sends it (part size and parts in flight follow the link).
    const conditional = this.canCondition(condition, caps, true);
    if (!conditional) {
      const blocked = await this.emulateCondition(key, condition, caps);
      if (blocked) return blocked;
    }
    const report = await this.engine.upload({ key, size: inode.size, read: (at, n) => fs.readView(view, at, n), metadata, ...(conditional ? { condition } : {}) });
    if (report.outcome._tag === "Written") stats.uploadedBytes += inode.size;
    return report.outcome;
  }

  /** Parts of at least partBytes, and at most 10,000 of them. */
  private partSize(size: number): number {
    return Math.max(this.partBytes, Math.ceil(size / 10_000));
  }

  /**
   * Where S3 already has the file's bytes: runs of journal segments (for bytes written here
   * and already replicated) and of the object the file came from (its unchanged bytes).
   */
  private async sources(view: FileView): Promise<Source[]> {
    const out: Source[] = [];
    const base = view.inode.remote;
    let at = 0;
    const baseUpTo = (end: number) => {
      if (base && base.etag !== "" && at < Math.min(end, base.valid)) {
        const to = Math.min(end, base.valid);
        out.push({ start: at, end: to, key: base.key, from: at, etag: base.etag, ...(base.versionId ? { versionId: base.versionId } : {}) });
      }
      at = end;
    };
    for (const e of view.extents) {
      baseUpTo(e.offset);
      let pos = e.offset;
      for (const piece of await this.o.fs.segmentPieces(e.file, e.pos, e.length)) {
        out.push({ start: pos, end: pos + piece.length, key: piece.key, from: piece.at });
        pos += piece.length;
      }
      at = e.offset + e.length;
    }
    baseUpTo(view.inode.size);
    return out;
  }

  private async multipart(key: string, view: FileView, metadata: Record<string, string>, condition: WriteCondition, caps: Capabilities, stats: RoundStats, plan: readonly Part[]): Promise<WriteOutcome> {
    const { fs, store } = this.o;
    const uploadId = await store.createMultipart(key, { metadata });
    try {
      let uploaded = 0;
      let copied = 0;
      const parts = await pool(
        plan.map((part, i) => async (): Promise<PartRef> => {
          const c = part.copy;
          if (c) {
            copied += part.end - part.start;
            return store.uploadPartCopy(key, uploadId, i + 1, {
              sourceKey: c.key,
              range: { start: c.from, end: c.from + (part.end - part.start) - 1 },
              ...(c.etag ? { ifSourceMatch: c.etag } : {}),
              ...(c.versionId ? { sourceVersionId: c.versionId } : {}),
            });
          }
          const body = await fs.readView(view, part.start, part.end - part.start);
          uploaded += body.length;
          return store.uploadPart(key, uploadId, i + 1, body);
        }),
        4,
      );
      const blocked = this.canCondition(condition, caps, true) ? undefined : await this.emulateCondition(key, condition, caps);
      if (blocked) {
        await store.abortMultipart(key, uploadId).catch(() => {});
        return blocked;
      }
      const out = this.canCondition(condition, caps, true) ? await store.completeMultipartIf(key, uploadId, parts, condition) : await store.completeMultipart(key, uploadId, parts);
      if (out._tag === "PreconditionFailed") await store.abortMultipart(key, uploadId).catch(() => {});
      else {
        stats.uploadedBytes += uploaded;
        stats.copiedBytes += copied;
      }
      return out;
    } catch (e) {
      await store.abortMultipart(key, uploadId).catch(() => {});
      throw e;
    }
  }

  private canCondition(condition: WriteCondition, caps: Capabilities, multipart: boolean): boolean {
    if ("ifMatch" in condition) return caps.conditionalWrites.ifMatch;
    return multipart ? caps.completeIfNoneMatch : caps.conditionalWrites.ifNoneMatch;
  }

  /** Where the server cannot enforce `condition`: check it with a HEAD; the outcome if it fails. */
  private async emulateCondition(key: string, condition: WriteCondition, _caps: Capabilities): Promise<WriteOutcome | undefined> {
    const head = await this.o.store.head(key);
    const holds = "ifMatch" in condition ? head !== undefined && head.etag === condition.ifMatch : head === undefined;
    return holds ? undefined : { _tag: "PreconditionFailed", key, condition };
  }

  private async putIf(key: string, body: Uint8Array | string, condition: WriteCondition, metadata: Record<string, string>): Promise<WriteOutcome> {
    const caps = await this.o.capabilities();
    if (this.canCondition(condition, caps, false)) return this.o.store.putIf(key, body, condition, { metadata });
    const blocked = await this.emulateCondition(key, condition, caps);
    return blocked ?? (await this.o.store.put(key, body, { metadata }));
  }

  /**
   * Someone else wrote `key` since this client last saw it. Keep both: the local inode moves
   * to a conflict name beside it (uploaded there next round), the remote version shows up
   * under the name.
   */
  private async conflict(key: string, e: WalkEntry, known: { etag: string } | undefined): Promise<void> {
    const { fs, store, prefix } = this.o;
    const head = await store.head(key);
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
    const conflictName = `${e.name}.conflict-${this.o.clientId.slice(0, 8)}-${stamp}`;
    const conflictKey = keyOf(prefix, e.path.slice(0, e.path.length - e.name.length) + conflictName);
    const parentPrefix = key.slice(0, key.length - e.name.length - (e.inode.kind === "dir" ? 1 : 0));
    const remote = head ? (await this.o.lookup(parentPrefix)).entries.find((x) => x.name === e.name) : undefined;
    this.o.log(`objectfs: conflict at ${key}: it changed in S3 since this client last saw it; the local version is kept as ${conflictKey}`);
    const current = await fs.entryNow(e.parent, e.name);
    await fs.record([{ inode: e.parent }, { dirent: [e.parent, e.name] }, { dirent: [e.parent, conflictName] }, { inode: e.inode.ino }], ({ nextIno }) => {
      const events: NewEvent[] = [
        { type: "ConflictDetected", ino: e.inode.ino, key, ...(known ? { localEtag: known.etag } : {}), ...(head ? { remoteEtag: head.etag } : {}), conflictKey },
      ];
      if (current?.ino === e.inode.ino) {
        events.push({ type: "Renamed", ino: e.inode.ino, fromParent: e.parent, fromName: e.name, toParent: e.parent, toName: conflictName });
        if (remote) {
          events.push({ type: "RemoteListed", dir: e.parent, prefix: parentPrefix, entries: [{ ...remote, ino: nextIno }], skipped: [], complete: false });
        }
      }
      return events;
    });
  }

  private async remove(key: string, r: { ino: Ino; etag: string }, stats: RoundStats): Promise<void> {
    const { fs, store } = this.o;
    const inode = await fs.inodeNow(r.ino);
    // Still the base of a live file that has no other materialized key: keep it.
    if (inode && inode.remote?.key === key && inode.kind === "file" && inode.nlink > 0) return;
    const head = await store.head(key);
    if (head && head.etag !== r.etag) {
      // Changed by someone else since: their version stays; this client forgets the key.
      this.o.log(`objectfs: not deleting ${key}: it changed in S3 since this client last saw it`);
      await fs.record([], () => [
        { type: "ConflictDetected", ino: r.ino, key, localEtag: r.etag, remoteEtag: head.etag, conflictKey: key },
        { type: "ObjectDeleted", ino: r.ino, key },
      ]);
      stats.conflicts++;
      return;
    }
    if (head) await store.delete(key);
    stats.deleted++;
    await fs.record([], () => [{ type: "ObjectDeleted", ino: r.ino, key }]);
  }
}
