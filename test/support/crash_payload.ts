/** Deterministic bytes for crash tests: the content can be checked from `n` alone. */
export function payloadFor(n: number): Uint8Array {
  const len = [0, 1, 100, 4096, 30000, 131072][n % 6]!;
  const out = new Uint8Array(len);
  let x = (n * 2654435761) >>> 0;
  for (let i = 0; i < len; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}
