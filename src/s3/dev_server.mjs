// A local S3-compatible server for trying objectfs out and for the test harness: s3rver on
// loopback. It must run under Node, not Bun (s3rver's paged listing depends on sorted directory
// walks, which Bun's readdir does not give), with --openssl-legacy-provider (s3rver encrypts
// continuation tokens with DES):
//
//   node --openssl-legacy-provider src/s3/dev_server.mjs --dir DIR [--port 0] [--address 127.0.0.1]
//        [--access-key K --secret-key S] [--bucket NAME]... [--rm]
//
// Objects are files under DIR (kept across restarts unless --rm). s3rver knows the key pair
// S3RVER/S3RVER; --access-key adds another access key id. It does not verify SigV4 signatures,
// so the secret is not checked: this server is for trying things out on one machine, not for
// data that needs protecting. Each --bucket is created if absent.
// Prints one JSON line {"endpoint","port","pid"} on stdout once it listens. It exits on
// SIGTERM/SIGINT, and when stdin closes if started with --exit-with-stdin (the test harness),
// so no server outlives its test run.
import { rmSync } from "node:fs";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import S3rver from "s3rver";

const require = createRequire(import.meta.url);
const AWSAccount = require("s3rver/lib/models/account");

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(`--${name}`);
  return at >= 0 && at + 1 < args.length ? args[at + 1] : fallback;
};
const options = (name) => args.flatMap((a, i) => (a === `--${name}` && i + 1 < args.length ? [args[i + 1]] : []));
const directory = option("dir");
if (!directory) {
  process.stderr.write("usage: node --openssl-legacy-provider dev_server.mjs --dir DIR [--port 0] [--address 127.0.0.1] [--access-key K --secret-key S] [--bucket NAME]... [--rm] [--exit-with-stdin]\n");
  process.exit(2);
}
const address = option("address", "127.0.0.1");
const port = Number(option("port", "0"));
const accessKey = option("access-key");
if (accessKey && accessKey !== "S3RVER") AWSAccount.DUMMY_ACCOUNT.createKeyPair(accessKey, option("secret-key", accessKey));
if (args.includes("--rm")) process.on("exit", () => rmSync(directory, { recursive: true, force: true }));

// s3rver reports a port in use as an unhandled error event: check first, to say it plainly.
if (port !== 0) {
  const free = await new Promise((ok) => {
    const probe = createServer();
    probe.once("error", () => ok(false));
    probe.listen({ port, host: address, exclusive: true }, () => probe.close(() => ok(true)));
  });
  if (!free) {
    process.stderr.write(`port ${port} on ${address} is already in use; choose another with --port\n`);
    process.exit(1);
  }
}

const server = new S3rver({
  address,
  port,
  directory,
  silent: true,
  resetOnClose: false,
  configureBuckets: options("bucket").map((name) => ({ name })),
});
let closing = false;
const stop = (code) => {
  if (closing) return;
  closing = true;
  server.close(() => process.exit(code));
  setTimeout(() => process.exit(code), 2_000).unref();
};

try {
  const info = await server.run();
  const endpoint = `http://${address}:${info.port}`;
  process.stdout.write(`${JSON.stringify({ endpoint, port: info.port, pid: process.pid })}\n`);
} catch (error) {
  const inUse = error?.code === "EADDRINUSE";
  process.stderr.write(
    inUse
      ? `port ${port} on ${address} is already in use; choose another with --port\n`
      : `s3rver failed to listen on ${address}:${port}: ${error?.message ?? error}\n`,
  );
  process.exit(1);
}

process.on("SIGTERM", () => stop(0));
process.on("SIGINT", () => stop(0));
if (args.includes("--exit-with-stdin")) {
  process.stdin.on("end", () => stop(0));
  process.stdin.on("error", () => stop(0));
  process.stdin.resume();
}
