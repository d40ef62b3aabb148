/**
 * S3 backing for a mount: the remote source (lazy listing, cached reads), the segment
 * shipper and the materializer, wired together.
 */
import { join } from "node:path";
import type { RemoteSource } from "../fs/remote.ts";
import { isS3Error, makeObjectStore, probeCapabilities, type ObjectStore, type ObjectStoreConfig } from "../s3/mod.ts";

/** The bucket or the credentials are wrong: the mount cannot work until the configuration changes. */
export class RemoteConfigError extends Error {
  override readonly name = "RemoteConfigError";
}
import { ChunkCache } from "./cache.ts";
import { makeRemoteSource } from "./remote_source.ts";
import { loadSnapshots } from "./snapshot.ts";

export { ChunkCache } from "./cache.ts";
export { Replication, type ReplicationOptions, type Status } from "./service.ts";
export { readRemoteJournal, remoteClients, journalPrefix } from "./segments.ts";
export { makeRemoteSource } from "./remote_source.ts";
export { loadSnapshots, writeSnapshot } from "./snapshot.ts";

/** `s3://BUCKET[/PREFIX]` → bucket and key prefix ("" or ending in "/"). */
export function parseS3Url(url: string): { bucket: string; prefix: string } | undefined {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  if (!m) return undefined;
  const bucket = m[1]!;
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) return undefined;
  const path = (m[2] ?? "").replace(/\/+$/, "");
  if (path.split("/").some((s) => s === "." || s === "..") || path.includes("//")) return undefined;
  return { bucket, prefix: path === "" ? "" : `${path}/` };
}

export interface RemoteSetup {
  readonly store: ObjectStore;
  readonly cache: ChunkCache;
  readonly source: RemoteSource & { readonly counts: { vouched: number; heads: number } };
  readonly prefix: string;
}

export async function openRemote(options: {
  readonly bucket: string;
  readonly prefix: string;
  readonly dataDir: string;
  readonly store?: Omit<ObjectStoreConfig, "bucket">;
  readonly cacheBytes?: number;
  readonly uid: number;
  readonly gid: number;
  readonly log?: (message: string) => void;
}): Promise<RemoteSetup> {
  const store = makeObjectStore({ bucket: options.bucket, ...options.store });
  // A wrong bucket or wrong credentials is a configuration error: refuse to mount. An
  // unreachable endpoint is not: the journal serves the mount and replication catches up.
  try {
    await store.listPage({ prefix: options.prefix, maxKeys: 1, signal: AbortSignal.timeout(15_000) });
  } catch (e) {
    if (isS3Error(e, "not-found") || isS3Error(e, "auth")) {
      store.close();
      throw new RemoteConfigError(`${e.message}; check the bucket name, --endpoint and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or a profile)`);
    }
    options.log?.(`objectfs: S3 is not reachable now (${(e as Error).message}); serving from the local journal, replication resumes when it is back`);
  }
  const cache = await ChunkCache.open({ dir: join(options.dataDir, "cache"), store, ...(options.cacheBytes !== undefined ? { maxBytes: options.cacheBytes } : {}) });
  // s3rver drops common prefixes that hold only deeper prefixes: group keys here there.
  let clientDelimiter = false;
  try {
    const caps = await Promise.race([probeCapabilities(store), Bun.sleep(10_000).then(() => Promise.reject(new Error("timeout")))]);
    clientDelimiter = !caps.delimitedListing;
  } catch {
    // Offline: probed again when replication starts; listings meanwhile trust the server.
  }
  const source = makeRemoteSource({
    store, prefix: options.prefix, cache, uid: options.uid, gid: options.gid, clientDelimiter,
    snapshots: () => loadSnapshots(store, options.prefix, options.log),
  });
  return { store, cache, source, prefix: options.prefix };
}
