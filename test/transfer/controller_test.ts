/**
 * The controller on deterministic simulated links. Requests share a bottleneck of rate R; each
 * pays `setup` round trips that send nothing (a new connection, `100 Continue`, the answer)
 * and then its bytes at its share of the rate: a request's latency is setup·T + P·n/R with n
 * requests in flight. Throttled links answer a share of requests with 503 after one round
 * trip. The simulation cuts the object with `nextPartLength` and admits requests with `admits`,
 * as the engine does. Properties: it converges near the link rate, it backs off under
 * throttling, it never holds more than its memory cap, and it cuts every object into valid parts.
 */
import { expect, test } from "bun:test";
import fc from "fast-check";
import {
  admits,
  fault,
  initialState,
  MAX_PARTS,
  MIN_PART,
  nextPartLength,
  partDone,
  rttSample,
  WAVE_PARTS,
  type ControllerState,
} from "../../src/transfer/controller.ts";

const MiB = 1024 * 1024;

interface Link {
  readonly rate: number; // bytes/s
  readonly rtt: number; // s
  /** Round trips each request pays before and after its bytes. @default 3 */
  readonly setup?: number;
  readonly throttle?: number; // share of requests answered 503
}

interface Flight {
  readonly start: number;
  readonly end: number;
  readonly bytes: number;
  readonly ok: boolean;
}

/**
 * Runs the controller against a link until `size` bytes are sent (as multipart parts, or as a
 * stream of `item`-byte objects); goodput between the moments 50% and 90% of the bytes were sent (the
 * converged rate: the model slows the last parts, which keep the latency they started with when
 * the others finish, as real TCP flows would not), peak memory, final state.
 */
function simulate(link: Link, size: number, memoryBytes: number, o: { seed?: number; item?: number } = {}) {
  let rand = (o.seed ?? 1) >>> 0;
  const next = () => (rand = (rand * 1664525 + 1013904223) >>> 0) / 2 ** 32;
  let s: ControllerState = initialState(0, { memoryBytes, ...(o.item ? { fixedPartSize: o.item } : { size }) });
  if (!o.item) s = rttSample(s, 2 * link.rtt); // creating the upload: a connection and a request
  const setup = link.setup ?? 3;
  let now = 2 * link.rtt;
  let offset = 0;
  let started = 0;
  let finished = 0;
  let sent = 0;
  let held = 0;
  let peak = 0;
  let from: number | undefined;
  let until: number | undefined;
  const delivered: Flight[] = [];
  const retry: number[] = [];
  const active: Flight[] = [];
  while (sent < size) {
    for (;;) {
      const length = retry.length > 0 ? retry[0]! : o.item ? Math.min(o.item, size - offset) : nextPartLength(s, size, offset, started, finished);
      if (length <= 0 || !admits(s, active.length, held, length)) break;
      if (retry.length > 0) retry.shift();
      else {
        offset += length;
        started++;
      }
      const n = active.length + 1;
      const ok = !(link.throttle && next() < link.throttle);
      active.push({ start: now, end: now + (ok ? setup * link.rtt + (length * n) / link.rate : link.rtt), bytes: length, ok });
      held += length;
      peak = Math.max(peak, held);
    }
    active.sort((a, b) => a.end - b.end);
    const done = active.shift()!;
    now = done.end;
    held -= done.bytes;
    if (!done.ok) {
      s = fault(s, now);
      retry.push(done.bytes);
      continue;
    }
    sent += done.bytes;
    finished++;
    delivered.push(done);
    if (from === undefined && sent >= 0.5 * size) from = now;
    if (until === undefined && sent >= 0.9 * size) until = now;
    s = partDone(s, done.bytes, done.end - done.start, now);
  }
  // Each request's bytes spread over its time on the link, so that requests finishing together
  // (the model keeps them in step) do not make the measure depend on where the window falls.
  const [a, b] = [from ?? 0, until ?? now];
  const bytes = delivered.reduce((sum, f) => sum + (f.bytes * Math.max(0, Math.min(b, f.end) - Math.max(a, f.start))) / Math.max(1e-9, f.end - f.start), 0);
  return { goodput: bytes / Math.max(1e-9, b - a), peak, state: s };
}

test("on clean links from 20 Mbit/150 ms to 1 Gbit/1 ms it reaches at least 90% of the link rate", () => {
  fc.assert(
    fc.property(fc.integer({ min: 2_500_000, max: 125_000_000 }), fc.double({ min: 0.001, max: 0.15, noNaN: true }), (rate, rtt) => {
      const size = Math.max(2 * 1024 * MiB, rate * 60); // about a minute of transfer
      const r = simulate({ rate, rtt }, size, 1024 * MiB);
      expect(r.goodput).toBeGreaterThanOrEqual(0.9 * rate);
    }),
    { numRuns: 60 },
  );
});

