/**
 * Serving a mount from this process, as one Effect scope: the data
 * directory's pid lock, the Filesystem (its journal and LevelDB), and the FUSE
 * mount are acquired in order and released in reverse, whatever ends the
 * scope: a signal, an external unmount, or a failure.
 */
import { Effect, Exit } from "effect";
import { closeSync, openSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Filesystem, type Durability } from "../fs/filesystem.ts";
import { exited, mountEntry, mountFilesystem, MountError } from "../fuse/mount.ts";
import { openRemote, Replication } from "../replicator/mod.ts";
import { listenControl } from "./control.ts";
import { Metrics } from "../metrics/metrics.ts";
import { serveMetrics } from "./metrics_server.ts";
import { openPast, type HistorySource } from "./history.ts";
import type { Point } from "../audit/time_travel.ts";
import type { RetentionPolicy } from "../retention/policy.ts";
import { RetentionService } from "../retention/service.ts";
import { finishInterruptedPass } from "../retention/retention.ts";

/** An S3 source: `s3://BUCKET[/PREFIX]` and how to reach it. */
export interface S3Source {
  readonly url: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly endpoint?: string;
  readonly region?: string;
  readonly pathStyle?: boolean;
  readonly writeBackMs?: number;
  readonly sealMs?: number;
  readonly cacheBytes?: number;
}

export interface ServeOptions {
  readonly source?: S3Source;
  /** Serve a past state, read-only, instead of the live journal. */
  readonly at?: { readonly point: Point | undefined; readonly history: HistorySource };
  readonly mountpoint: string;
  readonly dataDir: string;
  readonly durability?: Durability;
  readonly readOnly?: boolean;
  readonly allowOther?: boolean;
  readonly cacheTimeout?: number;
  /** Serve Prometheus metrics and /health at HOST:PORT. */
  readonly metrics?: string;
  /** Retention windows and how often a pass runs (src/retention). */
  readonly retention?: { readonly policy: RetentionPolicy; readonly intervalMs: number; readonly level1AgeMs?: number; readonly level2AgeMs?: number };
  readonly version: string;
  /** Called once the mount is ready. */
  readonly onReady: (message: string) => void;
  readonly log: (message: string) => void;
}

/**
 * The data directory's pid file: refuses a second mount of the same data
 * directory while the first one's process lives; a pid file left by a crash
 * is taken over.
 */
async function lockDataDir(dataDir: string, mountpoint: string): Promise<string> {
  await mkdir(dataDir, { recursive: true });
  const file = join(dataDir, "objectfs.pid");
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(file, "wx");
      await writeFile(file, `${process.pid} ${mountpoint}\n`);
      closeSync(fd);
      return file;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const [pid, mnt] = (await readFile(file, "utf8").catch(() => "")).trim().split(" ");
      if (pid && Number(pid) !== process.pid && !(await exited(Number(pid), 3000))) {
        throw new MountError(`data directory ${dataDir} is in use by objectfs (pid ${pid}, mounted at ${mnt}); unmount that first or use another --data-dir`);
      }
      await rm(file, { force: true }); // left by a process that is gone
    }
  }
  throw new MountError(`cannot lock data directory ${dataDir}`);
}

/**
 * A data directory belongs to one source: its journal describes that bucket and prefix (or
 * no bucket at all). Using it for another would mix two trees.
 */
async function claimDataDir(dataDir: string, url: string | undefined): Promise<void> {
  const file = join(dataDir, "source");
  const had = (await readFile(file, "utf8").catch(() => undefined))?.trim();
  if (url === undefined) {
    if (had !== undefined) throw new MountError(`data directory ${dataDir} belongs to ${had}; mount that source ("objectfs mount ${had} MOUNTPOINT") or use another --data-dir`);
    return;
  }
  if (had === undefined) {
    const used = await readFile(join(dataDir, "journal", "CURRENT")).then(() => true, () => false);
    if (used) throw new MountError(`data directory ${dataDir} holds a local-only filesystem, not ${url}; use another --data-dir for the bucket`);
    await writeFile(file, `${url}\n`);
  } else if (had !== url) {
    throw new MountError(`data directory ${dataDir} belongs to ${had}, not ${url}; use another --data-dir`);
  }
}

