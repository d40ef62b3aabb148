/** fast-check arbitraries for every journal event type. */
import fc from "fast-check";
import { crc32 } from "node:zlib";
import { asIno, asSeq, type JournalEvent, type EventType } from "../../journal/mod.ts";

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const ino = fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }).map(asIno);
const seq = fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }).map(asSeq);
const name = fc.string({ minLength: 1, maxLength: 40, unit: "grapheme" });
const caller = fc.record({ uid: u32, gid: u32, pid: fc.integer({ min: 1, max: 4194304 }), comm: fc.string({ maxLength: 15 }) }, { requiredKeys: ["uid", "gid", "pid"] });
const time = fc.integer({ min: 0, max: 4102444800000 });
const bytes = fc.uint8Array({ maxLength: 300 });
const object = fc.record(
  {
    key: fc.string({ maxLength: 60 }),
    size: fc.integer({ min: 0, max: 2 ** 45 }),
    etag: fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: 32, maxLength: 32 }),
    mtime: time,
    versionId: fc.string({ maxLength: 20 }),
    mode: fc.integer({ min: 0, max: 0o177777 }),
    uid: u32,
    gid: u32,
  },
  { requiredKeys: ["key", "size", "etag", "mtime"] },
);

const bodies: { [T in EventType]: fc.Arbitrary<Record<string, unknown>> } = {
  InodeCreated: fc.record(
    {
      ino,
      kind: fc.constantFrom("file", "dir", "symlink", "fifo", "char", "block", "socket"),
      mode: fc.integer({ min: 0, max: 0o177777 }),
      uid: u32,
      gid: u32,
      rdev: u32,
      target: fc.string({ maxLength: 100 }),
      remotePrefix: fc.string({ maxLength: 40 }),
    },
    { requiredKeys: ["ino", "kind", "mode", "uid", "gid"] },
  ),
  DirentLinked: fc.record({ parent: ino, name, ino }),
  DirentUnlinked: fc.record({ parent: ino, name, ino }),
  Renamed: fc.record(
    { ino, fromParent: ino, fromName: name, toParent: ino, toName: name, replaced: ino },
    { requiredKeys: ["ino", "fromParent", "fromName", "toParent", "toName"] },
  ),
  AttrsChanged: fc.record({ ino, mode: u32, uid: u32, gid: u32, atime: time, mtime: time, ctime: time }, { requiredKeys: ["ino"] }),
  ExtentWritten: fc
    .record({ ino, offset: fc.integer({ min: 0, max: 2 ** 40 }), data: bytes })
    .map((r) => ({ ...r, length: r.data.length, crc: crc32(r.data) })),
  Truncated: fc.record({ ino, size: fc.integer({ min: 0, max: 2 ** 45 }) }),
  XattrSet: fc.record({ ino, name, value: bytes }),
  XattrRemoved: fc.record({ ino, name }),
  InodeDropped: fc.record({ ino }),
  ObjectDiscovered: fc.record({ ino, object }),
  ObjectChanged: fc.record({ ino, object }),
  ObjectDeleted: fc.record({ ino, key: fc.string() }),
  SegmentSealed: fc.record({ minSeq: seq, maxSeq: seq, bytes: fc.nat(), checksum: u32 }),
  SegmentReplicated: fc.record(
    { minSeq: seq, maxSeq: seq, key: fc.string(), etag: fc.string(), checksum: u32, runs: fc.array(fc.tuple(fc.nat(), fc.nat(), fc.nat(), fc.nat()), { maxLength: 3 }) },
    { requiredKeys: ["minSeq", "maxSeq", "key", "etag"] },
  ),
  ObjectMaterialized: fc.record({ ino, asOf: seq, object }),
  ConflictDetected: fc.record(
    { ino, key: fc.string(), localEtag: fc.string(), remoteEtag: fc.string(), conflictKey: fc.string() },
    { requiredKeys: ["ino", "key", "conflictKey"] },
  ),
  Mounted: fc.record({ clientId: fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: 16, maxLength: 16 }), host: fc.string(), version: fc.string(), pid: fc.nat() }),
  Unmounted: fc.record({ clientId: fc.string(), clean: fc.boolean() }),
  RemoteListed: fc.record({
    dir: ino,
    prefix: fc.string(),
    entries: fc.array(
      fc.record(
        { name, ino, kind: fc.constantFrom("file", "dir", "symlink"), mode: fc.integer({ min: 0, max: 0o7777 }), uid: u32, gid: u32, mtime: time, object, prefix: fc.string(), target: fc.string(), rdev: u32 },
        { requiredKeys: ["name", "ino", "kind", "mode", "uid", "gid", "mtime"] },
      ),
      { maxLength: 5 },
    ),
    skipped: fc.array(fc.record({ key: fc.string(), reason: fc.string() }), { maxLength: 3 }),
    complete: fc.boolean(),
  }),
  Reconciled: fc.record({ through: seq }),
};

export function eventOf(type: EventType): fc.Arbitrary<JournalEvent> {
  return fc
    .record({ body: bodies[type], seq, time, caller: fc.option(caller, { nil: undefined }) })
    .map(({ body, seq, time, caller }) => {
      const e: Record<string, unknown> = { type, seq, time, ...body };
      if (caller) e.caller = caller;
      return e as unknown as JournalEvent;
    });
}

export const anyEvent: fc.Arbitrary<JournalEvent> = fc.oneof(...(Object.keys(bodies) as EventType[]).map(eventOf));

/** Plain JSON-able form of events for deep comparison (byte arrays as number arrays). */
export function normalize(value: unknown): unknown {
  return JSON.parse(
    JSON.stringify(value, function (this: Record<string, unknown>, key, x) {
      const original = this[key];
      return original instanceof Uint8Array ? Array.from(original) : x;
    }),
  );
}
