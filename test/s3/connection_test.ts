/**
 * Connections are kept alive across requests, large bodies included: the SDK's default
 * "Expect: 100-continue" on bodies of 2 MB and more made every such request open a new
 * connection (a handshake and TCP slow start per part on a real link). Counted by a proxy.
 */
import { expect, test } from "bun:test";
import { makeObjectStore } from "../../src/s3/mod.ts";
import { createBucket, S3_SERVER_KINDS, storeConfig } from "../support/s3_servers.ts";
import { s3Testbed } from "../support/testbed.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";

const bed = s3Testbed();

for (const kind of S3_SERVER_KINDS) {
  test(`${kind}: eight 5 MiB puts one after another use one connection`, async () => {
    const server = await bed.server(kind);
    const bucket = await createBucket(server);
    const proxy = await startFaultProxy(server.endpoint);
    bed.later(() => proxy.close());
    const store = makeObjectStore({ ...storeConfig(server, bucket), endpoint: proxy.endpoint });
    bed.later(() => store.close());
    await store.put("warm", "x");
    proxy.resetStats();
    const body = Buffer.alloc(5 << 20, 7);
    for (let i = 0; i < 8; i++) await store.put(`big${i}`, body);
    expect(proxy.stats().requests).toBe(8);
    expect(proxy.stats().connections).toBeLessThanOrEqual(1);
    expect((await store.get("big7")).bytes.length).toBe(body.length);
  }, 60_000);
}

test("a body sent with its Content-MD5 is signed as UNSIGNED-PAYLOAD, any other with its SHA-256", async () => {
  // The server checks Content-MD5 (a signed header) itself: see the bad-digest case in
  // object_store_test.ts, which runs with this signing on both servers.
  const seen: { sha?: string; md5?: string }[] = [];
  const server = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    async fetch(req) {
      await req.arrayBuffer();
      seen.push({ sha: req.headers.get("x-amz-content-sha256") ?? undefined, md5: req.headers.get("content-md5") ?? undefined });
      return new Response("", { headers: { ETag: '"0"' } });
    },
  });
  bed.later(() => server.stop(true));
  const store = makeObjectStore({ bucket: "b", endpoint: `http://127.0.0.1:${server.port}`, credentials: { accessKeyId: "k", secretAccessKey: "s" } });
  bed.later(() => store.close());
  await store.put("with-md5", "hello", { contentMD5: true });
  await store.put("without", "hello");
  expect(seen).toHaveLength(2);
  expect(seen[0]!.md5).toBe("XUFAKrxLKna5cZ2REBfFkg==");
  expect(seen[0]!.sha).toBe("UNSIGNED-PAYLOAD");
  expect(seen[1]!.md5).toBeUndefined();
  expect(seen[1]!.sha).toMatch(/^[0-9a-f]{64}$/);
});
