declare module "fuse-native" {
  /** fuse-native 2.2.6 with patches/fuse-native@2.2.6.patch applied. */
  export default class Fuse {
    constructor(mountpoint: string, ops: Record<string, unknown>, options?: Record<string, unknown>);
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    /** Caller of the operation being dispatched; valid synchronously inside a handler. */
    context(): { uid: number; gid: number; pid: number; umask: number } | null;
    static unmount(mountpoint: string, cb: (err: Error | null) => void): void;
  }
}
