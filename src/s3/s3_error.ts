/**
 * The one error type of the object store: every failure of an S3 request becomes an
 * {@linkcode S3Error} with a closed {@linkcode S3ErrorReason} and a `retriable` flag, and a
 * message that is one sentence naming the object (or the endpoint) and what went wrong.
 */

/**
 * Why an S3 request failed:
 * - `not-found`: no such key, bucket, upload or version;
 * - `precondition-failed`: an If-Match / If-None-Match condition did not hold;
 * - `throttled`: the server asked us to slow down (429, SlowDown);
 * - `unreachable`: no HTTP answer at all (refused, reset, timed out, DNS);
 * - `auth`: credentials missing, unknown or not allowed;
 * - `server`: the server failed (5xx) or answered something unusable;
 * - `bad-request`: the server refused the request as malformed or invalid (4xx);
 * - `unsupported`: the server does not implement the operation or behaves in a way the
 *   store cannot rely on.
 */
export type S3ErrorReason =
  | "not-found"
  | "precondition-failed"
  | "throttled"
  | "unreachable"
  | "auth"
  | "server"
  | "bad-request"
  | "unsupported";

/** What the store was doing: names the operation in messages. */
export type S3Operation =
  | "list"
  | "head"
  | "get"
  | "put"
  | "upload"
  | "copy"
  | "delete"
  | "delete-many"
  | "create-multipart"
  | "upload-part"
  | "upload-part-copy"
  | "complete-multipart"
  | "abort-multipart"
  | "list-parts"
  | "list-multipart-uploads"
  | "list-versions"
  | "get-bucket-versioning";

const OPERATION_TEXT: Record<S3Operation, string> = {
  list: "list",
  head: "head",
  get: "get",
  put: "put",
  upload: "upload",
  copy: "copy to",
  delete: "delete",
  "delete-many": "delete objects in",
  "create-multipart": "start a multipart upload of",
  "upload-part": "upload a part of",
  "upload-part-copy": "copy a part into",
  "complete-multipart": "complete the multipart upload of",
  "abort-multipart": "abort the multipart upload of",
  "list-parts": "list the parts of",
  "list-multipart-uploads": "list multipart uploads in",
  "list-versions": "list object versions in",
  "get-bucket-versioning": "read the versioning state of",
};

export interface S3ErrorDetails {
  readonly reason: S3ErrorReason;
  readonly retriable: boolean;
  readonly operation: S3Operation;
  /** The endpoint the request went to, e.g. `http://127.0.0.1:9000` or `AWS S3 (us-east-1)`. */
  readonly endpoint: string;
  readonly bucket: string;
  readonly key?: string | undefined;
  /** HTTP status, when the server answered. */
  readonly status?: number | undefined;
  /** S3 error code (`NoSuchKey`, `SlowDown`, ...) or network error code (`ECONNREFUSED`). */
  readonly code?: string | undefined;
  readonly cause?: unknown;
}

/** A failed S3 request. `message` is one sentence naming what failed and where. */
export class S3Error extends Error {
  override readonly name = "S3Error";
  readonly reason: S3ErrorReason;
  readonly retriable: boolean;
  readonly operation: S3Operation;
  readonly endpoint: string;
  readonly bucket: string;
  readonly key: string | undefined;
  readonly status: number | undefined;
  readonly code: string | undefined;

  constructor(message: string, details: S3ErrorDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.reason = details.reason;
    this.retriable = details.retriable;
    this.operation = details.operation;
    this.endpoint = details.endpoint;
    this.bucket = details.bucket;
    this.key = details.key;
    this.status = details.status;
    this.code = details.code;
  }
}

/** True if `error` is an {@linkcode S3Error}, optionally with the given reason. */
export function isS3Error(error: unknown, reason?: S3ErrorReason): error is S3Error {
  return error instanceof S3Error && (reason === undefined || error.reason === reason);
}

