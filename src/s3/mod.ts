/**
 * The object-store layer: one narrow Promise-based interface over an S3 bucket, its typed
 * errors, and the probe of what the server really supports.
 */
export * from "./object_store.ts";
export * from "./s3_error.ts";
export * from "./capabilities.ts";
