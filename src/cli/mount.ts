/** `objectfs mount`, `objectfs unmount`, `objectfs fsck`. */
import { spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { mkdir, readFile, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { Filesystem } from "../fs/filesystem.ts";
import { serve, type S3Source, type ServeOptions } from "./serve.ts";
import { parsePoint } from "../audit/time_travel.ts";
import { parseAddr } from "./metrics_server.ts";
import type { HistorySource } from "./history.ts";
import { parseS3Url } from "../replicator/mod.ts";
import { alive, forceUnmount, mountEntry, MountError, servingPid } from "../fuse/mount.ts";
import { UsageError, type Command } from "./command.ts";
import { loadConfig, type Config } from "./config.ts";
import { DEFAULT_RETENTION, formatDuration } from "../retention/policy.ts";

const VERSION = "objectfs 0.1.0";

/** Default data directory for a mountpoint: one per mountpoint under the user's data home. */
export function defaultDataDir(mountpoint: string): string {
  const base = process.env.XDG_DATA_HOME || join(homedir(), ".local", "share");
  const name = resolve(mountpoint).replace(/^\/+/, "").replace(/[^A-Za-z0-9._-]+/g, "_") || "root";
  return join(base, "objectfs", name);
}

/** parseArgs, whose unknown-option error, when positionals are allowed, is one sentence here. */
function parse<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (e) {
    const unknown = (e as { code?: string }).code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && /^Unknown option '([^']*)'/.exec((e as Error).message);
    if (unknown) throw new UsageError(`unknown option ${unknown[1]}`);
    throw e;
  }
}

const MOUNT_OPTIONS = {
  "data-dir": { type: "string" },
  durability: { type: "string" },
  foreground: { type: "boolean" },
  "read-only": { type: "boolean" },
  "allow-other": { type: "boolean" },
  "cache-timeout": { type: "string" },
  endpoint: { type: "string" },
  region: { type: "string" },
  "path-style": { type: "boolean" },
  "write-back": { type: "string" },
  "seal-interval": { type: "string" },
  "cache-size": { type: "string" },
  metrics: { type: "string" },
  "retain-data": { type: "string" },
  "retain-events": { type: "string" },
  "compact-interval": { type: "string" },
  "compact-after": { type: "string" },
  at: { type: "string" },
  client: { type: "string" },
  config: { type: "string" },
} as const;

