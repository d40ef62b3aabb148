/**
 * The adaptive multipart engine: uploads a large body as parts, or a stream of small objects
 * as single PUTs, under the controller (controller.ts), which picks the part size and the
 * requests in flight from measured goodput and latency, halves them on throttling and faults,
 * and starts the next transfer to the same endpoint from what this one learned.
 *
 * Every part and every PUT carries its Content-MD5 (the server checks it). A failed request is
 * sent again by the engine (up to `attempts` times, with backoff), and each retry is counted
 * in the report and heard by the controller; give the engine a store made with
 * `maxAttempts: 1` so that the SDK does not retry on its own, out of sight (where it does, the
 * attempts it reports on a failure are counted as `sdkRetries`). An upload that cannot finish
 * is aborted so nothing is left behind.
 *
 * Downloads run the same loop with ranged GETs, each conditional on the version being read;
 * where the ETag is the object's MD5 (a single PUT's), the bytes are hashed in order and
 * checked against it.
 */
import { createHash } from "node:crypto";
import type { ObjectStore, PartRef, WriteCondition, WriteOutcome } from "../s3/mod.ts";
import { isS3Error } from "../s3/mod.ts";
import { md5Base64 } from "./hasher.ts";
import { admits, estimate, fault, initialState, nextPartLength, partDone, rttSample, type ControllerState, type Estimate } from "./controller.ts";

export interface UploadSource {
  readonly key: string;
  readonly size: number;
  /** Bytes [offset, offset+length) of the body. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Fills `target` with the bytes from `offset` on (preferred over `read` when given: the
   * engine then sends every part from a few buffers it reuses, so memory stays within the
   * parts in flight instead of waiting for the garbage collector).
   */
  readInto?(offset: number, target: Uint8Array): Promise<void>;
  readonly metadata?: Readonly<Record<string, string>>;
  /** Complete only if this holds (where the server enforces it). */
  readonly condition?: WriteCondition;
}

/** Where a download goes: an object version, and what takes its bytes. */
export interface DownloadTarget {
  readonly key: string;
  /** The object's size (from a listing or a HEAD). */
  readonly size: number;
  /**
   * The version to read: every range is asked for with If-Match on it (or by version id), so an
   * object changed meanwhile fails the download instead of mixing two versions.
   */
  readonly etag: string;
  readonly versionId?: string;
  /**
   * Takes the bytes at `offset`. Parts come in any order, each once; the part's memory counts
   * against the engine's cap until this resolves (a slow disk holds the download back).
   */
  write(offset: number, bytes: Uint8Array): Promise<void>;
}

export interface DownloadReport extends TransferStats {
  readonly parts: number;
  readonly bytes: number;
  /** The bytes were checked against the object's MD5 (its ETag, when it is one: a single PUT's). */
  readonly verified: boolean;
}

/** One object of a stream (a journal segment, say): sent in one PUT. */
export interface PutItem {
  readonly key: string;
  readonly body: Uint8Array;
  readonly metadata?: Readonly<Record<string, string>>;
  /** Write only if this holds (where the server enforces it). */
  readonly condition?: WriteCondition;
}

/** What a transfer did, for logs, metrics and benchmarks. */
export interface TransferStats {
  /** Requests that failed and were sent again by the engine. */
  readonly retries: number;
  /** Throttling and faults the controller backed off from. */
  readonly faults: number;
  /** Retries the SDK made on its own and reported on a failed request (0 with `maxAttempts: 1`). */
  readonly sdkRetries: number;
  /** Most body bytes held in requests at once. */
  readonly peakBytes: number;
  /** Most requests in flight at once, and the largest part sent. */
  readonly peakInflight: number;
  readonly peakPartSize: number;
  readonly final: ControllerState;
}

export interface EngineReport extends TransferStats {
  readonly outcome: WriteOutcome;
  readonly parts: number;
}

export interface StreamReport extends TransferStats {
  /** Objects written, in the order they finished. */
  readonly written: readonly { readonly key: string; readonly outcome: WriteOutcome }[];
  readonly bytes: number;
}