/** Where a request went and what it was about; used to build messages. */
export interface RequestContext {
  readonly operation: S3Operation;
  readonly endpoint: string;
  readonly bucket: string;
  readonly key?: string | undefined;
}

/** `s3://bucket/key`, or `s3://bucket/` for bucket-level operations. */
export function objectUrl(bucket: string, key?: string): string {
  return `s3://${bucket}/${key ?? ""}`;
}

/** Builds an S3Error for a condition the store detects itself (not an SDK error). */
export function makeS3Error(
  context: RequestContext,
  reason: S3ErrorReason,
  detail: string,
  extra: { retriable?: boolean; status?: number; code?: string; cause?: unknown } = {},
): S3Error {
  const what = `${OPERATION_TEXT[context.operation]} ${objectUrl(context.bucket, context.key)}`;
  return new S3Error(`Cannot ${what} at ${context.endpoint}: ${detail}`, {
    reason,
    retriable: extra.retriable ?? DEFAULT_RETRIABLE[reason],
    operation: context.operation,
    endpoint: context.endpoint,
    bucket: context.bucket,
    key: context.key,
    status: extra.status,
    code: extra.code,
    cause: extra.cause,
  });
}

const DEFAULT_RETRIABLE: Record<S3ErrorReason, boolean> = {
  "not-found": false,
  "precondition-failed": false,
  throttled: true,
  unreachable: true,
  auth: false,
  server: true,
  "bad-request": false,
  unsupported: false,
};

const NETWORK_CODES: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  ECONNABORTED: "connection aborted",
  EPIPE: "connection closed while sending",
  ETIMEDOUT: "connection timed out",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  EHOSTDOWN: "host down",
  ENETDOWN: "network down",
  ENOTFOUND: "host name not found",
  EAI_AGAIN: "host name lookup failed",
  EADDRNOTAVAIL: "address not available",
  ERR_SOCKET_CONNECTION_TIMEOUT: "connection timed out",
  UND_ERR_CONNECT_TIMEOUT: "connection timed out",
  UND_ERR_SOCKET: "connection closed",
  ConnectionRefused: "connection refused",
};

const NOT_FOUND_CODES = new Set(["NoSuchKey", "NotFound", "NoSuchBucket", "NoSuchUpload", "NoSuchVersion"]);
const THROTTLE_CODES = new Set([
  "SlowDown",
  "Throttling",
  "ThrottlingException",
  "ThrottledException",
  "RequestThrottled",
  "RequestThrottledException",
  "TooManyRequestsException",
  "RequestLimitExceeded",
  "BandwidthLimitExceeded",
  "ProvisionedThroughputExceededException",
]);
const AUTH_CODES = new Set([
  "AccessDenied",
  "InvalidAccessKeyId",
  "SignatureDoesNotMatch",
  "ExpiredToken",
  "InvalidToken",
  "TokenRefreshRequired",
  "AccountProblem",
  "CredentialsProviderError",
]);
const UNSUPPORTED_CODES = new Set(["NotImplemented", "MethodNotAllowed", "XNotImplemented"]);
const RETRIABLE_4XX_CODES = new Set(["RequestTimeout", "RequestTimeoutException", "OperationAborted", "PriorRequestNotComplete"]);

interface SdkErrorShape {
  name?: string;
  code?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number; attempts?: number };
  $response?: unknown;
  cause?: unknown;
}

/**
 * Turns whatever a client-s3 / lib-storage call threw into an {@linkcode S3Error}.
 * An `AbortError` (the caller's signal) is returned unchanged, as is anything that is not
 * an S3, HTTP or network failure (a programming error must not look like a server error).
 */
