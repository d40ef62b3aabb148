/**
 * Reading remote objects through a real FUSE mount, against both real servers: whole 1 MiB
 * reads (answered from the read cache's chunks without a copy), reads across chunk edges,
 * two readers at once, and after a remount a file partly overwritten locally (its own bytes
 * and the object's in one read, the object's from the disk cache). And a cold read whose GETs
 * break off midway (a fault proxy cuts and resets them) gets every byte right, leaves the
 * object in the disk cache in span files, and after a restart with S3 unreachable the whole
 * file still reads right from them. A mount killed (SIGKILL) in the middle of cold reads
 * leaves no cache file that is not whole, and the next mount reads every byte right.
 */
import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { makeObjectStore } from "../../src/s3/mod.ts";
import { readdir } from "node:fs/promises";
import { closedPort, createBucket, S3_SERVER_KINDS, storeConfig, type S3Server } from "../support/s3_servers.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";
import { sh, startMount, type MountHandle } from "../support/mount_harness.ts";
import { s3Testbed } from "../support/testbed.ts";
import { s3Env } from "../support/s3_client.ts";

const bed = s3Testbed();
const MIB = 1024 * 1024;

async function mountBucket(server: S3Server, bucket: string, dataDir: string, endpoint = server.endpoint): Promise<MountHandle> {
  const mnt = await bed.tmp("s3rmnt");
  const m = await startMount({ source: `s3://${bucket}`, mnt, dataDir, args: ["--endpoint", endpoint], env: s3Env(server) });
  return bed.mount(m);
}

