/**
 * Child process for the data log kill test: reserves, writes and syncs runs of bytes whose
 * ends mostly fall inside a block (so O_DIRECT writes the whole blocks and the page cache the
 * rest), printing "synced <file> <end>" after each sync, until killed. Every byte's value
 * follows from its file and position (see data_log_pattern.ts).
 * Usage: bun data_log_child.ts DIR FILE END MAX_FILE_BYTES
 */
import { DataLog } from "../../journal/data_log.ts";
import { landing, patternBytes } from "./data_log_pattern.ts";

const [dir, ...nums] = process.argv.slice(2);
const [file, end, maxFileBytes] = nums.map(Number) as [number, number, number];
const log = await DataLog.open(dir!, { file, end }, maxFileBytes);
process.stdout.write(`ready\n`);
const sizes = [1, 4095, 100_000, 4096, 1 << 20, 3, (1 << 20) + 4097, 77, 8192, 30_000, 5000];
for (let i = 0; ; i++) {
  for (let k = 0; k < 4; k++) {
    const n = sizes[(i * 4 + k) % sizes.length]!;
    const at = landing(log.reservedEnd, n, maxFileBytes);
    const ref = log.reserve(patternBytes(at.file, at.pos, n));
    if (ref.file !== at.file || ref.pos !== at.pos) throw new Error(`reserved at ${ref.file}:${ref.pos}, expected ${at.file}:${at.pos}`);
    if (k % 2 === 1) void log.write().catch(() => {});
  }
  await log.write();
  await log.sync();
  const p = log.position;
  process.stdout.write(`synced ${p.file} ${p.end} ${JSON.stringify(log.writeStats)}\n`);
}
