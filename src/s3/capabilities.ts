/**
 * What an S3 server really does, measured once per endpoint and bucket: S3-compatible
 * servers differ exactly where correctness depends on them (conditional writes, part copy,
 * abort, versions, listing order). Each capability is measured by doing the thing under a
 * scratch prefix `.objectfs/probe/<random>/` and checking the result (a conditional write
 * counts only if the server *rejects* a conflicting one, not if it merely accepts the
 * header); the scratch objects, versions and uploads are removed afterwards.
 */
import { createHash, randomBytes } from "node:crypto";
import type { BucketVersioning, ObjectStore, PartRef, WriteOutcome } from "./object_store.ts";
import { compareKeys } from "./object_store.ts";
import { isS3Error } from "./s3_error.ts";

/** Where scratch objects of probes go, under the bucket root. */
export const PROBE_PREFIX = ".objectfs/probe/";

export interface Capabilities {
  readonly endpoint: string;
  readonly bucket: string;
  /** PutObject honours the condition: a conflicting write is rejected with 412. */
  readonly conditionalWrites: {
    /** `If-None-Match: *`: no overwrite of an existing object. */
    readonly ifNoneMatch: boolean;
    /** `If-Match: etag`: no overwrite of a version other than the one named. */
    readonly ifMatch: boolean;
  };
  /** A PutObject whose body does not match its Content-MD5 is rejected (s3rver stores it). */
  readonly contentMD5: boolean;
  /** CompleteMultipartUpload honours `If-None-Match: *` (Ceph RGW ignores it). */
  readonly completeIfNoneMatch: boolean;
  /** UploadPartCopy with a source byte range gives the right bytes. */
  readonly uploadPartCopy: boolean;
  /** AbortMultipartUpload removes the upload (ListParts then says NoSuchUpload). */
  readonly abortMultipart: boolean;
  readonly listParts: boolean;
  readonly listMultipartUploads: boolean;
  readonly versioning: {
    /** ListObjectVersions works. */
    readonly supported: boolean;
    /** The bucket's versioning state; `"unknown"` where the server cannot say. */
    readonly status: BucketVersioning | "unknown";
  };
  /**
   * A listing paged with continuation tokens returns every key once, in key order, also for
   * sibling names that sort around the delimiter (`a`, `a-1`, `a.txt`, `a/x`). s3rver does not.
   */
  readonly pagedListing: boolean;
  /**
   * A delimited listing reports every common prefix, including one that holds only deeper
   * prefixes (`c/` for `c/d/e`). s3rver drops those: list with `clientDelimiter` there.
   */
  readonly delimitedListing: boolean;
  /** Why each missing capability is missing, one sentence each. */
  readonly notes: readonly string[];
}

export interface ProbeOptions {
  /** Probe again even if this endpoint and bucket were probed before. @default false */
  readonly refresh?: boolean;
  readonly signal?: AbortSignal;
}

const cache = new Map<string, Promise<Capabilities>>();

/**
 * The capabilities of `store`'s endpoint and bucket, probed on first use and then cached in
 * memory. A probe that fails (unreachable, no permission) is not cached.
 */
export function probeCapabilities(store: ObjectStore, options: ProbeOptions = {}): Promise<Capabilities> {
  const id = `${store.endpoint}\n${store.bucket}`;
  const cached = cache.get(id);
  if (cached !== undefined && options.refresh !== true) return cached.then((c) => fitted(store, c));
  const probe = runProbe(store, options.signal);
  cache.set(id, probe);
  probe.catch(() => {
    if (cache.get(id) === probe) cache.delete(id);
  });
  return probe.then((c) => fitted(store, c));
}

/** `store` set up for what its server does: bodies signed with their SHA-256 where Content-MD5 goes unchecked. */
function fitted(store: ObjectStore, c: Capabilities): Capabilities {
  if (!c.contentMD5) store.signPayloads?.();
  return c;
}

/** Forget every cached probe result. */
export function clearCapabilityCache(): void {
  cache.clear();
}

/** Sibling names around the delimiter, in S3 key order, and a prefix holding only a prefix. */
const LISTING_KEYS = ["a", "a-1", "a.txt", "a/x", "c/d/e"] as const;