export function toS3Error(error: unknown, context: RequestContext): unknown {
  if (error instanceof S3Error) return error;
  if (typeof error !== "object" || error === null) return error;
  const e = error as SdkErrorShape;
  if (e.name === "AbortError") return error;

  const status = e.$metadata?.httpStatusCode;
  const attempts = e.$metadata?.attempts;
  const networkCode = findNetworkCode(error);
  const where = objectUrl(context.bucket, context.key);
  const operation = OPERATION_TEXT[context.operation];

  if (status === undefined) {
    if (networkCode !== undefined || e.name === "TimeoutError" || e.name === "RequestTimeout") {
      const what = networkCode !== undefined ? NETWORK_CODES[networkCode] ?? networkCode : "request timed out";
      const tries = attempts !== undefined && attempts > 1 ? ` after ${attempts} attempts` : "";
      return new S3Error(
        `Cannot reach S3 endpoint ${context.endpoint} to ${operation} ${where}: ${what}${tries}; check the endpoint address and that the server is running`,
        {
          reason: "unreachable",
          retriable: true,
          operation: context.operation,
          endpoint: context.endpoint,
          bucket: context.bucket,
          key: context.key,
          code: networkCode ?? e.name,
          cause: error,
        },
      );
    }
    if (e.name === "CredentialsProviderError" || /credential/i.test(e.message ?? "")) {
      return makeS3Error(context, "auth", `no usable AWS credentials (${e.message ?? e.name}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or pass credentials explicitly`, {
        code: "CredentialsProviderError",
        cause: error,
      });
    }
    if (e.$response !== undefined || e.$metadata !== undefined) {
      return makeS3Error(context, "server", `unusable response (${e.message ?? e.name})`, { cause: error });
    }
    return error;
  }

  const code = e.Code ?? (e.name !== undefined && e.name !== "Unknown" && e.name !== "Error" ? e.name : undefined);
  const tag = code !== undefined ? `${code}, HTTP ${status}` : `HTTP ${status}`;
  const fail = (reason: S3ErrorReason, detail: string, retriable?: boolean) =>
    makeS3Error(context, reason, `${detail} (${tag})`, { status, code, cause: error, ...(retriable === undefined ? {} : { retriable }) });

  if (status === 412) return fail("precondition-failed", "a precondition did not hold");
  if (status === 304) return fail("precondition-failed", "not modified");
  if (code === "ConditionalRequestConflict") return fail("precondition-failed", "a concurrent conditional write conflicted", true);
  if (code !== undefined && THROTTLE_CODES.has(code)) return fail("throttled", "the server is throttling requests");
  if (status === 429) return fail("throttled", "the server is throttling requests");
  if (code === "NoSuchBucket") return fail("not-found", `bucket ${context.bucket} does not exist`);
  if (code === "NoSuchUpload") return fail("not-found", "no such multipart upload");
  if (code === "NoSuchVersion") return fail("not-found", "no such version");
  if (status === 404 || (code !== undefined && NOT_FOUND_CODES.has(code))) return fail("not-found", "the object does not exist");
  if (status === 401 || status === 403 || (code !== undefined && AUTH_CODES.has(code))) {
    return fail("auth", "the server refused the credentials or the request is not allowed");
  }
  if (status === 501 || status === 405 || (code !== undefined && UNSUPPORTED_CODES.has(code))) {
    return fail("unsupported", "the server does not support this operation");
  }
  if (status === 416) return fail("bad-request", "the requested range is not satisfiable");
  if (code !== undefined && RETRIABLE_4XX_CODES.has(code)) return fail("server", "the request was interrupted", true);
  if (status >= 500) return fail("server", "the server failed");
  if (status >= 400) return fail("bad-request", "the server rejected the request");
  return fail("server", "unexpected response");
}

function findNetworkCode(error: unknown): string | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 4 && typeof current === "object" && current !== null; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string" && code in NETWORK_CODES) return code;
    current = (current as { cause?: unknown }).cause;
  }
  const message = (error as { message?: unknown }).message;
  if (typeof message === "string" && /socket hang up|other side closed|premature close/i.test(message)) return "ECONNRESET";
  return undefined;
}