export interface EngineOptions {
  /** Body bytes the requests in flight may hold. @default 256 MiB */
  readonly memoryBytes?: number;
  /** Attempts per request (a part, a PUT, completing). @default 6 */
  readonly attempts?: number;
  /** Requests in flight at most. @default 64 */
  readonly maxInflight?: number;
  /** Bytes acknowledged so far by the server (called as parts or objects finish). */
  readonly onProgress?: (bytes: number) => void;
}

const DEFAULT_MEMORY = 256 * 1024 * 1024;
const SEGMENT_SIZE = 1024 * 1024;

/** Faults the controller should hear about: the link or the server pushes back. */
const pushback = (e: unknown) => isS3Error(e, "throttled") || isS3Error(e, "server") || isS3Error(e, "unreachable") || (!isS3Error(e) && !(e instanceof DownloadChanged));

/** Retries the SDK made inside one failed call, from the attempts its error reports. */
function sdkRetriesOf(e: unknown): number {
  const cause = (e as { cause?: { $metadata?: { attempts?: number } } } | undefined)?.cause;
  const attempts = cause?.$metadata?.attempts;
  return typeof attempts === "number" && attempts > 1 ? attempts - 1 : 0;
}

const clock = () => performance.now() / 1000;

/**
 * Part buffers for sources that read into the engine's memory: a buffer comes back when its
 * part is done and goes to the next part that fits in it, so the engine allocates about as
 * many buffers as parts in flight. Buffers are whole MiB; a smaller part gets a view of one.
 */
class BufferPool {
  private readonly free: ArrayBuffer[] = [];

  take(length: number): Uint8Array {
    const i = this.free.findIndex((b) => b.byteLength >= length && b.byteLength < 2 * length + 1024 * 1024);
    const buffer = i >= 0 ? this.free.splice(i, 1)[0]! : new ArrayBuffer(Math.ceil(length / (1024 * 1024)) * 1024 * 1024);
    return new Uint8Array(buffer, 0, length);
  }

  /** Back to the pool, which keeps at most `keep` free buffers (the rest go to the collector). */
  give(view: Uint8Array, keep: number): void {
    this.free.push(view.buffer as ArrayBuffer);
    while (this.free.length > keep) this.free.shift();
  }
}

/**
 * The loop both modes share: requests start while the controller allows more in flight and
 * the memory cap has room; each outcome goes to the controller.
 */
class Pump {
  state: ControllerState;
  retries = 0;
  sdkRetries = 0;
  held = 0;
  peakBytes = 0;
  peakInflight = 0;
  peakPartSize = 0;
  private readonly running = new Set<Promise<void>>();
  failure: unknown;

  constructor(
    state: ControllerState,
    private readonly attempts: number,
  ) {
    this.state = state;
  }

  /** Room for a request of `bytes` now. */
  room(bytes: number): boolean {
    return this.failure === undefined && admits(this.state, this.running.size, this.held, bytes);
  }

  get busy(): number {
    return this.running.size;
  }

  /**
   * Holds `bytes`, runs `prepare` once (not retried: reading the source), then `send` with
   * retries, then `finish` (not timed for the controller: waiting its turn, say), then
   * `release` (whatever happened).
   */
  start<T>(bytes: number, prepare: () => Promise<T>, send: (prepared: T) => Promise<void>, release?: (prepared: T) => void, finish?: () => Promise<void>): void {
    this.held += bytes;
    this.peakBytes = Math.max(this.peakBytes, this.held);
    this.peakPartSize = Math.max(this.peakPartSize, bytes);
    const task: Promise<void> = prepare()
      .then(async (prepared) => {
        try {
          await this.withRetries(bytes, () => send(prepared));
          await finish?.();
        } finally {
          release?.(prepared);
        }
      })
      .then(
      () => {
        this.held -= bytes;
        this.running.delete(task);
      },
      (e) => {
        this.held -= bytes;
        this.failure ??= e;
        this.running.delete(task);
      },
    );
    this.running.add(task);
    this.peakInflight = Math.max(this.peakInflight, this.running.size);
  }

