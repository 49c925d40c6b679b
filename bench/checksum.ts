/**
 * Checksum benchmark: which integrity check can read and verify a state file at ≥ 50 % of a raw read.
 * A random file of `--mb` MB (default 48, a 2 048-token SmolLM2-135M llama.cpp state) is read from the
 * page cache, interleaved across variants:
 *
 * - `raw read`: into a buffer allocated beforehand, 8 MiB reads (the baseline);
 * - file variants: read in 1 MiB chunks into one reused buffer and hashed chunk by chunk (the store's
 *   `checksumFile`), plus the store's old streamed sha256 and one-shot variants over a whole-file read;
 * - `mem …`: the hash alone over bytes already in memory.
 *
 * Node's own hashes (sha256 with SHA-NI, sha1, md5, zlib.crc32) and @node-rs/xxhash always run; other
 * candidates run when installed beside the repo (`npm i --no-save hash-wasm@4.13.0 xxhash-wasm@1.1.0
 * @node-rs/crc32@1.10.8`), and are skipped otherwise.
 *
 *   npm run bench:checksum
 *   npm run bench:checksum -- --mb 4 --reps 15
 */
import { createHash, hash as oneShotHash, randomFillSync } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";
import * as zlib from "node:zlib";
import { formatTable } from "../src/cli/table.js";
import { checksumBytes, checksumFile } from "../src/store/checksum.js";
import { CORES, intOption, interleave, median, percent, progress, writeResult } from "./lib.js";

const { values } = parseArgs({ options: { mb: { type: "string" }, reps: { type: "string" } } });
const size = intOption("mb", values.mb, 48) * 1e6;
const reps = intOption("reps", values.reps, 9);

/** An optional candidate package, or undefined when it is not installed. */
async function optional<T>(name: string): Promise<T | undefined> {
  return (import(name) as Promise<T>).catch(() => undefined);
}

interface Hasher {
  update(chunk: Uint8Array): unknown;
}
interface HashWasm {
  createXXHash128(): Promise<Hasher & { init(): unknown; digest(): string }>;
  createBLAKE3(): Promise<Hasher & { init(): unknown; digest(): string }>;
}

const root = await mkdtemp(join(tmpdir(), "agentrt-bench-checksum-"));
const path = join(root, "state.bin");
const CHUNK = 1 << 20;
const chunk = Buffer.allocUnsafeSlow(CHUNK);
const whole = Buffer.allocUnsafeSlow(size);

async function readChunks(each: (bytes: Buffer) => void): Promise<void> {
  const handle = await open(path, "r");
  try {
    for (let position = 0; ;) {
      const { bytesRead } = await handle.read(chunk, 0, CHUNK, position);
      if (bytesRead === 0) break;
      each(bytesRead === CHUNK ? chunk : chunk.subarray(0, bytesRead));
      position += bytesRead;
    }
  } finally {
    await handle.close();
  }
}

async function readWhole(): Promise<void> {
  const handle = await open(path, "r");
  try {
    for (let offset = 0; offset < size;) {
      const { bytesRead } = await handle.read(whole, offset, Math.min(8 << 20, size - offset), offset);
      if (bytesRead === 0) break;
      offset += bytesRead;
    }
  } finally {
    await handle.close();
  }
}

const timed = (work: () => unknown) => async () => {
  const started = performance.now();
  await work();
  return performance.now() - started;
};
const nodeHash = (algorithm: string) =>
  timed(() => {
    const h = createHash(algorithm);
    return readChunks((b) => h.update(b)).then(() => h.digest("hex"));
  });

try {
  await writeFile(path, randomFillSync(Buffer.allocUnsafe(size)));
  const variants: Record<string, () => Promise<number>> = {
    "raw read": timed(readWhole),
    "sha256 streamed (the old check)": timed(async () => {
      const h = createHash("sha256");
      await pipeline(createReadStream(path, { highWaterMark: 1 << 20 }), h);
      h.digest("hex");
    }),
    "sha256, 1 MiB chunks": nodeHash("sha256"),
    "sha256 one-shot (crypto.hash)": timed(async () => {
      await readWhole();
      oneShotHash("sha256", whole, "hex");
    }),
    "sha1, 1 MiB chunks": nodeHash("sha1"),
    "md5, 1 MiB chunks": nodeHash("md5"),
    "zlib.crc32, 1 MiB chunks": timed(() => {
      let crc = 0;
      return readChunks((b) => (crc = zlib.crc32(b, crc)));
    }),
    "XXH3-64 @node-rs/xxhash (the store's check)": timed(() => checksumFile(path, "xxh3-64")),
  };
  const memory: Record<string, () => unknown> = {
    "mem sha256": () => createHash("sha256").update(whole).digest(),
    "mem md5": () => createHash("md5").update(whole).digest(),
    "mem zlib.crc32": () => zlib.crc32(whole),
    "mem XXH3-64 @node-rs/xxhash": () => checksumBytes(whole, "xxh3-64"),
  };
  // XXH3-128 has no streaming form in @node-rs/xxhash: one shot over the whole file.
  const xxhash = await optional<{ xxh3: { xxh128(input: Uint8Array): bigint } }>("@node-rs/xxhash");
  if (xxhash) {
    variants["XXH3-128 @node-rs/xxhash one-shot"] = timed(async () => {
      await readWhole();
      xxhash.xxh3.xxh128(whole);
    });
    memory["mem XXH3-128 @node-rs/xxhash"] = () => xxhash.xxh3.xxh128(whole);
  }
  const wasm = await optional<HashWasm>("hash-wasm");
  if (wasm) {
    const x128 = await wasm.createXXHash128();
    const b3 = await wasm.createBLAKE3();
    variants["XXH3-128 hash-wasm, 1 MiB chunks"] = timed(() => (x128.init(), readChunks((b) => x128.update(b)).then(() => x128.digest())));
    variants["BLAKE3 hash-wasm, 1 MiB chunks"] = timed(() => (b3.init(), readChunks((b) => b3.update(b)).then(() => b3.digest())));
    memory["mem XXH3-128 hash-wasm"] = () => (x128.init(), x128.update(whole), x128.digest());
    memory["mem BLAKE3 hash-wasm"] = () => (b3.init(), b3.update(whole), b3.digest());
  }
  const crc = await optional<{ crc32c(input: Uint8Array, initial?: number): number }>("@node-rs/crc32");
  if (crc) {
    variants["CRC32C @node-rs/crc32, 1 MiB chunks"] = timed(() => {
      let c = 0;
      return readChunks((b) => (c = crc.crc32c(b, c)));
    });
    memory["mem CRC32C @node-rs/crc32"] = () => crc.crc32c(whole);
  }
  for (const [name, work] of Object.entries(memory)) variants[name] = timed(async () => work());
  progress(`${Object.keys(variants).length} variants over ${size / 1e6} MB, ${reps} interleaved repetitions`);
  await readWhole(); // the memory variants hash these bytes
  const samples = await interleave(reps, variants);
  const raw = samples["raw read"]!;
  const rows = Object.entries(samples).map(([variant, ms]) => ({
    variant,
    ms: median(ms),
    "MB/s": size / 1e6 / (median(ms) / 1000),
    "vs raw read": percent(median(ms.map((t, i) => raw[i]! / t))),
  }));
  console.log(`checksum: ${size / 1e6} MB from the page cache, ${CORES} cores, median of ${reps} (vs raw read: median of per-repetition ratios)`);
  console.log(formatTable(rows));
  progress(`wrote ${await writeResult("checksum.json", { size, reps, cores: CORES, rows })}`);
} finally {
  await rm(root, { recursive: true, force: true });
}
