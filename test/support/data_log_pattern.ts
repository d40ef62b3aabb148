/** Bytes for data log tests whose values follow from their file and position alone. */
export function patternByte(file: number, pos: number): number {
  return (Math.imul(pos, 2654435761) ^ Math.imul(file + 1, 40503) ^ (pos >>> 12)) >>> 24;
}

/** `n` pattern bytes as they would sit in `file` from `pos` on. */
export function patternBytes(file: number, pos: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = patternByte(file, pos + i);
  return out;
}

/** Where a reservation of `n` bytes lands, given the log's reserved end (mirrors DataLog.reserve). */
export function landing(end: { file: number; end: number }, n: number, maxFileBytes: number): { file: number; pos: number } {
  return end.end > 0 && end.end + n > maxFileBytes ? { file: end.file + 1, pos: 0 } : { file: end.file, pos: end.end };
}
