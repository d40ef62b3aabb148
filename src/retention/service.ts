/**
 * Retention in a running mount: a pass about every `intervalMs` (the first a minute after the
 * mount starts), or when asked (`objectfs compact`). For S3 mounts a pass first applies the
 * windows locally, only to events already in S3, then compacts the journal in S3 to match;
 * what S3 still has to catch up with (events removed, bytes dropped) is remembered in
 * `DATA_DIR/retention/s3-pending` until a compaction has succeeded, so an unreachable
 * endpoint only delays it.
 */
import { Effect, Fiber } from "effect";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Filesystem } from "../fs/filesystem.ts";
import { compactRemote, type CompactionResult } from "../replicator/compaction.ts";
import type { ObjectStore } from "../s3/mod.ts";
import { checkpointName } from "./checkpoint.ts";
import { localCheckpoint } from "./history.ts";
import { retainLocal, type PassResult, type RetentionPolicy } from "./retention.ts";

export interface RetentionServiceOptions {
  readonly fs: Filesystem;
  readonly policy: RetentionPolicy;
  /** @default 1 h */
  readonly intervalMs?: number;
  readonly remote?: {
    readonly store: ObjectStore;
    readonly prefix: string;
    /** Level ages for compaction (tests make them small). */
    readonly level1AgeMs?: number;
    readonly level2AgeMs?: number;
  };
  readonly log: (message: string) => void;
}

export interface RetentionReport {
  readonly checkpoint?: { readonly seq: number; readonly dataFrom: number; readonly dataFromTime: string };
  readonly local: Omit<PassResult, "checkpoint" | "affected"> & { readonly affected: number };
  readonly remote?: CompactionResult;
}

export interface RetentionStatus {
  readonly policy: { readonly dataMs: number; readonly eventsMs: number };
  readonly lastPass?: string;
  readonly last?: RetentionReport;
  readonly lastError?: string;
}

export class RetentionService {
  private fiber: Fiber.Fiber<never, never> | undefined;
  private running: Promise<RetentionReport> | undefined;
  private lastPass: number | undefined;
  private last: RetentionReport | undefined;
  private lastError: string | undefined;

  constructor(private readonly o: RetentionServiceOptions) {}

  start(): void {
    const interval = this.o.intervalMs ?? 3_600_000;
    const self = this;
    this.fiber = Effect.runFork(
      Effect.gen(function* () {
        yield* Effect.sleep(Math.min(interval, 60_000));
        for (;;) {
          yield* Effect.promise(() => self.runOnce().then(() => undefined, () => undefined));
          yield* Effect.sleep(interval);
        }
      }) as Effect.Effect<never>,
    );
  }

  async stop(): Promise<void> {
    if (this.fiber) await Effect.runPromise(Fiber.interrupt(this.fiber));
    this.fiber = undefined;
    await this.running?.catch(() => {});
  }

  status(): RetentionStatus {
    return {
      policy: { dataMs: this.o.policy.dataMs, eventsMs: this.o.policy.eventsMs },
      ...(this.lastPass ? { lastPass: new Date(this.lastPass).toISOString() } : {}),
      ...(this.last ? { last: this.last } : {}),
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }

  /** One pass now (or the one running), with the mount's windows or, for this pass, others. */
  runOnce(policy?: RetentionPolicy): Promise<RetentionReport> {
    this.running ??= this.pass(policy ?? this.o.policy).then(
      (r) => {
        this.running = undefined;
        this.last = r;
        this.lastError = undefined;
        this.lastPass = Date.now();
        return r;
      },
      (e: Error) => {
        this.running = undefined;
        this.lastError = e.message;
        this.o.log(`objectfs: retention: ${e.message} (trying again at the next pass)`);
        throw e;
      },
    );
    return this.running;
  }

  private async pass(policy: RetentionPolicy): Promise<RetentionReport> {
    const { fs, remote } = this.o;
    await fs.journal.flushed();
    const replicated = fs.syncState.replicated?.seq ?? 0;
    const local = await retainLocal(fs, policy, { ...(remote ? { maxSeq: replicated } : {}), log: this.o.log });
    const { checkpoint: _c, affected, ...counts } = local;
    let remoteResult: CompactionResult | undefined;
    if (remote) {
      const pendingFile = join(fs.journal.dir, "retention", "s3-pending");
      const pending = mergeSorted(await readSeqs(pendingFile), affected);
      if (affected.length > 0) await writeSeqs(pendingFile, pending);
      const checkpoint = local.checkpoint ?? (await localCheckpoint(fs.journal.dir));
      remoteResult = await compactRemote({
        store: remote.store,
        prefix: remote.prefix,
        clientId: fs.journal.clientId,
        ...(checkpoint ? { checkpoint, checkpointName: checkpointName(checkpoint.seq, checkpoint.dataFrom) } : {}),
        pending,
        ...(remote.level1AgeMs !== undefined ? { level1AgeMs: remote.level1AgeMs } : {}),
        ...(remote.level2AgeMs !== undefined ? { level2AgeMs: remote.level2AgeMs } : {}),
        log: this.o.log,
      });
      if (pending.length > 0) await rm(pendingFile, { force: true });
    }
    const c = local.checkpoint;
    return {
      ...(c ? { checkpoint: { seq: c.seq, dataFrom: c.dataFrom, dataFromTime: new Date(c.dataFromTime).toISOString() } } : {}),
      local: { ...counts, affected: affected.length },
      ...(remoteResult ? { remote: remoteResult } : {}),
    };
  }
}

async function readSeqs(path: string): Promise<number[]> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch {
    return [];
  }
  const out: number[] = [];
  for (let at = 0; at + 8 <= buf.length; at += 8) out.push(Number(buf.readBigUInt64BE(at)));
  return out;
}

async function writeSeqs(path: string, seqs: readonly number[]): Promise<void> {
  await mkdir(join(path, ".."), { recursive: true });
  const buf = Buffer.allocUnsafe(seqs.length * 8);
  seqs.forEach((s, i) => buf.writeBigUInt64BE(BigInt(s), i * 8));
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, "w", 0o600);
  try {
    await fh.writeFile(buf);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

function mergeSorted(a: readonly number[], b: readonly number[]): number[] {
  const out = [...new Set([...a, ...b])];
  return out.sort((x, y) => x - y);
}
