/** `objectfs restore`: a past (or the latest) state of a journal written into a plain directory. */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { restoreHistory } from "../audit/restore.ts";
import { parsePoint } from "../audit/time_travel.ts";
import { parseS3Url } from "../replicator/mod.ts";
import { UsageError, type Command } from "./command.ts";
import { openHistory, type HistorySource } from "./history.ts";

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

export const restore: Command = {
  name: "restore",
  summary: "write the tree as it was at a time or seq into a plain directory",
  usage: `objectfs restore s3://BUCKET[/PREFIX] DIR [--at TIME|SEQ] [--client ID] [--endpoint URL] [--region R] [--stop-at-corruption]
objectfs restore --data-dir DATA_DIR DIR [--at TIME|SEQ]

  --at TIME|SEQ          the state after that seq, or after the last operation at or before that
                         time (ISO 8601, like 2026-11-24T10:00:00Z); default: the latest
  --client ID            whose journal (when several clients replicate under the prefix)
  --stop-at-corruption   use a corrupt or discontinuous journal up to its last good point
                         (without it, such a journal is refused and the bad segment named)

DIR must be empty or new: nothing is overwritten. Every segment's checksums are verified;
bytes of files that came from S3 objects are read pinned to the versions the journal saw.`,
  async run(args) {
    const { values, positionals } = parseArgs({
      args,
      options: {
        at: { type: "string" },
        client: { type: "string" },
        endpoint: { type: "string" },
        region: { type: "string" },
        "data-dir": { type: "string" },
        "stop-at-corruption": { type: "boolean" },
      },
      allowPositionals: true,
      strict: true,
    });
    const want = values["data-dir"] ? 1 : 2;
    if (positionals.length !== want) throw new UsageError(values["data-dir"] ? "expected one DIR to restore into" : "expected s3://BUCKET[/PREFIX] and DIR");
    const at = values.at === undefined ? undefined : parsePoint(values.at);
    if (values.at !== undefined && !at) throw new UsageError(`--at ${JSON.stringify(values.at)} is neither a seq nor a time like 2026-11-24T10:00:00Z`);
    let source: HistorySource;
    if (values["data-dir"]) source = { kind: "local", dataDir: resolve(values["data-dir"]) };
    else {
      const parsed = parseS3Url(positionals[0]!);
      if (!parsed) throw new UsageError(`${JSON.stringify(positionals[0])} is not an S3 source; write s3://BUCKET or s3://BUCKET/PREFIX`);
      source = {
        kind: "s3",
        ...parsed,
        store: { ...(values.endpoint ? { endpoint: values.endpoint } : {}), ...(values.region ? { region: values.region } : {}) },
        ...(values.client ? { client: values.client } : {}),
        ...(values["stop-at-corruption"] ? { stopAtCorruption: true } : {}),
      };
    }
    const dir = resolve(positionals[positionals.length - 1]!);
    const tty = process.stderr.isTTY;
    const status = (line: string) => tty && process.stderr.write(`\r\x1b[K${line}`);
    const h = await openHistory(source, (m) => console.error(m));
    try {
      const done = await restoreHistory(h.history, at, dir, {
        ...(h.remote ? { remote: h.remote } : {}),
        onProgress: (p) => status(`restore: seq ${p.seq}, ${p.files} files, ${mib(p.bytes)}`),
      });
      if (tty) process.stderr.write("\r\x1b[K");
      console.log(`objectfs: restored the state after seq ${done.seq} into ${dir}: ${done.files} files, ${mib(done.bytes)}`);
      return 0;
    } catch (e) {
      if (tty) process.stderr.write("\r\x1b[K");
      console.error(`objectfs restore: ${(e as Error).message}`);
      return 1;
    } finally {
      await h.close();
    }
  },
};
