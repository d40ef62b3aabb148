/** `mount --metrics`: Prometheus metrics that follow what the mount did, and a health check that follows S3. */
import { expect, test } from "bun:test";
import { OBJECTFS, sh, startMount } from "../support/mount_harness.ts";
import { closedPort, createBucket } from "../support/s3_servers.ts";
import { s3Testbed } from "../support/testbed.ts";
import { s3Env } from "../support/s3_client.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";

const bed = s3Testbed(["ceph-rgw"]);

const metric = (text: string, series: string) => {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
};

test("operations, bytes, latency histograms, replication and cache figures; /health turns 503 while S3 is down", async () => {
  const server = await bed.server("ceph-rgw");
  const bucket = await createBucket(server);
  const proxy = await startFaultProxy(server.endpoint);
  const env = s3Env(server);
  const mnt = await bed.tmp("metmnt");
  const dataDir = await bed.tmp("metdata");
  const port = await closedPort();
  const m = await startMount({ source: `s3://${bucket}`, mnt, dataDir, args: ["--endpoint", proxy.endpoint, "--write-back", "0.2", "--metrics", `127.0.0.1:${port}`], env });
  try {
    expect((await sh(`head -c 300000 /dev/zero > ${mnt}/f && dd if=${mnt}/f of=/dev/null bs=128k iflag=direct status=none && ls ${mnt}/nope; ${OBJECTFS} sync ${mnt} --timeout 30`, { env })).code).toBe(0);
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metric(text, `objectfs_operations_total{op="write",result="ok"}`)).toBeGreaterThan(0);
    // `ls nope`: a lookup that finds nothing (the low-level protocol has no path getattr)
    expect(metric(text, `objectfs_operations_total{op="lookup",result="error"}`)).toBeGreaterThan(0);
    expect(metric(text, "objectfs_written_bytes_total")).toBe(300000);
    expect(metric(text, "objectfs_read_bytes_total")).toBeGreaterThanOrEqual(300000);
    expect(metric(text, `objectfs_operation_seconds_bucket{op="write",le="+Inf"}`)).toBe(metric(text, `objectfs_operation_seconds_count{op="write"}`)!);
    expect(metric(text, "objectfs_pending_events")).toBe(0);
    expect(metric(text, "objectfs_objects_written_total")).toBeGreaterThanOrEqual(1);
    expect(metric(text, "objectfs_online")).toBe(1);
    for (const name of ["objectfs_replication_lag_seconds", "objectfs_pending_bytes", "objectfs_cache_hit_ratio", "objectfs_conflicts_total"]) expect(metric(text, name)).toBeDefined();
    const healthy = await fetch(`http://127.0.0.1:${port}/health`);
    expect(healthy.status).toBe(200);

    await proxy.setDown(true);
    await sh(`echo x > ${mnt}/g`, { env });
    expect((await sh(`${OBJECTFS} sync ${mnt} --timeout 2`, { env })).code).toBe(1);
    const down = await fetch(`http://127.0.0.1:${port}/health`);
    expect(down.status).toBe(503);
    expect(await down.text()).toContain("S3 is not reachable");
    expect(metric(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text(), "objectfs_pending_bytes")).toBeGreaterThan(0);
    await proxy.setDown(false);
  } finally {
    expect(await m.stop()).toBe(0);
    await proxy.close();
  }
  const bad = await sh(`${OBJECTFS} mount s3://${bucket} ${mnt} --metrics nowhere`, { env });
  expect(bad.code).toBe(2);
  expect(bad.stderr).toContain("is not an address");
}, 120_000);
