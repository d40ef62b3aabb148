/**
 * The adaptive multipart engine: uploads a large body as parts under the controller
 * (controller.ts), which picks the part size and the parts in flight from measured goodput and
 * latency, halves them on throttling and faults, and starts the next transfer to the same
 * endpoint from what this one learned. Each part carries its Content-MD5 (the server checks
 * it where it can), a failed part is tried again (5 times), and an upload that cannot finish
 * is aborted so nothing is left behind.
 */
import type { ObjectStore, PartRef, WriteCondition, WriteOutcome } from "../s3/mod.ts";
import { isS3Error } from "../s3/mod.ts";
import { estimate, fault, initialState, partDone, type ControllerState, type Estimate } from "./controller.ts";

export interface UploadSource {
  readonly key: string;
  readonly size: number;
  /** Bytes [offset, offset+length) of the body. */
  read(offset: number, length: number): Promise<Uint8Array>;
  readonly metadata?: Readonly<Record<string, string>>;
  /** Complete only if this holds (where the server enforces it). */
  readonly condition?: WriteCondition;
}

export interface EngineReport {
  readonly outcome: WriteOutcome;
  readonly parts: number;
  readonly faults: number;
  /** Most bytes held in parts at once. */
  readonly peakBytes: number;
  readonly final: ControllerState;
}

export interface EngineOptions {
  /** @default 256 MiB */
  readonly memoryBytes?: number;
  /** Attempts per part. @default 5 */
  readonly attempts?: number;
  readonly onProgress?: (bytes: number) => void;
}

/** Faults the controller should hear about: the link or the server pushes back. */
const pushback = (e: unknown) => isS3Error(e, "throttled") || isS3Error(e, "server") || isS3Error(e, "unreachable") || !isS3Error(e);

export class TransferEngine {
  /** What each endpoint taught the last transfer to it. */
  private readonly estimates = new Map<string, Estimate>();

  constructor(
    private readonly store: ObjectStore,
    private readonly options: EngineOptions = {},
  ) {}

  /** What the last transfer to an endpoint learned (parts in flight, part size, goodput). */
  learned(endpoint: string): Estimate | undefined {
    return this.estimates.get(endpoint);
  }

  async upload(src: UploadSource): Promise<EngineReport> {
    const { store } = this;
    const memory = this.options.memoryBytes ?? 256 * 1024 * 1024;
    const attempts = this.options.attempts ?? 5;
    const clock = () => performance.now() / 1000;
    const warm = this.estimates.get(store.endpoint);
    let state = initialState(clock(), { memoryBytes: memory, size: src.size, ...(warm ? { warm } : {}) });
    const uploadId = await store.createMultipart(src.key, { ...(src.metadata ? { metadata: src.metadata } : {}) });
    const parts: PartRef[] = [];
    const running = new Set<Promise<void>>();
    let offset = 0;
    let partNumber = 0;
    let held = 0;
    let peak = 0;
    let sent = 0;
    let failure: unknown;
    const sendPart = async (number: number, at: number, length: number) => {
      const body = await src.read(at, length);
      for (let attempt = 1; ; attempt++) {
        const started = clock();
        try {
          parts.push(await store.uploadPart(src.key, uploadId, number, body, { contentMD5: true }));
          state = partDone(state, length, clock() - started, clock());
          sent += length;
          this.options.onProgress?.(sent);
          return;
        } catch (e) {
          if (pushback(e)) state = fault(state, clock());
          if (attempt >= attempts || !pushback(e)) throw e;
          await Bun.sleep(Math.min(5000, 100 * 2 ** attempt));
        }
      }
    };
    try {
      while ((offset < src.size || running.size > 0) && failure === undefined) {
        while (offset < src.size && running.size < state.inflight && (held === 0 || held + state.partSize <= memory)) {
          const length = Math.min(state.partSize, src.size - offset);
          const task: Promise<void> = sendPart(++partNumber, offset, length).then(
            () => {
              held -= length;
              running.delete(task);
            },
            (e) => {
              failure ??= e;
              running.delete(task);
            },
          );
          running.add(task);
          held += length;
          peak = Math.max(peak, held);
          offset += length;
        }
        if (running.size > 0) await Promise.race(running);
      }
      if (failure !== undefined) throw failure;
      parts.sort((a, b) => a.partNumber - b.partNumber);
      const outcome = src.condition ? await store.completeMultipartIf(src.key, uploadId, parts, src.condition) : await store.completeMultipart(src.key, uploadId, parts);
      if (outcome._tag === "PreconditionFailed") await store.abortMultipart(src.key, uploadId).catch(() => {});
      this.estimates.set(store.endpoint, estimate(state));
      return { outcome, parts: parts.length, faults: state.faults, peakBytes: peak, final: state };
    } catch (e) {
      await Promise.allSettled([...running]);
      await store.abortMultipart(src.key, uploadId).catch(() => {});
      throw e;
    }
  }
}
