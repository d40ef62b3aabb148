/** Retention windows and how durations are written (see retention.ts). */

export interface RetentionPolicy {
  /** Past states younger than this can be restored. */
  readonly dataMs: number;
  /** Events younger than this stay for the audit log (Infinity: forever). At least `dataMs`. */
  readonly eventsMs: number;
}

export const DEFAULT_RETENTION: RetentionPolicy = { dataMs: 7 * 86_400_000, eventsMs: 90 * 86_400_000 };

/** "90d", "12h", "30m", "45s", "250ms", or "forever". */
export function parseDuration(text: string): number | undefined {
  if (text === "forever" || text === "infinity") return Infinity;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?$/.exec(text.trim());
  if (!m) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[m[2] ?? "s"]!;
  return Number(m[1]) * unit;
}

export function formatDuration(ms: number): string {
  if (ms === Infinity) return "forever";
  for (const [u, n] of [["w", 604_800_000], ["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) if (ms >= n && ms % n === 0) return `${ms / n}${u}`;
  return `${ms}ms`;
}
