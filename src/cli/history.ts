/**
 * Where a past state comes from, for `mount --at` and `restore`: a local data directory's
 * journal, or one client's journal segments in S3 (with S3 also serving the bytes of files
 * that came from objects, pinned to the versions the journal saw).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Journal, JournalError, type JournalEvent } from "../../journal/mod.ts";
import { stateAt, type PastState, type Point } from "../audit/time_travel.ts";
import { remoteHistory } from "../replicator/checkpoints.ts";
import { ChunkCache, makeRemoteSource, remoteClients } from "../replicator/mod.ts";
import { localCheckpoint } from "../retention/history.ts";
import { makeObjectStore, type ObjectStoreConfig } from "../s3/mod.ts";
import { UsageError } from "./command.ts";

export type HistorySource =
  | { readonly kind: "local"; readonly dataDir: string }
  | { readonly kind: "s3"; readonly bucket: string; readonly prefix: string; readonly store: Omit<ObjectStoreConfig, "bucket">; readonly client?: string; readonly stopAtCorruption?: boolean };

/** The state at `at` (or the latest), ready to read. `log` hears about a corrupt tail skipped. */
export async function openPast(source: HistorySource, at: Point | undefined, log: (m: string) => void, onProgress?: (seq: number) => void): Promise<PastState> {
  const work = await mkdtemp(join(tmpdir(), "objectfs-history-"));
  if (source.kind === "local") {
    let journal: Journal;
    try {
      journal = await Journal.open(source.dataDir);
    } catch (e) {
      await rm(work, { recursive: true, force: true });
      throw e;
    }
    try {
      const checkpoint = await localCheckpoint(source.dataDir);
      const history = { ...(checkpoint ? { checkpoint } : {}), events: () => journal.read({ data: true }) };
      const past = await stateAt(history, at, work, { ...(onProgress ? { onProgress } : {}) });
      return withCleanup(past, work);
    } finally {
      await journal.close();
    }
  }
  const store = makeObjectStore({ bucket: source.bucket, ...source.store });
  try {
    const clients = source.client ? [source.client] : await remoteClients(store, source.prefix);
    if (clients.length === 0) throw new UsageError(`s3://${source.bucket}/${source.prefix} holds no objectfs journal`);
    if (clients.length > 1) throw new UsageError(`s3://${source.bucket}/${source.prefix} holds the journals of ${clients.length} clients (${clients.join(", ")}); choose one with --client`);
    const cache = await ChunkCache.open({ dir: join(work, "cache"), store });
    const reads = makeRemoteSource({ store, prefix: source.prefix, cache, uid: 0, gid: 0 });
    const remote = { ...reads, list: () => Promise.reject(new Error("this directory had not been listed at that point, so its contents then are unknown")) };
    const h = await remoteHistory(store, source.prefix, clients[0]!);
    const history = { ...h, events: () => stopAtCorruption(h.events(), source.stopAtCorruption ?? false, log) };
    const past = await stateAt(history, at, work, { remote, ...(onProgress ? { onProgress } : {}) });
    return withCleanup(past, work, () => store.close());
  } catch (e) {
    store.close();
    await rm(work, { recursive: true, force: true });
    throw e;
  }
}

function withCleanup(past: PastState, work: string, also?: () => void): PastState {
  return {
    ...past,
    async close() {
      await past.close();
      also?.();
      await rm(work, { recursive: true, force: true });
    },
  };
}

/** Events until a corrupt or discontinuous segment: an error, or (asked for) the end. */
async function* stopAtCorruption(events: AsyncIterable<JournalEvent>, stop: boolean, log: (m: string) => void): AsyncGenerator<JournalEvent> {
  let last = 0;
  try {
    for await (const e of events) {
      yield e;
      last = e.seq;
    }
  } catch (e) {
    if (!stop || !(e instanceof JournalError) || (e.reason !== "corrupt" && e.reason !== "discontinuous")) {
      if (e instanceof JournalError) throw new JournalError(e.reason, `${e.message}; to use the journal up to the last good point (seq ${last}), add --stop-at-corruption`);
      throw e;
    }
    log(`objectfs: ${e.message}; stopping at seq ${last}, the last good point`);
  }
}
