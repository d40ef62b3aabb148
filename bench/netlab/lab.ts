/**
 * A reproducible emulated link between a client namespace and an S3 server on the host's
 * loopback, cleaned up after itself:
 *
 *   [client netns] ── veth ── [router netns: TUN delay line, tbf each way] ── veth ── host forwarder ── S3 on 127.0.0.1
 *     10.204.N.1               10.204.N.2 | 10.204.N.5                         10.204.N.6
 *
 * The client runs in its own network namespace (`exec` gives the argv prefix), so its TCP
 * connections cross the shaped, delayed path end to end: they see the round trip, their
 * windows and slow start matter, and a loss is a real loss. In the router namespace policy
 * routing sends every packet arriving from either side into a TUN device served by
 * delay_line.c (compiled with `cc` on first use), which writes it back after the one-way
 * delay, dropping a share at random if the profile says so; packets leaving the TUN device are
 * routed to the other side, where a tbf qdisc limits the rate (toward the host: upload; toward
 * the client: download) and holds a bottleneck queue of about one bandwidth-delay product. On
 * the host a small TCP forwarder on 10.204.N.6 reaches the S3 server on loopback. This kernel
 * has no netem and no fq; tbf and TUN are enough.
 *
 * Only loopback and the lab's own 10.204.N.0/29 addresses are used. `close` removes the
 * namespaces (and with them the veths, TUN and qdiscs), the host route and the processes;
 * namespaces left by a lab process that died are removed by the next `startLab`.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

const HERE = import.meta.dir;
const FORWARDER = join(HERE, "forwarder.ts");
const DELAY_LINE_SOURCE = join(HERE, "delay_line.c");
const PREFIX = "objectfs-lab-";

export interface LinkProfile {
  /** Rate each way, Mbit/s. */
  readonly mbit: number;
  /** Round trip added by the delay line (half each way), ms. */
  readonly rttMs: number;
  /** Share of packets dropped at random, each way. @default 0 */
  readonly loss?: number;
}

/** Bytes the host forwarder has passed toward the server (`up`) and the clients, at epoch ms `t`. */
export interface TrafficSample {
  readonly t: number;
  readonly up: number;
  readonly down: number;
  /** Connections accepted so far. */
  readonly connections: number;
}

export interface Lab {
  /** The S3 endpoint through the emulated link, for clients in the client namespace. */
  readonly endpoint: string;
  readonly clientNamespace: string;
  /** host:port on the far side of the link that discards what it receives (raw TCP, for reference). */
  readonly sink: string;
  /** `argv` run inside the client namespace. */
  exec(argv: readonly string[]): string[];
  /** Change the rate both ways during a run. */
  setRate(mbit: number): Promise<void>;
  /** Every 100 ms, the bytes through the link so far (what the S3 server received and sent). */
  traffic(): readonly TrafficSample[];
  /** The delay line's and the qdiscs' counters (packets, losses, drops), after `close`. */
  readonly counters: () => string;
  close(): Promise<void>;
}

async function run(argv: readonly string[]): Promise<string> {
  const p = Bun.spawn([...argv], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [code, out, err] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]);
  if (code !== 0) throw new Error(`${argv.join(" ")} failed: ${err.trim() || out.trim()}`);
  return out;
}

/**
 * Waits for a process to print its first line ("ready"); every later line goes to `onLine`.
 */
async function started(p: Subprocess<"ignore", "pipe", "pipe">, what: string, onLine: (line: string) => void = () => {}): Promise<void> {
  let ready!: () => void;
  const first = new Promise<void>((resolve) => (ready = resolve));
  void (async () => {
    const decoder = new TextDecoder();
    let buffered = "";
    let seen = false;
    for await (const chunk of p.stdout) {
      buffered += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (!seen) {
          seen = true;
          ready();
        } else onLine(line);
      }
    }
  })().catch(() => {});
  const ok = await Promise.race([first.then(() => true), p.exited.then(() => false), Bun.sleep(10_000).then(() => false)]);
  if (!ok) throw new Error(`${what} did not start: ${(await Promise.race([new Response(p.stderr).text(), Bun.sleep(1000).then(() => "")])).trim()}`);
}

let built: Promise<{ path: string; dir: string }> | undefined;

