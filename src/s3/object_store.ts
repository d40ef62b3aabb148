/**
 * One narrow, Promise-based interface over one S3 bucket (`@aws-sdk/client-s3` and
 * `@aws-sdk/lib-storage`): list, head, ranged get, put, conditional put, multipart with part
 * copy, copy, delete, versions. Everything above `src/s3` talks to S3 through
 * {@linkcode ObjectStore} only.
 *
 * Conventions:
 * - ETags are returned without quotes (`"5d41…"` on the wire, `5d41…` here) and accepted
 *   with or without them.
 * - User metadata keys are the part after `x-amz-meta-`, lower case (`mode`, `uid`, `gid`, `mtime`).
 * - Every failure is an {@linkcode S3Error} with a closed `reason`; an unmet write condition
 *   is not a failure but a {@linkcode PreconditionFailed} outcome of `putIf` /
 *   `completeMultipartIf`.
 * - Server quirks handled here: Ceph RGW compares `If-Match` on PutObject against the
 *   unquoted ETag (quoted → 412 even when equal); the form that works is learned on the first
 *   apparent mismatch (a HEAD tells a real conflict from a quoting problem). Ceph RGW returns
 *   an empty ETag from CompleteMultipartUpload: the store HEADs the object for it. s3rver
 *   answers a suffix range (`bytes=-N`) with the wrong bytes: the store checks every
 *   Content-Range and re-asks with an explicit range. s3rver returns a page of a listing out
 *   of key order: a paged listing that is out of order is refused (see {@linkcode ObjectStore.list}).
 */
import { createHash } from "node:crypto";
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  ListObjectVersionsCommand,
  ListPartsCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  UploadPartCopyCommand,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { isS3Error, makeS3Error, toS3Error, type RequestContext, type S3Operation } from "./s3_error.ts";

// ---------------------------------------------------------------------------------------------
// Configuration

/** Static credentials; without them the AWS default credential chain is used. */
export interface S3Credentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
}

export interface ObjectStoreConfig {
  /** The bucket every operation of the store addresses. */
  readonly bucket: string;
  /**
   * URL of an S3-compatible server (MinIO, Ceph RGW, R2, s3rver), e.g. `http://127.0.0.1:9000`.
   * @default AWS S3 for `region`
   */
  readonly endpoint?: string;
  /** @default `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `"us-east-1"` */
  readonly region?: string;
  /**
   * Path-style addressing (`http://host/bucket/key`), which most S3-compatible servers need.
   * @default true when `endpoint` is set, false for AWS S3
   */
  readonly forcePathStyle?: boolean;
  /** @default the AWS default credential chain (environment, profile, SSO, container, instance) */
  readonly credentials?: S3Credentials;
  /** Attempts per request, the first included (the SDK's standard retry with backoff). @default 3 */
  readonly maxAttempts?: number;
  /** @default 5000 */
  readonly connectTimeoutMs?: number;
  /** A request fails when its socket is idle this long. @default 60000 */
  readonly requestTimeoutMs?: number;
  /**
   * When the SDK adds flexible checksums. `"WHEN_SUPPORTED"` breaks streamed PutObject on Ceph
   * RGW (411) and s3rver, so only operations that require one get it.
   * @default "WHEN_REQUIRED"
   */
  readonly requestChecksumCalculation?: "WHEN_REQUIRED" | "WHEN_SUPPORTED";
  /** @default "WHEN_REQUIRED" */
  readonly responseChecksumValidation?: "WHEN_REQUIRED" | "WHEN_SUPPORTED";
}

/** Most keys a single S3 list, delete or parts page can carry. */
export const MAX_PAGE_SIZE = 1000;
/** Default part size of {@linkcode ObjectStore.upload}: 8 MiB. */
export const DEFAULT_UPLOAD_PART_SIZE = 8 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Data

/** One object of a listing. */
export interface ObjectSummary {
  readonly kind: "object";
  readonly key: string;
  readonly size: number;
  /** Without quotes. */
  readonly etag: string;
  readonly lastModified: Date;
}

/** A common prefix of a delimited listing (a "directory"), ending with the delimiter. */
export interface CommonPrefix {
  readonly kind: "prefix";
  readonly prefix: string;
}

export type ListEntry = ObjectSummary | CommonPrefix;

export interface ListOptions {
  /** Only keys starting with this. @default "" */
  readonly prefix?: string;
  /** Group keys by their next `delimiter` after `prefix` into common prefixes. */
  readonly delimiter?: string;
  /** Start after this key. */
  readonly startAfter?: string;
  /** Keys per request. @default 1000 */
  readonly pageSize?: number;
  /**
   * Compute common prefixes here from a flat listing instead of asking the server, for
   * servers whose delimited listing drops prefixes (see `Capabilities.delimitedListing`).
   * This lists every key below `prefix` (in pages of 1,000, whatever `pageSize` says).
   * @default false
   */
  readonly clientDelimiter?: boolean;
  readonly signal?: AbortSignal;
}

export interface ListPageOptions {
  readonly prefix?: string;
  readonly delimiter?: string;
  readonly startAfter?: string;
  readonly continuationToken?: string;
  /** @default 1000 */
  readonly maxKeys?: number;
  readonly signal?: AbortSignal;
}

/** One ListObjectsV2 answer, as the server gave it (order not checked). */
export interface ListPage {
  readonly objects: readonly ObjectSummary[];
  readonly prefixes: readonly CommonPrefix[];
  /** Set when the listing is truncated. */
  readonly nextToken?: string;
}

/** What HEAD (or a GET) tells about an object. */
export interface ObjectHead {
  readonly key: string;
  readonly size: number;
  /** Without quotes. */
  readonly etag: string;
  readonly lastModified: Date;
  /** User metadata, keys without `x-amz-meta-`, lower case. */
  readonly metadata: Readonly<Record<string, string>>;
  readonly contentType?: string;
  /** Absent on unversioned buckets (and `"null"` for objects written before versioning). */
  readonly versionId?: string;
}

/** A byte range: `start`..`end` inclusive (`end` absent: to the end), or the last `suffix` bytes. */
export type ByteRange = { readonly start: number; readonly end?: number } | { readonly suffix: number };

export interface GetOptions {
  readonly range?: ByteRange;
  readonly versionId?: string;
  /** Fail with reason `precondition-failed` unless the object has this ETag. */
  readonly ifMatch?: string;
  readonly signal?: AbortSignal;
}

