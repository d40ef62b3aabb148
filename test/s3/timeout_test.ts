/** A request that stalls longer than requestTimeoutMs fails (reason unreachable) instead of hanging. */
import { expect, test } from "bun:test";
import { isS3Error, makeObjectStore } from "../../src/s3/mod.ts";
import { createBucket, storeConfig } from "../support/s3_servers.ts";
import { s3Testbed } from "../support/testbed.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";

const bed = s3Testbed(["s3rver"]);

test("a stalled request times out with reason unreachable, and the next one goes through", async () => {
  const server = await bed.server("s3rver");
  const bucket = await createBucket(server);
  const proxy = await startFaultProxy(server.endpoint);
  bed.later(() => proxy.close());
  const store = makeObjectStore({ ...storeConfig(server, bucket), endpoint: proxy.endpoint, maxAttempts: 1, requestTimeoutMs: 300 });
  bed.later(() => store.close());
  proxy.setRules([{ fault: { kind: "stall", ms: 3000 }, times: 1 }]);
  const started = Date.now();
  const error = await store.put("x", "y").then(() => undefined, (e: unknown) => e);
  expect(isS3Error(error, "unreachable")).toBe(true);
  expect(Date.now() - started).toBeLessThan(2500);
  await store.put("x", "y");
  expect(new TextDecoder().decode((await store.get("x")).bytes)).toBe("y");
}, 30_000);