/** Compiles delay_line.c once per process. */
function delayLine(): Promise<{ path: string; dir: string }> {
  built ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), "objectfs-netlab-"));
    const path = join(dir, "delay_line");
    try {
      await run(["cc", "-O2", "-Wall", "-o", path, DELAY_LINE_SOURCE, "-lm"]);
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(`Cannot compile bench/netlab/delay_line.c (${(e as Error).message}); install a C compiler with \`apt-get install -y build-essential\``);
    }
    process.once("exit", () => void Bun.spawnSync(["rm", "-rf", dir]));
    return { path, dir };
  })();
  return built;
}

/** The tbf qdisc for `mbit`: a burst of about 2 ms, a queue of about one bandwidth-delay product. */
const tbf = (dev: string, mbit: number, rttMs: number, verb: "add" | "change") => {
  const bytesPerSec = (mbit * 1e6) / 8;
  const burst = Math.max(32 * 1024, Math.ceil(bytesPerSec * 0.002));
  const limit = Math.max(128 * 1024, Math.ceil(bytesPerSec * (Math.max(rttMs, 5) / 1000))) + burst;
  return ["tc", "qdisc", verb, "dev", dev, "root", "tbf", "rate", `${mbit}mbit`, "burst", String(burst), "limit", String(limit)];
};

/** Removes namespaces of labs whose process is gone (a killed bench). */
async function removeStale(): Promise<void> {
  const out = await run(["ip", "netns", "list"]).catch(() => "");
  for (const line of out.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const m = new RegExp(`^${PREFIX}(\\d+)-\\d+-[cr]$`).exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch {
      alive = false;
    }
    if (!alive) await run(["ip", "netns", "del", name]).catch(() => {});
  }
}

/**
 * A link of `profile` from a new client namespace to the S3 server at `target` (host:port on
 * loopback). `index` (1–250) picks the lab's addresses; labs alive at once need different ones.
 */
