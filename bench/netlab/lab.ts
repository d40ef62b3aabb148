/**
 * A reproducible emulated link in front of an S3 server, cleaned up after itself.
 *
 *   client ──▶ 10.204.N.2:9000 (veth, tbf rate R each way) ──▶ [netns: delay proxy, RTT/2 each way]
 *          ──▶ 10.204.N.1:9001 (veth back, shaped again) ──▶ host forwarder ──▶ S3 server on 127.0.0.1
 *
 * This kernel has no netem, so the delay is a small userspace proxy (delay_proxy.ts) inside a
 * network namespace this lab creates; rate limits are tbf qdiscs on both ends of the veth pair.
 * Only loopback and the lab's own 10.204.N.0/30 addresses are ever used. `setRate` changes
 * the rate during a run.
 */
import { join } from "node:path";
import type { Subprocess } from "bun";

const PROXY = join(import.meta.dir, "delay_proxy.ts");

export interface Lab {
  /** The S3 endpoint through the emulated link. */
  readonly endpoint: string;
  setRate(mbit: number): Promise<void>;
  close(): Promise<void>;
}

async function run(argv: string[]): Promise<void> {
  const p = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe" });
  const [code, err] = await Promise.all([p.exited, new Response(p.stderr).text()]);
  if (code !== 0) throw new Error(`${argv.join(" ")}: ${err.trim()}`);
}

async function started(p: Subprocess<"ignore", "pipe", "pipe">, what: string): Promise<void> {
  const reader = p.stdout.getReader();
  const { value } = await Promise.race([reader.read(), Bun.sleep(10_000).then(() => ({ value: undefined }))]);
  reader.releaseLock();
  if (!value) throw new Error(`${what} did not start: ${await new Response(p.stderr).text()}`);
}

const tbf = (dev: string, mbit: number, change = false) => {
  const bytesPerSec = (mbit * 1e6) / 8;
  const burst = Math.max(32 * 1024, Math.ceil(bytesPerSec / 100));
  return ["tc", "qdisc", change ? "change" : "add", "dev", dev, "root", "tbf", "rate", `${mbit}mbit`, "burst", String(burst), "latency", "100ms"];
};

/** A link of `mbit` and `rttMs` to the S3 server at `target` (host:port on loopback). */
export async function startLab(index: number, target: string, mbit: number, rttMs: number): Promise<Lab> {
  const ns = `objectfs-lab-${process.pid}-${index}`;
  const host = `ofl${process.pid % 10000}h${index}`;
  const peer = `ofl${process.pid % 10000}p${index}`;
  const net = `10.204.${index}`;
  const procs: Subprocess[] = [];
  const close = async () => {
    for (const p of procs) p.kill("SIGKILL");
    await Promise.allSettled(procs.map((p) => p.exited));
    await run(["ip", "link", "del", host]).catch(() => {});
    await run(["ip", "netns", "del", ns]).catch(() => {});
  };
  try {
    await run(["ip", "netns", "add", ns]);
    await run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
    await run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer]);
    await run(["ip", "link", "set", peer, "netns", ns]);
    await run(["ip", "addr", "add", `${net}.1/30`, "dev", host]);
    await run(["ip", "link", "set", host, "up"]);
    await run(["ip", "netns", "exec", ns, "ip", "addr", "add", `${net}.2/30`, "dev", peer]);
    await run(["ip", "netns", "exec", ns, "ip", "link", "set", peer, "up"]);
    await run(tbf(host, mbit));
    await run(["ip", "netns", "exec", ns, ...tbf(peer, mbit)]);
    const forwarder = Bun.spawn([process.execPath, PROXY, `${net}.1:9001`, target, "0"], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    procs.push(forwarder);
    await started(forwarder, "the host forwarder");
    const delay = Bun.spawn(["ip", "netns", "exec", ns, process.execPath, PROXY, `${net}.2:9000`, `${net}.1:9001`, String(rttMs / 2)], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    procs.push(delay);
    await started(delay, "the delay proxy");
  } catch (e) {
    await close();
    throw e;
  }
  return {
    endpoint: `http://${net}.2:9000`,
    async setRate(next) {
      await run(tbf(host, next, true));
      await run(["ip", "netns", "exec", ns, ...tbf(peer, next, true)]);
    },
    close,
  };
}
