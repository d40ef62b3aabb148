/**
 * Child process for the journal crash test: appends events with sync from 8
 * concurrent writers and prints "ack <seq> <n>" after each acknowledgment, until killed.
 * Usage: bun journal_crash_child.ts DIR BASE
 */
import { asIno, Journal } from "../../journal/mod.ts";
import { payloadFor } from "./crash_payload.ts";

const [dir, baseArg] = process.argv.slice(2);
const base = Number(baseArg);
const j = await Journal.open(dir!);
let n = base;
const out = (s: string) => process.stdout.write(s);
out(`ready ${j.head}\n`);
await Promise.all(
  Array.from({ length: 8 }, async () => {
    for (;;) {
      const mine = n++;
      const data = payloadFor(mine);
      const [e] = await j.append(
        [
          { type: "ExtentWritten", ino: asIno(mine), offset: mine, length: data.length, crc: 0, data },
          { type: "AttrsChanged", ino: asIno(mine), mtime: mine },
        ],
        { sync: true },
      );
      out(`ack ${e!.seq} ${mine}\n`);
    }
  }),
);
