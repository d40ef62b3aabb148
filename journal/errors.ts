/**
 * Journal errors carry a closed `reason`. `corrupt` means bytes on disk or in a
 * segment are not what was written; `io` is a failure of the disk and `full`
 * a full one (the message says what to do); `dropped` asks for bytes that retention removed; `closed`, `locked` and `discontinuous` are misuse or
 * state errors the caller must handle.
 */
export type JournalErrorReason = "corrupt" | "discontinuous" | "io" | "full" | "dropped" | "closed" | "locked" | "unsupported";

export class JournalError extends Error {
  override readonly name = "JournalError";
  constructor(
    readonly reason: JournalErrorReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A segment failed verification: which segment, where, and what was expected. */
export class SegmentCorruptError extends JournalError {
  constructor(
    readonly segment: string,
    readonly offset: number,
    readonly detail: string,
  ) {
    super("corrupt", `Segment ${segment} is corrupt at byte ${offset}: ${detail}`);
  }
}
