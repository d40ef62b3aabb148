/**
 * The closed-loop controller of the multipart engine, as pure functions over plain state.
 *
 * It measures goodput (bytes of finished requests per second, over rounds of as many requests
 * as were in flight, each at least as long as a request takes) and request latency, and keeps
 * as many requests in flight as pays. A round that began at another width is not a measure
 * (nor the first: connection set-up, slow start). In startup the first measured round is of
 * the starting width; then the width doubles as long as each doubling brings a tenth more
 * goodput, and otherwise goes to the width that gave the best goodput and cruises, probing a
 * quarter more every 8 rounds and keeping them only if goodput rises by 5%. A stream of small
 * objects has short rounds: it measures a width by the lower of two, and tries a doubling only
 * with 32 times the bytes in flight left (see {@link streamStartup}). More requests are
 * not free: each opens a connection (the SDK sends large bodies with `Expect: 100-continue` on
 * a socket of its own) and starts in slow start, and many flows at once overflow a short
 * bottleneck queue. Throttling and faults (503 SlowDown, timeouts, resets) halve the requests
 * in flight, at most once a round, and each clean round after that adds one back, up to the
 * width before the back-off.
 *
 * A cold start sends 8 parts of 16 MiB at once (a stream: 8 objects); an object of at most
 * 64 MiB goes up as one wave of at most 4 equal parts of at least 5 MiB, all in flight
 * together. More in flight is tried only while the bytes left are at least 8 times the bytes
 * in flight, so that a short transfer does not pay for probing it cannot win back.
 *
 * The part size keeps about 30 round trips' worth of goodput in flight (best goodput × the
 * shortest round trip of a small request, spread over the parts in flight), between 5 MiB and
 * 64 MiB, at least size / 10,000, no larger than a part sent in about 8 s at its share of the
 * goodput, and may change between parts. {@linkcode nextPartLength} cuts the object: the first
 * wave of a large object is staggered (so that its parts do not all finish, and wait for their
 * answers, at the same moment), and the last parts shrink so that they end together. Requests
 * in flight never hold more than the memory cap.
 */

export const MIN_PART = 5 * 1024 * 1024;
export const MAX_PART = 64 * 1024 * 1024;
export const MAX_PARTS = 10_000;
/** Parts in flight of a cold start on a large object, and their size. */
export const COLD_INFLIGHT = 8;
export const COLD_PART = 16 * 1024 * 1024;
/** An object up to this size goes up as one wave of at most WAVE_PARTS equal parts. */
export const WAVE_BYTES = 64 * 1024 * 1024;
export const WAVE_PARTS = 4;
/** More requests in flight are tried only while the bytes left are this many times those in flight. */
const PAYBACK = 8;
/**
 * …and for a stream, whose doubling costs three rounds at the new width (one settling, two
 * measured) and wins a few percent when it pays: only while those rounds are at most a fifth of
 * what is left.
 */
const STREAM_PAYBACK = 32;
/** Requests in flight of a cold stream of small objects. */
export const COLD_STREAM_INFLIGHT = 8;
const MiB = 1024 * 1024;

export interface ControllerOptions {
  /** Bytes the transfer may hold in parts at once. @default 256 MiB */
  readonly memoryBytes?: number;
  /** Parts in flight at most. @default 64 */
  readonly maxInflight?: number;
  /** Object size, when known (part size floor: size / 10,000). */
  readonly size?: number;
  /** Estimates from an earlier transfer to the same endpoint (a warm start). */
  readonly warm?: Estimate;
  /**
   * Requests of this size each, that the controller does not choose (a stream of small
   * objects): only how many are in flight adapts.
   */
  readonly fixedPartSize?: number;
}

