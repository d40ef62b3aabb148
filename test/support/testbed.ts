/**
 * The shared set-up of tests that mount buckets: real S3 servers started once per file, temp
 * directories, mounts and other resources released after the file's tests whatever happened.
 */
import { afterAll, beforeAll } from "bun:test";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cleanup, type MountHandle } from "./mount_harness.ts";
import { S3_SERVER_KINDS, serverPool, type S3Server, type S3ServerKind } from "./s3_servers.ts";

export interface Testbed {
  server(kind: S3ServerKind): Promise<S3Server>;
  /** A new temp directory, removed (and unmounted if need be) afterwards. */
  tmp(name: string): Promise<string>;
  /** Stop this mount afterwards if the test did not. */
  mount(m: MountHandle): MountHandle;
  /** Run this afterwards. */
  later(release: () => unknown): void;
}

export function s3Testbed(kinds: readonly S3ServerKind[] = S3_SERVER_KINDS): Testbed {
  const servers = serverPool();
  const dirs: string[] = [];
  const mounts: MountHandle[] = [];
  const releases: (() => unknown)[] = [];
  beforeAll(() => Promise.allSettled(kinds.map(servers.get)), 60_000);
  afterAll(async () => {
    for (const m of mounts.splice(0)) await m.stop().catch(() => {});
    await cleanup(...dirs);
    for (const r of releases.splice(0).reverse()) await Promise.resolve(r()).catch(() => {});
    await servers.stopAll();
  }, 60_000);
  return {
    server: servers.get,
    async tmp(name) {
      const d = await mkdtemp(join(tmpdir(), `objectfs-${name}-`));
      dirs.push(d);
      return d;
    },
    mount(m) {
      mounts.push(m);
      return m;
    },
    later(release) {
      releases.push(release);
    },
  };
}
