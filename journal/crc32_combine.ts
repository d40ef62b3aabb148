/**
 * CRC-32 (the zlib polynomial, as `node:zlib` `crc32` computes it) of a concatenation from
 * the CRCs of its parts: `crc32(a ++ b) === crc32Combine(crc32(a), crc32(b), b.length)`. A
 * segment's checksum is then checked from the CRCs its events' checks computed anyway, and
 * its bytes are read once, not twice.
 *
 * Arithmetic on polynomials over GF(2) modulo the CRC polynomial, bit-reflected as the CRC
 * is: appending n zero bytes to a message multiplies its CRC register by x^(8n).
 */

const POLY = 0xedb88320;
/** x^0, bit-reflected. */
const ONE = 0x80000000;

/** a(x) b(x) modulo the CRC polynomial. */
function multiply(a: number, b: number): number {
  let m = ONE;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** POWERS[k] = x^(2^k) modulo the polynomial. */
const POWERS: number[] = [ONE >>> 1];
for (let k = 1; k < 64; k++) POWERS.push(multiply(POWERS[k - 1]!, POWERS[k - 1]!));

/** x^(8n) modulo the polynomial. */
function shiftOf(n: number): number {
  let p = ONE;
  for (let k = 3; n > 0; k++, n = Math.floor(n / 2)) if (n % 2 === 1) p = multiply(POWERS[k % 64]!, p);
  return p;
}

const shifts = new Map<number, number>();

/** The CRC-32 of `a ++ b`, given `crcA`, `crcB` and the length of `b` in bytes. */
export function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  let s = shifts.get(lengthB);
  if (s === undefined) {
    s = shiftOf(lengthB);
    // Writes come in a few sizes: remember those (and not every odd size, without bound).
    if (shifts.size < 4096) shifts.set(lengthB, s);
  }
  return (multiply(s, crcA >>> 0) ^ crcB) >>> 0;
}
