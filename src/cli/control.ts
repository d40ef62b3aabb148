/**
 * The serving process's control socket, through which `objectfs sync` and `objectfs status`
 * reach a mount: a Unix socket named after the mountpoint, one JSON request per connection,
 * JSON lines back.
 *
 *   {"op":"status"}                      → {"status":{…}}
 *   {"op":"sync","timeoutMs":N}          → {"progress":{…}}* then {"done":true} or {"error":"…"}
 *   {"op":"log","filter":{…}}            → {"entry":{…}}* then {"done":true}
 *   {"op":"compact","policy"?:{…}}       → {"report":{…}} or {"error":"…"} (a retention pass now)
 *
 * Every mount listens; status and sync need an S3 source.
 */
import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { rm } from "node:fs/promises";
import { connect, createServer, type Server } from "node:net";
import { join, resolve } from "node:path";
import type { Replication, Status } from "../replicator/service.ts";
import type { Filesystem } from "../fs/filesystem.ts";
import { auditLog, type LogFilter } from "../audit/log.ts";
import type { RetentionService } from "../retention/service.ts";
import { localCheckpoint } from "../retention/history.ts";

/** The socket of the mount at `mountpoint`. */
export function controlPath(mountpoint: string): string {
  const dir = process.env.OBJECTFS_RUN_DIR ?? (process.getuid?.() === 0 ? "/run/objectfs" : join(process.env.XDG_RUNTIME_DIR ?? "/tmp", "objectfs"));
  const id = createHash("sha256").update(resolve(mountpoint)).digest("hex").slice(0, 24);
  return join(dir, `${id}.sock`);
}

export async function listenControl(mountpoint: string, fs: Filesystem, replication: Replication | undefined, retention?: RetentionService): Promise<() => Promise<void>> {
  const path = controlPath(mountpoint);
  mkdirSync(join(path, ".."), { recursive: true, mode: 0o700 });
  await rm(path, { force: true });
  const server: Server = createServer((socket) => {
    let buf = "";
    socket.on("data", (d) => {
      buf += d.toString();
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      let req: { op?: string; timeoutMs?: number; filter?: LogFilter; policy?: { dataMs: number; eventsMs: number | null } };
      try {
        req = JSON.parse(buf.slice(0, nl));
      } catch {
        socket.end(`${JSON.stringify({ error: "bad request" })}\n`);
        return;
      }
      const send = (o: unknown) => !socket.destroyed && socket.write(`${JSON.stringify(o)}\n`);
      if (req.op === "log") {
        void (async () => {
          try {
            const c = await localCheckpoint(fs.journal.dir);
            const base = c ? { seq: c.seq, dirents: c.dump.dirents } : undefined;
            for await (const entry of auditLog(() => fs.journal.read(), req.filter ?? {}, { resolveNow: (p) => fs.resolvePath(p), index: fs.auditIndex(), ...(base ? { base } : {}) })) {
              if (socket.destroyed) return;
              if (!socket.write(`${JSON.stringify({ entry })}\n`)) await new Promise((r) => socket.once("drain", r));
            }
            socket.end(`${JSON.stringify({ done: true })}\n`);
          } catch (e) {
            socket.end(`${JSON.stringify({ error: (e as Error).message })}\n`);
          }
        })();
      } else if (req.op === "compact") {
        if (!retention) socket.end(`${JSON.stringify({ error: `${resolve(mountpoint)} is mounted read-only or as a past state: retention does not run there` })}\n`);
        else retention.runOnce(req.policy ? { dataMs: req.policy.dataMs, eventsMs: req.policy.eventsMs ?? Infinity } : undefined).then(
          (report) => socket.end(`${JSON.stringify({ report })}\n`),
          (e: Error) => socket.end(`${JSON.stringify({ error: e.message })}\n`),
        );
      } else if (!replication && (req.op === "status" || req.op === "sync")) {
        socket.end(`${JSON.stringify({ error: `${resolve(mountpoint)} is a local-only mount (no s3:// source): there is nothing to sync` })}\n`);
      } else if (req.op === "status") {
        socket.end(`${JSON.stringify({ status: { ...replication!.status(), ...(retention ? { retention: retention.status() } : {}) } })}\n`);
      } else if (req.op === "sync") {
        let last = 0;
        replication!
          .sync({
            ...(req.timeoutMs !== undefined ? { timeoutMs: req.timeoutMs } : {}),
            onProgress: (s) => {
              if (Date.now() - last < 200) return;
              last = Date.now();
              send({ progress: s });
            },
          })
          .then(
            () => socket.end(`${JSON.stringify({ done: true })}\n`),
            (e: Error) => socket.end(`${JSON.stringify({ error: e.message })}\n`),
          );
      } else socket.end(`${JSON.stringify({ error: `unknown op ${req.op}` })}\n`);
    });
    socket.on("error", () => {});
  });
  await new Promise<void>((ok, fail) => {
    server.once("error", fail);
    server.listen(path, () => ok());
  });
  return async () => {
    await new Promise<void>((ok) => server.close(() => ok()));
    await rm(path, { force: true });
  };
}

/** Send one request to the mount at `mountpoint`; `onLine` gets every reply line. */
export function request(mountpoint: string, req: object, onLine: (reply: Record<string, unknown>) => void): Promise<void> {
  const path = controlPath(mountpoint);
  return new Promise((done, fail) => {
    const socket = connect(path);
    let buf = "";
    socket.on("connect", () => socket.write(`${JSON.stringify(req)}\n`));
    socket.on("data", (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.trim()) onLine(JSON.parse(line));
      }
    });
    socket.on("end", () => done());
    socket.on("error", (e: NodeJS.ErrnoException) =>
      fail(
        e.code === "ENOENT" || e.code === "ECONNREFUSED"
          ? new Error(`no objectfs mount answers at ${resolve(mountpoint)} (is it mounted?)`)
          : e,
      ),
    );
  });
}

export type { Status };
