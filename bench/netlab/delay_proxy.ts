/**
 * A TCP proxy that adds one-way delay in both directions (a round trip of 2 × delay),
 * keeping order and back-pressure: run inside the lab's network namespace, between the veth
 * address and the S3 server on the namespace's loopback.
 *
 *   bun bench/netlab/delay_proxy.ts LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS
 */
import { connect, createServer, type Socket } from "node:net";

const [listen, target, delayText] = process.argv.slice(2);
if (!listen || !target || delayText === undefined) {
  console.error("usage: delay_proxy.ts LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS");
  process.exit(2);
}
const split = (a: string) => {
  const i = a.lastIndexOf(":");
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) };
};
const delay = Number(delayText);
const HIGH = 8 * 1024 * 1024;

/** Copy `from` to `to`, each chunk `delay` ms later, pausing `from` while much is in transit. */
function pipeDelayed(from: Socket, to: Socket): void {
  let pending = 0;
  from.on("data", (chunk: Buffer) => {
    pending += chunk.length;
    if (pending + to.writableLength > HIGH) from.pause();
    const send = () => {
      pending -= chunk.length;
      if (!to.destroyed) to.write(chunk);
      if (pending + to.writableLength <= HIGH) from.resume();
    };
    if (delay > 0) setTimeout(send, delay);
    else send();
  });
  to.on("drain", () => {
    if (pending + to.writableLength <= HIGH) from.resume();
  });
  from.on("end", () => setTimeout(() => to.end(), delay));
  from.on("error", () => to.destroy());
}

const server = createServer((client) => {
  const upstream = connect(split(target));
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  pipeDelayed(client, upstream);
  pipeDelayed(upstream, client);
  upstream.on("error", () => client.destroy());
  client.on("error", () => upstream.destroy());
});
const { host, port } = split(listen);
server.listen(port, host, () => process.stdout.write("ready\n"));
process.on("SIGTERM", () => process.exit(0));
