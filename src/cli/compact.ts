/** `objectfs compact`: a retention pass now, in a mount or on an unmounted data directory. */
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { Filesystem } from "../fs/filesystem.ts";
import { formatDuration } from "../retention/policy.ts";
import { retainLocal } from "../retention/retention.ts";
import type { RetentionReport } from "../retention/service.ts";
import { UsageError, type Command } from "./command.ts";
import { loadConfig } from "./config.ts";
import { request } from "./control.ts";
import { retentionOf } from "./mount.ts";

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

export const compact: Command = {
  name: "compact",
  summary: "apply retention now: drop what is older than the retained windows, compact segments",
  usage: `objectfs compact MOUNTPOINT [--retain-data DUR --retain-events DUR] [--json]
objectfs compact --data-dir DIR [--retain-data DUR] [--retain-events DUR] [--json]

Runs a retention pass (a mount runs one every --compact-interval by itself): events older
than --retain-events go, bytes no point younger than --retain-data shows are dropped and their
space reclaimed, and for S3 mounts the journal segments in S3 are compacted to match. Past
states younger than --retain-data stay restorable. Windows given here apply to this pass
only (for a mount: both, to prune further now than its settings would). On an unmounted data directory only the
local journal is compacted (a data directory of an S3 mount keeps what is not in S3 yet).
  --json   print the report as JSON`,
  async run(args) {
    const { values, positionals } = parseArgs({
      args,
      options: { json: { type: "boolean" }, "data-dir": { type: "string" }, "retain-data": { type: "string" }, "retain-events": { type: "string" }, config: { type: "string" } },
      allowPositionals: true,
      strict: true,
    });
    let report: RetentionReport;
    if (values["data-dir"] !== undefined) {
      if (positionals.length > 0) throw new UsageError("give either MOUNTPOINT or --data-dir DIR, not both");
      const { json: _j, config: file, "data-dir": dataDir, ...flags } = values;
      const config = await loadConfig({ file: file ?? process.env.OBJECTFS_CONFIG, env: process.env, flags });
      const { policy } = retentionOf(config);
      const dir = resolve(dataDir);
      const s3 = (await readFile(resolve(dir, "source"), "utf8").catch(() => "")).trim();
      const fs = await Filesystem.open(dir, { readOnly: false });
      try {
        const r = await retainLocal(fs, policy, { ...(s3 ? { maxSeq: fs.syncState.replicated?.seq ?? 0 } : {}), log: (m) => console.error(m) });
        const { checkpoint: c, affected, ...counts } = r;
        report = { ...(c ? { checkpoint: { seq: c.seq, dataFrom: c.dataFrom, dataFromTime: new Date(c.dataFromTime).toISOString() } } : {}), local: { ...counts, affected: affected.length } };
      } finally {
        await fs.close();
      }
      if (!values.json) console.log(`retention: data ${formatDuration(policy.dataMs)}, events ${formatDuration(policy.eventsMs)}${s3 ? `; the journal in S3 (${s3}) is compacted by the mount` : ""}`);
    } else {
      if (positionals.length !== 1) throw new UsageError("expected one MOUNTPOINT (or --data-dir DIR)");
      let policy: { dataMs: number; eventsMs: number | null } | undefined;
      if (values["retain-data"] !== undefined || values["retain-events"] !== undefined) {
        if (values["retain-data"] === undefined || values["retain-events"] === undefined) throw new UsageError("give both --retain-data and --retain-events for a one-off pass, or neither for the mount's own windows");
        const p = retentionOf(await loadConfig({ flags: { "retain-data": values["retain-data"], "retain-events": values["retain-events"] } })).policy;
        policy = { dataMs: p.dataMs, eventsMs: p.eventsMs === Infinity ? null : p.eventsMs };
      }
      let error: string | undefined;
      let got: RetentionReport | undefined;
      await request(positionals[0]!, { op: "compact", ...(policy ? { policy } : {}) }, (reply) => {
        if (reply.error) error = String(reply.error);
        if (reply.report) got = reply.report as RetentionReport;
      });
      if (!got) {
        console.error(`objectfs compact: ${error ?? "the mount closed the connection before finishing"}`);
        return 1;
      }
      report = got;
    }
    if (values.json) console.log(JSON.stringify(report));
    else console.log(describe(report));
    return 0;
  },
};

function describe(r: RetentionReport): string {
  const lines: string[] = [];
  const c = r.checkpoint;
  lines.push(c ? `checkpoint at seq ${c.seq}; past states restorable from seq ${c.dataFrom} (${c.dataFromTime})` : "no checkpoint yet: nothing is older than the retained windows");
  const l = r.local;
  if (l.changed) {
    lines.push(`local: ${l.eventsRemoved} events removed, ${l.payloadsDropped} payloads dropped (${mib(l.bytesDead)}), ${(l.reclaimed?.rewritten ?? 0) + (l.reclaimed?.removed ?? 0)} data files reclaimed (${mib(l.reclaimed?.bytes ?? 0)} freed)`);
  } else lines.push("local: nothing new to drop");
  if (r.remote) lines.push(`S3: ${r.remote.written} segments written in place of ${r.remote.deleted} (${mib(r.remote.bytesRead)} read, ${mib(r.remote.bytesWritten)} written)`);
  return lines.join("\n");
}