export interface GetResult {
  readonly bytes: Uint8Array;
  /** `size` is the whole object's size, not the range's. */
  readonly head: ObjectHead;
  /** The range returned, inclusive; absent for a whole-object GET. */
  readonly range?: { readonly start: number; readonly end: number };
}

/** A GET whose body is read as it arrives (see {@linkcode ObjectStore.getStream}). */
export interface GetStreamResult {
  /** `size` is the whole object's size, not the range's. */
  readonly head: ObjectHead;
  /** The range the body holds, inclusive; absent for a whole-object GET. */
  readonly range?: { readonly start: number; readonly end: number };
  /**
   * The bytes, in the pieces they arrive in (valid until the next piece is asked for: copy what
   * is kept). Iterating fails with an S3Error if the body ends short or the connection breaks;
   * stopping early (`break`, `return()`) releases the connection.
   */
  readonly body: AsyncIterable<Uint8Array>;
  /** Release the connection without reading (the rest of) the body. */
  cancel(): void;
}

export type Body = Uint8Array | string;

export interface PutOptions {
  readonly metadata?: Readonly<Record<string, string>>;
  readonly contentType?: string;
  /** `true`: compute and send Content-MD5; a string: send it as given (base64). @default false */
  readonly contentMD5?: boolean | string;
  readonly signal?: AbortSignal;
}

/** Write only if no object exists at the key, or only if the current object has this ETag. */
export type WriteCondition = { readonly ifNoneMatch: "*" } | { readonly ifMatch: string };

/** A successful write. */
export interface Written {
  readonly _tag: "Written";
  readonly key: string;
  /** Without quotes. */
  readonly etag: string;
  readonly versionId?: string;
}

/** A conditional write that did not happen because its condition did not hold. */
export interface PreconditionFailed {
  readonly _tag: "PreconditionFailed";
  readonly key: string;
  readonly condition: WriteCondition;
}

export type WriteOutcome = Written | PreconditionFailed;

export interface UploadOptions {
  readonly metadata?: Readonly<Record<string, string>>;
  readonly contentType?: string;
  /** @default 8 MiB */
  readonly partSize?: number;
  /** Parts in flight. @default 4 */
  readonly queueSize?: number;
  readonly onProgress?: (loadedBytes: number) => void;
  readonly signal?: AbortSignal;
}

export type UploadBody = Uint8Array | string | Blob | ReadableStream<Uint8Array> | NodeJS.ReadableStream;

export interface CopyOptions {
  readonly sourceVersionId?: string;
  /** Copy only if the source has this ETag. */
  readonly ifSourceMatch?: string;
  /** Replace the metadata (else the source's is kept). */
  readonly metadata?: Readonly<Record<string, string>>;
  readonly contentType?: string;
  readonly signal?: AbortSignal;
}

export interface DeleteResult {
  readonly versionId?: string;
  readonly deleteMarker: boolean;
}

export type KeyRef = string | { readonly key: string; readonly versionId?: string };

export interface DeleteManyResult {
  readonly deleted: readonly { readonly key: string; readonly versionId?: string }[];
  readonly errors: readonly { readonly key: string; readonly versionId?: string; readonly code: string; readonly message: string }[];
}

export interface CreateMultipartOptions {
  readonly metadata?: Readonly<Record<string, string>>;
  readonly contentType?: string;
  readonly signal?: AbortSignal;
}

/** A part of a multipart upload, as CompleteMultipartUpload needs it. */
export interface PartRef {
  readonly partNumber: number;
  /** Without quotes. */
  readonly etag: string;
}

export interface PartInfo extends PartRef {
  readonly size: number;
  readonly lastModified?: Date;
}

export interface PartCopySource {
  readonly sourceKey: string;
  readonly sourceVersionId?: string;
  /** Inclusive byte range of the source; absent: the whole source. */
  readonly range?: { readonly start: number; readonly end: number };
  /** Copy only if the source has this ETag. */
  readonly ifSourceMatch?: string;
}

export interface MultipartUploadInfo {
  readonly key: string;
  readonly uploadId: string;
  readonly initiated?: Date;
}

export interface ObjectVersion {
  readonly kind: "version" | "delete-marker";
  readonly key: string;
  readonly versionId: string;
  readonly isLatest: boolean;
  readonly lastModified: Date;
  /** Versions only. */
  readonly size?: number;
  /** Versions only, without quotes. */
  readonly etag?: string;
}

export type BucketVersioning = "enabled" | "suspended" | "off";

export interface SignalOption {
  readonly signal?: AbortSignal;
}

// ---------------------------------------------------------------------------------------------
// The interface

/** One bucket of one S3 endpoint. */
export interface ObjectStore {
  readonly bucket: string;
  /** The endpoint URL, as messages name it. */
  readonly endpoint: string;
  /**
   * The server does not check Content-MD5 (see `Capabilities.contentMD5`): bodies sent with one
   * are signed with their SHA-256 again, as every other body is, instead of `UNSIGNED-PAYLOAD`.
   */
  signPayloads?(): void;

  /**
   * Every object (and, with a delimiter, every common prefix) under `prefix`, in key order,
   * each once, across as many pages as needed.
   *
   * A paged listing whose keys come back out of order (s3rver does this; its continuation
   * then skips and repeats keys) fails with reason `unsupported` rather than yield a wrong
   * tree. A single unpaged page is sorted here. Not every loss is visible: use
   * `Capabilities.pagedListing` to know whether the server can be trusted.
   */
  list(options?: ListOptions): AsyncIterable<ListEntry>;
  /** One ListObjectsV2 request, unchecked. */
  listPage(options?: ListPageOptions): Promise<ListPage>;
  /**
   * The object's attributes, or `undefined` if there is none. HEAD answers carry no error
   * code, so a missing bucket also reads as `undefined` here (`list` names it).
   */
  head(key: string, options?: { readonly versionId?: string } & SignalOption): Promise<ObjectHead | undefined>;
  /**
   * The object's bytes, or a range of them (clamped to the object like S3 does; a range that
   * starts at or past the end gives no bytes). A missing object fails with reason `not-found`.
   */
  get(key: string, options?: GetOptions): Promise<GetResult>;
  /**
   * Like {@linkcode ObjectStore.get}, with the same checks, but the body is read as it
   * arrives instead of being collected first: a reader can copy it where it goes (a cache
   * chunk, a file) without the bytes passing through one more fresh buffer.
   */
  getStream(key: string, options?: GetOptions): Promise<GetStreamResult>;
  put(key: string, body: Body, options?: PutOptions): Promise<Written>;
  /**
   * A put that happens only if `condition` holds; otherwise the outcome is
   * {@linkcode PreconditionFailed}. The server must enforce conditions for this to mean
   * anything: see `Capabilities.conditionalWrites`.
   */
  putIf(key: string, body: Body, condition: WriteCondition, options?: PutOptions): Promise<WriteOutcome>;
  /** Upload a possibly large or streamed body with lib-storage (multipart above `partSize`). */
  upload(key: string, body: UploadBody, options?: UploadOptions): Promise<Written>;
  /** Server-side copy within the bucket (up to 5 GiB: larger needs multipart part copy). */
  copy(sourceKey: string, destinationKey: string, options?: CopyOptions): Promise<Written>;
  /** Delete one object or version. Deleting a missing object succeeds. */
  delete(key: string, options?: { readonly versionId?: string } & SignalOption): Promise<DeleteResult>;
  /** Delete many objects or versions, 1,000 per request. */
  deleteMany(keys: readonly KeyRef[], options?: SignalOption): Promise<DeleteManyResult>;

