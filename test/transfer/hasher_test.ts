/**
 * Content-MD5 digests from the worker thread equal node:crypto's, for views into larger
 * buffers too, and hashing leaves the caller's buffer whole (a copy crosses to the thread).
 */
import { expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { md5Base64 } from "../../src/transfer/hasher.ts";

test("digests from the hashing thread equal node:crypto's and leave the caller's buffers intact", async () => {
  const big = randomBytes(8 * 1024 * 1024 + 3);
  const views = [big.subarray(0, 1), big.subarray(5, 4 * 1024 * 1024), big.subarray(1024), new Uint8Array(0), new Uint8Array(big.buffer, big.byteOffset + 7, 100)];
  const digests = await Promise.all(views.map((v) => md5Base64(v)));
  views.forEach((v, i) => expect(digests[i]).toBe(createHash("md5").update(v).digest("base64")));
  expect(big.byteLength).toBe(8 * 1024 * 1024 + 3); // not detached
  expect(createHash("md5").update(big).digest("hex")).toBe(createHash("md5").update(Buffer.from(big)).digest("hex"));
});
