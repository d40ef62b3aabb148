/**
 * A plain TCP forwarder with back-pressure, for the host end of the lab's link: it listens on
 * the host's veth address and connects each client to the S3 server on loopback. After
 * "ready" it prints every 100 ms a line `EPOCH_MS UP_BYTES DOWN_BYTES CONNECTIONS` (bytes forwarded
 * so far toward the server and toward the clients, connections accepted), so the bench sees the transfer rate on the wire.
 *
 * With SINK_HOST:PORT it also accepts connections there and discards what they send (counting
 * it, and answering the count when the sender ends): raw TCP over the same link, for reference.
 *
 *   bun bench/netlab/forwarder.ts LISTEN_HOST:PORT TARGET_HOST:PORT [SINK_HOST:PORT]
 */
import { connect, createServer } from "node:net";

const [listen, target, sink] = process.argv.slice(2);
if (!listen || !target) {
  console.error("usage: forwarder.ts LISTEN_HOST:PORT TARGET_HOST:PORT");
  process.exit(2);
}
const split = (a: string) => {
  const i = a.lastIndexOf(":");
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) };
};

let up = 0;
let down = 0;
let connections = 0;
const server = createServer((client) => {
  connections++;
  const upstream = connect(split(target));
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  client.on("data", (chunk: Buffer) => void (up += chunk.length));
  upstream.on("data", (chunk: Buffer) => void (down += chunk.length));
  client.pipe(upstream);
  upstream.pipe(client);
  upstream.on("error", () => client.destroy());
  client.on("error", () => upstream.destroy());
  upstream.on("close", () => client.destroy());
  client.on("close", () => upstream.destroy());
});
const { host, port } = split(listen);
server.on("error", (e) => {
  console.error(`forwarder: cannot listen on ${listen}: ${e.message}`);
  process.exit(1);
});
if (sink) {
  const discard = createServer((c) => {
    let n = 0;
    c.on("data", (chunk: Buffer) => void (n += chunk.length));
    c.on("end", () => c.end(`${n}\n`));
    c.on("error", () => {});
  });
  discard.listen(split(sink).port, split(sink).host);
}
server.listen(port, host, () => {
  process.stdout.write("ready\n");
  setInterval(() => process.stdout.write(`${Date.now()} ${up} ${down} ${connections}\n`), 100);
});
process.on("SIGTERM", () => process.exit(0));
