/**
 * Configuration: a YAML file, then the environment (OBJECTFS_*), then flags,
 * each layer overriding the one before. Every unknown or bad key, from any
 * layer, is named in one error.
 */
import { readFile } from "node:fs/promises";
import { parse as parseYaml } from "yaml";
import { UsageError } from "./command.ts";
import { parseDuration } from "../retention/policy.ts";

type Kind = "string" | "boolean" | "number" | "duration" | { readonly oneOf: readonly string[] };

/** Every setting, with its type. Keys are the long flag names. */
export const SETTINGS = {
  "data-dir": "string",
  durability: { oneOf: ["fsync", "strict"] },
  "read-only": "boolean",
  "allow-other": "boolean",
  foreground: "boolean",
  "cache-timeout": "number",
  endpoint: "string",
  region: "string",
  "path-style": "boolean",
  "write-back": "number",
  "seal-interval": "number",
  "cache-size": "number",
  metrics: "string",
  "retain-data": "duration",
  "retain-events": "duration",
  "compact-interval": "duration",
  "compact-after": "duration",
} as const satisfies Record<string, Kind>;

export type SettingName = keyof typeof SETTINGS;
/** Durations are milliseconds once loaded (written like 90d, 12h, 30m, 45s, 250ms, or forever). */
type ValueOf<K> = K extends "string" ? string : K extends "boolean" ? boolean : K extends "number" | "duration" ? number : K extends { oneOf: readonly (infer V)[] } ? V : never;
export type Config = { -readonly [N in SettingName]?: ValueOf<(typeof SETTINGS)[N]> };

/** OBJECTFS_* variables that are not settings: the config file, the control-socket dir, scripts/dev.sh's. */
const NOT_SETTINGS = new Set(["OBJECTFS_CONFIG", "OBJECTFS_RUN_DIR", "OBJECTFS_SOURCE", "OBJECTFS_MOUNTPOINT", "OBJECTFS_DEV_S3_PORT"]);

const envName = (n: string) => `OBJECTFS_${n.toUpperCase().replace(/-/g, "_")}`;

function coerce(name: SettingName, raw: unknown, where: string, problems: string[]): unknown {
  const kind: Kind = SETTINGS[name];
  const got = JSON.stringify(raw);
  if (kind === "string") {
    if (typeof raw === "string" && raw.length > 0) return raw;
    problems.push(`${name} must be a non-empty string (got ${got}) in ${where}`);
  } else if (kind === "boolean") {
    if (typeof raw === "boolean") return raw;
    if (raw === "true" || raw === "1" || raw === "yes") return true;
    if (raw === "false" || raw === "0" || raw === "no") return false;
    problems.push(`${name} must be true or false (got ${got}) in ${where}`);
  } else if (kind === "duration") {
    const ms = typeof raw === "number" ? raw * 1000 : typeof raw === "string" ? parseDuration(raw) : undefined;
    if (ms !== undefined && ms >= 0) return ms;
    problems.push(`${name} must be a duration like 7d, 12h, 30m, 45s or forever (got ${got}) in ${where}`);
  } else if (kind === "number") {
    const n = typeof raw === "number" ? raw : typeof raw === "string" && raw.trim() !== "" ? Number(raw) : NaN;
    if (Number.isFinite(n) && n >= 0) return n;
    problems.push(`${name} must be a non-negative number (got ${got}) in ${where}`);
  } else {
    if (typeof raw === "string" && kind.oneOf.includes(raw)) return raw;
    problems.push(`${name} must be one of ${kind.oneOf.join(", ")} (got ${got}) in ${where}`);
  }
  return undefined;
}

/**
 * Merge the layers. `flags` holds only the flags given on the command line
 * (long names, already typed by parseArgs).
 */
export async function loadConfig(options: {
  readonly file?: string;
  readonly env?: Record<string, string | undefined>;
  readonly flags?: Record<string, unknown>;
}): Promise<Config> {
  const problems: string[] = [];
  const config: Record<string, unknown> = {};
  const known = new Set(Object.keys(SETTINGS));
  if (options.file) {
    let text: string;
    try {
      text = await readFile(options.file, "utf8");
    } catch (e) {
      throw new UsageError(`cannot read config file ${options.file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    let doc: unknown;
    try {
      doc = parseYaml(text);
    } catch (e) {
      throw new UsageError(`config file ${options.file} is not valid YAML: ${(e as Error).message.split("\n")[0]}`);
    }
    if (doc !== null && doc !== undefined) {
      if (typeof doc !== "object" || Array.isArray(doc)) throw new UsageError(`config file ${options.file} must be a mapping of settings`);
      for (const [k, v] of Object.entries(doc as Record<string, unknown>)) {
        if (!known.has(k)) problems.push(`unknown key "${k}" in ${options.file}`);
        else {
          const c = coerce(k as SettingName, v, options.file, problems);
          if (c !== undefined) config[k] = c;
        }
      }
    }
  }
  const env = options.env ?? {};
  const envKnown = new Map([...known].map((k) => [envName(k), k as SettingName]));
  for (const [k, v] of Object.entries(env)) {
    // OBJECTFS_TEST_* belongs to the test suite, not to the configuration.
    if (!k.startsWith("OBJECTFS_") || k.startsWith("OBJECTFS_TEST_") || v === undefined) continue;
    const name = envKnown.get(k);
    if (!name) {
      if (!NOT_SETTINGS.has(k)) problems.push(`unknown environment variable ${k}`);
      continue;
    }
    const c = coerce(name, v, `environment variable ${k}`, problems);
    if (c !== undefined) config[name] = c;
  }
  for (const [k, v] of Object.entries(options.flags ?? {})) {
    if (v === undefined || !known.has(k)) continue;
    const c = coerce(k as SettingName, v, `flag --${k}`, problems);
    if (c !== undefined) config[k] = c;
  }
  if (problems.length === 1) throw new UsageError(`bad configuration: ${problems[0]}`);
  if (problems.length > 1) throw new UsageError(`bad configuration: ${problems.join("; ")}`);
  return config as Config;
}