/** What a transfer learned about an endpoint, to start the next one warm. */
export interface Estimate {
  readonly goodput: number;
  readonly inflight: number;
  readonly partSize: number;
  readonly minLatency: number;
  readonly minRtt?: number;
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
  /** Shortest latency of a small request (a round trip and the server's answer), s. */
  readonly minRtt: number;
  /** Bytes of finished requests so far. */
  readonly doneBytes: number;
  /** Finished parts in the current round, and the round's start and bytes. */
  readonly roundParts: number;
  readonly roundStart: number;
  readonly roundBytes: number;
  readonly lastRoundGoodput: number;
  /** Startup rounds without a tenth more goodput. */
  readonly flatRounds: number;
  /** Set for the round after a change of width (and the first): it is not a measure. */
  readonly settling?: boolean;
  /** Goodput of the last measured round of startup (a stream: the lower of two rounds at one width)… */
  readonly measured?: number;
  /** …and the width it was measured at (a stream goes back to it when a doubling does not pay). */
  readonly measuredInflight?: number;
  /** A stream in startup: the first of the two rounds it measures each width by. */
  readonly pending?: number;
  readonly rounds: number;
  /** Set while probing one part more: the goodput before the probe. */
  readonly probeFrom?: number;
  /** …and the parts in flight to go back to if the probe does not pay. */
  readonly probeBase?: number;
  readonly faults: number;
  /** The round of the last back-off (faults of requests in flight together are one event), and the time of the last fault. */
  readonly faultRound?: number;
  readonly lastFault?: number;
  /** The width before the last back-off: clean rounds climb back to it, one request each. */
  readonly backoffFrom?: number;
  readonly memoryBytes: number;
  readonly maxInflight: number;
  readonly minPartSize: number;
  /** Set for a stream of objects of about this size: the part size does not change. */
  readonly fixedPartSize?: number;
  /** Object size, when known: parts stay small enough to keep the parts in flight busy. */
  readonly size?: number;
  /** Set when the whole object goes up as one wave of parts of this size. */
  readonly wave?: number;
}

export function initialState(now: number, o: ControllerOptions = {}): ControllerState {
  const memoryBytes = o.memoryBytes ?? 256 * MiB;
  const minPartSize = Math.max(MIN_PART, o.size ? Math.ceil(o.size / MAX_PARTS) : 0);
  const maxInflight = o.maxInflight ?? 64;
  let partSize: number;
  let inflight: number;
  let wave: number | undefined;
  if (o.fixedPartSize !== undefined) {
    partSize = o.fixedPartSize;
    inflight = o.warm?.inflight ?? COLD_STREAM_INFLIGHT;
  } else if (o.warm) {
    partSize = clampPart(o.warm.partSize, minPartSize);
    inflight = o.warm.inflight;
  } else {
    // One wave of equal parts if the object is small, else a wide start.
    if (o.size !== undefined && o.size <= WAVE_BYTES) {
      const parts = Math.max(1, Math.min(WAVE_PARTS, Math.floor(o.size / MIN_PART)));
      wave = Math.max(1, Math.ceil(o.size / parts));
      partSize = wave;
      inflight = parts;
    } else {
      partSize = Math.max(minPartSize, COLD_PART);
      inflight = COLD_INFLIGHT;
    }
  }
  inflight = Math.max(1, Math.min(inflight, capFor(memoryBytes, partSize, maxInflight)));
  return {
    phase: o.warm ? "cruise" : "startup",
    inflight,
    partSize,
    bestGoodput: o.warm?.goodput ?? 0,
    bestInflight: inflight,
    minLatency: o.warm?.minLatency ?? Infinity,
    minRtt: o.warm?.minRtt ?? Infinity,
    doneBytes: 0,
    settling: true,
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
    ...(o.fixedPartSize !== undefined ? { fixedPartSize: o.fixedPartSize } : {}),
    ...(wave !== undefined ? { wave } : {}),
  };
}

/** `bytes` rounded up to whole MiB, within [floor, max(floor, MAX_PART)]. */
const clampPart = (bytes: number, floor: number) => Math.min(Math.max(floor, MAX_PART), Math.max(floor, Math.ceil(bytes / MiB) * MiB));

/** Parts in flight that the memory cap allows. */
const capFor = (memory: number, partSize: number, max: number) => Math.max(1, Math.min(max, Math.floor(memory / partSize)));

