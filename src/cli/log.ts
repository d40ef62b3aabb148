/** `objectfs log`: the audit log of a mount, an unmounted data directory, or a bucket's segments. */
import { stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { Filesystem } from "../fs/filesystem.ts";
import { auditLog, formatEntry, type LogEntry, type LogFilter } from "../audit/log.ts";
import { parseS3Url, readRemoteJournal, remoteClients } from "../replicator/mod.ts";
import { remoteCheckpoint } from "../replicator/checkpoints.ts";
import { localCheckpoint } from "../retention/history.ts";
import { makeObjectStore } from "../s3/mod.ts";
import { UsageError, type Command } from "./command.ts";
import { request } from "./control.ts";

/** A time: ISO 8601 (2026-11-24T10:00:00Z, 2026-11-24), or seconds since the epoch. */
export function parseTime(text: string, flag: string): number {
  if (/^\d+(\.\d+)?$/.test(text)) return Math.round(Number(text) * 1000);
  const t = Date.parse(text);
  if (Number.isNaN(t)) throw new UsageError(`${flag} ${JSON.stringify(text)} is not a time; write it like 2026-11-24T10:00:00Z or as seconds since the epoch`);
  return t;
}

const int = (text: string | undefined, flag: string) => {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw new UsageError(`${flag} must be a number (got ${JSON.stringify(text)})`);
  return Number(text);
};

export const logCommand: Command = {
  name: "log",
  summary: "the audit log: every operation with its time, caller and paths",
  usage: `objectfs log [MOUNTPOINT | --data-dir DIR | s3://BUCKET[/PREFIX]] [options]

  --path P          operations on P (and on the file now at P, under its earlier names)
  --since T         from time T (ISO 8601 like 2026-11-24T10:00:00Z, or epoch seconds)
  --until T         up to time T
  --uid U           by user id U
  --pid P           by process id P
  --all             also replication facts and session markers
  --json            one JSON object per line
From S3 (the journal segments; any machine can audit):
  --client ID       the client whose journal to read (default: every client, one after the other)
  --endpoint URL, --region R   as for mount; credentials from the AWS default chain`,
  async run(args) {
    const { values, positionals } = parseArgs({
      args,
      options: {
        "data-dir": { type: "string" },
        path: { type: "string" },
        since: { type: "string" },
        until: { type: "string" },
        uid: { type: "string" },
        pid: { type: "string" },
        all: { type: "boolean" },
        json: { type: "boolean" },
        client: { type: "string" },
        endpoint: { type: "string" },
        region: { type: "string" },
      },
      allowPositionals: true,
      strict: true,
    });
    if (positionals.length + (values["data-dir"] ? 1 : 0) !== 1) throw new UsageError("give one of MOUNTPOINT, --data-dir DIR or s3://BUCKET[/PREFIX]");
    const filter: LogFilter = {
      ...(values.path !== undefined ? { path: values.path } : {}),
      ...(values.since !== undefined ? { since: parseTime(values.since, "--since") } : {}),
      ...(values.until !== undefined ? { until: parseTime(values.until, "--until") } : {}),
      ...(values.uid !== undefined ? { uid: int(values.uid, "--uid") } : {}),
      ...(values.pid !== undefined ? { pid: int(values.pid, "--pid") } : {}),
      ...(values.all ? { all: true } : {}),
    };
    const print = (e: LogEntry, client?: string) => console.log(values.json ? JSON.stringify(client ? { client, ...e } : e) : formatEntry(e));
    let count = 0;
    const target = positionals[0];
    if (target?.startsWith("s3://")) {
      const parsed = parseS3Url(target);
      if (!parsed) throw new UsageError(`${JSON.stringify(target)} is not an S3 source; write s3://BUCKET or s3://BUCKET/PREFIX`);
      const store = makeObjectStore({ bucket: parsed.bucket, ...(values.endpoint ? { endpoint: values.endpoint } : {}), ...(values.region ? { region: values.region } : {}) });
      try {
        const clients = values.client ? [values.client] : await remoteClients(store, parsed.prefix);
        if (clients.length === 0) {
          console.error(`objectfs log: ${target} holds no objectfs journal`);
          return 1;
        }
        for (const client of clients) {
          if (!values.json && clients.length > 1) console.log(`# client ${client}`);
          const c = await remoteCheckpoint(store, parsed.prefix, client);
          for await (const e of auditLog(() => readRemoteJournal(store, parsed.prefix, client), filter, c ? { base: { seq: c.seq, dirents: c.dump.dirents } } : {})) {
            print(e, clients.length > 1 ? client : undefined);
            count++;
          }
        }
      } finally {
        store.close();
      }
    } else if (values["data-dir"]) {
      const dir = resolve(values["data-dir"]);
      if (!(await stat(join(dir, "journal")).catch(() => undefined))) throw new UsageError(`${dir} holds no objectfs journal; give the --data-dir of a mount`);
      const fs = await Filesystem.open(dir, { readOnly: true });
      try {
        const c = await localCheckpoint(dir);
        for await (const e of auditLog(() => fs.journal.read(), filter, { resolveNow: (p) => fs.resolvePath(p), index: fs.auditIndex(), ...(c ? { base: { seq: c.seq, dirents: c.dump.dirents } } : {}) })) {
          print(e);
          count++;
        }
      } finally {
        await fs.close();
      }
    } else {
      let error: string | undefined;
      await request(target!, { op: "log", filter }, (reply) => {
        if (reply.entry) {
          print(reply.entry as LogEntry);
          count++;
        }
        if (reply.error) error = String(reply.error);
      });
      if (error) {
        console.error(`objectfs log: ${error}`);
        return 1;
      }
    }
    if (!values.json) console.error(`objectfs log: ${count} operation${count === 1 ? "" : "s"}`);
    return 0;
  },
};