async function runProbe(store: ObjectStore, signal: AbortSignal | undefined): Promise<Capabilities> {
  const scratch = `${PROBE_PREFIX}${randomBytes(6).toString("hex")}/`;
  const notes: string[] = [];
  const uploads: { key: string; uploadId: string }[] = [];
  const text = new TextEncoder();
  const read = async (key: string) => new TextDecoder().decode((await store.get(key, { signal })).bytes);
  /** Runs a probe step; a server that refuses the operation makes the capability false. */
  const attempt = async (what: string, step: () => Promise<boolean>): Promise<boolean> => {
    try {
      return await step();
    } catch (error) {
      if (isS3Error(error) && !["unreachable", "auth", "throttled"].includes(error.reason)) {
        notes.push(`${what}: ${error.message}`);
        return false;
      }
      throw error;
    }
  };
  const expect = (what: string, ok: boolean, detail: string) => {
    if (!ok) notes.push(`${what}: ${detail}`);
    return ok;
  };
  const written = (o: WriteOutcome) => (o._tag === "Written" ? "the write happened" : "the write was rejected");

  let abortMultipart = false;
  try {
    // --- conditional writes ---------------------------------------------------------------
    const cond = `${scratch}cond`;
    await store.put(cond, "0", { signal });
    const ifNoneMatch = await attempt("If-None-Match on PutObject", async () => {
      const over = await store.putIf(cond, "1", { ifNoneMatch: "*" }, { signal });
      const fresh = await store.putIf(`${scratch}cond-new`, "n", { ifNoneMatch: "*" }, { signal });
      return (
        expect("If-None-Match on PutObject", over._tag === "PreconditionFailed", `an overwrite of an existing object was not rejected (${written(over)})`) &&
        expect("If-None-Match on PutObject", fresh._tag === "Written", "a write of a new object was rejected") &&
        expect("If-None-Match on PutObject", (await read(cond)) === "0", "the rejected write changed the object")
      );
    });
    const ifMatch = await attempt("If-Match on PutObject", async () => {
      const current = await store.head(cond, { signal });
      if (current === undefined) return expect("If-Match on PutObject", false, "the scratch object vanished");
      const matching = await store.putIf(cond, "2", { ifMatch: current.etag }, { signal });
      const stale = await store.putIf(cond, "3", { ifMatch: current.etag }, { signal });
      return (
        expect("If-Match on PutObject", matching._tag === "Written", "a write naming the current ETag was rejected") &&
        expect("If-Match on PutObject", stale._tag === "PreconditionFailed", `a write naming a stale ETag was not rejected (${written(stale)})`) &&
        expect("If-Match on PutObject", (await read(cond)) === "2", "the rejected write changed the object")
      );
    });

    // --- integrity ---------------------------------------------------------------------------
    const contentMD5 = await attempt("Content-MD5 on PutObject", async () => {
      const key = `${scratch}md5`;
      try {
        await store.put(key, "body", { contentMD5: createHash("md5").update("another body").digest("base64"), signal });
      } catch (error) {
        if (isS3Error(error, "bad-request")) return (await store.head(key, { signal })) === undefined || expect("Content-MD5 on PutObject", false, "a rejected body was stored");
        throw error;
      }
      return expect("Content-MD5 on PutObject", false, "a body that does not match its Content-MD5 was stored");
    });

    // --- multipart: list parts, list uploads, abort ---------------------------------------
    const listParts = await attempt("ListParts", async () => {
      const key = `${scratch}mp-parts`;
      const uploadId = await store.createMultipart(key, { signal });
      uploads.push({ key, uploadId });
      await store.uploadPart(key, uploadId, 1, text.encode("abc"), { signal });
      const parts = await store.listParts(key, uploadId, { signal });
      return expect("ListParts", parts.length === 1 && parts[0]?.partNumber === 1 && parts[0]?.size === 3, `listed ${JSON.stringify(parts)} for one part of 3 bytes`);
    });
    const listMultipartUploads = await attempt("ListMultipartUploads", async () => {
      const listed = await store.listMultipartUploads({ prefix: scratch, signal });
      const ours = uploads[0];
      return expect("ListMultipartUploads", ours !== undefined && listed.some((u) => u.uploadId === ours.uploadId), "an open upload was not listed");
    });
    abortMultipart = await attempt("AbortMultipartUpload", async () => {
      const ours = uploads[0] ?? { key: `${scratch}mp-parts`, uploadId: await store.createMultipart(`${scratch}mp-parts`, { signal }) };
      if (uploads.length === 0) uploads.push(ours);
      await store.abortMultipart(ours.key, ours.uploadId, { signal });
      if (listParts) {
        try {
          await store.listParts(ours.key, ours.uploadId, { signal });
          return expect("AbortMultipartUpload", false, "the upload's parts are still listed after the abort");
        } catch (error) {
          if (!isS3Error(error, "not-found")) throw error;
        }
      }
      if (listMultipartUploads) {
        const listed = await store.listMultipartUploads({ prefix: scratch, signal });
        if (listed.some((u) => u.uploadId === ours.uploadId)) return expect("AbortMultipartUpload", false, "the upload is still listed after the abort");
      }
      uploads.splice(uploads.indexOf(ours), 1);
      return true;
    });

    // --- part copy -------------------------------------------------------------------------
    const uploadPartCopy = await attempt("UploadPartCopy", async () => {
      const source = `${scratch}copy-source`;
      await store.put(source, "0123456789", { signal });
      const key = `${scratch}copy-target`;
      const uploadId = await store.createMultipart(key, { signal });
      uploads.push({ key, uploadId });
      const part: PartRef = await store.uploadPartCopy(key, uploadId, 1, { sourceKey: source, range: { start: 2, end: 5 } }, { signal });
      await store.completeMultipart(key, uploadId, [part], { signal });
      uploads.pop();
      const got = await read(key);
      return expect("UploadPartCopy", got === "2345", `bytes 2-5 of "0123456789" came out as ${JSON.stringify(got)}`);
    });

    // --- conditional complete ----------------------------------------------------------------
    const completeIfNoneMatch = await attempt("If-None-Match on CompleteMultipartUpload", async () => {
      const before = await read(cond);
      const uploadId = await store.createMultipart(cond, { signal });
      uploads.push({ key: cond, uploadId });
      const part = await store.uploadPart(cond, uploadId, 1, text.encode("4"), { signal });
      const outcome = await store.completeMultipartIf(cond, uploadId, [part], { ifNoneMatch: "*" }, { signal });
      if (outcome._tag === "Written") uploads.pop();
      return (
        expect("If-None-Match on CompleteMultipartUpload", outcome._tag === "PreconditionFailed", `completing over an existing object was not rejected (${written(outcome)})`) &&
        expect("If-None-Match on CompleteMultipartUpload", (await read(cond)) === before, "the rejected completion changed the object")
      );
    });

    // --- versions ----------------------------------------------------------------------------
    const versionsSupported = await attempt("ListObjectVersions", async () => {
      for await (const _ of store.listVersions({ prefix: scratch, signal })) break;
      return true;
    });
    let status: BucketVersioning | "unknown" = "unknown";
    if (versionsSupported) {
      try {
        status = await store.getBucketVersioning({ signal });
      } catch (error) {
        if (!isS3Error(error) || ["unreachable", "auth", "throttled"].includes(error.reason)) throw error;
      }
    }

    // --- listing -------------------------------------------------------------------------------
    const ls = `${scratch}ls/`;
    await Promise.all(LISTING_KEYS.map((k) => store.put(`${ls}${k}`, k, { signal })));
    const pagedListing = await attempt("Paged listing", async () => {
      const seen: string[] = [];
      let token: string | undefined;
      for (let pages = 0; pages < 3 * LISTING_KEYS.length; pages++) {
        const page = await store.listPage({ prefix: ls, maxKeys: 1, continuationToken: token, signal });
        seen.push(...page.objects.map((o) => o.key.slice(ls.length)));
        token = page.nextToken;
        if (token === undefined) break;
      }
      return expect("Paged listing", JSON.stringify(seen) === JSON.stringify(LISTING_KEYS), `pages of one key listed ${JSON.stringify(seen)} for ${JSON.stringify(LISTING_KEYS)}`);
    });
    const delimitedListing = await attempt("Delimited listing", async () => {
      const page = await store.listPage({ prefix: ls, delimiter: "/", signal });
      const got = [...page.objects.map((o) => o.key), ...page.prefixes.map((p) => p.prefix)].map((k) => k.slice(ls.length)).sort(compareKeys);
      const want = ["a", "a-1", "a.txt", "a/", "c/"];
      return expect("Delimited listing", JSON.stringify(got) === JSON.stringify(want), `listed ${JSON.stringify(got)} for ${JSON.stringify(want)}`);
    });

    return {
      endpoint: store.endpoint,
      bucket: store.bucket,
      conditionalWrites: { ifNoneMatch, ifMatch },
      contentMD5,
      completeIfNoneMatch,
      uploadPartCopy,
      abortMultipart,
      listParts,
      listMultipartUploads,
      versioning: { supported: versionsSupported, status },
      pagedListing,
      delimitedListing,
      notes,
    };
  } finally {
    await cleanUp(store, scratch, abortMultipart ? uploads : [], signal).catch(() => {});
  }
}

/** Remove every object, version and upload under the scratch prefix. */
async function cleanUp(store: ObjectStore, scratch: string, uploads: readonly { key: string; uploadId: string }[], signal: AbortSignal | undefined) {
  await Promise.all(uploads.map((u) => store.abortMultipart(u.key, u.uploadId, { signal }).catch(() => {})));
  // Few keys: one page, which even a server with unreliable paging returns whole.
  const keys: string[] = [];
  let token: string | undefined;
  for (let pages = 0; pages < 10; pages++) {
    const page = await store.listPage({ prefix: scratch, continuationToken: token, signal });
    keys.push(...page.objects.map((o) => o.key));
    token = page.nextToken;
    if (token === undefined) break;
  }
  if (keys.length > 0) await store.deleteMany(keys, { signal });
  try {
    const versions: { key: string; versionId: string }[] = [];
    for await (const v of store.listVersions({ prefix: scratch, signal })) {
      versions.push({ key: v.key, versionId: v.versionId });
    }
    if (versions.length > 0) await store.deleteMany(versions, { signal });
  } catch (error) {
    if (!isS3Error(error)) throw error;
  }
}
