/**
 * `--metrics ADDR`: Prometheus metrics at /metrics and a health check at /health (200 "ok",
 * or 503 and the reason: the journal failed, or S3 cannot be reached).
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { Filesystem } from "../fs/filesystem.ts";
import type { Gauge, Metrics } from "../metrics/metrics.ts";
import type { Replication } from "../replicator/service.ts";
import { UsageError } from "./command.ts";

/** "HOST:PORT" or ":PORT" (all interfaces). */
export function parseAddr(text: string): { host: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new UsageError(`--metrics ${JSON.stringify(text)} is not an address; write HOST:PORT like 127.0.0.1:9464 (or :9464)`);
  return { host: m[1] === "" ? "0.0.0.0" : m[1]!.replace(/^\[|\]$/g, ""), port };
}

export async function serveMetrics(addr: string, metrics: Metrics, fs: Filesystem, replication: Replication | undefined): Promise<{ port: number; close(): Promise<void> }> {
  const { host, port } = parseAddr(addr);
  const gauges = (): Gauge[] => {
    const g: Gauge[] = [
      { name: "objectfs_journal_head_seq", help: "Last committed journal seq.", type: "counter", value: fs.journal.head },
      { name: "objectfs_unsynced_bytes", help: "Bytes written but not yet synced to the local disk.", type: "gauge", value: fs.journal.pendingDataBytes },
      { name: "objectfs_journal_commits_total", help: "Journal batches written to LevelDB.", type: "counter", value: fs.journal.stats.commits },
      { name: "objectfs_journal_synced_commits_total", help: "Journal batches written with fsync.", type: "counter", value: fs.journal.stats.syncedCommits },
      { name: "objectfs_journal_appends_total", help: "Appends (groups of events) in those batches.", type: "counter", value: fs.journal.stats.appends },
      { name: "objectfs_healthy", help: "1 while the journal takes changes.", type: "gauge", value: fs.failedWith ? 0 : 1 },
    ];
    if (!replication) return g;
    const s = replication.status();
    const lookups = (s.cache?.hits ?? 0) + (s.cache?.misses ?? 0);
    return [
      ...g,
      { name: "objectfs_replication_lag_seconds", help: "Age of the oldest change not yet in S3.", type: "gauge", value: s.lagSeconds },
      { name: "objectfs_pending_events", help: "Changes not yet in a segment in S3.", type: "gauge", value: s.pendingEvents },
      { name: "objectfs_pending_bytes", help: "File bytes written but not yet in a segment in S3.", type: "gauge", value: s.pendingBytes },
      { name: "objectfs_pending_materialization", help: "1 while some change is not yet a plain object.", type: "gauge", value: s.pendingMaterialization ? 1 : 0 },
      { name: "objectfs_segments_shipped_total", help: "Journal segments written to S3.", type: "counter", value: s.segments.shipped },
      { name: "objectfs_segment_bytes_total", help: "Bytes of journal segments written to S3.", type: "counter", value: s.segments.bytes },
      { name: "objectfs_objects_written_total", help: "Objects written to S3.", type: "counter", value: s.objects.put },
      { name: "objectfs_uploaded_bytes_total", help: "Object bytes uploaded.", type: "counter", value: s.objects.uploadedBytes },
      { name: "objectfs_copied_bytes_total", help: "Object bytes copied server-side instead of uploaded.", type: "counter", value: s.objects.copiedBytes },
      { name: "objectfs_conflicts_total", help: "Conflicts detected (both versions kept).", type: "counter", value: s.conflicts },
      { name: "objectfs_hidden_keys", help: "Keys in S3 that cannot be names under the mount.", type: "gauge", value: s.skippedKeys },
      { name: "objectfs_cache_hits_total", help: "Remote chunks served from the read cache.", type: "counter", value: s.cache?.hits ?? 0 },
      { name: "objectfs_cache_misses_total", help: "Remote chunks fetched from S3.", type: "counter", value: s.cache?.misses ?? 0 },
      { name: "objectfs_cache_hit_ratio", help: "Read-cache hits over lookups.", type: "gauge", value: lookups === 0 ? 0 : (s.cache?.hits ?? 0) / lookups },
      { name: "objectfs_cache_bytes", help: "Bytes in the read cache.", type: "gauge", value: s.cache?.bytes ?? 0 },
      { name: "objectfs_online", help: "1 while S3 answers.", type: "gauge", value: s.online ? 1 : 0 },
    ];
  };
  const server = createServer((req, res) => {
    if (req.url === "/metrics") {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
      res.end(metrics.render(gauges()));
    } else if (req.url === "/health") {
      const why = fs.failedWith ?? (replication && !replication.status().online ? `S3 is not reachable: ${replication.status().lastError?.message}` : undefined);
      res.writeHead(why ? 503 : 200, { "content-type": "text/plain" });
      res.end(why ? `${why}\n` : "ok\n");
    } else {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("objectfs serves /metrics and /health\n");
    }
  });
  await new Promise<void>((ok, fail) => {
    server.once("error", (e: NodeJS.ErrnoException) => fail(new UsageError(e.code === "EADDRINUSE" ? `--metrics: ${host}:${port} is already in use; choose another port` : `--metrics: cannot listen on ${host}:${port}: ${e.message}`)));
    server.listen(port, host, () => ok());
  });
  return { port: (server.address() as AddressInfo).port, close: () => new Promise<void>((ok) => server.close(() => ok())) };
}
