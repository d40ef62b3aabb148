/**
 * `objectfs mount s3://BUCKET/PREFIX` through a real FUSE mount, against both real servers:
 * existing objects read through the mount, new files written by ordinary tools, `objectfs
 * sync` and `objectfs status`, what an independent client sees, and a second client.
 */
import { describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { makeObjectStore } from "../../src/s3/mod.ts";
import { createBucket, S3_SERVER_KINDS, storeConfig, type S3Server } from "../support/s3_servers.ts";
import { OBJECTFS, sh, startMount, type MountHandle } from "../support/mount_harness.ts";
import { s3Testbed } from "../support/testbed.ts";
import { minioFor, minioGet, s3Env } from "../support/s3_client.ts";

const bed = s3Testbed();
const serverFor = bed.server;

async function mountBucket(server: S3Server, source: string, extra: string[] = [], endpoint = server.endpoint): Promise<MountHandle> {
  const mnt = await bed.tmp("s3mnt");
  const dataDir = await bed.tmp("s3data");
  const m = await startMount({ source, mnt, dataDir, args: ["--endpoint", endpoint, "--write-back", "0.2", "--seal-interval", "0.2", ...extra], env: s3Env(server) });
  return bed.mount(m);
}

const md5 = (b: Uint8Array | string) => createHash("md5").update(b).digest("hex");

for (const kind of S3_SERVER_KINDS) {
  describe(kind, () => {
    test("existing objects through the mount; files written by tools become objects after objectfs sync; status; a second mount sees them", async () => {
      const server = await serverFor(kind);
      const bucket = await createBucket(server);
      const store = makeObjectStore(storeConfig(server, bucket));
      bed.later(() => store.close());
      const big = randomBytes(3 * 1024 * 1024 + 77);
      await store.put("home/docs/readme.txt", "read me\n", { metadata: { mode: String(0o100640), uid: "1000", gid: "1000", mtime: "1600000000" } });
      await store.put("home/big.bin", big);
      await store.put("outside.txt", "not under the prefix");

      const m = await mountBucket(server, `s3://${bucket}/home`);
      const env = s3Env(server);
      const ls = await sh(`ls -A ${m.mnt}; stat -c '%a %u %g %Y %s' ${m.mnt}/docs/readme.txt; cat ${m.mnt}/docs/readme.txt; md5sum < ${m.mnt}/big.bin`);
      expect(ls.stderr).toBe("");
      expect(ls.stdout.split("\n").slice(0, 5)).toEqual(["big.bin", "docs", "640 1000 1000 1600000000 8", "read me", `${md5(big)}  -`]);

      const local = join(await bed.tmp("src"), "tree");
      await sh(`mkdir -p ${local}/a/b && head -c 5000000 /dev/urandom > ${local}/a/b/r.bin && echo hi > ${local}/a/hi.txt && chmod 600 ${local}/a/hi.txt && ln -s hi.txt ${local}/a/link`);
      const w = await sh(`cp -a ${local}/a ${m.mnt}/a && echo appended >> ${m.mnt}/docs/readme.txt && mv ${m.mnt}/big.bin ${m.mnt}/moved.bin && ${OBJECTFS} sync ${m.mnt} --timeout 60`, { env });
      expect(w.stderr).toBe("");
      expect(w.code).toBe(0);
      expect(w.stdout).toContain("in sync");

      const st = await sh(`${OBJECTFS} status ${m.mnt} --json`, { env });
      expect(st.code).toBe(0);
      const status = JSON.parse(st.stdout);
      expect(status).toMatchObject({ pendingEvents: 0, pendingMaterialization: false, conflicts: 0, online: true, bucket, prefix: "home/" });
      const human = await sh(`${OBJECTFS} status ${m.mnt}`, { env });
      expect(human.stdout).toContain("objects up to date");

      const mc = minioFor(server);
      const r = (await sh(`md5sum < ${local}/a/b/r.bin`)).stdout.split(" ")[0];
      expect(md5((await minioGet(mc, bucket, "home/a/b/r.bin")).bytes)).toBe(r!);
      const hi = await minioGet(mc, bucket, "home/a/hi.txt");
      expect(hi.bytes.toString()).toBe("hi\n");
      expect(Number(hi.meta.mode)).toBe(0o100600);
      expect((await minioGet(mc, bucket, "home/docs/readme.txt")).bytes.toString()).toBe("read me\nappended\n");
      expect(md5((await minioGet(mc, bucket, "home/moved.bin")).bytes)).toBe(md5(big));
      expect(await store.head("home/big.bin")).toBeUndefined();
      expect((await store.get("outside.txt")).bytes.length).toBe(20);

      // A second client, its own data directory, sees the same tree.
      const m2 = await mountBucket(server, `s3://${bucket}/home`);
      const a = await sh(`cd ${m.mnt} && find . -printf '%p %y %m\\n' | sort && cat a/hi.txt docs/readme.txt | md5sum && md5sum < a/b/r.bin && readlink a/link`);
      const b = await sh(`cd ${m2.mnt} && find . -printf '%p %y %m\\n' | sort && cat a/hi.txt docs/readme.txt | md5sum && md5sum < a/b/r.bin && readlink a/link`);
      expect(b.stderr).toBe("");
      expect(b.stdout).toBe(a.stdout);

      expect(await m2.stop()).toBe(0);
      expect(await m.stop()).toBe(0);
    }, 180_000);

    test("bad sources and flags: one sentence each, exit 2", async () => {
      const server = await serverFor(kind);
      const mnt = await bed.tmp("s3mnt");
      const env = s3Env(server);
      const bad = await sh(`${OBJECTFS} mount s3://Bad_Bucket ${mnt}`, { env });
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain("is not an S3 source");
      const escape = await sh(`${OBJECTFS} mount s3://bucket/a/../b ${mnt}`, { env });
      expect(escape.code).toBe(2);
      const endpointOnly = await sh(`${OBJECTFS} mount ${mnt} --endpoint http://127.0.0.1:1`, { env });
      expect(endpointOnly.code).toBe(2);
      expect(endpointOnly.stderr).toContain("only apply to an s3:// source");
      const notUrl = await sh(`${OBJECTFS} mount s3://bucket ${mnt} --endpoint localhost`, { env });
      expect(notUrl.code).toBe(2);
      expect(notUrl.stderr).toContain("is not a URL");
      const dataDir = await bed.tmp("s3data");
      const missing = await sh(`${OBJECTFS} mount s3://no-such-bucket-${Date.now()} ${mnt} --endpoint ${server.endpoint} --data-dir ${dataDir}/a`, { env });
      expect(missing.code).toBe(1);
      expect(missing.stderr).toContain("does not exist");
      expect(missing.stderr).toContain("check the bucket name");
      if (kind === "ceph-rgw") {
        // (s3rver checks no signatures: any secret works there.)
        const bucket = await createBucket(server);
        const denied = await sh(`${OBJECTFS} mount s3://${bucket} ${mnt} --endpoint ${server.endpoint} --data-dir ${dataDir}/b`, { env: { ...env, AWS_SECRET_ACCESS_KEY: "wrong-secret" } });
        expect(denied.code).toBe(1);
        expect(denied.stderr).toContain("check the bucket name, --endpoint and the credentials");
      }
      const noMount = await sh(`${OBJECTFS} status ${mnt}`, { env });
      expect(noMount.code).toBe(1);
      expect(noMount.stderr).toContain("no objectfs mount answers");
    }, 60_000);
  });
}

