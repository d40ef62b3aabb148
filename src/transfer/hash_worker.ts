/**
 * The thread that computes Content-MD5 digests for the engine (hasher.ts): one message per
 * body, answered with its base64 MD5.
 */
declare const self: Worker;

self.onmessage = (event: MessageEvent<{ readonly id: number; readonly data: Uint8Array }>) => {
  const md5 = new Bun.CryptoHasher("md5").update(event.data.data).digest("base64");
  self.postMessage({ id: event.data.id, md5 });
};
