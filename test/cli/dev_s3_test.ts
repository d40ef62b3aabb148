/** `objectfs dev-s3`: a real s3rver process started, used with the SDK, stopped, restarted with its data. */
import { afterAll, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeObjectStore } from "../../src/s3/mod.ts";
import { OBJECTFS, sh } from "../support/mount_harness.ts";
import { closedPort } from "../support/s3_servers.ts";

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) {
    await sh(`${OBJECTFS} dev-s3 --stop --dir ${d}`);
    await rm(d, { recursive: true, force: true });
  }
});

test("dev-s3 --detach serves S3 with the printed settings, --stop stops it, its objects survive a restart; a busy port and bad flags are refused", async () => {
  const dir = await mkdtemp(join(tmpdir(), "objectfs-devs3-"));
  dirs.push(dir);
  const port = await closedPort();
  const start = () => sh(`${OBJECTFS} dev-s3 --dir ${dir} --port ${port} --detach --bucket first-bucket --bucket second --access-key devkey --secret-key devsecret`);
  const up = await start();
  expect(up.stderr).toBe("");
  expect(up.code).toBe(0);
  const endpoint = `http://127.0.0.1:${port}`;
  expect(up.stdout).toContain(`S3 at ${endpoint}`);
  expect(up.stdout).toContain("export AWS_ACCESS_KEY_ID=devkey");
  expect(up.stdout).toContain(`objectfs mount s3://first-bucket /mnt/objectfs --endpoint ${endpoint}`);

  const store = (bucket: string) => makeObjectStore({ bucket, endpoint, region: "us-east-1", credentials: { accessKeyId: "devkey", secretAccessKey: "devsecret" }, maxAttempts: 1 });
  const s1 = store("first-bucket");
  await s1.put("hello.txt", "hello");
  expect(new TextDecoder().decode((await s1.get("hello.txt")).bytes)).toBe("hello");
  const s2 = store("second");
  await s2.put("x", "y");
  s1.close();
  s2.close();

  const twice = await start();
  expect(twice.code).toBe(1);
  expect(twice.stderr).toContain("already runs");
  const other = await mkdtemp(join(tmpdir(), "objectfs-devs3-"));
  dirs.push(other);
  const busy = await sh(`${OBJECTFS} dev-s3 --dir ${other} --port ${port} --detach`);
  expect(busy.code).toBe(1);
  expect(busy.stderr).toContain(`port ${port} on 127.0.0.1 is already in use; choose another with --port`);

  const down = await sh(`${OBJECTFS} dev-s3 --stop --dir ${dir}`);
  expect(down.code).toBe(0);
  const refused = makeObjectStore({ bucket: "first-bucket", endpoint, region: "us-east-1", credentials: { accessKeyId: "devkey", secretAccessKey: "x" }, maxAttempts: 1 });
  await expect(refused.head("hello.txt")).rejects.toThrow();
  refused.close();

  expect((await start()).code).toBe(0);
  const again = store("first-bucket");
  expect(new TextDecoder().decode((await again.get("hello.txt")).bytes)).toBe("hello");
  again.close();

  const bad = await sh(`${OBJECTFS} dev-s3 --bogus`);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toContain("--bogus");
  const badPort = await sh(`${OBJECTFS} dev-s3 --port 99999`);
  expect(badPort.code).toBe(2);
}, 60_000);
