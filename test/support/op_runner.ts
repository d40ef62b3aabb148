/**
 * Runs a pseudo-random sequence of file operations (fully determined by the
 * seed) under ROOT through node:fs/promises and prints, as JSON, the result or
 * errno of every step and the final tree. The differential test runs it on an
 * objectfs mount and on tmpfs and compares the two outputs.
 *
 *   bun op_runner.ts ROOT SEED STEPS
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import { join } from "node:path";

const [root, seedArg, stepsArg] = process.argv.slice(2);
let s = Number(seedArg) >>> 0 || 1;
const rand = () => {
  // mulberry32
  s = (s + 0x6d2b79f5) >>> 0;
  let t = s;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
const int = (n: number) => Math.floor(rand() * n);

const NAMES = ["a", "b", "c", "d"];
/** A random relative path up to 3 levels deep. */
const path = () => {
  const depth = 1 + int(3);
  return Array.from({ length: depth }, () => pick(NAMES)).join("/");
};
const bytes = (n: number) => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = int(256);
  return b;
};

type Result = { ok: unknown } | { err: string };
async function attempt(f: () => Promise<unknown>): Promise<Result> {
  try {
    return { ok: (await f()) ?? null };
  } catch (e) {
    return { err: (e as NodeJS.ErrnoException).code ?? String(e) };
  }
}

const statOf = (st: import("node:fs").Stats) => ({ mode: st.mode.toString(8), size: st.isDirectory() ? "dir" : st.size, nlink: st.nlink });
const open = new Map<number, fs.FileHandle>();
let nextHandle = 0;

async function step(): Promise<[string, Result]> {
  const p = path();
  const abs = join(root!, p);
  switch (int(20)) {
    case 0:
    case 1:
      return [`mkdir ${p}`, await attempt(() => fs.mkdir(abs, 0o755))];
    case 2:
      return [`rmdir ${p}`, await attempt(() => fs.rmdir(abs))];
    case 3:
    case 4: {
      const off = pick([0, 0, 1, 100, 4095, 70000, 1 << 20]);
      const data = bytes(pick([0, 1, 10, 4096, 70000]));
      return [
        `write ${p} @${off} ${data.length}`,
        await attempt(async () => {
          const fh = await fs.open(abs, "a+").then(async (h) => (await h.close(), fs.open(abs, "r+")));
          try {
            return (await fh.write(data, 0, data.length, off)).bytesWritten;
          } finally {
            await fh.close();
          }
        }),
      ];
    }
    case 5: {
      const data = bytes(pick([1, 100, 5000]));
      return [`append ${p} ${data.length}`, await attempt(() => fs.appendFile(abs, data))];
    }
    case 6: {
      const len = pick([0, 1, 50, 4096, 100000]);
      return [`truncate ${p} ${len}`, await attempt(() => fs.truncate(abs, len))];
    }
    case 7: {
      const q = path();
      return [`rename ${p} ${q}`, await attempt(() => fs.rename(abs, join(root!, q)))];
    }
    case 8: {
      const q = path();
      return [`link ${p} ${q}`, await attempt(() => fs.link(abs, join(root!, q)))];
    }
    case 9:
      return [`unlink ${p}`, await attempt(() => fs.unlink(abs))];
    case 10: {
      // relative, downward targets only: "/x" or "../x" would let the sequence write outside ROOT
      const target = pick(["a", "b", "missing", "c/d"]); // resolved beside the link: never outside ROOT
      return [`symlink ${target} ${p}`, await attempt(() => fs.symlink(target, abs))];
    }
    case 11:
      return [`readlink ${p}`, await attempt(() => fs.readlink(abs))];
    case 12: {
      const mode = pick([0o644, 0o600, 0o755, 0o4755, 0o2755, 0o1777, 0o000]);
      return [`chmod ${p} ${mode.toString(8)}`, await attempt(() => fs.chmod(abs, mode))];
    }
    case 13:
      return [`lstat ${p}`, await attempt(async () => statOf(await fs.lstat(abs)))];
    case 14:
      return [`readdir ${p}`, await attempt(async () => (await fs.readdir(abs)).sort())];
    case 15:
      return [`read ${p}`, await attempt(async () => createHash("md5").update(await fs.readFile(abs)).digest("hex"))];
    case 16: {
      const t = 1_000_000_000 + int(1_000_000);
      const d = new Date(t * 1000);
      return [`utimes ${p} ${t}`, await attempt(async () => (await fs.utimes(abs, d, d), (await fs.stat(abs)).mtimeMs))];
    }
    case 17: {
      // keep a handle open (possibly across unlink)
      return [
        `open ${p}`,
        await attempt(async () => {
          const fh = await fs.open(abs, "r+");
          open.set(nextHandle, fh);
          return nextHandle++;
        }),
      ];
    }
    case 18: {
      if (open.size === 0) return ["noop", { ok: null }];
      const [id, fh] = pick([...open]);
      const data = bytes(pick([1, 300]));
      return [
        `handle ${id} write+read`,
        await attempt(async () => {
          await fh.write(data, 0, data.length, int(200));
          const st = await fh.stat();
          const buf = Buffer.alloc(st.size);
          await fh.read(buf, 0, st.size, 0);
          return [st.size, st.nlink, createHash("md5").update(buf).digest("hex")];
        }),
      ];
    }
    default: {
      if (open.size === 0) return ["noop", { ok: null }];
      const [id, fh] = pick([...open]);
      open.delete(id);
      return [`close ${id}`, await attempt(() => fh.close())];
    }
  }
}

async function tree(dir: string, prefix = ""): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  let names: string[];
  try {
    names = (await fs.readdir(dir)).sort();
  } catch (e) {
    return { [`${prefix}(readdir)`]: (e as NodeJS.ErrnoException).code };
  }
  for (const name of names) {
    const abs = join(dir, name);
    const rel = prefix + name;
    const st = await fs.lstat(abs).catch((e) => (e as NodeJS.ErrnoException).code!);
    if (typeof st === "string") out[rel] = st;
    else if (st.isDirectory()) {
      out[rel] = statOf(st);
      Object.assign(out, await tree(abs, `${rel}/`));
    } else if (st.isSymbolicLink()) out[rel] = { link: await fs.readlink(abs) };
    else out[rel] = { ...statOf(st), md5: await fs.readFile(abs).then((b) => createHash("md5").update(b).digest("hex"), (e) => (e as NodeJS.ErrnoException).code) };
  }
  return out;
}

const log: [string, Result][] = [];
for (let i = 0; i < Number(stepsArg); i++) log.push(await step());
for (const fh of open.values()) await fh.close();
console.log(JSON.stringify({ log, tree: await tree(root!) }));
