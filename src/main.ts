#!/usr/bin/env bun
/**
 * objectfs command-line entry. Kept free of static imports so that the commands which move
 * bulk data can restart the process with an allocator setting before anything is loaded.
 *
 * Bun's allocator (mimalloc) hands freed memory back to the kernel within milliseconds, from
 * its scavenger thread. A mount streaming a cold object frees and reallocates its HTTP body
 * buffers all the time, so about half the bytes read went back and were faulted in and zeroed
 * again (240 MiB of MADV_DONTNEED per 512 MiB read, a third of the process's CPU). With purging
 * off, freed memory is reused instead; the process keeps its high-water mark (a few hundred
 * MiB at most, the chunk cache's memory bound plus buffers in flight). The setting only takes
 * effect at start, hence execve (same pid, same fds). A value the user set is left alone.
 */
const BULK = new Set(["mount", "restore"]);

if (import.meta.main) {
  const argv = process.argv.slice(2);
  if (BULK.has(argv[0] ?? "") && process.versions.bun !== undefined && process.env.MIMALLOC_PURGE_DELAY === undefined) {
    try {
      process.execve?.(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], { ...process.env, MIMALLOC_PURGE_DELAY: "-1" });
    } catch {
      // Not re-executed (a runtime without execve, say): the command runs with the allocator's defaults.
    }
  }
  const { main } = await import("./cli/main.ts");
  process.exit(await main(argv));
}