/** How often a mount makes everything written durable, fsync or not (ext4 commits every 5 s). */
const SETTLE_INTERVAL_MS = 5000;
/** How long an unmount waits for the read cache's chunk files still being written. */
const CACHE_FLUSH_MS = 3000;

/** Resolves with the reason the mount should end: a signal, or the mount disappearing. */
const stopRequested = (mountpoint: string) =>
  Effect.callback<string>((resume) => {
    const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
    const onSignal = (sig: string) => resume(Effect.succeed(sig));
    for (const s of signals) process.on(s, onSignal);
    // Unmounted by someone else (umount, fusermount -u): flush and exit too.
    const watch = setInterval(() => {
      void mountEntry(mountpoint).then((e) => {
        if (!e || e.source !== `objectfs@${process.pid}`) resume(Effect.succeed("mount went away"));
      });
    }, 1000);
    return Effect.sync(() => {
      clearInterval(watch);
      for (const s of signals) process.off(s, onSignal);
    });
  });

/** With `--metrics`: the metrics endpoint (released with the scope) and the hook that feeds it. */
function metricsFor(o: ServeOptions, fs: Filesystem, replication: Replication | undefined) {
  return Effect.gen(function* () {
    if (!o.metrics) return {};
    const metrics = new Metrics();
    const addr = o.metrics;
    yield* Effect.acquireRelease(
      Effect.tryPromise({ try: () => serveMetrics(addr, metrics, fs, replication), catch: (e) => e }),
      (m) => Effect.promise(() => m.close()),
    );
    return { onOperation: (op: string, seconds: number, ok: boolean, bytes: number) => metrics.observe(op, seconds, ok, bytes) };
  });
}

/** Serve a past state read-only: built in a temporary directory, removed on the way out. */
function servePast(o: ServeOptions & { at: NonNullable<ServeOptions["at"]> }): Promise<void> {
  const program = Effect.gen(function* () {
    const past = yield* Effect.acquireRelease(
      Effect.tryPromise({ try: () => openPast(o.at.history, o.at.point, o.log), catch: (e) => e }),
      (p) => Effect.promise(() => p.close()),
    );
    yield* Effect.acquireRelease(
      Effect.tryPromise({ try: () => listenControl(o.mountpoint, past.fs, undefined), catch: (e) => e }),
      (close) => Effect.promise(() => close()),
    );
    const observe = yield* metricsFor(o, past.fs, undefined);
    yield* Effect.acquireRelease(
      Effect.tryPromise({ try: () => mountFilesystem(past.fs, o.mountpoint, { allowOther: o.allowOther, cacheTimeout: o.cacheTimeout, readOnly: true, log: o.log, ...observe }), catch: (e) => e }),
      (m) => Effect.promise(() => m.unmount()),
    );
    o.onReady(`objectfs: serving ${o.mountpoint} read-only as it was after seq ${past.seq} (pid ${process.pid})`);
    const why = yield* stopRequested(o.mountpoint);
    o.log(`objectfs: ${why}: unmounting ${o.mountpoint}`);
  });
  return Effect.runPromise(Effect.scoped(program)).then(() => o.log("objectfs: unmounted cleanly"));
}

