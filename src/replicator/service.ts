/**
 * Replication of one mount: the segment shipper and the materializer, each an Effect fiber
 * that works while there is work, waits when there is none, and backs off exponentially
 * (0.5 s doubling to 30 s, jittered) while S3 fails, so an unreachable endpoint costs nothing
 * and replication resumes by itself when it returns. Also `status` and `sync` for the CLI.
 */
import { Effect, Fiber, Result } from "effect";
import type { JournalEvent } from "../../journal/mod.ts";
import type { Filesystem } from "../fs/filesystem.ts";
import { probeCapabilities, type Capabilities, type ObjectStore } from "../s3/mod.ts";
import { Materializer } from "./materializer.ts";
import { BOOKKEEPING, REMOTE_FACTS, SegmentShipper } from "./segments.ts";
import { writeSnapshot } from "./snapshot.ts";
import type { RemoteListing } from "../fs/remote.ts";
import type { ChunkCache } from "./cache.ts";

export interface ReplicationOptions {
  readonly fs: Filesystem;
  readonly store: ObjectStore;
  readonly prefix: string;
  /** Lists a prefix as directory entries (conflicts need the remote version's attributes). */
  readonly lookup: (prefix: string) => Promise<RemoteListing>;
  readonly cache?: ChunkCache;
  /** A path becomes an object once it has not changed for this long. @default 2000 */
  readonly writeBackMs?: number;
  /** …or once the oldest unmaterialized change is this old, even if it still changes. @default 10 × writeBackMs */
  readonly maxDelayMs?: number;
  /** How often a segment is sealed while events arrive. @default 1000 */
  readonly sealMs?: number;
  readonly maxSegmentBytes?: number;
  /** A projection snapshot goes to S3 at most this often while things change (and at stop). @default 60000 */
  readonly snapshotMs?: number;
  readonly partBytes?: number;
  readonly log: (message: string) => void;
}

export interface Status {
  readonly endpoint: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly clientId: string;
  /** Last journal seq, and the last one that changed the tree. */
  readonly head: number;
  readonly lastChange: number;
  /** Events after the last segment in S3, and whether every change is materialized. */
  readonly pendingEvents: number;
  /** File bytes written after the last segment in S3. */
  readonly pendingBytes: number;
  readonly pendingMaterialization: boolean;
  readonly replicatedThrough: number;
  readonly materializedThrough: number;
  /** Seconds since the oldest change not yet in S3 (0 when none). */
  readonly lagSeconds: number;
  readonly segments: { readonly shipped: number; readonly bytes: number };
  readonly objects: { readonly put: number; readonly copied: number; readonly deleted: number; readonly uploadedBytes: number; readonly copiedBytes: number };
  readonly conflicts: number;
  readonly lastConflict?: { readonly key: string; readonly conflictKey: string; readonly time: string };
  readonly skippedKeys: number;
  readonly skipped: readonly { readonly key: string; readonly reason: string }[];
  readonly cache?: { readonly bytes: number; readonly hits: number; readonly misses: number };
  readonly lastError?: { readonly message: string; readonly time: string };
  readonly online: boolean;
}

export class Replication {
  readonly shipper: SegmentShipper;
  readonly materializer: Materializer;
  private lastChange = 0;
  /** [seq, bytes] of writes not yet known to be in a segment. */
  private unshipped: [number, number][] = [];
  /** Time of the oldest change not yet in S3. */
  private oldestPending = 0;
  private force = false;
  private lastError: { message: string; time: number } | undefined;
  private readonly wakers = new Set<() => void>();
  private readonly pausers = new Set<() => void>();
  private readonly waiters = new Set<() => void>();
  private fibers: Fiber.Fiber<never, never>[] = [];
  private unsubscribe: (() => void) | undefined;
  private caps: Promise<Capabilities> | undefined;
  /** Steps running now: stop waits for them, so nothing is recorded after the journal closes. */
  private readonly running = new Set<Promise<boolean>>();
  private shipping: Promise<boolean> = Promise.resolve(false);
  private snapshotDue = false;
  /** The last remote fact (REMOTE_FACTS): it must reach S3 too. */
  private lastFact = 0;
  /** Recent Reconciled events as [through, seq]: the facts a materialization made come before its Reconciled. */
  private readonly reconciledAt: [number, number][] = [];
  private lastSnapshot = 0;

  constructor(private readonly o: ReplicationOptions) {
    const capabilities = () => {
      this.caps ??= probeCapabilities(o.store).catch((e) => {
        this.caps = undefined;
        throw e;
      });
      return this.caps;
    };
    this.shipper = new SegmentShipper({ fs: o.fs, store: o.store, prefix: o.prefix, capabilities, maxSegmentBytes: o.maxSegmentBytes, log: o.log });
    this.materializer = new Materializer({
      fs: o.fs, store: o.store, prefix: o.prefix, capabilities, clientId: o.fs.journal.clientId, lookup: o.lookup, partBytes: o.partBytes, log: o.log,
      shipStaged: async () => {
        await o.fs.journal.flushed();
        await this.ship();
      },
    });
  }

