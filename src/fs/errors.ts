import { constants } from "node:os";

export type Errno = keyof typeof constants.errno;

/** A POSIX error decided by the fs core; the FUSE adapter only passes it on. */
export class FsError extends Error {
  override readonly name = "FsError";
  constructor(
    readonly code: Errno,
    message?: string,
  ) {
    super(message ?? code);
  }
  /** Positive errno number. */
  get errno(): number {
    return constants.errno[this.code];
  }
}

export const fail = (code: Errno, message?: string): never => {
  throw new FsError(code, message);
};
