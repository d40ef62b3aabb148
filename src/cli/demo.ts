import { parseArgs } from "node:util";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { asIno, decodeSegment, Journal, ROOT_INO, sealSegment, type JournalEvent } from "../../journal/mod.ts";
import type { Command } from "./command.ts";

/** A short tour of the journal: append, reopen, replay, seal and verify a segment. */
export const demo: Command = {
  name: "demo",
  summary: "append events to a journal, reopen it, and print what it replayed",
  usage: `objectfs demo [--data-dir DIR]

  --data-dir DIR   journal location (default: a new temporary directory)`,
  async run(args) {
    const { values } = parseArgs({ args, options: { "data-dir": { type: "string" } }, strict: true });
    const dir = values["data-dir"] ?? (await mkdtemp(join(tmpdir(), "objectfs-demo-")));
    const caller = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, pid: process.pid };
    let journal = await Journal.open(dir);
    const first = journal.head + 1;
    const ino = asIno(1000 + journal.head);
    const text = new TextEncoder().encode("hello from the journal\n");
    await journal.append(
      [
        { type: "InodeCreated", ino, kind: "file", mode: 0o100644, uid: caller.uid, gid: caller.gid, caller },
        { type: "DirentLinked", parent: ROOT_INO, name: `hello-${ino}.txt`, ino, caller },
        { type: "ExtentWritten", ino, offset: 0, length: text.length, crc: 0, data: text, caller },
      ],
      { sync: true },
    );
    await journal.close();
    console.log(`appended 3 events to ${dir} and closed it`);

    journal = await Journal.open(dir);
    const replayed: JournalEvent[] = [];
    for await (const e of journal.read({ gte: first, data: true })) replayed.push(e);
    console.log(`reopened: head is seq ${journal.head}; replayed from seq ${first}:`);
    for (const e of replayed) console.log(`  ${describe(e)}`);
    const sealed = sealSegment(replayed, { prevChecksum: 0 });
    const back = decodeSegment(sealed.bytes, { name: "demo" });
    console.log(`sealed seqs ${back.minSeq}-${back.maxSeq} into a ${sealed.bytes.length}-byte segment; checksum ${sealed.checksum.toString(16)} verified`);
    await journal.close();
    return 0;
  },
};

function describe(e: JournalEvent): string {
  const who = e.caller ? ` by uid ${e.caller.uid} pid ${e.caller.pid}` : "";
  const at = new Date(e.time).toISOString();
  switch (e.type) {
    case "ExtentWritten":
      return `#${e.seq} ${at} ${e.type} ino ${e.ino} bytes ${e.offset}-${e.offset + e.length}${who}: ${JSON.stringify(new TextDecoder().decode(e.data))}`;
    case "DirentLinked":
      return `#${e.seq} ${at} ${e.type} ${e.name} -> ino ${e.ino}${who}`;
    default:
      return `#${e.seq} ${at} ${e.type}${who}`;
  }
}