  async start(): Promise<void> {
    const journal = this.o.fs.journal;
    // The last change from before this start: everything after the checkpoints is pending.
    for await (const e of journal.read({ reverse: true, limit: 100_000 })) {
      if (!BOOKKEEPING.has(e.type)) {
        this.noteChange(e);
        break;
      }
    }
    const replicated = this.o.fs.syncState.replicated?.seq ?? 0;
    for await (const e of journal.read({ gte: replicated + 1, limit: 200_000 })) {
      if (e.type === "ExtentWritten") this.unshipped.push([e.seq, e.length]);
      if (REMOTE_FACTS.has(e.type)) this.lastFact = e.seq;
    }
    this.unsubscribe = journal.subscribe((events) => {
      for (const e of events) {
        if (REMOTE_FACTS.has(e.type)) this.lastFact = e.seq;
        if (e.type === "Reconciled") {
          this.reconciledAt.push([e.through, e.seq]);
          if (this.reconciledAt.length > 64) this.reconciledAt.shift();
        }
        if (BOOKKEEPING.has(e.type)) continue;
        this.noteChange(e);
        if (e.type === "ExtentWritten") this.unshipped.push([e.seq, e.length]);
      }
      this.wake();
    });
    const sealMs = Math.max(50, this.o.sealMs ?? 1000);
    const writeBack = this.o.writeBackMs ?? 2000;
    const maxDelay = this.o.maxDelayMs ?? 10 * writeBack;
    this.fibers = [
      // A segment about every sealMs while events arrive (not one per event).
      Effect.runFork(this.loop(sealMs, () => this.ship(), { pauseAfterWork: true })),
      // Never spin: a zero-delay timer loop starves socket reads in Bun.
      Effect.runFork(this.loop(Math.max(50, Math.min(writeBack / 2, 1000)), async () => {
        if (this.o.fs.syncState.reconciled >= this.lastChange) return false;
        const hurry = this.force || Date.now() - this.oldestPending >= maxDelay;
        const { through, stats } = await this.materializer.round({ settleMs: hurry ? 0 : writeBack });
        // Deferred paths and conflict copies go up in a later round, before the checkpoint.
        if (stats.conflicts === 0 && stats.deferred === 0) {
          await this.o.fs.record([], () => [{ type: "Reconciled", through: through as never }]);
          if (stats.put + stats.deleted > 0) this.snapshotDue = true;
          if (this.snapshotDue && Date.now() - this.lastSnapshot >= (this.o.snapshotMs ?? 60_000)) await this.snapshot(through);
        }
        return stats.put + stats.deleted + stats.conflicts > 0;
      })),
    ];
  }

  private async snapshot(seq: number): Promise<void> {
    this.snapshotDue = false;
    this.lastSnapshot = Date.now();
    await writeSnapshot(this.o.fs, this.o.store, this.o.prefix, seq);
  }

  /** Ship every pending segment; one shipping at a time, whoever asks. */
  private ship(): Promise<boolean> {
    const run = async () => {
      if ((this.o.fs.syncState.replicated?.seq ?? 0) >= Math.max(this.lastChange, this.lastFact)) return false;
      let shipped = false;
      while (await this.shipper.shipOne(this.o.fs.journal.head)) shipped = true;
      return shipped;
    };
    const next = this.shipping.then(run, run);
    this.shipping = next.catch(() => false);
    return next;
  }

  private noteChange(e: JournalEvent): void {
    if (e.seq <= this.lastChange) return;
    if (this.pendingNothing()) this.oldestPending = e.time;
    this.lastChange = e.seq;
  }

  private pendingNothing(): boolean {
    const s = this.o.fs.syncState;
    return (s.replicated?.seq ?? 0) >= this.lastChange && s.reconciled >= this.lastChange;
  }

  /** Run `step` while it finds work; wait `idleMs` (or a wake-up) when it does not; back off on errors. */
  private loop(idleMs: number, step: () => Promise<boolean>, options: { pauseAfterWork?: boolean } = {}): Effect.Effect<never> {
    const self = this;
    return Effect.gen(function* () {
      let failures = 0;
      for (;;) {
        const r = yield* Effect.result(Effect.tryPromise({ try: () => self.track(step()), catch: (e) => e as Error }));
        if (Result.isFailure(r)) {
          failures++;
          const message = r.failure instanceof Error ? r.failure.message : String(r.failure);
          if (self.lastError?.message !== message) self.o.log(`objectfs: replication: ${message} (retrying with backoff)`);
          self.lastError = { message, time: Date.now() };
          const backoff = Math.min(30_000, 500 * 2 ** Math.min(failures - 1, 6)) * (0.75 + Math.random() * 0.5);
          yield* Effect.promise(() => self.idle(self.force ? Math.min(backoff, 1000) : backoff));
          continue;
        }
        if (failures > 0 || self.lastError) self.lastError = undefined;
        failures = 0;
        if (r.success) self.notifyWaiters();
        if (!r.success) yield* Effect.promise(() => self.idle(idleMs));
        else if (options.pauseAfterWork && !self.force) yield* Effect.promise(() => self.idle(idleMs, self.pausers));
      }
    }) as Effect.Effect<never>;
  }

