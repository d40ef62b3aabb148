/**
 * The controller on deterministic simulated links: parts share a bottleneck of rate R after a
 * round trip T (a part's latency is T + P·n/R with n parts in flight; throttled links answer a
 * share of parts with 503 after T). Properties: it converges near the link rate, it backs off
 * under throttling, and it never holds more than its memory cap.
 */
import { expect, test } from "bun:test";
import fc from "fast-check";
import { fault, initialState, partDone, type ControllerState } from "../../src/transfer/controller.ts";

const MiB = 1024 * 1024;

interface Link {
  readonly rate: number; // bytes/s
  readonly rtt: number; // s
  readonly throttle?: number; // share of parts answered 503
}

/** Run the controller against a link until `bytes` are sent; goodput over the second half, peak memory, faults. */
function simulate(link: Link, bytes: number, memoryBytes: number, seed = 1) {
  let rand = seed >>> 0;
  const next = () => ((rand = (rand * 1664525 + 1013904223) >>> 0) / 2 ** 32);
  let s: ControllerState = initialState(0, { memoryBytes, size: bytes });
  let now = 0;
  let sent = 0;
  let peak = 0;
  const active: { end: number; bytes: number; ok: boolean; start: number }[] = [];
  let secondHalfStart: number | undefined;
  let secondHalfBytes = 0;
  let maxInflightSeen = 0;
  while (sent < bytes) {
    while (active.length < s.inflight) {
      const p = s.partSize;
      const n = active.length + 1;
      const ok = !(link.throttle && next() < link.throttle);
      active.push({ start: now, end: now + link.rtt + (ok ? (p * n) / link.rate : 0), bytes: p, ok });
    }
    maxInflightSeen = Math.max(maxInflightSeen, active.length);
    peak = Math.max(peak, active.reduce((a, x) => a + x.bytes, 0));
    active.sort((a, b) => a.end - b.end);
    const done = active.shift()!;
    now = done.end;
    if (!done.ok) {
      s = fault(s, now);
      continue;
    }
    sent += done.bytes;
    if (secondHalfStart === undefined && sent >= bytes / 2) secondHalfStart = now;
    else if (secondHalfStart !== undefined) secondHalfBytes += done.bytes;
    s = partDone(s, done.bytes, done.end - done.start, now);
  }
  return { goodput: secondHalfBytes / Math.max(1e-9, now - (secondHalfStart ?? 0)), peak, state: s, maxInflightSeen };
}

test("on clean links from 20 Mbit/150 ms to 1 Gbit/1 ms it reaches at least 90% of the link rate", () => {
  fc.assert(
    fc.property(fc.integer({ min: 2_500_000, max: 125_000_000 }), fc.double({ min: 0.001, max: 0.15, noNaN: true }), (rate, rtt) => {
      const bytes = Math.max(2 * 1024 * MiB, rate * 60); // about a minute of transfer
      const r = simulate({ rate, rtt }, bytes, 1024 * MiB);
      expect(r.goodput).toBeGreaterThanOrEqual(0.9 * rate);
    }),
    { numRuns: 60 },
  );
});

test("throttling halves the parts in flight, and it still makes progress", () => {
  const clean = simulate({ rate: 50_000_000, rtt: 0.03 }, 2048 * MiB, 512 * MiB);
  const throttled = simulate({ rate: 50_000_000, rtt: 0.03, throttle: 0.2 }, 2048 * MiB, 512 * MiB);
  expect(throttled.state.faults).toBeGreaterThan(10);
  expect(throttled.state.inflight).toBeLessThan(clean.state.inflight);
  expect(throttled.goodput).toBeGreaterThan(0);
  let s = initialState(0, {});
  s = { ...s, inflight: 16 };
  expect(fault(s, 1).inflight).toBe(8);
  expect(fault({ ...s, inflight: 1 }, 1).inflight).toBe(1);
});

test("parts in flight never hold more than the memory cap", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1_000_000, max: 200_000_000 }), fc.double({ min: 0.001, max: 0.2, noNaN: true }), fc.integer({ min: 10, max: 512 }), (rate, rtt, capMiB) => {
      const cap = Math.max(capMiB * MiB, 64 * MiB); // at least one part of the largest size
      const r = simulate({ rate, rtt, throttle: 0.05 }, 512 * MiB, cap);
      expect(r.peak).toBeLessThanOrEqual(cap);
    }),
    { numRuns: 60 },
  );
});
