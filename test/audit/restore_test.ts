/**
 * Restore of a bucket that had objects before it was mounted, on both servers: files that
 * still show bytes of those objects (untouched, renamed, partly overwritten, truncated and
 * extended) are restored from S3 alone with exactly the bytes the mount shows, the object
 * versions pinned, alongside files written through the mount.
 */
import { expect, test } from "bun:test";
import { join } from "node:path";
import { makeObjectStore } from "../../src/s3/mod.ts";
import { OBJECTFS, sh, startMount } from "../support/mount_harness.ts";
import { createBucket, S3_SERVER_KINDS, storeConfig } from "../support/s3_servers.ts";
import { s3Env } from "../support/s3_client.ts";
import { s3Testbed } from "../support/testbed.ts";

const bed = s3Testbed();

async function capture(dir: string): Promise<string> {
  const r = await sh(`cd ${dir} && find . -mindepth 1 -printf '%p %y %m %s %l %n\\n' | sort && find . -type f -print0 | sort -z | xargs -0 -r md5sum`);
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout;
}

for (const kind of S3_SERVER_KINDS) {
  test(`${kind}: restore from S3 alone gives the bytes of pre-existing objects and of local writes, as the mount shows them`, async () => {
    const server = await bed.server(kind);
    const bucket = await createBucket(server);
    const store = makeObjectStore(storeConfig(server, bucket));
    // Put the objects there before the mount sees the bucket.
    bed.later(() => store.close());
    const big = Buffer.alloc(3_000_000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 11)) & 0xff;
    await store.put("keep.bin", big);
    await store.put("dir/moved.txt", "moved away\n");
    await store.put("dir/patch.bin", big, { metadata: { mode: String(0o100640) } });
    await store.put("cut.txt", "0123456789abcdefghij");
    const env = s3Env(server);
    const mnt = await bed.tmp("rs-mnt");
    const m = bed.mount(await startMount({ source: `s3://${bucket}`, mnt, dataDir: await bed.tmp("rs-data"), args: ["--endpoint", server.endpoint, "--write-back", "0.2", "--seal-interval", "0.2"], env }));
    const r = await sh(
      [
        `mv ${mnt}/dir/moved.txt ${mnt}/moved.txt`,
        `printf XYZ | dd of=${mnt}/dir/patch.bin bs=1 seek=1000000 conv=notrunc status=none`,
        `truncate -s 5 ${mnt}/cut.txt && printf tail >> ${mnt}/cut.txt && truncate -s 40 ${mnt}/cut.txt`,
        `echo new > ${mnt}/new.txt && ln ${mnt}/keep.bin ${mnt}/dir/keep-link`,
      ].join(" && "),
      { env },
    );
    expect(r.stderr).toBe("");
    const beforeSync = JSON.parse((await sh(`${OBJECTFS} log ${mnt} --json | tail -1`, { env })).stdout).seq as number;
    expect((await sh(`${OBJECTFS} sync ${mnt} --timeout 60`, { env })).code).toBe(0);
    const tree = await capture(mnt);
    expect(await m.stop()).toBe(0);
    const into = join(await bed.tmp("rs-into"), "t");
    const out = await sh(`${OBJECTFS} restore s3://${bucket} ${into} --endpoint ${server.endpoint}`, { env });
    expect(out.stderr).toBe("");
    expect(out.code).toBe(0);
    expect(await capture(into)).toBe(tree);
    // Before the changes were materialized, cut.txt showed bytes of the object as it was then,
    // which the materialized version replaced: without versioning they are gone, and restore says so.
    const early = await sh(`${OBJECTFS} restore s3://${bucket} ${join(await bed.tmp("rs-early"), "t")} --at ${beforeSync} --endpoint ${server.endpoint}`, { env });
    expect(early.code).toBe(1);
    expect(early.stderr).toContain("unless the bucket keeps versions");
  }, 180_000);
}
