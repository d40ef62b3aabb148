/**
 * `ObjectStore.getStream` against both real servers: the same bytes, ranges and heads as
 * `get` for every range form, and a body cut off by the network fails iteration with a
 * retriable S3Error instead of ending short.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { isS3Error, makeObjectStore, type GetStreamResult, type ObjectStore } from "../../src/s3/mod.ts";
import { startFaultProxy, type FaultProxy } from "../support/fault_proxy.ts";
import { makeBucketStore, S3_SERVER_KINDS, storeConfig } from "../support/s3_servers.ts";
import { s3Testbed } from "../support/testbed.ts";

const bed = s3Testbed();

async function drain(r: GetStreamResult): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of r.body) parts.push(new Uint8Array(p)); // pieces are valid until the next one: copy
  return new Uint8Array(Buffer.concat(parts));
}

for (const kind of S3_SERVER_KINDS) {
  describe(kind, () => {
    let store: ObjectStore;
    beforeAll(async () => {
      store = await makeBucketStore(await bed.server(kind));
      bed.later(() => store.close());
    });

    test("getStream gives the bytes, range and head that get gives, for every range form", async () => {
      const body = new Uint8Array(randomBytes(3 * 1024 * 1024 + 17));
      await store.put("s", body);
      const n = body.length;
      const cases = [
        undefined,
        { start: 0, end: 0 },
        { start: 10, end: 1_000_009 },
        { start: n - 1, end: n - 1 },
        { start: 2_000_000 }, // open-ended
        { start: n - 5, end: n + 5000 }, // clamped at the end
        { suffix: 10 }, // s3rver answers bytes=-10 with bytes 0-10: the collecting path re-asks
        { start: n }, // past the end: no bytes
      ] as const;
      for (const range of cases) {
        const want = await store.get("s", range === undefined ? {} : { range });
        const got = await store.getStream("s", range === undefined ? {} : { range });
        expect({ range, bytes: await drain(got) }).toEqual({ range, bytes: want.bytes });
        expect(got.range).toEqual(want.range);
        expect(got.head.etag).toBe(want.head.etag);
        expect(got.head.size).toBe(n);
      }
      // Stopping early, or not reading at all, releases the connection: later requests go on.
      for (let i = 0; i < 20; i++) {
        const r = await store.getStream("s");
        if (i % 2 === 0) r.cancel();
        else for await (const _ of r.body) break;
      }
      expect((await store.get("s", { range: { start: 5, end: 9 } })).bytes).toEqual(body.subarray(5, 10));
    }, 60_000);

    test("a body cut off by the network fails iteration with a retriable S3Error", async () => {
      const server = await bed.server(kind);
      const proxy: FaultProxy = await startFaultProxy(server.endpoint);
      bed.later(() => proxy.close());
      const through = makeObjectStore({ ...storeConfig(server, store.bucket), endpoint: proxy.endpoint, maxAttempts: 1 });
      bed.later(() => through.close());
      const body = new Uint8Array(randomBytes(2 * 1024 * 1024));
      await store.put("cut", body);
      proxy.setRules([{ method: "GET", pathIncludes: "/cut", fault: { kind: "truncate", bytes: 700_000 }, times: 1 }]);
      const r = await through.getStream("cut");
      let error: unknown;
      let got = 0;
      try {
        for await (const p of r.body) got += p.length;
      } catch (e) {
        error = e;
      }
      expect(got).toBeLessThan(body.length);
      expect(isS3Error(error)).toBe(true);
      expect((error as { retriable: boolean }).retriable).toBe(true);
      // The next one is whole.
      expect(await drain(await through.getStream("cut"))).toEqual(body);
    }, 60_000);
  });
}