  private async withRetries(bytes: number, send: () => Promise<void>): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const started = clock();
      try {
        await send();
        this.state = partDone(this.state, bytes, clock() - started, clock());
        return;
      } catch (e) {
        this.sdkRetries += sdkRetriesOf(e);
        if (pushback(e)) this.state = fault(this.state, clock());
        if (attempt >= this.attempts || !pushback(e)) throw e;
        this.retries++;
        await Bun.sleep(Math.min(5000, 100 * 2 ** attempt) * (0.5 + Math.random() / 2));
      }
    }
  }

  /** Waits for one request to finish (or fail). */
  async next(): Promise<void> {
    if (this.running.size > 0) await Promise.race(this.running);
  }

  async settle(): Promise<void> {
    await Promise.allSettled([...this.running]);
  }

  stats(): TransferStats {
    return {
      retries: this.retries,
      faults: this.state.faults,
      sdkRetries: this.sdkRetries,
      peakBytes: this.peakBytes,
      peakInflight: this.peakInflight,
      peakPartSize: this.peakPartSize,
      final: this.state,
    };
  }
}

export class TransferEngine {
  /** What each endpoint taught the last transfer to it, per mode. */
  private readonly estimates = new Map<string, Estimate>();

  constructor(
    private readonly store: ObjectStore,
    private readonly options: EngineOptions = {},
  ) {}

  /** What the last multipart upload to an endpoint learned (parts in flight, part size, goodput). */
  learned(endpoint: string): Estimate | undefined {
    return this.estimates.get(endpoint);
  }

  /** A request that is not a part (create, complete), tried `attempts` times on pushback. */
  private async call<T>(pump: Pump, run: () => Promise<T>): Promise<T> {
    const attempts = this.options.attempts ?? 6;
    for (let attempt = 1; ; attempt++) {
      try {
        return await run();
      } catch (e) {
        pump.sdkRetries += sdkRetriesOf(e);
        if (attempt >= attempts || !pushback(e)) throw e;
        pump.retries++;
        await Bun.sleep(Math.min(5000, 100 * 2 ** attempt) * (0.5 + Math.random() / 2));
      }
    }
  }

  /** Uploads `src` as a multipart upload whose part size and parallelism follow the link. */
  async upload(src: UploadSource): Promise<EngineReport> {
    const { store } = this;
    const memory = this.options.memoryBytes ?? DEFAULT_MEMORY;
    const warm = this.estimates.get(store.endpoint);
    const pump = new Pump(
      initialState(clock(), { memoryBytes: memory, size: src.size, ...(this.options.maxInflight ? { maxInflight: this.options.maxInflight } : {}), ...(warm ? { warm } : {}) }),
      this.options.attempts ?? 6,
    );
    const asked = clock();
    const uploadId = await this.call(pump, () => store.createMultipart(src.key, { ...(src.metadata ? { metadata: src.metadata } : {}) }));
    pump.state = rttSample(pump.state, clock() - asked);
    const parts: PartRef[] = [];
    const pool = new BufferPool();
    let offset = 0;
    let partNumber = 0;
    let sent = 0;
    try {
      while ((offset < src.size || pump.busy > 0) && pump.failure === undefined) {
        for (;;) {
          const length = nextPartLength(pump.state, src.size, offset, partNumber, parts.length);
          if (length === 0 || !pump.room(length)) break;
          const number = ++partNumber;
          const at = offset;
          const read = async () => {
            let body: Uint8Array;
            if (src.readInto) {
              body = pool.take(length);
              await src.readInto(at, body);
            } else body = await src.read(at, length);
            return { body, md5: await md5Base64(body) };
          };
          pump.start(length, read, async ({ body, md5 }) => {
            parts.push(await store.uploadPart(src.key, uploadId, number, body, { contentMD5: md5 }));
            sent += length;
            this.options.onProgress?.(sent);
          }, src.readInto ? ({ body }) => pool.give(body, pump.state.inflight) : undefined);
          offset += length;
        }
        await pump.next();
      }
      if (pump.failure !== undefined) throw pump.failure;
      parts.sort((a, b) => a.partNumber - b.partNumber);
      const outcome = await this.call(pump, () =>
        src.condition ? store.completeMultipartIf(src.key, uploadId, parts, src.condition) : store.completeMultipart(src.key, uploadId, parts),
      );
      if (outcome._tag === "PreconditionFailed") await store.abortMultipart(src.key, uploadId).catch(() => {});
      this.estimates.set(store.endpoint, estimate(pump.state));
      return { outcome, parts: parts.length, ...pump.stats() };
    } catch (e) {
      await pump.settle();
      await store.abortMultipart(src.key, uploadId).catch(() => {});
      throw e;
    }
  }

