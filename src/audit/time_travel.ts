/**
 * Any past state of a journal: the events up to a point (a seq, or the last event at or before
 * a time) copied into a fresh data directory, projections rebuilt from them, opened read-only.
 * The events come from a local journal or from the segments in S3 (verified on the way), so
 * the tree as it was can be mounted or restored on any machine. Where retention left a
 * checkpoint, the replay starts from it (see src/retention).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { Journal, JournalError, type DataRef, type JournalEvent, type NewEvent } from "../../journal/mod.ts";
import { Filesystem } from "../fs/filesystem.ts";
import type { RemoteSource } from "../fs/remote.ts";
import { TreeState } from "../projection/state.ts";
import { historyEvents, horizons, remapExtents, type History } from "../retention/history.ts";

/** A point in a journal: a seq, or a time (milliseconds since the epoch). */
export type Point = { readonly seq: number } | { readonly time: number };

/** `--at` as given: an integer is a seq; anything else a time (ISO 8601). */
export function parsePoint(text: string): Point | undefined {
  if (/^\d+$/.test(text)) return { seq: Number(text) };
  const t = Date.parse(text);
  return Number.isNaN(t) ? undefined : { time: t };
}

export interface PastState {
  readonly fs: Filesystem;
  /** The last seq the state includes. */
  readonly seq: number;
  readonly dir: string;
  /** Close the filesystem and remove the directory. */
  close(): Promise<void>;
}

/** Refuse a point older than what the history can restore, in one sentence. */
export function checkRetained(history: History, at: Point | undefined): void {
  const h = horizons(history);
  if (!at || !history.checkpoint) return;
  const old = "seq" in at ? at.seq < h.dataFrom : at.time < h.dataFromTime;
  if (old) {
    const what = "seq" in at ? `seq ${at.seq}` : new Date(at.time).toISOString();
    throw new JournalError(
      "dropped",
      `${what} is older than the retained window: the oldest point that can be restored is seq ${h.dataFrom} (${new Date(h.dataFromTime).toISOString()}); the audit log keeps events from seq ${h.auditFrom}`,
    );
  }
}

/** Whether `e` lies past the point. */
export const pastPoint = (e: JournalEvent, at: Point | undefined) => at !== undefined && ("seq" in at ? e.seq > at.seq : e.time > at.time);

/**
 * Build the state at `at` from a history in a new directory under `parent`. `onProgress` gets
 * the seq reached now and then.
 */
export async function stateAt(
  history: History,
  at: Point | undefined,
  parent: string,
  options: { readonly remote?: RemoteSource; readonly onProgress?: (seq: number) => void } = {},
): Promise<PastState> {
  checkRetained(history, at);
  const c = history.checkpoint;
  const dir = await mkdtemp(join(parent, "objectfs-at-"));
  let last = c?.seq ?? 0;
  let carriersCopied = 0;
  const carrierRefs = new Map<number, DataRef>();
  try {
    const journal = await Journal.open(dir);
    try {
      let batch: NewEvent[] = [];
      let origins: number[] = [];
      let bytes = 0;
      const flush = async () => {
        if (batch.length === 0) return;
        const stored = await journal.append(batch);
        // Carriers are copied first, for their bytes: remember where each landed.
        for (let i = 0; i < origins.length; i++) {
          const s = stored[i]!;
          if (s.type === "ExtentWritten" && s.ref) carrierRefs.set(origins[i]!, s.ref);
        }
        batch = [];
        origins = [];
        bytes = 0;
      };
      for await (const e of historyEvents(history)) {
        const { seq: _seq, ...rest } = e;
        const copy = (e.type === "ExtentWritten" ? (({ ref: _ref, ...x }) => x)(rest as typeof rest & { ref?: unknown }) : rest) as NewEvent;
        if (c && e.seq <= c.seq) {
          batch.push(copy);
          origins.push(e.seq);
          carriersCopied++;
        } else {
          if (pastPoint(e, at)) break;
          if (origins.length > 0) await flush();
          batch.push(copy);
          last = e.seq;
        }
        bytes += e.type === "ExtentWritten" ? e.length : 0;
        if (batch.length >= 1000 || bytes >= 64 << 20) {
          await flush();
          options.onProgress?.(last);
        }
      }
      await flush();
      await journal.sync();
    } finally {
      await journal.close();
    }
    if (last === 0) throw new Error("there is no event at or before that point");
    if (c) {
      const initial = TreeState.fromDump(remapExtents(c, carrierRefs));
      await Filesystem.repair(dir, { initial, fromSeq: carriersCopied + 1 });
    } else await Filesystem.repair(dir);
    const fs = await Filesystem.open(dir, { readOnly: true, ...(options.remote ? { remote: options.remote } : {}) });
    return {
      fs,
      seq: last,
      dir,
      async close() {
        await fs.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}