export async function startLab(index: number, target: string, profile: LinkProfile): Promise<Lab> {
  if (!Number.isInteger(index) || index < 1 || index > 250) throw new Error(`Lab index ${index} is out of range; use 1 to 250`);
  await removeStale();
  const line = await delayLine();
  const tag = `${process.pid}-${index}`;
  const client = `${PREFIX}${tag}-c`;
  const router = `${PREFIX}${tag}-r`;
  const short = `of${process.pid % 100000}x${index}`; // interface names: at most 15 bytes
  const [clientDev, routerIn, routerOut, hostDev, tun] = [`${short}c`, `${short}a`, `${short}b`, `${short}h`, `${short}t`];
  const net = `10.204.${index}`;
  const inR = (...argv: string[]) => ["ip", "netns", "exec", router, ...argv];
  const inC = (...argv: string[]) => ["ip", "netns", "exec", client, ...argv];
  const procs: Subprocess[] = [];
  let lineStats = "";
  let closed = false;
  const traffic: TrafficSample[] = [];
  const close = async () => {
    if (closed) return;
    closed = true;
    const qdiscs = await run(inR("tc", "-s", "qdisc", "show")).catch(() => "");
    const drops = [...qdiscs.matchAll(/qdisc tbf .* dev (\S+)[^]*?dropped (\d+), overlimits (\d+)/g)].map((m) => `${m[1] === routerOut ? "up" : "down"} tbf dropped ${m[2]}`);
    const delay = procs[0];
    delay?.kill("SIGTERM");
    if (delay) {
      await Promise.race([delay.exited, Bun.sleep(2000)]);
      lineStats = await Promise.race([new Response(delay.stderr as ReadableStream).text(), Bun.sleep(500).then(() => "")]);
    }
    lineStats = [lineStats.trim(), ...drops].filter(Boolean).join("; ");
    for (const p of procs) p.kill("SIGKILL");
    await Promise.allSettled(procs.map((p) => p.exited));
    await run(["ip", "route", "del", `${net}.0/30`]).catch(() => {});
    await run(["ip", "link", "del", hostDev]).catch(() => {});
    await run(["ip", "netns", "del", client]).catch(() => {});
    await run(["ip", "netns", "del", router]).catch(() => {});
  };
  // Per-packet through the TUN device, so the tbf queue sees and drops single packets as a
  // router would (with segmentation offload it would drop whole 64 KiB segments: bursts of
  // 40 losses, and TCP timeouts that real links do not cause). Only at LAN rates, where the
  // per-packet CPU cost would become the bottleneck and the queue is short, segments pass whole.
  const gso = profile.mbit >= 500 && !(profile.loss && profile.loss > 0);
  try {
    for (const ns of [client, router]) {
      await run(["ip", "netns", "add", ns]);
      await run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
      await run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]);
    }
    // client ⇄ router
    await run(["ip", "link", "add", clientDev, "netns", client, "type", "veth", "peer", "name", routerIn, "netns", router]);
    await run(inC("ip", "addr", "add", `${net}.1/30`, "dev", clientDev));
    await run(inC("ip", "link", "set", clientDev, "up"));
    await run(inC("ip", "route", "add", "default", "via", `${net}.2`));
    await run(inR("ip", "addr", "add", `${net}.2/30`, "dev", routerIn));
    await run(inR("ip", "link", "set", routerIn, "up"));
    // router ⇄ host
    await run(["ip", "link", "add", hostDev, "type", "veth", "peer", "name", routerOut, "netns", router]);
    await run(["sysctl", "-qw", `net.ipv6.conf.${hostDev}.disable_ipv6=1`]).catch(() => {});
    await run(["ip", "addr", "add", `${net}.6/30`, "dev", hostDev]);
    await run(["ip", "link", "set", hostDev, "up"]);
    await run(["ip", "route", "add", `${net}.0/30`, "via", `${net}.5`, "dev", hostDev]);
    await run(inR("ip", "addr", "add", `${net}.5/30`, "dev", routerOut));
    await run(inR("ip", "link", "set", routerOut, "up"));
    // the delay line: everything from either side goes through the TUN device
    await run(inR("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.all.send_redirects=0"));
    await run(inR("ip", "tuntap", "add", "dev", tun, "mode", "tun", ...(gso ? ["vnet_hdr"] : [])));
    await run(inR("sysctl", "-qw", `net.ipv4.conf.${tun}.rp_filter=0`));
    await run(inR("ip", "link", "set", tun, "txqueuelen", "10000", "up"));
    await run(inR("ip", "route", "add", "default", "dev", tun, "table", "100"));
    await run(inR("ip", "rule", "add", "iif", routerIn, "lookup", "100", "priority", "100"));
    await run(inR("ip", "rule", "add", "iif", routerOut, "lookup", "100", "priority", "101"));
    const oneWayUs = String(Math.round((profile.rttMs * 1000) / 2));
    const loss = String(profile.loss ?? 0);
    const delay = Bun.spawn(inR(line.path, tun, `${net}.0/30`, oneWayUs, oneWayUs, loss, loss, String(index), ...(gso ? ["gso"] : [])), { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    procs.push(delay);
    await started(delay, "the delay line (bench/netlab/delay_line.c)");
    // the bottleneck, after the delay: toward the host (upload) and toward the client (download)
    await run(inR(...tbf(routerOut, profile.mbit, profile.rttMs, "add")));
    await run(inR(...tbf(routerIn, profile.mbit, profile.rttMs, "add")));
    const forwarder = Bun.spawn([process.execPath, FORWARDER, `${net}.6:9000`, target, `${net}.6:9001`], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    procs.push(forwarder);
    await started(forwarder, "the host forwarder (bench/netlab/forwarder.ts)", (text) => {
      const [t, up, down, connections] = text.split(" ").map(Number);
      if (t !== undefined && up !== undefined && down !== undefined && connections !== undefined && Number.isFinite(connections)) traffic.push({ t, up, down, connections });
    });
  } catch (e) {
    await close();
    throw e;
  }
  return {
    endpoint: `http://${net}.6:9000`,
    sink: `${net}.6:9001`,
    clientNamespace: client,
    exec: (argv) => inC(...argv),
    async setRate(mbit) {
      await run(inR(...tbf(routerOut, mbit, profile.rttMs, "change")));
      await run(inR(...tbf(routerIn, mbit, profile.rttMs, "change")));
    },
    counters: () => lineStats.trim(),
    traffic: () => traffic,
    close,
  };
}
