export * from "./events.ts";
export * from "./errors.ts";
export { decodeEvent, encodeEvent, SCHEMA_VERSION } from "./codec.ts";
export { Journal, type AppendOptions, type OpenOptions, type ReadOptions, type RowOp, type Sublevel } from "./store.ts";
export * from "./segment.ts";
export { key, u64Key, readU64 } from "./keys.ts";
