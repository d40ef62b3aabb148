/**
 * The multipart engine against both real servers: the object assembled from its parts has the
 * bytes it was given (MD5 compared after a GET), also through a proxy answering a share of
 * requests with 503 SlowDown (the faults reach the controller); a failed upload is aborted and
 * leaves no multipart upload behind where the server can abort; the next upload starts warm.
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
  });
}