test("a stream of 1 MiB objects reaches at least 90% of the link rate with only the requests in flight adapting", () => {
  fc.assert(
    fc.property(fc.integer({ min: 2_500_000, max: 60_000_000 }), fc.double({ min: 0.005, max: 0.1, noNaN: true }), (rate, rtt) => {
      // Small PUTs reuse their connections: one round trip each.
      const r = simulate({ rate, rtt, setup: 1 }, Math.max(512 * MiB, rate * 40), 256 * MiB, { item: MiB });
      expect(r.state.partSize).toBe(MiB);
      expect(r.goodput).toBeGreaterThanOrEqual(0.9 * rate);
    }),
    { numRuns: 40 },
  );
});

test("throttling halves the parts in flight, and it still makes progress", () => {
  const clean = simulate({ rate: 50_000_000, rtt: 0.03 }, 2048 * MiB, 512 * MiB);
  const throttled = simulate({ rate: 50_000_000, rtt: 0.03, throttle: 0.2 }, 2048 * MiB, 512 * MiB);
  expect(throttled.state.faults).toBeGreaterThan(5);
  expect(throttled.state.inflight).toBeLessThan(clean.state.inflight);
  expect(throttled.goodput).toBeGreaterThan(0);
  const s = { ...initialState(0, {}), inflight: 16 };
  expect(fault(s, 1).inflight).toBe(8);
  expect(fault({ ...s, inflight: 1 }, 1).inflight).toBe(1);
  // Faults of requests that were in flight together are one event: one halving a round…
  expect(fault(fault(s, 1), 1.1).inflight).toBe(8);
  expect(fault(fault(s, 1), 1.1).faults).toBe(2);
  // …and each clean round after it adds one back, up to the best width.
  let r: ControllerState = fault({ ...s, phase: "cruise", bestInflight: 16, bestGoodput: 128 * MiB, minLatency: 1, memoryBytes: 4096 * MiB }, 0);
  for (let round = 1; round <= 4; round++) for (let i = 0, n = r.inflight; i < n; i++) r = partDone(r, r.partSize, 1, round);
  expect(r.inflight).toBe(12);
});

test("a transfer too short to win back a probe is not probed", () => {
  // 16 MiB parts, 8 in flight: 128 MiB in flight; a 600 MiB object has less than 8 times that left.
  let s = initialState(0, { size: 600 * MiB, memoryBytes: 4096 * MiB });
  for (let round = 1; round <= 6; round++) for (let i = 0, n = s.inflight; i < n; i++) s = partDone(s, s.partSize, 1, round);
  expect(s.inflight).toBeLessThanOrEqual(8);
  let long = initialState(0, { size: 64 * 1024 * MiB, memoryBytes: 4096 * MiB });
  for (let round = 1; round <= 2; round++) for (let i = 0, n = long.inflight; i < n; i++) long = partDone(long, long.partSize, 1, round);
  expect(long.inflight).toBe(16);
});

test("parts in flight never hold more than the memory cap", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1_000_000, max: 200_000_000 }),
      fc.double({ min: 0.001, max: 0.2, noNaN: true }),
      fc.integer({ min: 10, max: 512 }),
      fc.boolean(),
      (rate, rtt, capMiB, stream) => {
        const cap = Math.max(capMiB * MiB, 64 * MiB); // at least one part of the largest size
        const r = simulate({ rate, rtt, throttle: 0.05 }, 512 * MiB, cap, stream ? { item: MiB } : {});
        expect(r.peak).toBeLessThanOrEqual(cap);
      },
    ),
    { numRuns: 60 },
  );
});

test("every object is cut into parts S3 accepts: all but the last at least 5 MiB, at most 10,000", () => {
  fc.assert(
    fc.property(
      fc.oneof(fc.integer({ min: 1, max: 200 * MiB }), fc.integer({ min: 200 * MiB, max: 2 ** 46 })),
      fc.integer({ min: 1, max: 64 }),
      fc.integer({ min: 5, max: 64 }),
      fc.integer({ min: 0, max: 30 }),
      (size, inflight, partMiB, finishedEarly) => {
        const cold = initialState(0, { size, memoryBytes: 1024 * MiB });
        // Any part size and width the controller might reach, from cold or after a while.
        const states = [cold, { ...cold, wave: undefined, inflight, partSize: Math.max(cold.minPartSize, partMiB * MiB) }];
        for (const s of states) {
          let offset = 0;
          let parts = 0;
          let smallest = Infinity;
          for (let started = 0; offset < size; started++) {
            const length = nextPartLength(s, size, offset, started, Math.min(started, finishedEarly));
            expect(length).toBeGreaterThan(0);
            offset += length;
            parts++;
            if (offset < size) smallest = Math.min(smallest, length);
          }
          expect(offset).toBe(size);
          expect(parts).toBeLessThanOrEqual(MAX_PARTS);
          if (parts > 1) expect(smallest).toBeGreaterThanOrEqual(MIN_PART);
        }
      },
    ),
    { numRuns: 300 },
  );
});

