/**
 * The closed-loop controller of the multipart engine, as pure functions over plain state.
 *
 * It measures goodput (bytes of finished parts per second, over a sliding window) and part
 * latency, and keeps as many parts in flight as the link wants: in startup it doubles the
 * parts in flight each round while goodput still grows by a tenth; then it drains to the
 * count that gave the best goodput and cruises, probing a quarter more parts every 8 rounds
 * and keeping them only if goodput rises by 3%. Throttling and faults (503 SlowDown, timeouts, resets)
 * halve the parts in flight. The part size follows the bandwidth-delay product (best goodput ×
 * shortest part latency), between 5 MiB and 64 MiB, at least size / 10,000, and may change
 * between parts. Parts in flight never hold more than the memory cap.
 */

export const MIN_PART = 5 * 1024 * 1024;
export const MAX_PART = 64 * 1024 * 1024;
export const MAX_PARTS = 10_000;

export interface ControllerOptions {
  /** Bytes the transfer may hold in parts at once. @default 256 MiB */
  readonly memoryBytes?: number;
  /** Parts in flight at most. @default 64 */
  readonly maxInflight?: number;
  /** Object size, when known (part size floor: size / 10,000). */
  readonly size?: number;
  /** Estimates from an earlier transfer to the same endpoint (a warm start). */
  readonly warm?: Estimate;
}

/** What a transfer learned about an endpoint, to start the next one warm. */
export interface Estimate {
  readonly goodput: number;
  readonly inflight: number;
  readonly partSize: number;
  readonly minLatency: number;
}

export type Phase = "startup" | "cruise";

export interface ControllerState {
  readonly phase: Phase;
  readonly inflight: number;
  readonly partSize: number;
  /** Best goodput seen (bytes/s) and the parts in flight that gave it. */
  readonly bestGoodput: number;
  readonly bestInflight: number;
  /** Shortest part latency seen (s). */
  readonly minLatency: number;
  /** Finished parts in the current round, and the round's start and bytes. */
  readonly roundParts: number;
  readonly roundStart: number;
  readonly roundBytes: number;
  readonly lastRoundGoodput: number;
  /** Startup rounds without a quarter more goodput. */
  readonly flatRounds: number;
  readonly rounds: number;
  /** Set while probing one part more: the goodput before the probe. */
  readonly probeFrom?: number;
  /** …and the parts in flight to go back to if the probe does not pay. */
  readonly probeBase?: number;
  readonly faults: number;
  readonly memoryBytes: number;
  readonly maxInflight: number;
  readonly minPartSize: number;
  /** Object size, when known: parts stay small enough to keep the parts in flight busy. */
  readonly size?: number;
}

export function initialState(now: number, o: ControllerOptions = {}): ControllerState {
  const memoryBytes = o.memoryBytes ?? 256 * 1024 * 1024;
  const minPartSize = Math.max(MIN_PART, o.size ? Math.ceil(o.size / MAX_PARTS) : 0);
  // Cold: 5 MiB parts, 4 in flight (what lib-storage uses throughout), then measure.
  const partSize = clampPart(o.warm?.partSize ?? MIN_PART, minPartSize);
  const maxInflight = o.maxInflight ?? 64;
  const inflight = Math.max(1, Math.min(o.warm?.inflight ?? 4, capFor(memoryBytes, partSize, maxInflight)));
  return {
    phase: o.warm ? "cruise" : "startup",
    inflight,
    partSize,
    bestGoodput: o.warm?.goodput ?? 0,
    bestInflight: inflight,
    minLatency: o.warm?.minLatency ?? Infinity,
    roundParts: 0,
    roundStart: now,
    roundBytes: 0,
    lastRoundGoodput: 0,
    flatRounds: 0,
    rounds: 0,
    faults: 0,
    memoryBytes,
    maxInflight,
    minPartSize,
    ...(o.size !== undefined ? { size: o.size } : {}),
  };
}

