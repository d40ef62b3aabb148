import { afterAll, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Journal } from "../../journal/mod.ts";
import { payloadFor } from "../support/crash_payload.ts";

const CYCLES = 32;
const child = join(import.meta.dir, "../support/journal_crash_child.ts");
let dir = "";
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test(`after ${CYCLES} SIGKILLs mid-append, every acknowledged event is there, in order and intact, and nothing is half there`, async () => {
  dir = await mkdtemp(join(tmpdir(), "objectfs-crash-"));
  const acked = new Map<number, number>(); // seq -> n
  let killedWithWork = 0;
  for (let cycle = 0; cycle < CYCLES; cycle++) {
    const proc = Bun.spawn([process.execPath, child, dir, String(cycle * 10_000_000)], { stdout: "pipe", stderr: "inherit" });
    const reader = proc.stdout.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    let ready = false;
    let acksThisCycle = 0;
    const deadline = 20 + Math.random() * 150;
    let readyAt = 0;
    // Read acknowledgments until a random moment after the first one, then kill it.
    for (;;) {
      const timeout = ready ? Math.max(0, readyAt + deadline - performance.now()) : 20_000;
      const next = await Promise.race([reader.read(), Bun.sleep(timeout).then(() => "timeout" as const)]);
      if (next === "timeout") break;
      if (next.done) throw new Error(`crash child exited early with code ${await proc.exited}`);
      buffered += decoder.decode(next.value, { stream: true });
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        const [kind, a, b] = line.split(" ");
        if (kind === "ready") {
          // The random moment is counted from the first acknowledgment, so that every
          // cycle kills a child with work in flight, however slow the machine is today.
        } else if (kind === "ack") {
          acked.set(Number(a), Number(b));
          acksThisCycle++;
          if (!ready) {
            ready = true;
            readyAt = performance.now();
          }
        }
      }
    }
    proc.kill("SIGKILL");
    await proc.exited;
    if (acksThisCycle > 0) killedWithWork++;

    const j = await Journal.open(dir);
    let expectSeq = 1;
    const found = new Map<number, { type: string; ino: number; data?: Uint8Array; mtime?: number }>();
    for await (const e of j.read({ data: true })) {
      // contiguous: no gaps, nothing half there; read({data}) also verifies each data CRC
      if (e.seq !== expectSeq++) throw new Error(`seq ${e.seq} follows ${expectSeq - 2} after crash cycle ${cycle}`);
      found.set(e.seq, e as never);
    }
    expect(expectSeq - 1).toBe(j.head);
    for (const [seq, n] of acked) {
      const e = found.get(seq);
      if (!e) throw new Error(`acknowledged event ${seq} (n=${n}) is missing after crash cycle ${cycle}`);
      const attrs = found.get(seq + 1); // both events of one append, or neither
      const intact = e.type === "ExtentWritten" && e.ino === n && Buffer.from(e.data!).equals(Buffer.from(payloadFor(n))) && attrs?.type === "AttrsChanged" && attrs.mtime === n;
      if (!intact) throw new Error(`acknowledged event ${seq} (n=${n}) is not what was written, after crash cycle ${cycle}`);
    }
    await j.close();
  }
  expect(killedWithWork).toBeGreaterThanOrEqual(CYCLES - 2);
  expect(acked.size).toBeGreaterThan(CYCLES * 5);
}, 300_000);