/** A part finished: `bytes` sent in `latency` seconds, at time `now` (seconds). */
export function partDone(s: ControllerState, bytes: number, latency: number, now: number): ControllerState {
  let next: ControllerState = {
    ...s,
    doneBytes: s.doneBytes + bytes,
    roundParts: s.roundParts + 1,
    roundBytes: s.roundBytes + bytes,
    minLatency: Math.min(s.minLatency, latency),
  };
  // A round: as many parts as were in flight when it began, and at least as long as a part
  // takes (so that parts begun before the round do not make it look faster than it is).
  if (next.roundParts < s.inflight || now - s.roundStart < latency) return next;
  const elapsed = Math.max(1e-6, now - s.roundStart);
  const goodput = next.roundBytes / elapsed;
  const rounds = s.rounds + 1;
  next = { ...next, roundParts: 0, roundBytes: 0, roundStart: now, lastRoundGoodput: goodput, rounds, settling: false };
  // After a back-off, one more each clean round up to the width before it (AIMD): no measure needed.
  if (s.backoffFrom !== undefined && s.lastFault !== undefined && s.lastFault <= s.roundStart && s.wave === undefined) {
    const inflight = Math.min(capFor(s.memoryBytes, s.partSize, s.maxInflight), s.inflight + 1);
    return { ...next, inflight, backoffFrom: inflight < s.backoffFrom ? s.backoffFrom : undefined };
  }
  // A round that began at another width (or the first, with connection set-up and slow start)
  // is not a measure of this one.
  if (s.settling) return next;
  if (goodput > next.bestGoodput) next = { ...next, bestGoodput: goodput, bestInflight: s.inflight };
  if (s.wave !== undefined) return next; // one wave: nothing left to decide
  const decided = decide(s, next, goodput);
  return decided.inflight !== s.inflight ? { ...decided, settling: true } : decided;
}

function decide(s: ControllerState, next: ControllerState, goodput: number): ControllerState {
  // Trying more in flight costs rounds at a worse width when it does not pay: only while enough
  // of the transfer is left to win that back.
  const left = s.size !== undefined ? s.size - next.doneBytes : Infinity;
  const worth = left >= (s.fixedPartSize !== undefined ? STREAM_PAYBACK : PAYBACK) * s.inflight * s.partSize;
  const cap = worth ? capFor(s.memoryBytes, s.partSize, s.maxInflight) : s.inflight;
  if (s.phase === "startup" && s.fixedPartSize !== undefined) return streamStartup(s, next, goodput, cap);
  if (s.phase === "startup") {
    // The first measure is of the starting width; from then on each doubling must pay a tenth
    // more goodput, or the width that gave the best goodput is kept and the transfer cruises.
    const grew = s.measured === undefined || goodput >= 1.1 * s.measured;
    next = { ...next, measured: goodput };
    if (!grew || s.inflight >= cap) return withPartSize({ ...next, phase: "cruise", flatRounds: 0, inflight: Math.max(1, Math.min(cap, next.bestInflight)) });
    return withPartSize({ ...next, inflight: Math.min(cap, s.inflight * 2) });
  }
  // Cruise: judge a probe, or start one every 8 rounds.
  if (s.probeFrom !== undefined) {
    const kept = goodput >= 1.05 * s.probeFrom;
    return withPartSize({ ...next, probeFrom: undefined, probeBase: undefined, inflight: kept ? s.inflight : (s.probeBase ?? s.inflight) });
  }
  if (next.rounds % 8 === 0 && s.inflight < cap) {
    return { ...next, probeFrom: goodput, probeBase: s.inflight, inflight: Math.min(cap, s.inflight + Math.max(1, Math.ceil(s.inflight / 4))) };
  }
  return withPartSize(next);
}

/**
 * Startup of a stream of small objects: its rounds are short (a round of 8 MiB objects on a fast
 * link takes a tenth of a second), so one round is a noisy measure, and one lucky round let
 * through a doubling that then cost for the rest of the stream. Each width is measured by the
 * lower of two rounds; a doubling that brings a tenth more doubles again, one that brings less
 * but still more is kept, and one that brings nothing goes back to the width before it.
 */
function streamStartup(s: ControllerState, next: ControllerState, goodput: number, cap: number): ControllerState {
  if (s.pending === undefined) return { ...next, pending: goodput };
  const measure = Math.min(s.pending, goodput);
  next = { ...next, pending: undefined };
  const cruise = (inflight: number) => ({ ...next, phase: "cruise" as const, flatRounds: 0, inflight: Math.max(1, Math.min(cap, inflight)) });
  if (s.measured === undefined || measure >= 1.1 * s.measured) {
    if (s.inflight >= cap) return cruise(s.inflight);
    return { ...next, measured: measure, measuredInflight: s.inflight, inflight: Math.min(cap, s.inflight * 2) };
  }
  return cruise(measure > s.measured ? s.inflight : (s.measuredInflight ?? s.inflight));
}

/**
 * Whether a request of `bytes` may start with `running` requests holding `held` bytes: fewer
 * than the parts in flight, and within the memory cap (a single request always may).
 */