/** Mount and serve until asked to stop; every resource is released on the way out. */
export function serve(o: ServeOptions): Promise<void> {
  if (o.at) return servePast({ ...o, at: o.at });
  const program = Effect.gen(function* () {
    yield* Effect.acquireRelease(
      Effect.tryPromise({ try: () => lockDataDir(o.dataDir, o.mountpoint), catch: (e) => e }),
      (file) => Effect.promise(() => rm(file, { force: true })),
    );
    const src = o.source;
    yield* Effect.tryPromise({ try: () => claimDataDir(o.dataDir, src?.url), catch: (e) => e });
    const remote = src
      ? yield* Effect.acquireRelease(
          Effect.tryPromise({
            try: () =>
              openRemote({
                bucket: src.bucket, prefix: src.prefix, dataDir: o.dataDir, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, log: o.log,
                store: { ...(src.endpoint ? { endpoint: src.endpoint } : {}), ...(src.region ? { region: src.region } : {}), ...(src.pathStyle !== undefined ? { forcePathStyle: src.pathStyle } : {}) },
                ...(src.cacheBytes !== undefined ? { cacheBytes: src.cacheBytes } : {}),
              }),
            catch: (e) => e,
          }),
          // Chunk files still being written (at most a span or two) go to disk first, for a while.
          (r) => Effect.promise(() => Promise.race([r.cache.flush().catch(() => {}), Bun.sleep(CACHE_FLUSH_MS)]).then(() => r.store.close())),
        )
      : undefined;
    const fs = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => Filesystem.open(o.dataDir, { durability: o.durability, readOnly: o.readOnly, version: o.version, log: o.log, ...(remote ? { remote: remote.source } : {}) }),
        catch: (e) => e,
      }),
      (fs) => Effect.promise(() => fs.close()),
    );
    // A retention pass killed after its checkpoint is finished (see src/retention/retention.ts).
    if (!o.readOnly) yield* Effect.tryPromise({ try: () => finishInterruptedPass(fs, o.log), catch: (e) => e });
    // Like a filesystem's commit interval: bytes written without fsync reach the disk within
    // seconds, and after a crash the next mount has at most that much to check.
    if (!o.readOnly) {
      yield* Effect.acquireRelease(
        Effect.sync(() => setInterval(() => void fs.journal.settle().catch(() => {}), SETTLE_INTERVAL_MS)),
        (t) => Effect.sync(() => clearInterval(t)),
      );
    }
    let replication: Replication | undefined;
    const retention = o.readOnly || !o.retention
      ? undefined
      : yield* Effect.acquireRelease(
          Effect.sync(() => {
            const r = o.retention!;
            const service = new RetentionService({
              fs, policy: r.policy, intervalMs: r.intervalMs, log: o.log,
              ...(remote ? { remote: { store: remote.store, prefix: remote.prefix, ...(r.level1AgeMs !== undefined ? { level1AgeMs: r.level1AgeMs } : {}), ...(r.level2AgeMs !== undefined ? { level2AgeMs: r.level2AgeMs } : {}) } } : {}),
            });
            service.start();
            return service;
          }),
          (r) => Effect.promise(() => r.stop()),
        );
    if (remote && src) {
      replication = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            const r = new Replication({
              fs, store: remote.store, prefix: remote.prefix, cache: remote.cache, lookup: (p) => remote.source.list(p), log: o.log,
              ...(src.writeBackMs !== undefined ? { writeBackMs: src.writeBackMs } : {}),
              ...(src.sealMs !== undefined ? { sealMs: src.sealMs } : {}),
            });
            await r.start();
            return r;
          },
          catch: (e) => e,
        }),
        (r) => Effect.promise(() => r.stop()),
      );
      yield* Effect.acquireRelease(
        Effect.tryPromise({ try: () => listenControl(o.mountpoint, fs, replication, retention), catch: (e) => e }),
        (close) => Effect.promise(() => close()),
      );
    } else {
      yield* Effect.acquireRelease(
        Effect.tryPromise({ try: () => listenControl(o.mountpoint, fs, undefined, retention), catch: (e) => e }),
        (close) => Effect.promise(() => close()),
      );
    }
    const observe = yield* metricsFor(o, fs, replication);
    yield* Effect.acquireRelease(
      Effect.tryPromise({ try: () => mountFilesystem(fs, o.mountpoint, { allowOther: o.allowOther, cacheTimeout: o.cacheTimeout, readOnly: o.readOnly, log: o.log, ...observe }), catch: (e) => e }),
      (m, exit) =>
        Effect.promise(async () => {
          if (!Exit.isSuccess(exit)) o.log(`objectfs: after an error: unmounting ${o.mountpoint}`);
          await m.unmount();
        }),
    );
    o.onReady(
      `objectfs: serving ${o.mountpoint}${src ? ` (${src.url}${src.endpoint ? ` at ${src.endpoint}` : ""})` : ""} from ${o.dataDir} (pid ${process.pid}, durability ${o.durability ?? "fsync"}${o.readOnly ? ", read-only" : ""})`,
    );
    const why = yield* stopRequested(o.mountpoint);
    o.log(`objectfs: ${why}: unmounting ${o.mountpoint}`);
  });
  return Effect.runPromise(Effect.scoped(program)).then(() => o.log("objectfs: unmounted cleanly"));
}
