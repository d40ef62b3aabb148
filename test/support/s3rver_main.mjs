// Runs s3rver (an S3 test server, see ../../README.md) on loopback for the test harness.
// Must run under Node, not Bun (Bun's readdir is unsorted and s3rver's paged listing
// depends on sorted directory walks), with --openssl-legacy-provider (s3rver encrypts its
// continuation tokens with DES):
//
//   node --openssl-legacy-provider test/support/s3rver_main.mjs --dir DIR [--port 0] [--address 127.0.0.1] [--rm]
//
// --rm removes DIR (the stored objects) when the server exits.
// Prints one JSON line {"endpoint","port","pid"} on stdout once it listens. It exits when
// stdin closes (the parent died or closed it) or on SIGTERM/SIGINT, so no server outlives
// its test run. Credentials: s3rver's fixed key pair S3RVER / S3RVER.
import { rmSync } from "node:fs";
import S3rver from "s3rver";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(`--${name}`);
  return at >= 0 && at + 1 < args.length ? args[at + 1] : fallback;
};
const directory = option("dir");
if (!directory) {
  process.stderr.write("usage: node --openssl-legacy-provider s3rver_main.mjs --dir DIR [--port 0] [--address 127.0.0.1] [--rm]\n");
  process.exit(2);
}
const address = option("address", "127.0.0.1");
const port = Number(option("port", "0"));
const removeDir = args.includes("--rm");
if (removeDir) process.on("exit", () => rmSync(directory, { recursive: true, force: true }));

const server = new S3rver({ address, port, directory, silent: true, resetOnClose: false });
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
  process.stderr.write(`s3rver failed to listen on ${address}:${port}: ${error?.message ?? error}\n`);
  process.exit(1);
}

process.on("SIGTERM", () => stop(0));
process.on("SIGINT", () => stop(0));
process.stdin.on("end", () => stop(0));
process.stdin.on("error", () => stop(0));
process.stdin.resume();