for (const kind of S3_SERVER_KINDS) {
  describe(kind, () => {
    test("remote bytes read through the mount are the object's, whole chunks, across chunk edges, two readers at once, and partly overwritten after a remount", async () => {
      const server = await bed.server(kind);
      const bucket = await createBucket(server);
      const store = makeObjectStore(storeConfig(server, bucket));
      bed.later(() => store.close());
      const size = 40 * MIB + 12345; // more chunks than the cache keeps in memory
      const bytes = randomBytes(size);
      await store.upload("big.bin", bytes, { partSize: 8 * MIB });
      const local = await bed.tmp("s3rlocal");
      const want = join(local, "big.bin");
      await writeFile(want, bytes);
      const dataDir = await bed.tmp("s3rdata");
      const env = s3Env(server);

      let m = await mountBucket(server, bucket, dataDir);
      const f = `${m.mnt}/big.bin`;
      // Two sequential readers at once (1 MiB requests), then pieces across chunk edges.
      const two = await sh(`(dd if=${f} bs=1M status=none | cmp - ${want}) & a=$!; (dd if=${f} bs=1M status=none | cmp - ${want}) & b=$!; wait $a && wait $b`, { env });
      expect(two.stderr).toBe("");
      expect(two.code).toBe(0);
      for (const [skip, count] of [[MIB - 7, 20], [5 * MIB - 1, MIB + 2], [size - 100, 100], [17 * MIB + 3, 3 * MIB]] as const) {
        const r = await sh(`cmp <(tail -c +${skip + 1} ${f} | head -c ${count}) <(tail -c +${skip + 1} ${want} | head -c ${count})`, { env });
        expect(`${skip}: ${r.stdout}${r.stderr}${r.code}`).toBe(`${skip}: 0`);
      }
      // A local overwrite inside chunk 3 and across the edge of chunks 9 and 10.
      const patch = await sh(
        `printf 'LOCAL' | dd of=${f} bs=1 seek=${3 * MIB + 100} conv=notrunc status=none && printf 'LOCAL' | dd of=${want} bs=1 seek=${3 * MIB + 100} conv=notrunc status=none && ` +
          `printf 'EDGE' | dd of=${f} bs=1 seek=${10 * MIB - 2} conv=notrunc status=none && printf 'EDGE' | dd of=${want} bs=1 seek=${10 * MIB - 2} conv=notrunc status=none`,
        { env },
      );
      expect(patch.stderr).toBe("");
      expect(patch.code).toBe(0);
      expect(await m.stop()).toBe(0);

      // Remounted (the kernel's cached pages gone): the file's own bytes and the object's, the
      // object's now from the disk cache (or from S3 again for what it let go).
      m = await mountBucket(server, bucket, dataDir);
      const again = await sh(`dd if=${m.mnt}/big.bin bs=1M status=none | cmp - ${want} && dd if=${m.mnt}/big.bin bs=1M skip=3 count=1 status=none | cmp - <(dd if=${want} bs=1M skip=3 count=1 status=none)`, { env });
      expect(again.stderr).toBe("");
      expect(again.code).toBe(0);
      expect(await m.stop()).toBe(0);
    }, 180_000);

    test("a cold read whose GETs break off midway is every byte right, cached in span files, and reads right after a restart with S3 unreachable", async () => {
      const server = await bed.server(kind);
      const bucket = await createBucket(server);
      const store = makeObjectStore(storeConfig(server, bucket));
      bed.later(() => store.close());
      const size = 37 * MIB + 4321; // spans of 16 chunks, a part chunk at the end
      const bytes = randomBytes(size);
      await store.upload("cut.bin", bytes, { partSize: 8 * MIB });
      const local = await bed.tmp("s3rlocal");
      const want = join(local, "cut.bin");
      await writeFile(want, bytes);
      const dataDir = await bed.tmp("s3rdata");
      const env = s3Env(server);
      const proxy = await startFaultProxy(server.endpoint, { seed: 11 });
      bed.later(() => proxy.close());

      let m = await mountBucket(server, bucket, dataDir, proxy.endpoint);
      await sh(`ls ${m.mnt}`, { env }); // listed before the faults start
      proxy.setRules([
        { method: "GET", pathIncludes: "/cut.bin", fault: { kind: "truncate", bytes: 3 * MIB + 777 }, times: 2 },
        { method: "GET", pathIncludes: "/cut.bin", fault: { kind: "reset" }, probability: 0.5, times: 1 },
      ]);
      const cold = await sh(`dd if=${m.mnt}/cut.bin bs=1M status=none | cmp - ${want}`, { env });
      expect(cold.stderr).toBe("");
      expect(cold.code).toBe(0);
      expect(proxy.stats().injected.truncate ?? 0).toBe(2);
      expect(await m.stop()).toBe(0); // the chunk files are written by then

      // On disk: files of whole spans (ID-FIRST+COUNT), not one per chunk.
      const names = (await readdir(join(dataDir, "cache"))).filter((n) => !n.endsWith(".tmp"));
      expect(names.some((n) => /-\d+\+\d+$/.test(n))).toBe(true);
      expect(names.length).toBeLessThan(Math.ceil(size / MIB));

      // S3 unreachable: every byte from the disk cache, also read across chunk and span edges.
      m = await mountBucket(server, bucket, dataDir, `http://127.0.0.1:${await closedPort()}`);
      const again = await sh(`dd if=${m.mnt}/cut.bin bs=1M status=none | cmp - ${want}`, { env });
      expect(again.stderr).toBe("");
      expect(again.code).toBe(0);
      for (const [skip, count] of [[16 * MIB - 5, 10], [MIB - 1, 2 * MIB + 2], [size - 4321 - 3, 4324]] as const) {
        const r = await sh(`cmp <(tail -c +${skip + 1} ${m.mnt}/cut.bin | head -c ${count}) <(tail -c +${skip + 1} ${want} | head -c ${count})`, { env });
        expect(`${skip}: ${r.stdout}${r.stderr}${r.code}`).toBe(`${skip}: 0`);
      }
      expect(await m.stop()).toBe(0);
    }, 180_000);

    test("a mount killed mid cold read leaves only whole cache files, and the next mount reads every byte right", async () => {
      const server = await bed.server(kind);
      const bucket = await createBucket(server);
      const store = makeObjectStore(storeConfig(server, bucket));
      bed.later(() => store.close());
      const size = 45 * MIB + 999;
      const bytes = randomBytes(size);
      await store.upload("k.bin", bytes, { partSize: 8 * MIB });
      const local = await bed.tmp("s3rlocal");
      const want = join(local, "k.bin");
      await writeFile(want, bytes);
      const dataDir = await bed.tmp("s3rdata");
      const env = s3Env(server);
      const mnt = await bed.tmp("s3rmnt");
      for (const delay of [150, 400, 700]) {
        const m = await startMount({ source: `s3://${bucket}`, mnt, dataDir, args: ["--endpoint", server.endpoint], env });
        const reading = sh(`dd if=${mnt}/k.bin of=/dev/null bs=1M status=none`, { env });
        await Bun.sleep(delay);
        await m.kill();
        await reading; // fails once the mount is gone: only what the next mount reads counts
        // Every cache file holds exactly the chunks its name says (a part chunk only at the end).
        const dir = join(dataDir, "cache");
        for (const n of await readdir(dir)) {
          if (n.endsWith(".tmp")) continue; // removed by the next mount, never read
          const [first, count = "1"] = n.slice(n.lastIndexOf("-") + 1).split("+").map(Number);
          const expected = Math.min(size, (first! + Number(count)) * MIB) - first! * MIB;
          expect({ n, size: Bun.file(join(dir, n)).size }).toEqual({ n, size: expected });
        }
      }
      const m = await startMount({ source: `s3://${bucket}`, mnt, dataDir, args: ["--endpoint", server.endpoint], env });
      bed.mount(m);
      const again = await sh(`dd if=${mnt}/k.bin bs=1M status=none | cmp - ${want}`, { env });
      expect(again.stderr).toBe("");
      expect(again.code).toBe(0);
      expect(await m.stop()).toBe(0);
    }, 180_000);
  });
}
