/**
 * Connections are kept alive across requests, large bodies included: the SDK's default
 * "Expect: 100-continue" on bodies of 2 MB and more made every such request open a new
 * connection (a handshake and TCP slow start per part on a real link). Counted by a proxy.
 */
import { expect, test } from "bun:test";
import { makeObjectStore, probeCapabilities } from "../../src/s3/mod.ts";
import { createBucket, S3_SERVER_KINDS, storeConfig } from "../support/s3_servers.ts";
import { s3Testbed } from "../support/testbed.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";

const bed = s3Testbed();

/** A fresh bucket on a `kind` server, and a store that reaches it through a fault proxy. */
async function throughProxy(kind: (typeof S3_SERVER_KINDS)[number]) {
  const server = await bed.server(kind);
  const bucket = await createBucket(server);
  const proxy = await startFaultProxy(server.endpoint);
  bed.later(() => proxy.close());
  const store = makeObjectStore({ ...storeConfig(server, bucket), endpoint: proxy.endpoint });
  bed.later(() => store.close());
  return { proxy, store };
}

for (const kind of S3_SERVER_KINDS) {
  test(`${kind}: eight 5 MiB puts one after another use one connection`, async () => {
    const { proxy, store } = await throughProxy(kind);
    await store.put("warm", "x");
    proxy.resetStats();
    const body = Buffer.alloc(5 << 20, 7);
    for (let i = 0; i < 8; i++) await store.put(`big${i}`, body);
    expect(proxy.stats().requests).toBe(8);
    expect(proxy.stats().connections).toBeLessThanOrEqual(1);
    expect((await store.get("big7")).bytes.length).toBe(body.length);
  }, 60_000);
}

for (const kind of S3_SERVER_KINDS) {
  test(`${kind}: a body sent with its Content-MD5 is signed UNSIGNED-PAYLOAD where the server checks Content-MD5, with its SHA-256 elsewhere`, async () => {
    const { proxy, store } = await throughProxy(kind);
    const signing = async (key: string, contentMD5: boolean) => {
      proxy.resetStats();
      await store.put(key, "hello", { contentMD5 });
      const puts = proxy.seen().filter((r) => r.method === "PUT");
      expect(puts).toHaveLength(1);
      return puts[0]!.headers["x-amz-content-sha256"];
    };
    const sha256 = /^[0-9a-f]{64}$/;
    // Before anything is known of the server, and for any body without Content-MD5.
    expect(await signing("a", true)).toBe("UNSIGNED-PAYLOAD");
    expect(await signing("b", false)).toMatch(sha256);
    const caps = await probeCapabilities(store);
    // RGW checks Content-MD5 (a wrong one is refused: object_store_test.ts); s3rver does not.
    expect(caps.contentMD5).toBe(kind === "ceph-rgw");
    const after = await signing("c", true);
    if (caps.contentMD5) expect(after).toBe("UNSIGNED-PAYLOAD");
    else expect(after).toMatch(sha256);
    expect(new TextDecoder().decode((await store.get("c")).bytes)).toBe("hello");
  }, 60_000);
}
