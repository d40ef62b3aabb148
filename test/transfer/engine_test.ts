/**
 * The multipart engine against both real servers: the object assembled from its parts has the
 * bytes it was given (MD5 compared after a GET), also through a proxy answering a share of
 * requests with 503 SlowDown (the faults reach the controller, the retries are counted) and
 * from a source that reads into the engine's reused buffers; a failed upload is aborted and
 * leaves no multipart upload behind where the server can abort; the next upload starts warm.
 * A stream of small objects goes up exactly, through throttling too, and stops at the first
 * failure; the SDK's own retries, where it is allowed them, are counted as such.
 */
import { describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { makeObjectStore, probeCapabilities } from "../../src/s3/mod.ts";
import { TransferEngine } from "../../src/transfer/engine.ts";
import { createBucket, S3_SERVER_KINDS, storeConfig } from "../support/s3_servers.ts";
import { s3Testbed } from "../support/testbed.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";

const bed = s3Testbed();
const MiB = 1024 * 1024;
const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");

for (const kind of S3_SERVER_KINDS) {
  describe(kind, () => {
    test("parts under the controller assemble the exact bytes, through throttling too; failures abort; the next upload starts warm", async () => {
      const server = await bed.server(kind);
      const bucket = await createBucket(server);
      const store = makeObjectStore(storeConfig(server, bucket));
      bed.later(() => store.close());
      const body = randomBytes(40 * MiB + 12345);
      const source = (key: string) => ({ key, size: body.length, read: async (at: number, n: number) => body.subarray(at, at + n) });
      const engine = new TransferEngine(store, { memoryBytes: 64 * MiB });
      const first = await engine.upload(source("a.bin"));
      expect(first.outcome._tag).toBe("Written");
      expect(first.parts).toBeGreaterThanOrEqual(2);
      expect(first.peakBytes).toBeLessThanOrEqual(64 * MiB);
      expect(md5((await store.get("a.bin")).bytes)).toBe(md5(body));
      // Warm: the second upload starts from the first one's estimates.
      const second = await engine.upload(source("b.bin"));
      expect(second.final.phase).toBe("cruise");
      expect(md5((await store.get("b.bin")).bytes)).toBe(md5(body));

      // A fifth of the part uploads throttled: retried, counted, the bytes still exact.
      const proxy = await startFaultProxy(server.endpoint, { seed: 3 });
      bed.later(() => proxy.close());
      proxy.setRules([{ method: "PUT", pathIncludes: "partNumber", fault: { kind: "status", status: 503 }, probability: 0.2 }]);
      const via = makeObjectStore({ ...storeConfig(server, bucket), endpoint: proxy.endpoint, maxAttempts: 1 });
      bed.later(() => via.close());
      const throttled = await new TransferEngine(via, { memoryBytes: 64 * MiB }).upload(source("c.bin"));
      expect(throttled.faults).toBeGreaterThan(0);
      expect(md5((await store.get("c.bin")).bytes)).toBe(md5(body));
      proxy.setRules([]);

      // A source that fails midway: the upload is aborted.
      const failing = { key: "d.bin", size: body.length, read: async (at: number, n: number) => {
        if (at >= 20 * MiB) throw new Error("disk went away");
        return body.subarray(at, at + n);
      } };
      await expect(engine.upload(failing)).rejects.toThrow("disk went away");
      expect(await store.head("d.bin")).toBeUndefined();
      const caps = await probeCapabilities(store);
      if (caps.listMultipartUploads && caps.abortMultipart) {
        expect((await store.listMultipartUploads({ prefix: "d.bin" })).length).toBe(0);
      }
    }, 120_000);

    test("a source that reads into the engine's buffers gets them back only once their part is done, through throttling too", async () => {
      const server = await bed.server(kind);
      const bucket = await createBucket(server);
      const store = makeObjectStore(storeConfig(server, bucket));
      bed.later(() => store.close());
      const proxy = await startFaultProxy(server.endpoint, { seed: 11 });
      bed.later(() => proxy.close());
      proxy.setRules([{ method: "PUT", pathIncludes: "partNumber", fault: { kind: "status", status: 503 }, probability: 0.25 }]);
      const via = makeObjectStore({ ...storeConfig(server, bucket), endpoint: proxy.endpoint, maxAttempts: 1 });
      bed.later(() => via.close());
      const body = randomBytes(150 * MiB + 4321);
      const seen = new Set<ArrayBufferLike>();
      let reads = 0;
      const report = await new TransferEngine(via, { memoryBytes: 48 * MiB }).upload({
        key: "pooled.bin",
        size: body.length,
        read: async () => {
          throw new Error("read() must not be used when readInto() is given");
        },
        readInto: async (at, target) => {
          reads++;
          seen.add(target.buffer);
          target.fill(0); // a stale byte would show in the object's MD5
          body.copy(target, 0, at, at + target.length);
        },
      });
      expect(report.outcome._tag).toBe("Written");
      expect(report.retries).toBeGreaterThan(0);
      expect(report.faults).toBeGreaterThan(0);
      expect(report.sdkRetries).toBe(0);
      expect(reads).toBe(report.parts); // a retry resends the buffer it has, it does not read again
      expect(seen.size).toBeLessThan(report.parts); // buffers were reused
      expect(report.peakBytes).toBeLessThanOrEqual(48 * MiB);
      expect(md5((await store.get("pooled.bin")).bytes)).toBe(md5(body));
    }, 120_000);

    test("a stream of 1 MiB objects goes up exactly under the controller, through throttling, and stops at the first failure", async () => {
      const server = await bed.server(kind);
      const bucket = await createBucket(server);
      const store = makeObjectStore(storeConfig(server, bucket));
      bed.later(() => store.close());
      const segments = Array.from({ length: 48 }, (_, i) => ({ key: `seg/${String(i).padStart(3, "0")}`, body: randomBytes(MiB - (i % 7) * 1000) }));
      const engine = new TransferEngine(store);
      const done: string[] = [];
      const report = await engine.putMany(segments, { onWritten: (key) => done.push(key) });
      expect(report.written.length).toBe(segments.length);
      expect(report.bytes).toBe(segments.reduce((a, s) => a + s.body.length, 0));
      expect(new Set(done)).toEqual(new Set(segments.map((s) => s.key)));
      expect(report.final.partSize).toBe(MiB);
      expect(report.peakInflight).toBeGreaterThan(1);
      for (const s of [segments[0]!, segments[23]!, segments[47]!]) expect(md5((await store.get(s.key)).bytes)).toBe(md5(s.body));

      // Throttled: a fifth of the PUTs answered 503; every object still there, byte for byte.
      const proxy = await startFaultProxy(server.endpoint, { seed: 7 });
      bed.later(() => proxy.close());
      proxy.setRules([{ method: "PUT", fault: { kind: "status", status: 503 }, probability: 0.2 }]);
      const via = makeObjectStore({ ...storeConfig(server, bucket), endpoint: proxy.endpoint, maxAttempts: 1 });
      bed.later(() => via.close());
      const again = segments.map((s) => ({ key: `again/${s.key}`, body: s.body }));
      const throttled = await new TransferEngine(via).putMany(again);
      expect(throttled.retries).toBeGreaterThan(0);
      expect(throttled.faults).toBeGreaterThan(0);
      for (const s of again) expect(md5((await store.get(s.key)).bytes)).toBe(md5(s.body));
      proxy.setRules([]);

      // A producer that fails: what finished is reported, the error comes out once the rest ended.
      async function* failing() {
        for (let i = 0; i < 10; i++) yield { key: `fail/${i}`, body: segments[i]!.body };
        throw new Error("the journal went away");
      }
      const finished: string[] = [];
      await expect(engine.putMany(failing(), { onWritten: (key) => finished.push(key) })).rejects.toThrow("the journal went away");
      expect(finished.length).toBe(10);
      for (const key of finished) expect(await store.head(key)).toBeDefined();
    }, 120_000);

    test("retries the SDK makes on its own are counted as such, apart from the engine's", async () => {
      const server = await bed.server(kind);
      const bucket = await createBucket(server);
      const proxy = await startFaultProxy(server.endpoint, { seed: 1 });
      bed.later(() => proxy.close());
      // The first three part uploads fail: the SDK (3 attempts) tries three times, gives up, and
      // the engine sends the part again.
      proxy.setRules([{ method: "PUT", pathIncludes: "partNumber", fault: { kind: "status", status: 503 }, times: 3 }]);
      const sdk = makeObjectStore({ ...storeConfig(server, bucket), endpoint: proxy.endpoint, maxAttempts: 3 });
      bed.later(() => sdk.close());
      const body = randomBytes(5 * MiB);
      const report = await new TransferEngine(sdk).upload({ key: "one-part.bin", size: body.length, read: async (at, n) => body.subarray(at, at + n) });
      expect(report.parts).toBe(1);
      expect(report.sdkRetries).toBe(2);
      expect(report.retries).toBe(1);
      expect(report.faults).toBe(1);
      expect(md5((await sdk.get("one-part.bin")).bytes)).toBe(md5(body));
    }, 120_000);
  });
}