  /**
   * Downloads an object version as ranged GETs whose size and number in flight follow the
   * link (parts in any order to `dst.write`). Fails, after the requests in flight have ended,
   * if a range cannot be had after its retries or the object changed.
   */
  async download(dst: DownloadTarget): Promise<DownloadReport> {
    const { store } = this;
    const memory = this.options.memoryBytes ?? DEFAULT_MEMORY;
    const key = `${store.endpoint} download`;
    const warm = this.estimates.get(key);
    const pump = new Pump(
      initialState(clock(), { memoryBytes: memory, size: dst.size, ...(this.options.maxInflight ? { maxInflight: this.options.maxInflight } : {}), ...(warm ? { warm } : {}) }),
      this.options.attempts ?? 6,
    );
    const md5 = /^"?([0-9a-f]{32})"?$/i.exec(dst.etag)?.[1]?.toLowerCase();
    const hash = md5 !== undefined ? createHash("md5") : undefined;
    // Parts are hashed in offset order: a part that arrives early waits (holding its memory) for those before it.
    let hashedTo = 0;
    const waiting = new Map<number, () => void>();
    const hashInOrder = async (offset: number, bytes: Uint8Array) => {
      if (!hash) return;
      if (offset !== hashedTo) await new Promise<void>((resume) => waiting.set(offset, resume));
      hash.update(bytes);
      hashedTo = offset + bytes.length;
      const next = waiting.get(hashedTo);
      waiting.delete(hashedTo);
      next?.();
    };
    let offset = 0;
    let parts = 0;
    let finished = 0;
    let got = 0;
    const version = dst.versionId !== undefined ? { versionId: dst.versionId } : { ifMatch: dst.etag };
    try {
      while ((offset < dst.size || pump.busy > 0) && pump.failure === undefined) {
        for (;;) {
          const length = nextPartLength(pump.state, dst.size, offset, parts, finished);
          if (length === 0 || !pump.room(length)) break;
          const at = offset;
          parts++;
          let bytes: Uint8Array | undefined;
          pump.start(
            length,
            async () => undefined,
            async () => {
              const r = await store.get(dst.key, { range: { start: at, end: at + length - 1 }, ...version });
              // Servers that ignore If-Match on GET answer with whatever is there now.
              if (r.head.etag !== dst.etag) throw new DownloadChanged(dst.key, r.head.etag, dst.etag);
              if (r.bytes.length !== length) throw new Error(`S3 returned ${r.bytes.length} bytes of ${dst.key} at ${at} for a range of ${length}`);
              bytes = r.bytes;
            },
            undefined,
            async () => {
              await dst.write(at, bytes!);
              await hashInOrder(at, bytes!);
              bytes = undefined;
              finished++;
              got += length;
              this.options.onProgress?.(got);
            },
          );
          offset += length;
        }
        await pump.next();
      }
      if (pump.failure !== undefined) throw pump.failure;
    } catch (e) {
      for (const resume of waiting.values()) resume(); // nothing more comes in order: let them end
      await pump.settle();
      if (isS3Error(e, "precondition-failed")) throw new DownloadChanged(dst.key, undefined, dst.etag);
      throw e;
    }
    if (hash && hash.digest("hex") !== md5) throw new Error(`the bytes of ${dst.key} do not match its ETag (MD5 ${md5}): the download is corrupt; download it again`);
    this.estimates.set(key, estimate(pump.state));
    return { parts, bytes: got, verified: hash !== undefined, ...pump.stats() };
  }

