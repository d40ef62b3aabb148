/**
 * Offline and faults, through a real mount, against both servers, with a fault proxy between
 * the mount and the server:
 * - the endpoint goes away mid-workload; the mount keeps taking writes, `sync` says what is
 *   pending; the mount is restarted while the endpoint is still down and works from its
 *   journal; when the endpoint returns, `sync` converges with nothing lost;
 * - the proxy injects HTTP 500, 503 SlowDown, connection resets, stalls and truncated bodies
 *   during a workload: everything converges, nothing lost, the journal in S3 is one unbroken
 *   chain (nothing duplicated or skipped).
 */
import { describe, expect, test } from "bun:test";
import { makeObjectStore, type ObjectStore } from "../../src/s3/mod.ts";
import { readRemoteJournal } from "../../src/replicator/mod.ts";
import { createBucket, S3_SERVER_KINDS, storeConfig, type S3Server, type S3ServerKind } from "../support/s3_servers.ts";
import { OBJECTFS, sh, startMount } from "../support/mount_harness.ts";
import { s3Testbed } from "../support/testbed.ts";
import { startFaultProxy, type FaultProxy } from "../support/fault_proxy.ts";
import { s3Env } from "../support/s3_client.ts";

/** `objectfs status --json` of a mount; a failure shows what the command said. */
async function statusOf(mnt: string, env: Record<string, string>) {
  const r = await sh(`${OBJECTFS} status ${mnt} --json`, { env });
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
  return JSON.parse(r.stdout);
}

const bed = s3Testbed();
const serverFor = bed.server;

async function setup(kind: S3ServerKind): Promise<{ server: S3Server; bucket: string; store: ObjectStore; proxy: FaultProxy; mnt: string; dataDir: string; env: Record<string, string> }> {
  const server = await serverFor(kind);
  const bucket = await createBucket(server);
  const store = makeObjectStore(storeConfig(server, bucket));
  const proxy = await startFaultProxy(server.endpoint, { seed: 7 });
  bed.later(() => store.close());
  bed.later(() => proxy.close());
  const mnt = await bed.tmp("s3mnt");
  const dataDir = await bed.tmp("s3data");
  return { server, bucket, store, proxy, mnt, dataDir, env: s3Env(server) };
}

const mountArgs = (endpoint: string) => ["--endpoint", endpoint, "--write-back", "0.2", "--seal-interval", "0.2"];

/** Every object under the bucket but objectfs's own, as key → body. */
async function objects(store: ObjectStore): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const e of store.list({})) {
    if (e.kind !== "object" || e.key.startsWith(".objectfs/")) continue;
    out.set(e.key, new TextDecoder().decode((await store.get(e.key)).bytes));
  }
  return out;
}

/** The whole journal of every client in S3 decodes as one unbroken chain each. */
async function journalEvents(store: ObjectStore, clientId: string): Promise<number> {
  let n = 0;
  let last = 0;
  for await (const e of readRemoteJournal(store, "", clientId)) {
    expect(e.seq as number).toBe(last + 1);
    last = e.seq;
    n++;
  }
  return n;
}


