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
    const out = new LineWriter();
    const print = (e: LogEntry, client?: string) => out.line(values.json ? JSON.stringify(client ? { client, ...e } : e) : formatEntry(e));
    try {
      return await run();
    } finally {
      await out.end();
    }
    async function run(): Promise<number> {
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
            if (!values.json && clients.length > 1) out.line(`# client ${client}`);
            const c = await remoteCheckpoint(store, parsed.prefix, client);
            for await (const e of auditLog(() => readRemoteJournal(store, parsed.prefix, client), filter, c ? { base: { seq: c.seq, dirents: c.dump.dirents } } : {})) {
              print(e, clients.length > 1 ? client : undefined);
              count++;
              await out.room();
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
            await out.room();
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
      await out.flush();
      if (!values.json) console.error(`objectfs log: ${count} operation${count === 1 ? "" : "s"}`);
      return 0;
    }
  },
};

/**
 * Lines to stdout in writes of about 64 KiB (a write per line costs more than making the
 * line), waiting for a slow reader (a pager) instead of holding the whole log in memory.
 */
class LineWriter {
  private parts: string[] = [];
  private size = 0;
  private wait: Promise<void> | undefined;

  constructor() {
    // A reader that has seen enough (`| head`) closes the pipe: that ends the log quietly.
    process.stdout.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EPIPE") process.exit(0);
      throw e;
    });
  }

  line(text: string): void {
    this.parts.push(text, "\n");
    this.size += text.length + 1;
    if (this.size >= 64 << 10) this.write();
  }

  private write(): void {
    if (this.size === 0) return;
    const ok = process.stdout.write(this.parts.join(""));
    this.parts = [];
    this.size = 0;
    if (!ok && !this.wait) this.wait = new Promise<void>((resolve) => process.stdout.once("drain", () => ((this.wait = undefined), resolve())));
  }

  /** Resolves at once unless stdout is behind: then when it has caught up. */
  room(): Promise<void> | undefined {
    return this.wait;
  }

  /** Write what is buffered, and wait until stdout has taken it. */
  async flush(): Promise<void> {
    this.write();
    while (this.wait) await this.wait;
  }

  /** Flush; then (for process.exit after) wait until the last write has left the process. */
  async end(): Promise<void> {
    await this.flush();
    await new Promise<void>((resolve) => process.stdout.write("", () => resolve()));
  }
}
