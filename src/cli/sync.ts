/** `objectfs sync` and `objectfs status`: ask a running S3-backed mount through its control socket. */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { UsageError, type Command } from "./command.ts";
import { request, type Status } from "./control.ts";
import { formatDuration } from "../retention/policy.ts";
import type { RetentionStatus } from "../retention/service.ts";

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

function retentionLine(r: RetentionStatus): string {
  const c = r.last?.checkpoint;
  const windows = `data ${formatDuration(r.policy.dataMs)}, events ${formatDuration(r.policy.eventsMs)}`;
  const where = c ? `; restorable from seq ${c.dataFrom} (${c.dataFromTime}), audit log from seq ${c.seq + 1}` : "";
  const when = r.lastPass ? `; last pass ${r.lastPass}` : "; no pass yet";
  return `retention:     ${windows}${where}${when}${r.lastError ? `; last error: ${r.lastError}` : ""}`;
}

export const sync: Command = {
  name: "sync",
  summary: "wait until every change made so far is in S3",
  usage: `objectfs sync MOUNTPOINT [--timeout SEC]

Returns 0 once everything acknowledged before it started is in S3 (journal segments and
plain objects); 1 on timeout or error, naming what is still pending and the last error.
  --timeout SEC   give up after this long (default: wait for as long as it takes)`,
  async run(args) {
    const { values, positionals } = parseArgs({ args, options: { timeout: { type: "string" } }, allowPositionals: true, strict: true });
    if (positionals.length !== 1) throw new UsageError("expected one MOUNTPOINT");
    const timeout = values.timeout === undefined ? undefined : Number(values.timeout);
    if (timeout !== undefined && !(Number.isFinite(timeout) && timeout > 0)) throw new UsageError(`--timeout must be a positive number of seconds (got ${values.timeout})`);
    const tty = process.stderr.isTTY;
    let error: string | undefined;
    let done = false;
    try {
      await request(positionals[0]!, { op: "sync", ...(timeout !== undefined ? { timeoutMs: timeout * 1000 } : {}) }, (reply) => {
        if (reply.progress && tty) {
          const s = reply.progress as Status;
          process.stderr.write(`\r\x1b[Ksync: ${s.pendingEvents} events pending${s.pendingMaterialization ? ", objects pending" : ""}${s.lastError ? ` (retrying: ${s.lastError.message})` : ""}`);
        }
        if (reply.error) error = String(reply.error);
        if (reply.done) done = true;
      });
    } catch (e) {
      error = (e as Error).message;
    }
    if (tty) process.stderr.write("\r\x1b[K");
    if (!done) {
      console.error(`objectfs sync: ${error ?? "the mount closed the connection before finishing"}`);
      return 1;
    }
    console.log(`objectfs: ${resolve(positionals[0]!)} is in sync with S3`);
    return 0;
  },
};

export const status: Command = {
  name: "status",
  summary: "show replication state: pending changes, lag, conflicts, hidden keys, last error",
  usage: `objectfs status MOUNTPOINT [--json]`,
  async run(args) {
    const { values, positionals } = parseArgs({ args, options: { json: { type: "boolean" } }, allowPositionals: true, strict: true });
    if (positionals.length !== 1) throw new UsageError("expected one MOUNTPOINT");
    let s: (Status & { retention?: RetentionStatus }) | undefined;
    let error: string | undefined;
    try {
      await request(positionals[0]!, { op: "status" }, (reply) => {
        if (reply.status) s = reply.status as Status & { retention?: RetentionStatus };
        if (reply.error) error = String(reply.error);
      });
    } catch (e) {
      error = (e as Error).message;
    }
    if (!s) {
      console.error(`objectfs status: ${error ?? "no answer"}`);
      return 1;
    }
    if (values.json) {
      console.log(JSON.stringify(s));
      return 0;
    }
    const lines = [
      `source:        s3://${s.bucket}/${s.prefix} at ${s.endpoint} (client ${s.clientId})`,
      `state:         ${s.online ? "online" : "offline or failing"}`,
      `pending:       ${s.pendingEvents} events not in a segment yet; objects ${s.pendingMaterialization ? "pending" : "up to date"}`,
      `lag:           ${s.lagSeconds.toFixed(1)} s`,
      `replicated:    through seq ${s.replicatedThrough} (${s.segments.shipped} segments, ${mib(s.segments.bytes)} this session)`,
      `materialized:  through seq ${s.materializedThrough} (${s.objects.put} written, ${s.objects.copied} copied server-side, ${s.objects.deleted} deleted this session)`,
      `conflicts:     ${s.conflicts}${s.lastConflict ? ` (last: ${s.lastConflict.key} kept as ${s.lastConflict.conflictKey}, ${s.lastConflict.time})` : ""}`,
      `hidden keys:   ${s.skippedKeys}`,
      ...s.skipped.slice(-10).map((k) => `  ${JSON.stringify(k.key)}: ${k.reason}`),
      ...(s.cache ? [`read cache:    ${mib(s.cache.bytes)}, ${s.cache.hits} hits, ${s.cache.misses} misses`] : []),
      ...(s.lastError ? [`last error:    ${s.lastError.message} (${s.lastError.time})`] : []),
      ...(s.retention ? [retentionLine(s.retention)] : []),
    ];
    console.log(lines.join("\n"));
    return 0;
  },
};
