/** objectfs library entry. */
export * from "../journal/mod.ts";
