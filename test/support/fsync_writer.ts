/**
 * Writer for the mount crash test. Usage: bun fsync_writer.ts DIR PREFIX SEED
 *
 * Writes files DIR/PREFIX-<i> of random sizes (0 to 4 MiB, log-uniform) whose
 * bytes follow from a per-file seed (see `contentFor`), in pieces of random
 * size, until killed. On stdout, written synchronously so that a line is in
 * the pipe before what it announces happens:
 *
 *   ready
 *   writing NAME SIZE SEED    before the file is created
 *   synced NAME SIZE SEED     after FileHandle.sync() returned (the file is durable)
 *
 * It runs in its own process: it never serves the mount it writes to.
 */
import { writeSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";

export const MAX_FILE_BYTES = 4 * 1024 * 1024;

/** xorshift32: small, fast, and the same in the writer and the checker. */
function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** The bytes of a file written with `seed`: the same every time. */
export function contentFor(seed: number, size: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(size / 4));
  const next = xorshift(seed ^ 0x5bd1e995);
  for (let i = 0; i < words.length; i++) words[i] = next();
  return new Uint8Array(words.buffer, 0, size);
}

/** The size and the piece sizes of a file, from its seed. */
export function planFor(seed: number): { size: number; pieces: number[] } {
  const next = xorshift(seed);
  const r = next() / 2 ** 32;
  // log-uniform over 1 B … 4 MiB, and 1 in 10 files empty
  const size = r < 0.1 ? 0 : Math.min(MAX_FILE_BYTES, Math.floor(2 ** (((r - 0.1) / 0.9) * 22)));
  const pieces: number[] = [];
  for (let left = size; left > 0; ) {
    const p = Math.min(left, 1 + (next() % (512 * 1024)));
    pieces.push(p);
    left -= p;
  }
  return { size, pieces };
}

if (import.meta.main) {
  const [dir, prefix, seedArg] = process.argv.slice(2);
  if (!dir || !prefix || !seedArg) throw new Error("usage: bun fsync_writer.ts DIR PREFIX SEED");
  const say = (line: string) => writeSync(1, `${line}\n`);
  const seeds = xorshift(Number(seedArg));
  say("ready");
  for (let i = 0; ; i++) {
    const seed = seeds();
    const name = `${prefix}-${i}`;
    const { size, pieces } = planFor(seed);
    const bytes = contentFor(seed, size);
    say(`writing ${name} ${size} ${seed}`);
    const fh = await open(join(dir, name), "wx", 0o644);
    let pos = 0;
    for (const p of pieces) {
      const { bytesWritten } = await fh.write(bytes, pos, p, pos);
      if (bytesWritten !== p) throw new Error(`short write to ${name}: ${bytesWritten} of ${p} at ${pos}`);
      pos += p;
    }
    await fh.sync();
    say(`synced ${name} ${size} ${seed}`);
    await fh.close();
  }
}
