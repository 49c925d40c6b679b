/**
 * State benchmark: how big an agent's saved KV state is per token, and how fast agentrt passivates and
 * rehydrates it compared with plain file I/O of the same number of bytes on the same disk, in one run.
 *
 * - passivate = the engine writes the state (in the generation worker) + the store's commit (fsync,
 *   XXH3-64, rename, fsync of the folder): what AgentRuntime does per passivation;
 *   vs plain = `fs` write of a buffer of the same size + fsync.
 * - rehydrate = the store's check (size + XXH3-64) + the engine's load; vs plain = reading the file
 *   into a buffer allocated beforehand (8 MiB reads), the most a reader gets from this disk; and
 *   `fs.readFile`, which allocates a fresh buffer per read as most Node code does.
 *   Both read a file that was just written, so from the page cache (dropping it would disturb the other
 *   users of this shared machine): a cold read adds the disk's read time to both sides.
 *
 *   npm run bench:state
 *   npm run bench:state -- --preset smollm2-135m --engine llama.cpp --engine mlx
 *   npm run bench:state -- --preset qwen2.5-0.5b --type q8_0 --threads 2 --lengths 512,2048,8192 --out state-0.5b
 */
import { createHash, randomFillSync } from "node:crypto";
import { mkdtemp, open, readFile, rm, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { formatTable } from "../src/cli/table.js";
import type { EngineName } from "../src/engines/engine.js";
import { checksumBytes, checksumFile, sha256File } from "../src/store/checksum.js";
import { DirectoryStore } from "../src/store/directory-store.js";
import type { KvDescriptor } from "../src/store/state-store.js";
import { RemoteEngine } from "../src/worker/remote-engine.js";
import {
  buildHistories,
  CORES,
  DEFAULT_THREADS,
  engineOption,
  interleave,
  intOption,
  listOption,
  median,
  MODEL_OPTIONS,
  outName,
  percent,
  pinMlxThreads,
  plotName,
  progress,
  resolveModel,
  writeResult,
} from "./lib.js";
import { barChart } from "./plot.js";

const { values } = parseArgs({
  options: {
    ...MODEL_OPTIONS,
    engine: { type: "string", multiple: true },
    lengths: { type: "string" },
    dir: { type: "string" },
    out: { type: "string" },
  },
});
const choice = await resolveModel(values);
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const reps = intOption("reps", values.reps, 5);
const lengths = listOption("lengths", values.lengths, [256, 2048]);
const engines = engineOption(values.engine);
if (engines.includes("mlx")) pinMlxThreads(threads);
const never = new AbortController().signal;

interface Row {
  engine: EngineName;
  tokens: number;
  stateBytes: number;
  bytesPerToken: number;
  /** The engine's own figure for KV bytes per token in memory. */
  kvBytesPerToken: number;
  passivateMBps: number;
  /** Share of the passivation spent in the engine's save (the rest is the store's fsync + sha256 + rename). */
  engineSaveShare: number;
  plainWriteMBps: number;
  rehydrateMBps: number;
  /** Rehydration by the store that wrote the file (no re-hash: same inode, size and times). */
  rehydrateWarmMBps: number;
  /** Share of the rehydration spent checking the file (stat + checksum). */
  verifyShare: number;
  /** The check alone (read + verify, after a restart) against the raw read: median of per-repetition ratios. */
  verifyReadRatio: number;
  /** Reading the file into a buffer allocated beforehand: the raw read throughput (the target's baseline). */
  plainReadMBps: number;
  /** `fs.readFile` (allocates the buffer each time, as most Node code reads a file). */
  readFileMBps: number;
  /** The engine's load alone (no check at all). */
  loadOnlyMBps: number;
  /**
   * Best case for any faster checksum computed in its own pass over the file, as now: the pass costs at
   * least a plain read, then the engine loads. (A checksum folded into the engine's own read would need
   * an engine that loads from memory.)
   */
  freeHashMBps: number;
  /** The store's check of older files (sha256, 1 MiB reads) on the cached state file. */
  sha256MBps: number;
  /** The store's check (XXH3-64, 1 MiB reads into a reused buffer) on the cached state file. */
  xxh3MBps: number;
  /** XXH3-64 of the bytes already in memory. */
  xxh3InMemoryMBps: number;
  /** sha256 of the bytes already in memory: the hash's own speed (OpenSSL; SHA-NI where the CPU has it). */
  sha256InMemoryMBps: number;
}

const MB = 1e6;
const mbps = (bytes: number, ms: number) => bytes / MB / (ms / 1000);

/** Reads the whole file into a buffer allocated beforehand, in large reads: the raw read throughput. */
async function plainRead(path: string, into: Uint8Array): Promise<number> {
  const started = performance.now();
  const handle = await open(path, "r");
  try {
    let offset = 0;
    while (offset < into.length) {
      const { bytesRead } = await handle.read(into, offset, Math.min(8 << 20, into.length - offset), offset);
      if (bytesRead === 0) break;
      offset += bytesRead;
    }
  } finally {
    await handle.close();
  }
  return performance.now() - started;
}

async function plainWrite(path: string, data: Uint8Array): Promise<number> {
  const started = performance.now();
  const handle = await open(path, "w");
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  return performance.now() - started;
}

const histories = await buildHistories(choice.path, lengths);
const rows: Row[] = [];
const root = await mkdtemp(join(values.dir ?? tmpdir(), "agentrt-bench-state-"));
try {
  for (const engineName of engines) {
    const contextSize = Math.max(...lengths) + 256;
    progress(`loading ${choice.label} on ${engineName} (${threads} threads, context ${contextSize})…`);
    const engine = await RemoteEngine.start({ engine: engineName, model: choice.path, contextSize, sequences: 2, threads });
    const store = new DirectoryStore(join(root, engineName));
    const extension = engine.info.stateFileExtension;
    try {
      for (const target of lengths) {
        await engine.openSequence("agent");
        const tokens = (await engine.prefill("agent", histories.get(target)!, never)).cacheTokens;
        progress(`${engineName}: ${tokens} tokens in the cache, ${reps} repetitions`);
        let kv: KvDescriptor | undefined;
        const saveMs: number[] = [];
        const verifyMs: number[] = [];
        const shaMs: number[] = [];
        const shaMemoryMs: number[] = [];
        const xxh3Ms: number[] = [];
        const xxh3MemoryMs: number[] = [];
        const plainPath = join(root, `plain-${engineName}-${tokens}.bin`);

        // A first passivation sizes the plain buffer (and warms up the engine's writer).
        const first = await store.stageKv("agent", extension);
        await engine.saveState("agent", first.path);
        const committed = await first.commit();
        kv = { ...committed, tokens, fingerprint: engine.info.fingerprint, engine: engineName, historyLength: 0 };
        const data = randomFillSync(new Uint8Array(committed.bytes));
        const readBuffer = new Uint8Array(committed.bytes);

        const samples = await interleave(reps, {
          passivate: async () => {
            const started = performance.now();
            const staged = await store.stageKv("agent", extension);
            await engine.saveState("agent", staged.path);
            const saved = performance.now();
            const result = await staged.commit();
            const total = performance.now() - started;
            saveMs.push(saved - started);
            kv = { ...kv!, ...result };
            return total;
          },
          plainWrite: () => plainWrite(plainPath, data),
          rehydrate: async () => {
            await engine.openSequence("load");
            const started = performance.now();
            // A store opened afresh, as after a restart: it hashes the whole file before the engine loads it.
            const path = await new DirectoryStore(join(root, engineName)).openKv("agent", kv!);
            const verified = performance.now();
            await engine.loadState("load", path);
            const total = performance.now() - started;
            verifyMs.push(verified - started);
            await engine.closeSequence("load");
            // The hash alone, on the same (cached) file, for its throughput.
            const hashStart = performance.now();
            await sha256File(path);
            shaMs.push(performance.now() - hashStart);
            const xxh3Start = performance.now();
            await checksumFile(path);
            xxh3Ms.push(performance.now() - xxh3Start);
            return total;
          },
          rehydrateWarm: async () => {
            // The store that committed the file: same inode, size and times, so it is not hashed again.
            await engine.openSequence("load");
            const started = performance.now();
            await engine.loadState("load", await store.openKv("agent", kv!));
            const total = performance.now() - started;
            await engine.closeSequence("load");
            return total;
          },
          plainRead: async () => {
            const ms = await plainRead(plainPath, readBuffer);
            const hashStart = performance.now();
            createHash("sha256").update(readBuffer).digest();
            shaMemoryMs.push(performance.now() - hashStart);
            const xxh3Start = performance.now();
            checksumBytes(readBuffer);
            xxh3MemoryMs.push(performance.now() - xxh3Start);
            return ms;
          },
          readFile: async () => {
            const started = performance.now();
            await readFile(plainPath);
            return performance.now() - started;
          },
        });
        await engine.closeSequence("agent");
        await unlink(plainPath).catch(() => {});
        const bytes = kv.bytes;
        const rehydrateMs = median(samples.rehydrate);
        rows.push({
          engine: engineName,
          tokens,
          stateBytes: bytes,
          bytesPerToken: bytes / tokens,
          kvBytesPerToken: engine.info.kvBytesPerToken,
          passivateMBps: mbps(bytes, median(samples.passivate)),
          engineSaveShare: median(saveMs.map((ms, i) => ms / samples.passivate[i]!)),
          plainWriteMBps: mbps(bytes, median(samples.plainWrite)),
          rehydrateMBps: mbps(bytes, rehydrateMs),
          rehydrateWarmMBps: mbps(bytes, median(samples.rehydrateWarm)),
          verifyShare: median(verifyMs.map((ms, i) => ms / samples.rehydrate[i]!)),
          verifyReadRatio: median(verifyMs.map((ms, i) => samples.plainRead[i]! / ms)),
          plainReadMBps: mbps(bytes, median(samples.plainRead)),
          readFileMBps: mbps(bytes, median(samples.readFile)),
          loadOnlyMBps: mbps(bytes, median(samples.rehydrate.map((ms, i) => ms - verifyMs[i]!))),
          freeHashMBps: mbps(bytes, median(samples.rehydrate.map((ms, i) => ms - verifyMs[i]! + samples.plainRead[i]!))),
          sha256MBps: mbps(bytes, median(shaMs)),
          sha256InMemoryMBps: mbps(bytes, median(shaMemoryMs)),
          xxh3MBps: mbps(bytes, median(xxh3Ms)),
          xxh3InMemoryMBps: mbps(bytes, median(xxh3MemoryMs)),
        });
      }
    } finally {
      await engine.dispose();
    }
  }
} finally {
  await rm(root, { recursive: true, force: true });
}

console.log(`state: ${choice.label}, ${threads} threads, ${CORES} cores, median of ${reps}, MB = 10^6 bytes, page cache warm`);
console.log(
  formatTable(
    rows.map((row) => ({
      engine: row.engine,
      tokens: row.tokens,
      "state MB": row.stateBytes / MB,
      "B/token": Math.round(row.bytesPerToken),
      "KV B/token": row.kvBytesPerToken,
      "passivate MB/s": row.passivateMBps,
      "(save": percent(row.engineSaveShare),
      "plain write MB/s": row.plainWriteMBps,
      "write ratio": percent(row.passivateMBps / row.plainWriteMBps),
      "rehydrate MB/s": row.rehydrateMBps,
      "(verify": percent(row.verifyShare),
      "plain read MB/s": row.plainReadMBps,
      "read ratio": percent(row.rehydrateMBps / row.plainReadMBps),
      "verify-only ratio": percent(row.verifyReadRatio),
      "same-process MB/s": row.rehydrateWarmMBps,
      "same-process ratio": percent(row.rehydrateWarmMBps / row.plainReadMBps),
      "readFile MB/s": row.readFileMBps,
      "vs readFile": percent(row.rehydrateMBps / row.readFileMBps),
      "load-only ratio": percent(row.loadOnlyMBps / row.plainReadMBps),
      "free-hash ratio": percent(row.freeHashMBps / row.plainReadMBps),
      "sha256 MB/s": row.sha256MBps,
      "in memory": row.sha256InMemoryMBps,
      "xxh3 MB/s": row.xxh3MBps,
      "xxh3 in memory": row.xxh3InMemoryMBps,
    })),
  ),
);
const largest = rows.filter((row) => row.tokens === Math.max(...rows.filter((r) => r.engine === row.engine).map((r) => r.tokens)));
for (const row of largest) {
  const ratio = row.rehydrateMBps / row.plainReadMBps;
  console.log(
    `${row.engine} (${row.tokens} tokens): state read = ${percent(ratio)} of raw read (target ≥ 50 %: ${ratio >= 0.5 ? "MET" : "MISSED"}), ` +
      `read + verify alone ${percent(row.verifyReadRatio)} (${row.verifyReadRatio >= 0.5 ? "MET" : "MISSED"}), ` +
      `${percent(row.rehydrateMBps / row.readFileMBps)} of fs.readFile; XXH3-64 check ${percent(row.verifyShare)} of the rehydration; ` +
      `within the process that wrote it (no re-hash): ${percent(row.rehydrateWarmMBps / row.plainReadMBps)} of raw read`,
  );
}
const path = await writeResult(`${outName(values.out, "state")}.json`, {
  model: choice.path,
  label: choice.label,
  threads,
  cores: CORES,
  reps,
  rows: rows.map((row) => ({
    ...row,
    writeRatio: row.passivateMBps / row.plainWriteMBps,
    readRatio: row.rehydrateMBps / row.plainReadMBps,
    sameProcessReadRatio: row.rehydrateWarmMBps / row.plainReadMBps,
    readFileRatio: row.rehydrateMBps / row.readFileMBps,
  })),
});
const plot = await barChart(
  plotName("state", choice.label, engines),
  largest.flatMap((row) => [
    { group: `${row.engine} write`, series: "agentrt", value: row.passivateMBps },
    { group: `${row.engine} write`, series: "plain fs", value: row.plainWriteMBps },
    { group: `${row.engine} read`, series: "agentrt", value: row.rehydrateMBps },
    { group: `${row.engine} read`, series: "plain fs", value: row.plainReadMBps },
    { group: `${row.engine} read`, series: "fs.readFile", value: row.readFileMBps },
  ]),
  {
    title: `State write/read throughput, ${largest.map((r) => `${r.engine} ${r.tokens}`).join(", ")} tokens (${choice.label})`,
    xTitle: "",
    yTitle: "MB/s (median)",
  },
);
progress(`wrote ${path} and ${plot}`);