export const mount: Command = {
  name: "mount",
  summary: "mount an S3 bucket or prefix (or a local-only journal) at a directory",
  usage: `objectfs mount [s3://BUCKET[/PREFIX]] MOUNTPOINT [options]

Without an s3:// source the local journal alone backs the mount.

  --data-dir DIR          journal and data (default: ~/.local/share/objectfs/<mountpoint>)
  --durability MODE       fsync: data is durable once fsync or close returns (default)
                          strict: every write is durable before it returns
  --foreground            serve from this process instead of detaching once mounted
  --read-only             refuse every change (EROFS)
  --allow-other           let other users see the mount
  --cache-timeout SEC     how long the kernel may cache names, absent names and attributes
                          (default 1; changes objectfs makes by itself are sent as invalidations)
  --config FILE           YAML file of the same settings (data-dir: …, durability: …)
  --metrics ADDR          serve Prometheus metrics at http://ADDR/metrics and a health check at
                          /health (ADDR like 127.0.0.1:9464)
  --retain-data DUR       how far back past states can be restored (mount --at, restore --at):
                          their bytes are kept that long (default 7d)
  --retain-events DUR     how long events stay for the audit log, at least --retain-data
                          (default 90d; "forever" keeps them all)
  --compact-interval DUR  how often retention runs (default 1h; "objectfs compact" runs it now)

With an s3:// source (credentials: the AWS default chain, e.g. AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, or a profile):
  --endpoint URL          an S3-compatible server (MinIO, Ceph RGW, R2, objectfs dev-s3)
  --region REGION         (default: AWS_REGION, else us-east-1)
  --path-style            address buckets as URL paths (the default with --endpoint)
  --write-back SEC        changes become objects once nothing changed for this long (default 2)
  --seal-interval SEC     journal segments are shipped this often while events arrive (default 1)
  --cache-size MIB        read cache of remote bytes in DATA_DIR/cache (default 1024)
  --compact-after DUR     journal segments older than this are merged into larger ones
                          (level 1, per hour; level 2 after 24 times as long, per day) (default 1h)

Time travel (read-only; the live mount, if any, goes on):
  --at TIME|SEQ           the tree as it was after that seq, or after the last operation at or
                          before that time (ISO 8601); from --data-dir DIR (unmounted), or from
                          the s3:// source's journal segments on any machine
  --client ID             whose journal, when several clients replicate under the prefix

Settings come from the config file, then OBJECTFS_* environment variables
(OBJECTFS_DATA_DIR, OBJECTFS_DURABILITY, …), then flags. Without --foreground,
objectfs returns once the mount is ready and serves it in the background;
SIGINT or SIGTERM, or "objectfs unmount MOUNTPOINT", unmount it after flushing.`,
  async run(args) {
    const { values, positionals } = parse({ args, options: MOUNT_OPTIONS, allowPositionals: true, strict: true });
    if (positionals.length === 0 || positionals.length > 2) {
      throw new UsageError(positionals.length === 0 ? "missing MOUNTPOINT" : `expected [s3://BUCKET[/PREFIX]] MOUNTPOINT, got ${positionals.length} arguments`);
    }
    const sourceUrl = positionals.length === 2 ? positionals[0]! : undefined;
    const mountpoint = resolve(positionals[positionals.length - 1]!);
    const parsed = sourceUrl === undefined ? undefined : parseS3Url(sourceUrl);
    if (sourceUrl !== undefined && !parsed) {
      throw new UsageError(`${JSON.stringify(sourceUrl)} is not an S3 source; write s3://BUCKET or s3://BUCKET/PREFIX (a valid bucket name, no "." or ".." segments)`);
    }
    const { config: configFile, at: atText, client, ...flags } = values;
    const config = await loadConfig({ file: configFile ?? process.env.OBJECTFS_CONFIG, env: process.env, flags });
    const dataDir = resolve(config["data-dir"] ?? defaultDataDir(mountpoint));
    if (sourceUrl === undefined) {
      const s3Only = (["endpoint", "region", "path-style", "write-back", "seal-interval", "cache-size", "compact-after"] as const).filter((k) => config[k] !== undefined);
      if (s3Only.length > 0) throw new UsageError(`${s3Only.map((k) => `--${k}`).join(", ")} only apply to an s3:// source; give one before MOUNTPOINT`);
    }
    if (config.metrics !== undefined) parseAddr(config.metrics);
    const retention = retentionOf(config);
    if (config.endpoint !== undefined && !/^https?:\/\/[^/]+/.test(config.endpoint)) {
      throw new UsageError(`--endpoint ${JSON.stringify(config.endpoint)} is not a URL; write it like http://127.0.0.1:9000`);
    }
    const source: S3Source | undefined = parsed && {
      url: `s3://${parsed.bucket}${parsed.prefix ? `/${parsed.prefix.slice(0, -1)}` : ""}`,
      ...parsed,
      ...(config.endpoint !== undefined ? { endpoint: config.endpoint } : {}),
      ...(config.region !== undefined ? { region: config.region } : {}),
      ...(config["path-style"] !== undefined ? { pathStyle: config["path-style"] } : {}),
      ...(config["write-back"] !== undefined ? { writeBackMs: config["write-back"] * 1000 } : {}),
      ...(config["seal-interval"] !== undefined ? { sealMs: config["seal-interval"] * 1000 } : {}),
      ...(config["cache-size"] !== undefined ? { cacheBytes: config["cache-size"] * 1024 * 1024 } : {}),
    };
    let at: ServeOptions["at"];
    if (atText !== undefined) {
      const point = parsePoint(atText);
      if (!point) throw new UsageError(`--at ${JSON.stringify(atText)} is neither a seq nor a time like 2026-11-24T10:00:00Z`);
      if (!source && config["data-dir"] === undefined) throw new UsageError("--at needs the journal to read: an s3:// source, or --data-dir DIR");
      const history: HistorySource = source
        ? { kind: "s3", bucket: source.bucket, prefix: source.prefix, store: { ...(source.endpoint ? { endpoint: source.endpoint } : {}), ...(source.region ? { region: source.region } : {}), ...(source.pathStyle !== undefined ? { forcePathStyle: source.pathStyle } : {}) }, ...(client ? { client } : {}) }
        : { kind: "local", dataDir };
      at = { point, history };
    }
    if (!config.foreground) {
      // Checked here too so that a mistyped mountpoint leaves no data directory behind.
      if ((await stat(mountpoint).catch((e: NodeJS.ErrnoException) => e.code)) === "ENOENT") {
        throw new MountError(`mountpoint ${mountpoint} does not exist; create it with "mkdir -p ${mountpoint}"`);
      }
      return daemonize(args, dataDir, mountpoint);
    }
    return serveForeground(mountpoint, dataDir, config, source, at, retention);
  },
};

