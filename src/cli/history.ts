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
import type { RemoteSource } from "../fs/remote.ts";
import { remoteHistory } from "../replicator/checkpoints.ts";
import { ChunkCache, makeRemoteSource } from "../replicator/mod.ts";
import { listJournals } from "../replicator/segments.ts";
import { localCheckpoint, type History } from "../retention/history.ts";
import { makeObjectStore, type ObjectStoreConfig } from "../s3/mod.ts";
import { UsageError } from "./command.ts";

export type HistorySource =
  | { readonly kind: "local"; readonly dataDir: string }
  | { readonly kind: "s3"; readonly bucket: string; readonly prefix: string; readonly store: Omit<ObjectStoreConfig, "bucket">; readonly client?: string; readonly stopAtCorruption?: boolean };

export interface OpenHistory {
  readonly history: History;
  /** S3 sources: reads of object bytes (pinned versions), through a cache in a temp directory. */
  readonly remote?: RemoteSource;
  /** A temporary directory for whatever is built from it. */
  readonly work: string;
  /** Done reading the journal (a local one is unlocked); the work directory stays. */
  doneReading(): Promise<void>;
  close(): Promise<void>;
}

/** A journal's history, ready to replay. `log` hears about a corrupt tail skipped. */
export async function openHistory(source: HistorySource, log: (m: string) => void): Promise<OpenHistory> {
  const work = await mkdtemp(join(tmpdir(), "objectfs-history-"));
  if (source.kind === "local") {
    let journal: Journal;
    try {
      journal = await Journal.open(source.dataDir);
    } catch (e) {
      await rm(work, { recursive: true, force: true });
      throw e;
    }
    const checkpoint = await localCheckpoint(source.dataDir);
    return {
      history: { ...(checkpoint ? { checkpoint } : {}), events: () => journal.read({ data: true }) },
      work,
      doneReading: () => journal.close(),
      async close() {
        await journal.close();
        await rm(work, { recursive: true, force: true });
      },
    };
  }
  const store = makeObjectStore({ bucket: source.bucket, ...source.store });
  try {
    const journals = await listJournals(store, source.prefix);
    const clients = source.client ? [source.client] : [...journals.keys()];
    if (clients.length === 0) throw new UsageError(`s3://${source.bucket}/${source.prefix} holds no objectfs journal`);
    if (clients.length > 1) throw new UsageError(`s3://${source.bucket}/${source.prefix} holds the journals of ${clients.length} clients (${clients.join(", ")}); choose one with --client`);
    const cache = await ChunkCache.open({ dir: join(work, "cache"), store });
    const reads = makeRemoteSource({ store, prefix: source.prefix, cache, uid: 0, gid: 0 });
    const remote = { ...reads, list: () => Promise.reject(new Error("this directory had not been listed at that point, so its contents then are unknown")) };
    const h = await remoteHistory(store, source.prefix, clients[0]!, journals.get(clients[0]!) ?? []);
    const stop = source.stopAtCorruption ?? false;
    return {
      // Stopping at the last good point needs every event it keeps to come from a segment verified whole.
      history: { ...h, events: (o) => stopAtCorruption(h.events(stop ? {} : o), stop, log) },
      remote,
      work,
      doneReading: async () => {},
      async close() {
        store.close();
        await rm(work, { recursive: true, force: true });
      },
    };
  } catch (e) {
    store.close();
    await rm(work, { recursive: true, force: true });
    throw e;
  }
}

/** The state at `at` (or the latest), ready to read. */
export async function openPast(source: HistorySource, at: Point | undefined, log: (m: string) => void, onProgress?: (seq: number) => void): Promise<PastState> {
  const h = await openHistory(source, log);
  try {
    const past = await stateAt(h.history, at, h.work, { ...(h.remote ? { remote: h.remote } : {}), ...(onProgress ? { onProgress } : {}) });
    await h.doneReading(); // the past state has its own copy of the events
    return {
      ...past,
      async close() {
        await past.close();
        await h.close();
      },
    };
  } catch (e) {
    await h.close();
    throw e;
  }
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
      // Read early, events of the damaged segment may have come before the error: its last whole segment ended at lastGoodSeq.
      const good = (e as { lastGoodSeq?: number }).lastGoodSeq ?? last;
      if (e instanceof JournalError) throw new JournalError(e.reason, `${e.message}; to use the journal up to the last good point (seq ${good}), add --stop-at-corruption`);
      throw e;
    }
    log(`objectfs: ${e.message}; stopping at seq ${last}, the last good point`);
  }
}