for (const kind of S3_SERVER_KINDS) {
  describe(kind, () => {
    test("endpoint down mid-workload, mount restarted while down, writes go on; when it returns sync converges with nothing lost", async () => {
      const { store, proxy, mnt, dataDir, env } = await setup(kind);
      let m = await startMount({ source: `s3://${(store as { bucket: string }).bucket}`, mnt, dataDir, args: mountArgs(proxy.endpoint), env });
      bed.mount(m);
      const w1 = await sh(`mkdir ${mnt}/d && for i in $(seq 1 20); do echo a$i > ${mnt}/d/a$i; done && ${OBJECTFS} sync ${mnt} --timeout 60`, { env });
      expect(w1.stderr).toBe("");
      expect(w1.code).toBe(0);

      await proxy.setDown(true);
      const w2 = await sh(`for i in $(seq 1 20); do echo b$i > ${mnt}/d/b$i; done && echo changed > ${mnt}/d/a1 && rm ${mnt}/d/a2 && mkdir ${mnt}/d/e && echo x > ${mnt}/d/e/x`, { env });
      expect(w2.stderr).toBe("");
      const blocked = await sh(`${OBJECTFS} sync ${mnt} --timeout 3`, { env });
      expect(blocked.code).toBe(1);
      expect(blocked.stderr).toContain("timed out");
      expect(blocked.stderr).toContain("last error");
      const st = await statusOf(mnt, env);
      expect(st.online).toBe(false);
      expect(st.pendingEvents).toBeGreaterThan(0);
      expect(st.lastError.message.length).toBeGreaterThan(0);
      const clientId = st.clientId as string;

      // Restart while the endpoint is still down: the journal serves the mount.
      expect(await m.stop()).toBe(0);
      m = await startMount({ source: `s3://${(store as { bucket: string }).bucket}`, mnt, dataDir, args: mountArgs(proxy.endpoint), env });
      bed.mount(m);
      const w3 = await sh(`cat ${mnt}/d/a1 && ls ${mnt}/d | wc -l && for i in $(seq 1 5); do echo c$i > ${mnt}/d/e/c$i; done`, { env });
      expect(w3.stderr).toBe("");
      expect(w3.stdout).toBe("changed\n40\n");

      await proxy.setDown(false);
      const done = await sh(`${OBJECTFS} sync ${mnt} --timeout 90`, { env });
      expect(done.stderr).toBe("");
      expect(done.code).toBe(0);
      const got = await objects(store);
      const want = new Map<string, string>([["d/", ""], ["d/e/", ""], ["d/e/x", "x\n"], ["d/a1", "changed\n"]]);
      for (let i = 3; i <= 20; i++) want.set(`d/a${i}`, `a${i}\n`);
      for (let i = 1; i <= 20; i++) want.set(`d/b${i}`, `b${i}\n`);
      for (let i = 1; i <= 5; i++) want.set(`d/e/c${i}`, `c${i}\n`);
      expect(new Map([...got].sort())).toEqual(new Map([...want].sort()));
      expect(await journalEvents(store, clientId)).toBeGreaterThan(60);
      expect(await m.stop()).toBe(0);
    }, 240_000);

    test("500s, 503 SlowDown, resets, stalls and truncated bodies: it converges, nothing lost, the journal in S3 is one chain", async () => {
      const { store, proxy, mnt, dataDir, env } = await setup(kind);
      await store.put("remote/big.bin", "R".repeat(3 * 1024 * 1024));
      const m = await startMount({ source: `s3://${(store as { bucket: string }).bucket}`, mnt, dataDir, args: mountArgs(proxy.endpoint), env });
      bed.mount(m);
      proxy.setRules([
        { fault: { kind: "status", status: 503 }, probability: 0.1 },
        { fault: { kind: "status", status: 500 }, probability: 0.1 },
        { fault: { kind: "reset" }, probability: 0.05 },
        { fault: { kind: "stall", ms: 1500 }, probability: 0.05 },
        { method: "GET", fault: { kind: "truncate" }, probability: 0.2 },
      ]);
      const w = await sh(
        `mkdir -p ${mnt}/w && for i in $(seq 1 40); do head -c $((i * 1000)) /dev/zero | tr '\\0' "$((i % 10))" > ${mnt}/w/f$i; done && ` +
          `for i in $(seq 1 10); do mv ${mnt}/w/f$i ${mnt}/w/g$i; done && rm ${mnt}/w/f11 && md5sum < ${mnt}/remote/big.bin`,
        { env },
      );
      expect(w.stderr).toBe("");
      expect(w.stdout.split(" ")[0]).toBe((await sh(`head -c ${3 * 1024 * 1024} /dev/zero | tr '\\0' R | md5sum`)).stdout.split(" ")[0]!);
      const done = await sh(`${OBJECTFS} sync ${mnt} --timeout 150`, { env });
      expect(done.stderr).toBe("");
      expect(done.code).toBe(0);
      const injected = proxy.stats().injected;
      expect(Object.values(injected).reduce((a, b) => a + b, 0)).toBeGreaterThan(3);
      proxy.setRules([]);
      const got = await objects(store);
      const want = new Map<string, string>([["w/", ""], ["remote/big.bin", "R".repeat(3 * 1024 * 1024)]]);
      for (let i = 1; i <= 40; i++) if (i !== 11) want.set(i <= 10 ? `w/g${i}` : `w/f${i}`, String(i % 10).repeat(i * 1000));
      expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
      for (const [k, v] of want) expect(got.get(k)).toBe(v);
      const st = await statusOf(mnt, env);
      expect(st.conflicts).toBe(0);
      expect(await journalEvents(store, st.clientId)).toBeGreaterThan(40);
      expect(await m.stop()).toBe(0);
    }, 300_000);
  });
}