const clampPart = (bytes: number, floor: number) => Math.min(Math.max(floor, MAX_PART), Math.max(floor, Math.ceil(bytes / MIN_PART) * MIN_PART));

/** Parts in flight that the memory cap allows. */
const capFor = (memory: number, partSize: number, max: number) => Math.max(1, Math.min(max, Math.floor(memory / partSize)));

/** A part finished: `bytes` sent in `latency` seconds, at time `now` (seconds). */
export function partDone(s: ControllerState, bytes: number, latency: number, now: number): ControllerState {
  let next: ControllerState = { ...s, roundParts: s.roundParts + 1, roundBytes: s.roundBytes + bytes, minLatency: Math.min(s.minLatency, latency) };
  // A round: as many parts as were in flight when it began.
  if (next.roundParts < s.inflight) return next;
  const elapsed = Math.max(1e-6, now - s.roundStart);
  const goodput = next.roundBytes / elapsed;
  next = { ...next, roundParts: 0, roundBytes: 0, roundStart: now, lastRoundGoodput: goodput, rounds: s.rounds + 1 };
  if (goodput > next.bestGoodput) next = { ...next, bestGoodput: goodput, bestInflight: s.inflight };
  const cap = capFor(s.memoryBytes, s.partSize, s.maxInflight);
  if (s.phase === "startup") {
    const grew = goodput >= 1.1 * s.lastRoundGoodput;
    const flat = grew ? 0 : s.flatRounds + 1;
    if (flat >= 3 || s.inflight >= cap) {
      // Drain to what gave the best goodput (and a quarter more, for headroom), then cruise.
      return withPartSize({ ...next, phase: "cruise", flatRounds: 0, inflight: Math.max(1, Math.min(cap, Math.ceil(next.bestInflight * 1.25))) });
    }
    return withPartSize({ ...next, flatRounds: flat, inflight: Math.min(cap, grew ? s.inflight * 2 : s.inflight) });
  }
  // Cruise: judge a probe, or start one every 8 rounds.
  if (s.probeFrom !== undefined) {
    const kept = goodput >= 1.03 * s.probeFrom;
    return withPartSize({ ...next, probeFrom: undefined, probeBase: undefined, inflight: kept ? s.inflight : (s.probeBase ?? s.inflight) });
  }
  if (next.rounds % 8 === 0 && s.inflight < cap) {
    return { ...next, probeFrom: goodput, probeBase: s.inflight, inflight: Math.min(cap, s.inflight + Math.max(1, Math.ceil(s.inflight / 4))) };
  }
  return withPartSize(next);
}

/** Throttling or a fault: half the parts in flight (the round starts over). */
export function fault(s: ControllerState, now: number): ControllerState {
  return { ...s, phase: "cruise", inflight: Math.max(1, Math.floor(s.inflight / 2)), roundParts: 0, roundBytes: 0, roundStart: now, probeFrom: undefined, probeBase: undefined, faults: s.faults + 1 };
}

/** The part size from the bandwidth-delay product, spread over about 4 parts in flight. */
function withPartSize(s: ControllerState): ControllerState {
  if (!Number.isFinite(s.minLatency) || s.bestGoodput <= 0) return s;
  const bdp = s.bestGoodput * s.minLatency;
  // No larger than a share of the object that leaves two parts for each one in flight, nor
  // than a part sent in about 4 s at each one's share of the goodput (so a rate drop is felt
  // within seconds, not after a minute-long part).
  const share = s.size !== undefined ? s.size / (2 * Math.max(1, s.inflight)) : Infinity;
  const quick = (4 * s.bestGoodput) / Math.max(1, s.inflight);
  const partSize = clampPart(Math.min(bdp / 4, share, quick), s.minPartSize);
  const inflight = Math.max(1, Math.min(s.inflight, capFor(s.memoryBytes, partSize, s.maxInflight)));
  return { ...s, partSize, inflight };
}

export function estimate(s: ControllerState): Estimate {
  return { goodput: s.bestGoodput, inflight: s.bestInflight, partSize: s.partSize, minLatency: s.minLatency };
}
