/**
 * Any past state of a journal: the events up to a point (a seq, or the last event at or before
 * a time) copied into a fresh data directory, projections rebuilt from them, opened read-only.
 * The events come from a local journal or from the segments in S3 (verified on the way), so
 * the tree as it was can be mounted or restored on any machine.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { Journal, type JournalEvent, type NewEvent } from "../../journal/mod.ts";
import { Filesystem } from "../fs/filesystem.ts";
import type { RemoteSource } from "../fs/remote.ts";

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

/**
 * Build the state at `at` from `events` (in seq order, data inline) in a new directory under
 * `parent`. `onProgress` gets the seq reached now and then.
 */
export async function stateAt(
  events: AsyncIterable<JournalEvent>,
  at: Point | undefined,
  parent: string,
  options: { readonly remote?: RemoteSource; readonly onProgress?: (seq: number) => void } = {},
): Promise<PastState> {
  const dir = await mkdtemp(join(parent, "objectfs-at-"));
  let last = 0;
  try {
    const journal = await Journal.open(dir);
    try {
      let batch: NewEvent[] = [];
      const flush = async () => {
        if (batch.length > 0) await journal.append(batch);
        batch = [];
      };
      for await (const e of events) {
        if (at && ("seq" in at ? e.seq > at.seq : e.time > at.time)) break;
        if (e.seq !== last + 1) throw new Error(`the journal jumps from seq ${last} to ${e.seq}; it cannot be replayed from there`);
        const { seq: _seq, ...rest } = e;
        const copy = (e.type === "ExtentWritten" ? (({ ref: _ref, ...x }) => x)(rest as typeof rest & { ref?: unknown }) : rest) as NewEvent;
        batch.push(copy);
        last = e.seq;
        if (batch.length >= 1000) {
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
    await Filesystem.repair(dir);
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