  createMultipart(key: string, options?: CreateMultipartOptions): Promise<string>;
  uploadPart(key: string, uploadId: string, partNumber: number, body: Uint8Array, options?: { readonly contentMD5?: boolean | string } & SignalOption): Promise<PartRef>;
  /** A part copied server-side from (a range of) another object. */
  uploadPartCopy(key: string, uploadId: string, partNumber: number, source: PartCopySource, options?: SignalOption): Promise<PartRef>;
  completeMultipart(key: string, uploadId: string, parts: readonly PartRef[], options?: SignalOption): Promise<Written>;
  /** Complete only if `condition` holds (Ceph RGW ignores `If-None-Match` here: see capabilities). */
  completeMultipartIf(key: string, uploadId: string, parts: readonly PartRef[], condition: WriteCondition, options?: SignalOption): Promise<WriteOutcome>;
  abortMultipart(key: string, uploadId: string, options?: SignalOption): Promise<void>;
  listParts(key: string, uploadId: string, options?: SignalOption): Promise<readonly PartInfo[]>;
  listMultipartUploads(options?: { readonly prefix?: string } & SignalOption): Promise<readonly MultipartUploadInfo[]>;

  /** Every version and delete marker under `prefix`: by key, newest first. */
  listVersions(options?: { readonly prefix?: string; readonly pageSize?: number } & SignalOption): AsyncIterable<ObjectVersion>;
  getBucketVersioning(options?: SignalOption): Promise<BucketVersioning>;

  /** Release the client's sockets. */
  close(): void;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** S3 key order: by UTF-8 bytes, i.e. by code point (not by UTF-16 unit as `<` does). */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) {
      // Surrogates (astral code points) sort after U+E000..U+FFFF in code point order.
      x = x < 0xe000 ? x + 0x2000 : x - 0x800;
      y = y < 0xe000 ? y + 0x2000 : y - 0x800;
    }
    return x - y;
  }
  return a.length - b.length;
}

/** An ETag without its quotes (and without a weak `W/` marker). */
export function unquoteEtag(etag: string): string {
  let e = etag.trim();
  if (e.startsWith("W/")) e = e.slice(2);
  if (e.length >= 2 && e.startsWith('"') && e.endsWith('"')) e = e.slice(1, -1);
  return e;
}

const quoteEtag = (etag: string) => `"${unquoteEtag(etag)}"`;

/** Base64 MD5 of `body`, for Content-MD5. */
export function contentMD5(body: Body): string {
  return createHash("md5").update(body).digest("base64");
}

/** `encoding-type=url` answers use form encoding (`+` for a space). */
function decodeListed(value: string, encoded: boolean): string {
  return encoded ? decodeURIComponent(value.replace(/\+/g, " ")) : value;
}

/** `bucket/key[?versionId=…]`, URL-encoded, for x-amz-copy-source. */
function copySource(bucket: string, key: string, versionId?: string): string {
  const path = `${bucket}/${key.split("/").map(encodeURIComponent).join("/")}`;
  return versionId === undefined ? path : `${path}?versionId=${encodeURIComponent(versionId)}`;
}

function rangeHeader(range: ByteRange): string {
  if ("suffix" in range) {
    if (!(range.suffix > 0)) throw new RangeError(`Suffix range must be positive, got ${range.suffix}`);
    return `bytes=-${range.suffix}`;
  }
  if (range.start < 0 || (range.end !== undefined && range.end < range.start)) {
    throw new RangeError(`Invalid byte range ${range.start}-${range.end ?? ""}`);
  }
  return `bytes=${range.start}-${range.end ?? ""}`;
}

/** `bytes 0-9/100` → {start, end, size}. */
function parseContentRange(header: string | undefined): { start: number; end: number; size: number | undefined } | undefined {
  const m = header === undefined ? null : /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header.trim());
  if (m === null) return undefined;
  return { start: Number(m[1]), end: Number(m[2]), size: m[3] === "*" ? undefined : Number(m[3]) };
}

/** What a GetObject response says of the object. */
function headOf(
  key: string,
  response: { ETag?: string; LastModified?: Date; Metadata?: Record<string, string>; ContentType?: string; VersionId?: string },
  size: number,
): ObjectHead {
  return {
    key,
    size,
    etag: unquoteEtag(response.ETag ?? ""),
    lastModified: response.LastModified ?? new Date(0),
    metadata: { ...response.Metadata },
    ...(response.ContentType === undefined ? {} : { contentType: response.ContentType }),
    ...(response.VersionId === undefined ? {} : { versionId: response.VersionId }),
  };
}

/**
 * A response body as one array. With its length known, the pieces are copied into one array of
 * that size as they arrive (the SDK's collector keeps every piece, then copies them all at the
 * end: twice the memory, and a burst of work after the last byte).
 */
async function collect(body: { transformToByteArray(): Promise<Uint8Array> }, length: number | undefined): Promise<Uint8Array> {
  const pieces = body as unknown as AsyncIterable<Uint8Array> & { destroy?: () => void };
  if (length === undefined || typeof pieces[Symbol.asyncIterator] !== "function") return body.transformToByteArray();
  const out = new Uint8Array(length);
  let at = 0;
  let extra: Uint8Array[] | undefined; // more than announced: kept, so the length check reports it
  for await (const piece of pieces) {
    const n = Math.min(piece.byteLength, length - at);
    if (n > 0) out.set(n === piece.byteLength ? piece : piece.subarray(0, n), at);
    at += n;
    if (n < piece.byteLength) (extra ??= []).push(piece.subarray(n));
  }
  if (extra) return new Uint8Array(Buffer.concat([out, ...extra]));
  return at === length ? out : out.subarray(0, at);
}