/** The retention settings of a mount, checked. */
export function retentionOf(config: Config): NonNullable<ServeOptions["retention"]> {
  const dataMs = config["retain-data"] ?? DEFAULT_RETENTION.dataMs;
  const eventsMs = config["retain-events"] ?? DEFAULT_RETENTION.eventsMs;
  if (dataMs === Infinity) throw new UsageError("retain-data cannot be forever (the bytes of every past state would be kept); give a duration like 30d");
  if (eventsMs < dataMs) {
    throw new UsageError(`retain-events (${formatDuration(eventsMs)}) is shorter than retain-data (${formatDuration(dataMs)}); events must stay at least as long as the bytes of the states they make`);
  }
  const intervalMs = config["compact-interval"] ?? 3_600_000;
  if (intervalMs < 1000) throw new UsageError(`compact-interval ${formatDuration(intervalMs)} is too short; give at least 1s`);
  const after = config["compact-after"];
  return { policy: { dataMs, eventsMs }, intervalMs, ...(after !== undefined ? { level1AgeMs: after, level2AgeMs: after * 24 } : {}) };
}

/** Start `mount … --foreground` detached; return once it reports the mount ready (or failed). */
async function daemonize(args: string[], dataDir: string, mountpoint: string): Promise<number> {
  await mkdir(dataDir, { recursive: true });
  const logFile = join(dataDir, "objectfs.log");
  // Only what this child writes explains its failure, not what earlier sessions left in the log.
  const logStart = (await stat(logFile).catch(() => undefined))?.size ?? 0;
  const log = openSync(logFile, "a");
  const child = spawn(process.execPath, [process.argv[1]!, "mount", ...args, "--foreground"], {
    detached: true,
    stdio: ["ignore", "pipe", log],
    env: { ...process.env, _OBJECTFS_DETACHED: "1" },
  });
  closeSync(log);
  const outcome = await new Promise<{ ready: boolean; code: number | null }>((done) => {
    let out = "";
    child.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      if (out.includes("\n")) done({ ready: true, code: 0 });
    });
    child.on("exit", (code) => done({ ready: false, code }));
  });
  if (outcome.ready) {
    child.stdout!.destroy();
    child.unref();
    console.log(`objectfs: mounted at ${mountpoint} (pid ${child.pid}); data in ${dataDir}; log in ${logFile}`);
    return 0;
  }
  const written = (await readFile(logFile).catch(() => Buffer.alloc(0))).subarray(logStart).toString("utf8");
  const tail = written.trim().split("\n").slice(-3).join("\n");
  console.error(tail || `objectfs mount: the mount process exited with code ${outcome.code}`);
  return outcome.code || 1;
}