  /**
   * Sends a stream of small objects (journal segments, say), each in one PUT, as many in
   * flight as the controller finds the link wants. Items are pulled from `items` only when
   * there is room, so a producer is held back by the link. The first object that cannot be
   * written (after its retries) stops the stream: what finished before is in the report
   * passed to `onWritten`, and the error is thrown once the requests in flight have ended.
   */
  async putMany(
    items: Iterable<PutItem> | AsyncIterable<PutItem>,
    options: {
      readonly onWritten?: (key: string, outcome: WriteOutcome) => void;
      /** Bytes the stream will carry, when known (for an array it is counted). */
      readonly totalBytes?: number;
    } = {},
  ): Promise<StreamReport> {
    const { store } = this;
    const memory = this.options.memoryBytes ?? DEFAULT_MEMORY;
    const key = `${store.endpoint} stream`;
    const warm = this.estimates.get(key);
    // An array tells how much is coming: the controller tries more in flight only if that pays back.
    const total = options.totalBytes ?? (Array.isArray(items) ? (items as readonly PutItem[]).reduce((a, i) => a + i.body.byteLength, 0) : undefined);
    const pump = new Pump(
      initialState(clock(), {
        memoryBytes: memory,
        fixedPartSize: SEGMENT_SIZE,
        ...(total !== undefined ? { size: total } : {}),
        ...(this.options.maxInflight ? { maxInflight: this.options.maxInflight } : {}),
        ...(warm ? { warm } : {}),
      }),
      this.options.attempts ?? 6,
    );
    const iterator = Symbol.asyncIterator in items ? (items as AsyncIterable<PutItem>)[Symbol.asyncIterator]() : (items as Iterable<PutItem>)[Symbol.iterator]();
    const written: { key: string; outcome: WriteOutcome }[] = [];
    let bytes = 0;
    let pending: PutItem | undefined;
    let ended = false;
    try {
      while (!ended || pump.busy > 0) {
        if (pump.failure !== undefined) break;
        while (!ended) {
          if (pending === undefined) {
            const next = await iterator.next();
            if (next.done) {
              ended = true;
              break;
            }
            pending = next.value;
          }
          if (!pump.room(pending.body.byteLength)) break;
          const item = pending;
          pending = undefined;
          pump.start(item.body.byteLength, async () => ({ item, md5: await md5Base64(item.body) }), async ({ item, md5 }) => {
            const opts = { contentMD5: md5, ...(item.metadata ? { metadata: item.metadata } : {}) };
            const outcome = item.condition ? await store.putIf(item.key, item.body, item.condition, opts) : await store.put(item.key, item.body, opts);
            written.push({ key: item.key, outcome });
            bytes += item.body.byteLength;
            options.onWritten?.(item.key, outcome);
            this.options.onProgress?.(bytes);
          });
        }
        await pump.next();
      }
      if (pump.failure !== undefined) throw pump.failure;
      this.estimates.set(key, estimate(pump.state));
      return { written, bytes, ...pump.stats() };
    } catch (e) {
      await pump.settle();
      throw e;
    } finally {
      if (!ended) await (iterator as { return?: () => unknown }).return?.();
    }
  }
}

/** The object changed in S3 while it was being downloaded. */
export class DownloadChanged extends Error {
  constructor(key: string, now: string | undefined, expected: string) {
    super(`${key} changed in S3 during the download (ETag ${now ?? "now different"}, expected ${expected}); download it again`);
    this.name = "DownloadChanged";
  }
}
