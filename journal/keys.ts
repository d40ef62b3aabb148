/**
 * LevelDB key schema. All keys live in one LevelDB at `<data-dir>/journal`;
 * integers are big-endian so byte order is numeric order.
 *
 *   !e!<seq:u64>            the event seq (codec.ts), or a group of events committed together, seq being the
 *                           first one's (event_rows.ts); ExtentWritten keeps a DataRef, its bytes are in the data log
 *   !m!head                 {seq, dataFile, dataEnd, durable}: last committed seq and end of the data log,
 *                           rewritten in every commit batch (the single commit point)
 *   !m!client               this data directory's client id (random, made on first open)
 *   !m!<name>               other store metadata, by name
 *   !<projection>!<key>     projection rows: one sublevel per projection, owned by src/projection,
 *                           written in the same batch as the events they derive from
 */

const TWO_32 = 2 ** 32;

/** 8-byte big-endian encoding of a non-negative safe integer. */
export function u64Key(n: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeUInt32BE(Math.floor(n / TWO_32), 0);
  b.writeUInt32BE(n >>> 0, 4);
  return b;
}

export function readU64(b: Uint8Array, offset = 0): number {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return v.getUint32(offset) * TWO_32 + v.getUint32(offset + 4);
}

export function writeU64(b: Uint8Array, offset: number, n: number): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  v.setUint32(offset, Math.floor(n / TWO_32));
  v.setUint32(offset + 4, n >>> 0);
}

/** Concatenate key parts (strings as UTF-8, numbers as u64). */
export function key(...parts: (string | number | Uint8Array)[]): Buffer {
  // Fast paths for the shapes projections use on every operation.
  if (parts.length === 1 && typeof parts[0] === "number") return u64Key(parts[0]);
  if (parts.length === 2 && typeof parts[0] === "number") {
    const second = parts[1];
    if (typeof second === "number") {
      const b = Buffer.allocUnsafe(16);
      b.writeUInt32BE(Math.floor(parts[0] / TWO_32), 0);
      b.writeUInt32BE(parts[0] >>> 0, 4);
      b.writeUInt32BE(Math.floor(second / TWO_32), 8);
      b.writeUInt32BE(second >>> 0, 12);
      return b;
    }
    if (typeof second === "string") {
      const len = Buffer.byteLength(second);
      const b = Buffer.allocUnsafe(8 + len);
      b.writeUInt32BE(Math.floor(parts[0] / TWO_32), 0);
      b.writeUInt32BE(parts[0] >>> 0, 4);
      b.write(second, 8, "utf8");
      return b;
    }
  }
  return Buffer.concat(
    parts.map((p) => (typeof p === "number" ? u64Key(p) : typeof p === "string" ? Buffer.from(p, "utf8") : Buffer.from(p.buffer, p.byteOffset, p.byteLength))),
  );
}