/** A collected GET as a stream of one piece. */
function oneChunk(r: GetResult): GetStreamResult {
  const body = (async function* () {
    if (r.bytes.byteLength > 0) yield r.bytes;
  })();
  const cancel = () => {};
  return r.range === undefined ? { head: r.head, body, cancel } : { head: r.head, range: r.range, body, cancel };
}

/** A body that broke off (reset, timeout): retriable, like the request itself failing. */
function wrapBodyError(error: unknown, context: RequestContext): unknown {
  const mapped = toS3Error(error, context);
  if (isS3Error(mapped)) return mapped;
  return makeS3Error(context, "server", `the body broke off (${(error as Error)?.message ?? String(error)})`, { retriable: true, cause: error });
}

const bodyLength = (body: Body) => (typeof body === "string" ? Buffer.byteLength(body) : body.byteLength);

// ---------------------------------------------------------------------------------------------
// Implementation

/** Creates an {@linkcode ObjectStore} for `config.bucket`. Nothing is sent until the first call. */
export function makeObjectStore(config: ObjectStoreConfig): ObjectStore {
  return new SdkObjectStore(config);
}

class SdkObjectStore implements ObjectStore {
  readonly bucket: string;
  readonly endpoint: string;
  readonly #client: S3Client;
  /** How this server wants If-Match on PutObject: RGW only matches the unquoted ETag. */
  #ifMatchQuoted = false;
  #ifMatchSettled = false;
  /** Whether a body sent with its Content-MD5 is signed with its SHA-256 too (a server that does not check Content-MD5). */
  #signPayloads = false;