  private track(p: Promise<boolean>): Promise<boolean> {
    this.running.add(p);
    void p.finally(() => this.running.delete(p)).catch(() => {});
    return p;
  }

  /** Wait `ms`, or until woken through `wakers` (commits wake `this.wakers`; only sync wakes `this.pausers`). */
  private idle(ms: number, wakers = this.wakers): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      wakers.add(done);
    });
  }

  private wake(): void {
    for (const w of [...this.wakers]) w();
  }

  private notifyWaiters(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Resolves once every change made before the call is in S3 (segments and objects). */
  async sync(options: { timeoutMs?: number; onProgress?: (s: Status) => void } = {}): Promise<void> {
    await this.o.fs.journal.flushed(); // staged changes are committed, so lastChange knows them
    const target = this.lastChange;
    // Done once S3 has the changes, their objects, and the facts materializing them recorded
    // (which come before the Reconciled event that covered the target).
    const factsUpTo = () => {
      const r = this.reconciledAt.find(([through]) => through >= target);
      return r ? r[1] - 1 : this.lastFact;
    };
    const done = () => {
      const s = this.o.fs.syncState;
      const replicated = s.replicated?.seq ?? 0;
      return replicated >= target && s.reconciled >= target && replicated >= factsUpTo();
    };
    const deadline = Date.now() + (options.timeoutMs ?? Infinity);
    this.force = true;
    this.wake();
    for (const p of [...this.pausers]) p();
    try {
      while (!done()) {
        options.onProgress?.(this.status());
        const left = deadline - Date.now();
        if (left <= 0) {
          const s = this.status();
          throw new Error(
            `timed out: ${s.pendingEvents} events${s.pendingMaterialization ? " and unmaterialized changes" : ""} are not in S3 yet${s.lastError ? `; last error: ${s.lastError.message}` : ""}`,
          );
        }
        await new Promise<void>((resolve) => {
          const w = () => {
            clearTimeout(t);
            this.waiters.delete(w);
            resolve();
          };
          const t = setTimeout(w, Math.min(left, 250));
          this.waiters.add(w);
        });
      }
    } finally {
      this.force = false;
    }
  }

  status(): Status {
    const s = this.o.fs.syncState;
    const replicated = s.replicated?.seq ?? 0;
    const pendingEvents = Math.max(0, this.lastChange - replicated);
    let drop = 0;
    while (drop < this.unshipped.length && this.unshipped[drop]![0] <= replicated) drop++;
    if (drop > 0) this.unshipped = this.unshipped.slice(drop);
    const pendingBytes = this.unshipped.reduce((sum, [, n]) => sum + n, 0);
    const pendingMaterialization = s.reconciled < this.lastChange;
    const stats = this.materializer.totals;
    return {
      endpoint: this.o.store.endpoint,
      bucket: this.o.store.bucket,
      prefix: this.o.prefix,
      clientId: this.o.fs.journal.clientId,
      head: this.o.fs.journal.head,
      lastChange: this.lastChange,
      pendingEvents,
      pendingBytes,
      pendingMaterialization,
      replicatedThrough: replicated,
      materializedThrough: s.reconciled,
      lagSeconds: pendingEvents > 0 || pendingMaterialization ? Math.max(0, (Date.now() - this.oldestPending) / 1000) : 0,
      segments: { shipped: this.shipper.totals.segments, bytes: this.shipper.totals.bytes },
      objects: { put: stats.put, copied: stats.copied, deleted: stats.deleted, uploadedBytes: stats.uploadedBytes, copiedBytes: stats.copiedBytes },
      conflicts: s.conflicts,
      ...(s.lastConflict ? { lastConflict: { ...s.lastConflict, time: new Date(s.lastConflict.time).toISOString() } } : {}),
      skippedKeys: s.skippedCount,
      skipped: s.skipped,
      ...(this.o.cache ? { cache: { bytes: this.o.cache.stats.bytes, hits: this.o.cache.stats.hits, misses: this.o.cache.stats.misses } } : {}),
      ...(this.lastError ? { lastError: { message: this.lastError.message, time: new Date(this.lastError.time).toISOString() } } : {}),
      online: this.lastError === undefined,
    };
  }

  async stop(): Promise<void> {
    this.unsubscribe?.();
    await Effect.runPromise(Effect.forEach(this.fibers, Fiber.interrupt, { discard: true }));
    this.fibers = [];
    await Promise.allSettled([...this.running]);
    // The last state for the next machine, if S3 has all of it (best effort, bounded).
    const s = this.o.fs.syncState;
    if (this.snapshotDue && s.reconciled >= this.lastChange) {
      await Promise.race([this.snapshot(s.reconciled).catch(() => {}), Bun.sleep(5000)]);
    }
  }
}
