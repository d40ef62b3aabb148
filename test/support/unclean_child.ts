/**
 * Child for unclean-stop tests. Usage: bun unclean_child.ts journal|fs DIR
 * journal: appends a synced data event, then an unsynced one, prints their refs, waits to be killed.
 * group: appends a synced data event, then three unsynced events in one commit (one row), the middle one with data.
 * fs: writes "durable" + fsync to /f, then more bytes without fsync, prints the data ref of the last write, waits.
 */
import { asIno, Journal, ROOT_INO } from "../../journal/mod.ts";
import { Filesystem } from "../../src/fs/filesystem.ts";

const [mode, dir] = process.argv.slice(2);
if (mode === "journal") {
  const j = await Journal.open(dir!);
  const a = new Uint8Array(1000).fill(1);
  const b = new Uint8Array(1000).fill(2);
  const [ea] = await j.append([{ type: "ExtentWritten", ino: asIno(5), offset: 0, length: a.length, crc: 0, data: a }], { sync: true });
  const [eb] = await j.append([{ type: "ExtentWritten", ino: asIno(5), offset: 1000, length: b.length, crc: 0, data: b }]);
  await j.append([{ type: "InodeDropped", ino: asIno(6) }]);
  console.log(JSON.stringify({ synced: ea, unsynced: eb }));
} else if (mode === "group") {
  const j = await Journal.open(dir!);
  const a = new Uint8Array(1000).fill(1);
  const b = new Uint8Array(1000).fill(2);
  const [ea] = await j.append([{ type: "ExtentWritten", ino: asIno(5), offset: 0, length: a.length, crc: 0, data: a }], { sync: true });
  const group = await j.append([
    { type: "InodeDropped", ino: asIno(6) },
    { type: "ExtentWritten", ino: asIno(5), offset: 1000, length: b.length, crc: 0, data: b },
    { type: "InodeDropped", ino: asIno(7) },
  ]);
  console.log(JSON.stringify({ synced: ea, group }));
} else {
  const ctx = { uid: 0, gid: 0, pid: process.pid };
  const fs = await Filesystem.open(dir!);
  const { attr, fh } = await fs.create(ctx, ROOT_INO, "f", 0o644, 0o102);
  await fs.write(ctx, fh, 0, new TextEncoder().encode("durable"));
  await fs.fsync(ctx, fh);
  await fs.write(ctx, fh, 7, new TextEncoder().encode(" and lost"));
  await fs.mkdir(ctx, ROOT_INO, "later", 0o755);
  await fs.journal.flushed();
  let last: unknown;
  for await (const e of fs.journal.read({ reverse: true })) if (e.type === "ExtentWritten") { last = e.ref; break; }
  console.log(JSON.stringify({ ino: attr.ino, ref: last }));
}
setInterval(() => {}, 1000);
