/**
 * Operation metrics of a mount, and their Prometheus text exposition (version 0.0.4): counters
 * and latency histograms per FUSE operation, bytes read and written, plus whatever gauges the
 * caller adds at scrape time (replication, cache). The format is a few lines of text; no
 * registry library is needed for one process's fixed set of series.
 */

const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

interface OpStats {
  ok: number;
  errors: number;
  sum: number;
  /** Cumulative counts per bucket, then +Inf. */
  buckets: number[];
}

export interface Gauge {
  readonly name: string;
  readonly help: string;
  readonly type: "gauge" | "counter";
  readonly value: number;
}

export class Metrics {
  private readonly ops = new Map<string, OpStats>();
  readBytes = 0;
  writtenBytes = 0;

  /** One finished operation: how long it took, whether it failed, bytes it moved. */
  observe(op: string, seconds: number, ok: boolean, bytes = 0): void {
    let s = this.ops.get(op);
    if (!s) this.ops.set(op, (s = { ok: 0, errors: 0, sum: 0, buckets: new Array(BUCKETS.length + 1).fill(0) }));
    if (ok) s.ok++;
    else s.errors++;
    s.sum += seconds;
    for (let i = 0; i < BUCKETS.length; i++) if (seconds <= BUCKETS[i]!) s.buckets[i]!++;
    s.buckets[BUCKETS.length]!++;
    if (op === "read") this.readBytes += bytes;
    else if (op === "write") this.writtenBytes += bytes;
  }

  render(gauges: readonly Gauge[] = []): string {
    const out: string[] = [];
    out.push("# HELP objectfs_operations_total FUSE operations answered, by operation and result.", "# TYPE objectfs_operations_total counter");
    for (const [op, s] of this.ops) {
      out.push(`objectfs_operations_total{op="${op}",result="ok"} ${s.ok}`, `objectfs_operations_total{op="${op}",result="error"} ${s.errors}`);
    }
    out.push("# HELP objectfs_operation_seconds Time to answer a FUSE operation.", "# TYPE objectfs_operation_seconds histogram");
    for (const [op, s] of this.ops) {
      BUCKETS.forEach((b, i) => out.push(`objectfs_operation_seconds_bucket{op="${op}",le="${b}"} ${s.buckets[i]}`));
      out.push(`objectfs_operation_seconds_bucket{op="${op}",le="+Inf"} ${s.buckets[BUCKETS.length]}`);
      out.push(`objectfs_operation_seconds_sum{op="${op}"} ${s.sum}`, `objectfs_operation_seconds_count{op="${op}"} ${s.ok + s.errors}`);
    }
    const all: Gauge[] = [
      { name: "objectfs_read_bytes_total", help: "Bytes read through the mount.", type: "counter", value: this.readBytes },
      { name: "objectfs_written_bytes_total", help: "Bytes written through the mount.", type: "counter", value: this.writtenBytes },
      ...gauges,
    ];
    for (const g of all) out.push(`# HELP ${g.name} ${g.help}`, `# TYPE ${g.name} ${g.type}`, `${g.name} ${Number.isFinite(g.value) ? g.value : 0}`);
    return `${out.join("\n")}\n`;
  }
}