  constructor(config: ObjectStoreConfig) {
    this.bucket = config.bucket;
    const region = config.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? "us-east-1";
    this.endpoint = config.endpoint ?? `https://s3.${region}.amazonaws.com`;
    this.#client = new S3Client({
      region,
      ...(config.endpoint === undefined ? {} : { endpoint: config.endpoint }),
      forcePathStyle: config.forcePathStyle ?? config.endpoint !== undefined,
      ...(config.credentials === undefined ? {} : { credentials: config.credentials }),
      maxAttempts: config.maxAttempts ?? 3,
      requestChecksumCalculation: config.requestChecksumCalculation ?? "WHEN_REQUIRED",
      responseChecksumValidation: config.responseChecksumValidation ?? "WHEN_REQUIRED",
      // The SDK sends bodies of 2 MB and more with "Expect: 100-continue"; here that closes the
      // connection after each such request, so every part paid a TCP handshake and slow start.
      expectContinueHeader: false,
      requestHandler: {
        connectionTimeout: config.connectTimeoutMs ?? 5_000,
        // An idle socket fails the request. (The SDK's requestTimeout bounds the whole request,
        // which would fail a large part on a slow link, and by default only logs a warning.)
        socketTimeout: config.requestTimeoutMs ?? 60_000,
      },
    });
    // A body sent with its Content-MD5 (a signed header, checked by the server) is not hashed a
    // second time for the signature: over plain HTTP the SDK otherwise computes, and the server
    // checks, the body's SHA-256 as well. Not where the probe found Content-MD5 unchecked.
    this.#client.middlewareStack.add(
      (next) => async (args) => {
        const headers = (args.request as { headers?: Record<string, string> }).headers;
        if (!this.#signPayloads && headers?.["content-md5"] !== undefined && headers["x-amz-content-sha256"] === undefined) headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD";
        return next(args);
      },
      { step: "build", name: "objectfsUnsignedPayloadWithMd5" },
    );
  }

  close(): void {
    this.#client.destroy();
  }

  signPayloads(): void {
    this.#signPayloads = true;
  }

  #context(operation: S3Operation, key?: string): RequestContext {
    return { operation, endpoint: this.endpoint, bucket: this.bucket, key };
  }

  /** Runs one SDK call, mapping failures to S3Error. */
  async #call<T>(operation: S3Operation, key: string | undefined, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw toS3Error(error, this.#context(operation, key));
    }
  }

  // --- listing -------------------------------------------------------------------------------

  async listPage(options: ListPageOptions = {}): Promise<ListPage> {
    const prefix = options.prefix ?? "";
    const out = await this.#call("list", prefix, () =>
      this.#client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: prefix === "" ? undefined : prefix,
          Delimiter: options.delimiter,
          StartAfter: options.continuationToken === undefined ? options.startAfter : undefined,
          ContinuationToken: options.continuationToken,
          MaxKeys: options.maxKeys ?? MAX_PAGE_SIZE,
          EncodingType: "url",
        }),
        { abortSignal: options.signal },
      ),
    );
    const encoded = out.EncodingType === "url";
    const objects: ObjectSummary[] = (out.Contents ?? []).map((o) => ({
      kind: "object",
      key: decodeListed(o.Key ?? "", encoded),
      size: o.Size ?? 0,
      etag: unquoteEtag(o.ETag ?? ""),
      lastModified: o.LastModified ?? new Date(0),
    }));
    const prefixes: CommonPrefix[] = (out.CommonPrefixes ?? []).map((p) => ({ kind: "prefix", prefix: decodeListed(p.Prefix ?? "", encoded) }));
    const nextToken = out.IsTruncated === true ? out.NextContinuationToken : undefined;
    if (out.IsTruncated === true && nextToken === undefined) {
      throw makeS3Error(this.#context("list", prefix), "server", "the listing is truncated but carries no continuation token");
    }
    return nextToken === undefined ? { objects, prefixes } : { objects, prefixes, nextToken };
  }

  list(options: ListOptions = {}): AsyncIterable<ListEntry> {
    if (options.clientDelimiter === true && options.delimiter !== undefined && options.delimiter !== "") {
      // Full pages: the flat listing carries every key below the prefixes too.
      return groupByDelimiter(this.#listChecked({ ...options, delimiter: undefined, pageSize: MAX_PAGE_SIZE }), options.prefix ?? "", options.delimiter);
    }
    return this.#listChecked(options);
  }

  async *#listChecked(options: ListOptions): AsyncGenerator<ListEntry> {
    const prefix = options.prefix ?? "";
    const pageSize = Math.max(1, Math.min(options.pageSize ?? MAX_PAGE_SIZE, MAX_PAGE_SIZE));
    let token: string | undefined;
    let last: string | undefined = options.startAfter;
    let first = true;
    const disorder = (before: string, after: string) =>
      makeS3Error(
        this.#context("list", prefix),
        "unsupported",
        `the server returned ${JSON.stringify(after)} after ${JSON.stringify(before)} in a paged listing, so its pagination may skip or repeat keys`,
      );
    for (;;) {
      const page = await this.listPage({
        prefix,
        delimiter: options.delimiter,
        startAfter: options.startAfter,
        continuationToken: token,
        maxKeys: pageSize,
        signal: options.signal,
      });
      const paged = !first || page.nextToken !== undefined;
      if (paged) {
        // S3 returns keys and prefixes each in order, and every page after the previous one.
        for (const list of [page.objects.map((o) => o.key), page.prefixes.map((p) => p.prefix)]) {
          for (let i = 1; i < list.length; i++) {
            if (compareKeys(list[i - 1]!, list[i]!) >= 0) throw disorder(list[i - 1]!, list[i]!);
          }
        }
      }
      const entries: ListEntry[] = [...page.objects, ...page.prefixes].sort((a, b) => compareKeys(entryName(a), entryName(b)));
      if (paged && last !== undefined && entries.length > 0 && compareKeys(last, entryName(entries[0]!)) >= 0) {
        throw disorder(last, entryName(entries[0]!));
      }
      yield* entries;
      if (entries.length > 0) last = entryName(entries[entries.length - 1]!);
      if (page.nextToken === undefined) return;
      if (page.nextToken === token) {
        throw makeS3Error(this.#context("list", prefix), "server", "the listing returned the same continuation token twice");
      }
      token = page.nextToken;
      first = false;
    }
  }

  // --- reading -------------------------------------------------------------------------------

  async head(key: string, options: { readonly versionId?: string } & SignalOption = {}): Promise<ObjectHead | undefined> {
    try {
      const out = await this.#call("head", key, () =>
        this.#client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key, VersionId: options.versionId }), { abortSignal: options.signal }),
      );
      return {
        key,
        size: out.ContentLength ?? 0,
        etag: unquoteEtag(out.ETag ?? ""),
        lastModified: out.LastModified ?? new Date(0),
        metadata: { ...out.Metadata },
        ...(out.ContentType === undefined ? {} : { contentType: out.ContentType }),
        ...(out.VersionId === undefined ? {} : { versionId: out.VersionId }),
      };
    } catch (error) {
      if (isS3Error(error, "not-found") && options.versionId === undefined) return undefined;
      throw error;
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<GetResult> {
    const range = options.range;
    let result;
    try {
      result = await this.#getOnce(key, options, range);
    } catch (error) {
      // 416: the range starts at or past the end (every range of an empty object does).
      // Like read(2) past the end of a file, that is no bytes, not an error.
      if (!(isS3Error(error) && error.status === 416 && range !== undefined)) throw error;
      const head = await this.head(key, { ...(options.versionId === undefined ? {} : { versionId: options.versionId }), signal: options.signal });
      if (head === undefined) throw makeS3Error(this.#context("get", key), "not-found", "the object does not exist");
      if ("start" in range && range.start < head.size) throw error;
      return { bytes: new Uint8Array(0), head };
    }
    if (range === undefined || result.range === undefined) return result.value(range);
    const size = result.head.size;
    if (size === 0) return { bytes: new Uint8Array(0), head: result.head };
    // The range the caller asked for, clamped to the object as S3 does.
    const want =
      "suffix" in range
        ? { start: Math.max(0, size - range.suffix), end: size - 1 }
        : { start: range.start, end: Math.min(range.end ?? size - 1, size - 1) };
    const got = result.range;
    if (got.start === want.start && got.end === want.end) return result.value(range);
    if (got.start <= want.start && got.end >= want.end) return result.slice(want);
    // The server answered another range (s3rver reads `bytes=-N` as `bytes=0-N`): ask explicitly.
    const again = await this.#getOnce(key, options, { start: want.start, end: want.end });
    if (again.range !== undefined && again.range.start <= want.start && again.range.end >= want.end) return again.slice(want);
    throw makeS3Error(this.#context("get", key), "server", `asked for bytes ${want.start}-${want.end} and got ${again.range?.start}-${again.range?.end}`, {
      retriable: false,
    });
  }

  async getStream(key: string, options: GetOptions = {}): Promise<GetStreamResult> {
    const range = options.range;
    let response;
    try {
      response = await this.#call("get", key, () => this.#client.send(this.#getCommand(key, options, range), { abortSignal: options.signal }));
    } catch (error) {
      if (isS3Error(error) && error.status === 416 && range !== undefined) return oneChunk(await this.get(key, options));
      throw error;
    }
    const contentRange = parseContentRange(response.ContentRange);
    const length = response.ContentLength;
    const body = response.Body as (AsyncIterable<Uint8Array> & { destroy?: () => void }) | undefined;
    const head = headOf(key, response, contentRange?.size ?? length ?? 0);
    const sent = contentRange === undefined ? undefined : { start: contentRange.start, end: contentRange.end };
    const size = head.size;
    const want =
      range === undefined || size === 0
        ? undefined
        : "suffix" in range
          ? { start: Math.max(0, size - range.suffix), end: size - 1 }
          : { start: range.start, end: Math.min(range.end ?? size - 1, size - 1) };
    const exact = want === undefined ? range === undefined || sent === undefined || size === 0 : sent !== undefined && sent.start === want.start && sent.end === want.end;
    if (!exact || length === undefined || (sent !== undefined && sent.end - sent.start + 1 !== length)) {
      // Not the range asked for, or no length to check the body against: the collecting path sorts it out.
      body?.destroy?.();
      return oneChunk(await this.get(key, options));
    }
    const context = this.#context("get", key);
    async function* pieces(): AsyncGenerator<Uint8Array> {
      if (body === undefined || length === 0) {
        body?.destroy?.();
        return;
      }
      let got = 0;
      try {
        for await (const piece of body) {
          got += piece.byteLength;
          if (got > length!) throw makeS3Error(context, "server", `the body is longer than its ${length} bytes`);
          yield piece;
        }
      } catch (error) {
        throw isS3Error(error) ? error : wrapBodyError(error, context);
      } finally {
        if (got !== length) body.destroy?.(); // stopped early or broken: the connection goes
      }
      if (got !== length) throw makeS3Error(context, "server", `the body was truncated: got ${got} of ${length} bytes`, { retriable: true });
    }
    const cancel = () => body?.destroy?.();
    return sent === undefined || range === undefined ? { head, body: pieces(), cancel } : { head, range: sent, body: pieces(), cancel };
  }

  #getCommand(key: string, options: GetOptions, range: ByteRange | undefined): GetObjectCommand {
    return new GetObjectCommand({
      Bucket: this.bucket,
      Key: key,
      VersionId: options.versionId,
      Range: range === undefined ? undefined : rangeHeader(range),
      IfMatch: options.ifMatch === undefined ? undefined : quoteEtag(options.ifMatch),
    });
  }

  /** One GetObject; `range` in the result is what the server says it sent. */
  async #getOnce(key: string, options: GetOptions, range: ByteRange | undefined) {
    const out = await this.#call("get", key, async () => {
      const response = await this.#client.send(this.#getCommand(key, options, range), { abortSignal: options.signal });
      const bytes = response.Body === undefined ? new Uint8Array(0) : await collect(response.Body, response.ContentLength);
      return { response, bytes };
    });
    const { response, bytes } = out;
    if (response.ContentLength !== undefined && bytes.byteLength !== response.ContentLength) {
      throw makeS3Error(this.#context("get", key), "server", `the body was truncated: got ${bytes.byteLength} of ${response.ContentLength} bytes`);
    }
    const contentRange = parseContentRange(response.ContentRange);
    const sent = contentRange ?? (range === undefined ? undefined : { start: 0, end: bytes.byteLength - 1, size: bytes.byteLength });
    if (sent !== undefined && sent.end - sent.start + 1 !== bytes.byteLength && bytes.byteLength > 0) {
      throw makeS3Error(this.#context("get", key), "server", `Content-Range ${response.ContentRange} does not match the ${bytes.byteLength} bytes received`);
    }
    const head = headOf(key, response, contentRange?.size ?? bytes.byteLength);
    const rangeSent = sent === undefined ? undefined : { start: sent.start, end: sent.end };
    return {
      head,
      range: rangeSent,
      value: (asked: ByteRange | undefined): GetResult =>
        asked === undefined || rangeSent === undefined ? { bytes, head } : { bytes, head, range: rangeSent },
      slice: (want: { start: number; end: number }): GetResult => {
        const from = want.start - (rangeSent?.start ?? 0);
        return { bytes: bytes.subarray(from, from + (want.end - want.start + 1)), head, range: want };
      },
    };
  }

  // --- writing -------------------------------------------------------------------------------

  put(key: string, body: Body, options: PutOptions = {}): Promise<Written> {
    return this.#put(key, body, options, undefined) as Promise<Written>;
  }

  async putIf(key: string, body: Body, condition: WriteCondition, options: PutOptions = {}): Promise<WriteOutcome> {
    const outcome = await this.#put(key, body, options, condition);
    if (outcome._tag === "Written" && "ifMatch" in condition) this.#ifMatchSettled = true;
    if (outcome._tag === "PreconditionFailed" && "ifMatch" in condition && !this.#ifMatchSettled) {
      // Was it a real conflict, or does this server want the ETag in the other form?
      const current = await this.head(key, { signal: options.signal });
      if (current !== undefined && current.etag === unquoteEtag(condition.ifMatch)) {
        this.#ifMatchQuoted = !this.#ifMatchQuoted;
        const retry = await this.#put(key, body, options, condition);
        if (retry._tag === "Written") {
          this.#ifMatchSettled = true;
          return retry;
        }
        this.#ifMatchQuoted = !this.#ifMatchQuoted;
        return retry;
      }
    }
    return outcome;
  }

  async #put(key: string, body: Body, options: PutOptions, condition: WriteCondition | undefined): Promise<WriteOutcome> {
    const md5 = options.contentMD5 === true ? contentMD5(body) : options.contentMD5 === false ? undefined : options.contentMD5;
    try {
      const out = await this.#call("put", key, () =>
        this.#client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: key,
            Body: body,
            ContentLength: bodyLength(body),
            ContentType: options.contentType,
            ContentMD5: md5,
            Metadata: options.metadata === undefined ? undefined : { ...options.metadata },
            IfNoneMatch: condition !== undefined && "ifNoneMatch" in condition ? "*" : undefined,
            IfMatch: condition !== undefined && "ifMatch" in condition ? this.#formatIfMatch(condition.ifMatch) : undefined,
          }),
          { abortSignal: options.signal },
        ),
      );
      return this.#written(key, out.ETag, out.VersionId, options.signal);
    } catch (error) {
      if (condition !== undefined && isConditionFailure(error, condition)) return { _tag: "PreconditionFailed", key, condition };
      throw error;
    }
  }

  #formatIfMatch(etag: string): string {
    return this.#ifMatchQuoted ? quoteEtag(etag) : unquoteEtag(etag);
  }

  /** A Written outcome; an empty ETag (Ceph RGW after CompleteMultipartUpload) is read back with HEAD. */
  async #written(key: string, etag: string | undefined, versionId: string | undefined, signal: AbortSignal | undefined): Promise<Written> {
    let tag = unquoteEtag(etag ?? "");
    let version = versionId;
    if (tag === "") {
      const head = await this.head(key, { ...(versionId === undefined ? {} : { versionId }), signal });
      if (head === undefined) throw makeS3Error(this.#context("head", key), "server", "the object just written is not there");
      tag = head.etag;
      version ??= head.versionId;
    }
    return version === undefined ? { _tag: "Written", key, etag: tag } : { _tag: "Written", key, etag: tag, versionId: version };
  }

  async upload(key: string, body: UploadBody, options: UploadOptions = {}): Promise<Written> {
    const upload = new Upload({
      client: this.#client,
      params: {
        Bucket: this.bucket,
        Key: key,
        Body: body as never,
        ContentType: options.contentType,
        Metadata: options.metadata === undefined ? undefined : { ...options.metadata },
      },
      partSize: options.partSize ?? DEFAULT_UPLOAD_PART_SIZE,
      queueSize: options.queueSize ?? 4,
      leavePartsOnError: false,
    });
    if (options.onProgress !== undefined) {
      const onProgress = options.onProgress;
      upload.on("httpUploadProgress", (p) => onProgress(p.loaded ?? 0));
    }
    const abort = () => void upload.abort().catch(() => {});
    options.signal?.addEventListener("abort", abort, { once: true });
    try {
      const out = await this.#call("upload", key, () => upload.done());
      return this.#written(key, out.ETag, out.VersionId, options.signal);
    } finally {
      options.signal?.removeEventListener("abort", abort);
    }
  }

  async copy(sourceKey: string, destinationKey: string, options: CopyOptions = {}): Promise<Written> {
    const out = await this.#call("copy", destinationKey, () =>
      this.#client.send(
        new CopyObjectCommand({
          Bucket: this.bucket,
          Key: destinationKey,
          CopySource: copySource(this.bucket, sourceKey, options.sourceVersionId),
          CopySourceIfMatch: options.ifSourceMatch === undefined ? undefined : quoteEtag(options.ifSourceMatch),
          MetadataDirective: options.metadata === undefined && options.contentType === undefined ? "COPY" : "REPLACE",
          Metadata: options.metadata === undefined ? undefined : { ...options.metadata },
          ContentType: options.contentType,
        }),
        { abortSignal: options.signal },
      ),
    );
    return this.#written(destinationKey, out.CopyObjectResult?.ETag, out.VersionId, options.signal);
  }

  async delete(key: string, options: { readonly versionId?: string } & SignalOption = {}): Promise<DeleteResult> {
    const out = await this.#call("delete", key, () =>
      this.#client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key, VersionId: options.versionId }), { abortSignal: options.signal }),
    );
    return out.VersionId === undefined ? { deleteMarker: out.DeleteMarker === true } : { versionId: out.VersionId, deleteMarker: out.DeleteMarker === true };
  }

  async deleteMany(keys: readonly KeyRef[], options: SignalOption = {}): Promise<DeleteManyResult> {
    const deleted: { key: string; versionId?: string }[] = [];
    const errors: { key: string; versionId?: string; code: string; message: string }[] = [];
    const refs = keys.map((k) => (typeof k === "string" ? { key: k } : k));
    for (let at = 0; at < refs.length; at += MAX_PAGE_SIZE) {
      const chunk = refs.slice(at, at + MAX_PAGE_SIZE);
      const out = await this.#call("delete-many", undefined, () =>
        this.#client.send(
          new DeleteObjectsCommand({
            Bucket: this.bucket,
            Delete: { Objects: chunk.map((r) => ({ Key: r.key, VersionId: r.versionId })), Quiet: false },
          }),
          { abortSignal: options.signal },
        ),
      );
      for (const d of out.Deleted ?? []) deleted.push(d.VersionId === undefined ? { key: d.Key ?? "" } : { key: d.Key ?? "", versionId: d.VersionId });
      for (const e of out.Errors ?? []) {
        const entry = { key: e.Key ?? "", code: e.Code ?? "Unknown", message: e.Message ?? "" };
        errors.push(e.VersionId === undefined ? entry : { ...entry, versionId: e.VersionId });
      }
    }
    return { deleted, errors };
  }

  // --- multipart -----------------------------------------------------------------------------

  async createMultipart(key: string, options: CreateMultipartOptions = {}): Promise<string> {
    const out = await this.#call("create-multipart", key, () =>
      this.#client.send(
        new CreateMultipartUploadCommand({
          Bucket: this.bucket,
          Key: key,
          ContentType: options.contentType,
          Metadata: options.metadata === undefined ? undefined : { ...options.metadata },
        }),
        { abortSignal: options.signal },
      ),
    );
    if (out.UploadId === undefined || out.UploadId === "") {
      throw makeS3Error(this.#context("create-multipart", key), "server", "the server returned no upload id");
    }
    return out.UploadId;
  }

  async uploadPart(
    key: string,
    uploadId: string,
    partNumber: number,
    body: Uint8Array,
    options: { readonly contentMD5?: boolean | string } & SignalOption = {},
  ): Promise<PartRef> {
    const md5 = options.contentMD5 === true ? contentMD5(body) : options.contentMD5 === false ? undefined : options.contentMD5;
    const out = await this.#call("upload-part", key, () =>
      this.#client.send(
        new UploadPartCommand({
          Bucket: this.bucket,
          Key: key,
          UploadId: uploadId,
          PartNumber: partNumber,
          Body: body,
          ContentLength: body.byteLength,
          ContentMD5: md5,
        }),
        { abortSignal: options.signal },
      ),
    );
    return { partNumber, etag: unquoteEtag(out.ETag ?? "") };
  }

  async uploadPartCopy(key: string, uploadId: string, partNumber: number, source: PartCopySource, options: SignalOption = {}): Promise<PartRef> {
    const out = await this.#call("upload-part-copy", key, () =>
      this.#client.send(
        new UploadPartCopyCommand({
          Bucket: this.bucket,
          Key: key,
          UploadId: uploadId,
          PartNumber: partNumber,
          CopySource: copySource(this.bucket, source.sourceKey, source.sourceVersionId),
          CopySourceRange: source.range === undefined ? undefined : `bytes=${source.range.start}-${source.range.end}`,
          CopySourceIfMatch: source.ifSourceMatch === undefined ? undefined : quoteEtag(source.ifSourceMatch),
        }),
        { abortSignal: options.signal },
      ),
    );
    const etag = unquoteEtag(out.CopyPartResult?.ETag ?? "");
    if (etag === "") throw makeS3Error(this.#context("upload-part-copy", key), "server", "the server returned no ETag for the copied part");
    return { partNumber, etag };
  }

  completeMultipart(key: string, uploadId: string, parts: readonly PartRef[], options: SignalOption = {}): Promise<Written> {
    return this.#complete(key, uploadId, parts, undefined, options) as Promise<Written>;
  }

  completeMultipartIf(key: string, uploadId: string, parts: readonly PartRef[], condition: WriteCondition, options: SignalOption = {}): Promise<WriteOutcome> {
    return this.#complete(key, uploadId, parts, condition, options);
  }

  async #complete(key: string, uploadId: string, parts: readonly PartRef[], condition: WriteCondition | undefined, options: SignalOption): Promise<WriteOutcome> {
    try {
      const out = await this.#call("complete-multipart", key, () =>
        this.#client.send(
          new CompleteMultipartUploadCommand({
            Bucket: this.bucket,
            Key: key,
            UploadId: uploadId,
            MultipartUpload: {
              Parts: [...parts].sort((a, b) => a.partNumber - b.partNumber).map((p) => ({ PartNumber: p.partNumber, ETag: quoteEtag(p.etag) })),
            },
            IfNoneMatch: condition !== undefined && "ifNoneMatch" in condition ? "*" : undefined,
            IfMatch: condition !== undefined && "ifMatch" in condition ? this.#formatIfMatch(condition.ifMatch) : undefined,
          }),
          { abortSignal: options.signal },
        ),
      );
      return await this.#written(key, out.ETag, out.VersionId, options.signal);
    } catch (error) {
      if (condition !== undefined && isConditionFailure(error, condition)) return { _tag: "PreconditionFailed", key, condition };
      throw error;
    }
  }

  async abortMultipart(key: string, uploadId: string, options: SignalOption = {}): Promise<void> {
    await this.#call("abort-multipart", key, () =>
      this.#client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }), { abortSignal: options.signal }),
    );
  }

  async listParts(key: string, uploadId: string, options: SignalOption = {}): Promise<readonly PartInfo[]> {
    const parts: PartInfo[] = [];
    let marker: string | undefined;
    for (;;) {
      const out = await this.#call("list-parts", key, () =>
        this.#client.send(new ListPartsCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, PartNumberMarker: marker }), {
          abortSignal: options.signal,
        }),
      );
      for (const p of out.Parts ?? []) {
        const part = { partNumber: p.PartNumber ?? 0, etag: unquoteEtag(p.ETag ?? ""), size: p.Size ?? 0 };
        parts.push(p.LastModified === undefined ? part : { ...part, lastModified: p.LastModified });
      }
      if (out.IsTruncated !== true || out.NextPartNumberMarker === undefined || out.NextPartNumberMarker === marker) break;
      marker = out.NextPartNumberMarker;
    }
    return parts.sort((a, b) => a.partNumber - b.partNumber);
  }

  async listMultipartUploads(options: { readonly prefix?: string } & SignalOption = {}): Promise<readonly MultipartUploadInfo[]> {
    const uploads: MultipartUploadInfo[] = [];
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      const out = await this.#call("list-multipart-uploads", options.prefix, () =>
        this.#client.send(
          new ListMultipartUploadsCommand({
            Bucket: this.bucket,
            Prefix: options.prefix === "" ? undefined : options.prefix,
            KeyMarker: keyMarker,
            UploadIdMarker: uploadIdMarker,
            EncodingType: "url",
          }),
          { abortSignal: options.signal },
        ),
      );
      const encoded = out.EncodingType === "url";
      for (const u of out.Uploads ?? []) {
        const upload = { key: decodeListed(u.Key ?? "", encoded), uploadId: u.UploadId ?? "" };
        uploads.push(u.Initiated === undefined ? upload : { ...upload, initiated: u.Initiated });
      }
      if (out.IsTruncated !== true) break;
      const nextKey = out.NextKeyMarker === undefined ? undefined : decodeListed(out.NextKeyMarker, encoded);
      if (nextKey === keyMarker && out.NextUploadIdMarker === uploadIdMarker) break;
      keyMarker = nextKey;
      uploadIdMarker = out.NextUploadIdMarker;
    }
    return uploads;
  }

  // --- versions ------------------------------------------------------------------------------

  async *listVersions(options: { readonly prefix?: string; readonly pageSize?: number } & SignalOption = {}): AsyncGenerator<ObjectVersion> {
    let keyMarker: string | undefined;
    let versionIdMarker: string | undefined;
    for (;;) {
      const out = await this.#call("list-versions", options.prefix, () =>
        this.#client.send(
          new ListObjectVersionsCommand({
            Bucket: this.bucket,
            Prefix: options.prefix === "" ? undefined : options.prefix,
            KeyMarker: keyMarker,
            VersionIdMarker: versionIdMarker,
            MaxKeys: Math.max(1, Math.min(options.pageSize ?? MAX_PAGE_SIZE, MAX_PAGE_SIZE)),
            EncodingType: "url",
          }),
          { abortSignal: options.signal },
        ),
      );
      const encoded = out.EncodingType === "url";
      const page: ObjectVersion[] = [
        ...(out.Versions ?? []).map(
          (v): ObjectVersion => ({
            kind: "version",
            key: decodeListed(v.Key ?? "", encoded),
            versionId: v.VersionId ?? "null",
            isLatest: v.IsLatest === true,
            lastModified: v.LastModified ?? new Date(0),
            size: v.Size ?? 0,
            etag: unquoteEtag(v.ETag ?? ""),
          }),
        ),
        ...(out.DeleteMarkers ?? []).map(
          (m): ObjectVersion => ({
            kind: "delete-marker",
            key: decodeListed(m.Key ?? "", encoded),
            versionId: m.VersionId ?? "null",
            isLatest: m.IsLatest === true,
            lastModified: m.LastModified ?? new Date(0),
          }),
        ),
      ];
      page.sort(
        (a, b) =>
          compareKeys(a.key, b.key) || Number(b.isLatest) - Number(a.isLatest) || b.lastModified.getTime() - a.lastModified.getTime(),
      );
      yield* page;
      if (out.IsTruncated !== true) return;
      const nextKey = out.NextKeyMarker === undefined ? undefined : decodeListed(out.NextKeyMarker, encoded);
      if (nextKey === keyMarker && out.NextVersionIdMarker === versionIdMarker) {
        throw makeS3Error(this.#context("list-versions", options.prefix), "server", "the version listing did not advance");
      }
      keyMarker = nextKey;
      versionIdMarker = out.NextVersionIdMarker;
    }
  }

  async getBucketVersioning(options: SignalOption = {}): Promise<BucketVersioning> {
    const out = await this.#call("get-bucket-versioning", undefined, () =>
      this.#client.send(new GetBucketVersioningCommand({ Bucket: this.bucket }), { abortSignal: options.signal }),
    );
    return out.Status === "Enabled" ? "enabled" : out.Status === "Suspended" ? "suspended" : "off";
  }
}

const entryName = (entry: ListEntry) => (entry.kind === "object" ? entry.key : entry.prefix);

/** A failed condition: 412, or (If-Match on a missing object, as AWS answers) 404. */
function isConditionFailure(error: unknown, condition: WriteCondition): boolean {
  if (!isS3Error(error)) return false;
  if (error.reason === "precondition-failed" && error.status === 412) return true;
  return "ifMatch" in condition && error.reason === "not-found" && error.code !== "NoSuchBucket" && error.code !== "NoSuchUpload";
}

/** Common prefixes computed from a flat, ordered listing (keys under one prefix are contiguous). */
async function* groupByDelimiter(flat: AsyncIterable<ListEntry>, prefix: string, delimiter: string): AsyncGenerator<ListEntry> {
  let open: string | undefined;
  for await (const entry of flat) {
    if (entry.kind !== "object") continue;
    if (open !== undefined && entry.key.startsWith(open)) continue;
    const at = entry.key.indexOf(delimiter, prefix.length);
    if (at === -1) {
      yield entry;
      continue;
    }
    open = entry.key.slice(0, at + delimiter.length);
    yield { kind: "prefix", prefix: open };
  }
}
