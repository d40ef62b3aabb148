/**
 * Reading remote objects through a real FUSE mount, against both real servers: whole 1 MiB
 * reads (answered from the read cache's chunks without a copy), reads across chunk edges,
 * two readers at once, and after a remount a file partly overwritten locally (its own bytes
 * and the object's in one read, the object's from the disk cache).
 */
import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { makeObjectStore } from "../../src/s3/mod.ts";
import { createBucket, S3_SERVER_KINDS, storeConfig, type S3Server } from "../support/s3_servers.ts";
import { sh, startMount, type MountHandle } from "../support/mount_harness.ts";
import { s3Testbed } from "../support/testbed.ts";
import { s3Env } from "../support/s3_client.ts";

const bed = s3Testbed();
const MIB = 1024 * 1024;

async function mountBucket(server: S3Server, bucket: string, dataDir: string): Promise<MountHandle> {
  const mnt = await bed.tmp("s3rmnt");
  const m = await startMount({ source: `s3://${bucket}`, mnt, dataDir, args: ["--endpoint", server.endpoint], env: s3Env(server) });
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
  });
}