test("an object of at most 64 MiB goes up as one wave of equal parts, all in flight at once", () => {
  for (const size of [1, 5 * MiB - 1, 5 * MiB, 12 * MiB + 7, 40 * MiB, 64 * MiB]) {
    const s = initialState(0, { size });
    const lengths: number[] = [];
    for (let offset = 0; offset < size; ) {
      const n = nextPartLength(s, size, offset, lengths.length, 0);
      lengths.push(n);
      offset += n;
    }
    expect(lengths.length).toBeLessThanOrEqual(WAVE_PARTS);
    expect(s.inflight).toBeGreaterThanOrEqual(lengths.length);
    expect(Math.max(...lengths) - Math.min(...lengths)).toBeLessThanOrEqual(lengths.length);
  }
  // Larger: the first wave is staggered, so its parts do not all end at the same moment.
  const big = initialState(0, { size: 1024 * MiB });
  const first = Array.from({ length: big.inflight }, (_, k) => nextPartLength(big, 1024 * MiB, 0, k, 0));
  expect(new Set(first).size).toBe(big.inflight);
});

test("the first round of a cold start does not count, nor the first at a new width, and a doubling that does not pay is undone", () => {
  let s = initialState(0, { size: 4096 * MiB, memoryBytes: 4096 * MiB });
  const width = s.inflight;
  // Round 1 (slow start): fast numbers must not be taken as the best.
  for (let i = 0; i < width; i++) s = partDone(s, s.partSize, 1, 1);
  expect(s.bestGoodput).toBe(0);
  expect(s.inflight).toBe(width);
  // Round 2 measures the width and doubles it.
  for (let i = 0; i < width; i++) s = partDone(s, s.partSize, 1, 2);
  expect(s.inflight).toBe(2 * width);
  // Round 3 began at the old width: not a measure. Round 4 at twice the width, the same
  // goodput: back to the width, cruising.
  const g = s.bestGoodput;
  for (const round of [3, 4]) {
    const t = s.roundStart + (2 * width * s.partSize) / g;
    for (let i = 0; i < 2 * width; i++) s = partDone(s, s.partSize, t - s.roundStart, t);
    expect(s.phase).toBe(round === 3 ? "startup" : "cruise");
  }
  expect(s.inflight).toBe(width);
});

/** One round of a stream: `s.inflight` objects of `item` bytes finishing at `goodput`, from the round's start. */
function streamRound(s: ControllerState, item: number, goodput: number): ControllerState {
  const n = s.inflight;
  const t = s.roundStart + (n * item) / goodput;
  for (let i = 0; i < n; i++) s = partDone(s, item, t - s.roundStart, t);
  return s;
}

test("a stream measures each width by the lower of two rounds: one lucky round does not double it", () => {
  const item = MiB;
  let s = initialState(0, { fixedPartSize: item, memoryBytes: 4096 * MiB });
  const width = s.inflight;
  s = streamRound(s, item, 80 * MiB); // connection set-up: not a measure
  s = streamRound(s, item, 100 * MiB);
  s = streamRound(s, item, 100 * MiB);
  expect(s.inflight).toBe(2 * width); // measured at 100 MiB/s: try twice the width
  s = streamRound(s, item, 100 * MiB); // settling at the new width
  s = streamRound(s, item, 130 * MiB); // a lucky round…
  s = streamRound(s, item, 101 * MiB); // …and a plain one: no tenth more, but more
  expect(s.phase).toBe("cruise");
  expect(s.inflight).toBe(2 * width);
  // A doubling that brings nothing goes back to the width before it.
  let t = initialState(0, { fixedPartSize: item, memoryBytes: 4096 * MiB });
  for (const g of [80, 100, 100, 100, 140, 95]) t = streamRound(t, item, g * MiB);
  expect(t.phase).toBe("cruise");
  expect(t.inflight).toBe(width);
  // Two rounds that both bring a tenth more double it again.
  let u = initialState(0, { fixedPartSize: item, memoryBytes: 4096 * MiB });
  for (const g of [80, 100, 100, 100, 120, 115]) u = streamRound(u, item, g * MiB);
  expect(u.phase).toBe("startup");
  expect(u.inflight).toBe(4 * width);
});

test("a stream too short to win back a doubling keeps its width", () => {
  const item = MiB;
  // 8 objects in flight: a doubling is tried only while 32 × 8 MiB are left.
  const short = initialState(0, { fixedPartSize: item, size: 200 * MiB, memoryBytes: 4096 * MiB });
  let s = short;
  for (const g of [80, 100, 100]) s = streamRound(s, item, g * MiB);
  expect(s.inflight).toBe(short.inflight);
  expect(s.phase).toBe("cruise");
  let long = initialState(0, { fixedPartSize: item, size: 4096 * MiB, memoryBytes: 4096 * MiB });
  for (const g of [80, 100, 100]) long = streamRound(long, item, g * MiB);
  expect(long.inflight).toBe(2 * short.inflight);
});