/** Mount and serve from this process until unmounted or signalled. */
async function serveForeground(mountpoint: string, dataDir: string, config: Config, source: S3Source | undefined, at: ServeOptions["at"], retention: ServeOptions["retention"]): Promise<number> {
  await serve({
    ...(retention ? { retention } : {}),
    ...(source ? { source } : {}),
    ...(at ? { at } : {}),
    ...(config.metrics !== undefined ? { metrics: config.metrics } : {}),
    mountpoint,
    dataDir,
    durability: config.durability,
    readOnly: config["read-only"],
    allowOther: config["allow-other"],
    cacheTimeout: config["cache-timeout"],
    version: VERSION,
    // The first line on stdout tells a detaching parent that the mount is ready.
    onReady: (message) => {
      process.stdout.write(`${message}\n`);
      if (process.env._OBJECTFS_DETACHED) console.error(message);
    },
    log: (message) => console.error(message),
  });
  return 0;
}

export const unmount: Command = {
  name: "unmount",
  summary: "flush and unmount a mounted filesystem",
  usage: `objectfs unmount MOUNTPOINT [--timeout SEC]

  --timeout SEC   how long to wait for the serving process to flush and exit (default 60)`,
  async run(args) {
    const { values, positionals } = parse({ args, options: { timeout: { type: "string" } }, allowPositionals: true, strict: true });
    if (positionals.length !== 1) throw new UsageError("expected one MOUNTPOINT");
    const mountpoint = resolve(positionals[0]!);
    const timeout = Number(values.timeout ?? 60);
    if (!Number.isFinite(timeout) || timeout <= 0) throw new UsageError(`--timeout must be a positive number of seconds (got ${values.timeout})`);
    const entry = await mountEntry(mountpoint);
    if (!entry) {
      console.error(`objectfs unmount: nothing is mounted at ${mountpoint}`);
      return 1;
    }
    const pid = await servingPid(mountpoint);
    if (pid === undefined || !alive(pid)) {
      if (!entry.fstype.startsWith("fuse")) {
        console.error(`objectfs unmount: ${mountpoint} is a ${entry.fstype} mount, not objectfs`);
        return 1;
      }
      forceUnmount(mountpoint);
      console.log(`objectfs: cleared a stale mount at ${mountpoint} (its process was gone)`);
      return 0;
    }
    process.kill(pid, "SIGTERM");
    const until = Date.now() + timeout * 1000;
    while (alive(pid) && Date.now() < until) await Bun.sleep(50);
    if (alive(pid)) {
      console.error(`objectfs unmount: pid ${pid} did not finish within ${timeout} s; it is still flushing, or stuck (see its log)`);
      return 1;
    }
    if (await mountEntry(mountpoint)) forceUnmount(mountpoint);
    console.log(`objectfs: unmounted ${mountpoint}`);
    return 0;
  },
};

export const fsckCommand: Command = {
  name: "fsck",
  summary: "rebuild projections from the journal and compare them with what is stored",
  usage: `objectfs fsck --data-dir DIR [--json] [--repair]

  --repair   when differences are found, replace the stored projections with the journal's replay

Exit code 0 when clean (or repaired), 1 when differences were found.`,
  async run(args) {
    const { values } = parseArgs({ args, options: { "data-dir": { type: "string" }, json: { type: "boolean" }, repair: { type: "boolean" } }, strict: true });
    if (!values["data-dir"]) throw new UsageError("missing --data-dir");
    const dir = resolve(values["data-dir"]);
    if (!(await stat(join(dir, "journal")).catch(() => undefined))) throw new UsageError(`${dir} holds no objectfs journal; give the --data-dir of a mount`);
    const fs = await Filesystem.open(dir, { readOnly: true });
    try {
      const report = await fs.fsck();
      if (values.json) console.log(JSON.stringify(report));
      else if (report.ok) console.log(`fsck: clean (${report.events} events replayed)`);
      else {
        console.log(`fsck: ${report.differences.length} difference(s) after replaying ${report.events} events:`);
        for (const d of report.differences) console.log(`  ${d}`);
      }
      if (report.ok || !values.repair) return report.ok ? 0 : 1;
    } finally {
      await fs.close();
    }
    const { events } = await Filesystem.repair(dir);
    console.log(`fsck: projections rebuilt from ${events} events`);
    return 0;
  },
};
