/**
 * Downloads through the engine against both real servers: ranged GETs under the controller
 * deliver the exact bytes (written at their offsets, any order), checked against the ETag where
 * it is an MD5; through a proxy that answers a share of GETs with 503, resets or truncates them,
 * the download still completes exactly, retries counted; an object overwritten during the
 * download fails it with a sentence naming the key, never a mix of two versions.
 */
import { describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { makeObjectStore } from "../../src/s3/mod.ts";
import { DownloadChanged, TransferEngine, type DownloadTarget } from "../../src/transfer/engine.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";
import { createBucket, S3_SERVER_KINDS, storeConfig } from "../support/s3_servers.ts";
import { s3Testbed } from "../support/testbed.ts";

const bed = s3Testbed();
const MiB = 1024 * 1024;
const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");

/** A target that assembles the object in memory and records the order parts came in. */
function into(key: string, size: number, etag: string): DownloadTarget & { bytes: Uint8Array; offsets: number[] } {
  const bytes = new Uint8Array(size);
  const offsets: number[] = [];
  return {
    key,
    size,
    etag,
    bytes,
    offsets,
    async write(offset, part) {
      offsets.push(offset);
      bytes.set(part, offset);
      if (offsets.length % 3 === 0) await Bun.sleep(5); // a disk that sometimes lags
    },
  };
}

for (const kind of S3_SERVER_KINDS) {
  describe(kind, () => {
    test("ranged GETs under the controller deliver the exact bytes, verified, through faults; a changed object fails the download", async () => {
      const server = await bed.server(kind);
      const bucket = await createBucket(server);
      const store = makeObjectStore(storeConfig(server, bucket));
      bed.later(() => store.close());
      const body = randomBytes(48 * MiB + 777);
      const put = await store.put("obj.bin", body);
      const etag = put.etag;
      const engine = new TransferEngine(store, { memoryBytes: 32 * MiB });
      const t = into("obj.bin", body.length, etag);
      const report = await engine.download(t);
      expect(md5(t.bytes)).toBe(md5(body));
      expect(report.verified).toBe(true);
      expect(report.bytes).toBe(body.length);
      expect(report.parts).toBeGreaterThanOrEqual(2);
      expect(new Set(t.offsets).size).toBe(report.parts);
      expect(report.peakBytes).toBeLessThanOrEqual(32 * MiB);

      // Through faults: 503s, resets and truncated bodies on a share of the GETs.
      const proxy = await startFaultProxy(server.endpoint, { seed: 5 });
      bed.later(() => proxy.close());
      proxy.setRules([
        { method: "GET", pathIncludes: "obj.bin", fault: { kind: "status", status: 503 }, probability: 0.15 },
        { method: "GET", pathIncludes: "obj.bin", fault: { kind: "reset" }, probability: 0.1 },
        { method: "GET", pathIncludes: "obj.bin", fault: { kind: "truncate", bytes: 1000 }, probability: 0.1 },
      ]);
      const via = makeObjectStore({ ...storeConfig(server, bucket), endpoint: proxy.endpoint, maxAttempts: 1 });
      bed.later(() => via.close());
      const faulty = into("obj.bin", body.length, etag);
      const rough = await new TransferEngine(via, { memoryBytes: 32 * MiB, attempts: 10 }).download(faulty);
      expect(md5(faulty.bytes)).toBe(md5(body));
      expect(rough.retries).toBeGreaterThan(0);
      proxy.setRules([]);

      // Overwritten after the first part: the download fails, naming the key; nothing mixed is reported as done.
      let overwritten = false;
      const changing = into("obj.bin", body.length, etag);
      const write = changing.write.bind(changing);
      changing.write = async (offset, part) => {
        if (!overwritten) {
          overwritten = true;
          await store.put("obj.bin", randomBytes(body.length));
        }
        await write(offset, part);
      };
      const err = await new TransferEngine(store, { memoryBytes: 16 * MiB }).download(changing).catch((e) => e);
      expect(err).toBeInstanceOf(DownloadChanged);
      expect(String(err.message)).toContain("obj.bin changed in S3 during the download");
    }, 180_000);
  });
}

test("bytes that do not match the object's MD5 fail the download (a store that flips one byte of one range)", async () => {
  const body = randomBytes(20 * MiB);
  const etag = `"${md5(body)}"`;
  let flipped = false;
  const lying = {
    endpoint: "memory://lying",
    async get(_key: string, o: { range: { start: number; end: number } }) {
      const bytes = new Uint8Array(body.subarray(o.range.start, o.range.end + 1));
      if (!flipped && o.range.start > 0) {
        flipped = true;
        bytes[7]! ^= 0xff;
      }
      return { bytes, head: { key: "x", size: body.length, etag } };
    },
  } as unknown as ConstructorParameters<typeof TransferEngine>[0];
  const err = await new TransferEngine(lying).download(into("x", body.length, etag)).catch((e) => e);
  expect(flipped).toBe(true);
  expect(String(err?.message)).toContain("do not match its ETag");
});
