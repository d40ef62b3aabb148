/**
 * A fault-injecting HTTP proxy on loopback, between an S3 client and a real S3 server, for
 * tests of what replication does when the network or the server misbehaves.
 *
 * Requests are forwarded unchanged, Host header included (SigV4 signs it, and the client
 * signed for the proxy's address). Rules pick requests by method and path and apply a fault:
 *
 * - `status`: answer 500 or 503 (S3's XML error body, `SlowDown` for throttling) without
 *   forwarding;
 * - `reset`: destroy the connection without an answer;
 * - `stall`: hold the request for `ms`, then forward it;
 * - `truncate`: forward, announce the full length, send only part of the body, then cut.
 *
 * `setDown(true)` stops listening (connections are refused, open ones cut): the endpoint is
 * unreachable, as when the server is killed; `setDown(false)` listens on the same port again.
 * Probabilities draw from a seeded generator, so a run can be repeated.
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";

export type Fault =
  | { readonly kind: "status"; readonly status: 500 | 503; readonly code?: string }
  | { readonly kind: "reset" }
  | { readonly kind: "stall"; readonly ms: number }
  | { readonly kind: "truncate"; readonly bytes?: number };

export interface FaultRule {
  readonly method?: string;
  readonly pathIncludes?: string;
  readonly fault: Fault;
  /** @default 1 */
  readonly probability?: number;
  /** How many requests it may hit. @default unlimited */
  readonly times?: number;
}

export interface FaultProxy {
  readonly endpoint: string;
  readonly port: number;
  setRules(rules: readonly FaultRule[]): void;
  setDown(down: boolean): Promise<void>;
  /** Requests seen, client connections accepted, faults injected, and body bytes sent up (to the server) and down. */
  stats(): { requests: number; connections: number; injected: Record<string, number>; upBytes: number; downBytes: number };
  /** Method, path and headers of the requests since the last {@link resetStats}, in order. */
  seen(): readonly { readonly method: string; readonly path: string; readonly headers: IncomingMessage["headers"] }[];
  resetStats(): void;
  close(): Promise<void>;
}

/** mulberry32: small, seedable, good enough to pick requests. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export async function startFaultProxy(target: string, options: { seed?: number; port?: number } = {}): Promise<FaultProxy> {
  const upstream = new URL(target);
  const draw = random(options.seed ?? 1);
  let rules: { rule: FaultRule; left: number }[] = [];
  let requests = 0;
  let connections = 0;
  let upBytes = 0;
  let downBytes = 0;
  const injected: Record<string, number> = {};
  const sockets = new Set<Socket>();
  let seen: { method: string; path: string; headers: IncomingMessage["headers"] }[] = [];

  const pick = (req: IncomingMessage): Fault | undefined => {
    for (const r of rules) {
      if (r.left <= 0) continue;
      if (r.rule.method && r.rule.method !== req.method) continue;
      if (r.rule.pathIncludes && !(req.url ?? "").includes(r.rule.pathIncludes)) continue;
      if (draw() >= (r.rule.probability ?? 1)) continue;
      r.left--;
      return r.rule.fault;
    }
    return undefined;
  };

  const forward = (req: IncomingMessage, res: ServerResponse, truncate?: number) => {
    const up = request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        if (truncate === undefined) {
          answer.on("data", (chunk: Buffer) => (downBytes += chunk.length));
          answer.pipe(res);
          return;
        }
        const length = Number(answer.headers["content-length"] ?? 0);
        let budget = truncate < 0 ? Math.floor(length / 2) : truncate;
        answer.on("data", (chunk: Buffer) => {
          if (budget <= 0) return;
          res.write(chunk.subarray(0, budget));
          budget -= chunk.length;
          if (budget <= 0) res.socket?.destroy();
        });
        answer.on("end", () => res.socket?.destroy());
      },
    );
    up.on("error", () => res.socket?.destroy());
    req.on("data", (chunk: Buffer) => (upBytes += chunk.length));
    req.pipe(up);
  };

  const server = createServer((req, res) => {
    requests++;
    if (seen.length < 10_000) seen.push({ method: req.method ?? "", path: req.url ?? "", headers: req.headers });
    const fault = pick(req);
    if (!fault) return forward(req, res);
    injected[fault.kind] = (injected[fault.kind] ?? 0) + 1;
    switch (fault.kind) {
      case "status": {
        const code = fault.code ?? (fault.status === 503 ? "SlowDown" : "InternalError");
        const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected by the fault proxy</Message><RequestId>fault</RequestId></Error>`;
        req.resume();
        res.writeHead(fault.status, { "content-type": "application/xml", "content-length": Buffer.byteLength(body) });
        res.end(body);
        return;
      }
      case "reset":
        req.socket.destroy();
        return;
      case "stall":
        setTimeout(() => forward(req, res), fault.ms);
        return;
      case "truncate":
        forward(req, res, fault.bytes ?? -1);
        return;
    }
  });
  server.on("connection", (socket) => {
    connections++;
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((ok) => server.listen(options.port ?? 0, "127.0.0.1", ok));
  const port = (server.address() as AddressInfo).port;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    setRules(next) {
      rules = next.map((rule) => ({ rule, left: rule.times ?? Infinity }));
    },
    async setDown(value) {
      if (value === !server.listening) return;
      if (value) {
        const closed = new Promise<void>((ok) => server.close(() => ok()));
        for (const s of sockets) s.destroy();
        await closed;
      } else await new Promise<void>((ok) => server.listen(port, "127.0.0.1", ok));
    },
    stats: () => ({ requests, connections, injected: { ...injected }, upBytes, downBytes }),
    seen: () => seen,
    resetStats() {
      requests = connections = upBytes = downBytes = 0;
      seen = [];
      for (const k of Object.keys(injected)) delete injected[k];
    },
    close: () =>
      new Promise<void>((ok) => {
        for (const s of sockets) s.destroy();
        if (server.listening) server.close(() => ok());
        else ok();
      }),
  };
}