export function admits(s: ControllerState, running: number, held: number, bytes: number): boolean {
  return running < s.inflight && (held === 0 || held + bytes <= s.memoryBytes);
}

/** A small request (starting an upload) took `seconds`: an upper bound of the round trip. */
export function rttSample(s: ControllerState, seconds: number): ControllerState {
  return seconds > 0 && seconds < s.minRtt ? { ...s, minRtt: seconds } : s;
}

/**
 * Throttling or a fault: half the parts in flight (the round starts over), once per round:
 * the other requests that were in flight with it are already sent at the old width.
 */
export function fault(s: ControllerState, now: number): ControllerState {
  if (s.faultRound === s.rounds) return { ...s, faults: s.faults + 1, lastFault: now };
  return {
    ...s,
    faultRound: s.rounds,
    lastFault: now,
    backoffFrom: Math.max(s.inflight, s.backoffFrom ?? 0),
    phase: "cruise",
    inflight: Math.max(1, Math.floor(s.inflight / 2)),
    roundParts: 0,
    roundBytes: 0,
    roundStart: now,
    probeFrom: undefined,
    probeBase: undefined,
    faults: s.faults + 1,
  };
}

/**
 * Bytes to keep in flight, in round trips' worth of goodput: each part pays a few round trips
 * that send nothing (a new connection, `100 Continue`, slow start, the answer), which the other
 * parts in flight must cover.
 */
const FLIGHT_RTTS = 30;

/**
 * The part size: the bytes in flight (FLIGHT_RTTS × goodput × round trip) spread over the parts
 * in flight, between the floor and 64 MiB; no larger than a share of the object that leaves two
 * parts for each one in flight, nor than a part sent in about 8 s at each one's share of the
 * goodput (so that rounds stay short and a rate change is measured within a round or two).
 */
function withPartSize(s: ControllerState): ControllerState {
  if (s.fixedPartSize !== undefined || s.wave !== undefined || s.bestGoodput <= 0) return s;
  const rtt = Number.isFinite(s.minRtt) ? s.minRtt : Number.isFinite(s.minLatency) ? s.minLatency / 4 : undefined;
  if (rtt === undefined) return s;
  const n = Math.max(1, s.inflight);
  const flight = (FLIGHT_RTTS * s.bestGoodput * rtt) / n;
  const share = s.size !== undefined ? s.size / (2 * n) : Infinity;
  const quick = (8 * s.bestGoodput) / n;
  const partSize = clampPart(Math.min(flight, share, quick), s.minPartSize);
  const inflight = Math.max(1, Math.min(s.inflight, capFor(s.memoryBytes, partSize, s.maxInflight)));
  return { ...s, partSize, inflight };
}

/**
 * The length of the next part of an object of `size` bytes whose first `offset` bytes are
 * cut already, `started` parts so far (`finished` of them done): the controller's part size,
 * except that the first wave of a large object is staggered (part k of n gets k/2n more) and
 * that, once fewer bytes remain than the parts in flight would take, the rest is spread over
 * them (at least the part size floor each), so the last parts finish together. Every part but
 * the last is at least `minPartSize` (≥ 5 MiB, ≥ size / 10,000).
 */
export function nextPartLength(s: ControllerState, size: number, offset: number, started: number, finished: number): number {
  const remaining = size - offset;
  if (remaining <= 0) return 0;
  let length = s.partSize;
  if (s.wave === undefined && s.fixedPartSize === undefined) {
    if (finished === 0 && started < s.inflight) length = Math.ceil((s.partSize * (1 + started / (2 * s.inflight))) / MiB) * MiB;
    const perSlot = Math.ceil(remaining / Math.max(1, s.inflight));
    if (perSlot < length) length = Math.max(s.minPartSize, perSlot);
  }
  // Never leave a last part below the floor: leave it the floor, or take it along if that is all.
  const rest = remaining - length;
  if (rest > 0 && rest < s.minPartSize) length = remaining >= 2 * s.minPartSize ? remaining - s.minPartSize : remaining;
  return Math.min(length, remaining);
}

export function estimate(s: ControllerState): Estimate {
  return { goodput: s.bestGoodput, inflight: s.bestInflight, partSize: s.partSize, minLatency: s.minLatency, ...(Number.isFinite(s.minRtt) ? { minRtt: s.minRtt } : {}) };
}
