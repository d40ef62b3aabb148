/**
 * Content-MD5 digests off the event loop: hashing a part (about 350 MB/s here) on the thread
 * that also sends the parts in flight would hold them all up, so a worker thread hashes a copy
 * of each body while the others are on the wire. If the thread cannot start, or dies, digests
 * are computed in place.
 */
import { createHash } from "node:crypto";

let worker: Worker | undefined;
let broken = false;
let nextId = 0;
const pending = new Map<number, { resolve: (md5: string) => void; data: Uint8Array }>();

const inPlace = (data: Uint8Array) => createHash("md5").update(data).digest("base64");

function fail(): void {
  broken = true;
  worker = undefined;
  for (const [, p] of pending) p.resolve(inPlace(p.data));
  pending.clear();
}

function thread(): Worker | undefined {
  if (broken) return undefined;
  if (worker) return worker;
  try {
    const w = new Worker(new URL("./hash_worker.ts", import.meta.url).href);
    w.unref();
    w.onmessage = (event: MessageEvent<{ readonly id: number; readonly md5: string }>) => {
      const p = pending.get(event.data.id);
      pending.delete(event.data.id);
      p?.resolve(event.data.md5);
    };
    w.onerror = fail;
    w.addEventListener("close", fail);
    worker = w;
    return w;
  } catch {
    broken = true;
    return undefined;
  }
}

/** The base64 MD5 of `data` (for Content-MD5), computed on a worker thread. */
export function md5Base64(data: Uint8Array): Promise<string> {
  const w = thread();
  if (!w) return Promise.resolve(inPlace(data));
  return new Promise<string>((resolve) => {
    const id = ++nextId;
    // A copy goes to the thread (transferred, not cloned again): `data` may be a view of a
    // much larger buffer, and it is sent meanwhile. (A Buffer's `slice` would be a view.)
    const copy = new Uint8Array(data);
    pending.set(id, { resolve, data });
    try {
      w.postMessage({ id, data: copy }, [copy.buffer]);
    } catch {
      pending.delete(id);
      resolve(inPlace(data));
    }
  });
}
