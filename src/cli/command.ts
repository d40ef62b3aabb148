/** A CLI command: its name, one-line summary, usage text and runner (returns the exit code). */
export interface Command {
  readonly name: string;
  readonly summary: string;
  readonly usage: string;
  run(args: string[]): Promise<number>;
}

/** A bad flag, config value or argument: printed as one sentence, exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}
