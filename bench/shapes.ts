/**
 * `npm run bench:shapes`: the cache, state, overhead and churn benchmarks on real model shapes (random
 * weights: speed and state size depend on the shape, not on the values), histories up to 8 192 tokens,
 * each benchmark in its own process (as `npm run bench` does), then one table per shape and length:
 * resident, rehydrated and re-prefill TTFT and their ratios, state bytes per token, passivate and
 * rehydrate times. Results: `results/shapes-<bench>-<shape>.json` and `results/shapes.json`.
 *
 *   npm run bench:shapes                                   # Qwen2.5-0.5B and -1.5B shapes, Q8_0, 2 threads
 *   npm run bench:shapes -- --shapes qwen2.5-0.5b --only cache,state
 *   npm run bench:shapes -- --report                       # only the tables, from the result files
 *   npm run bench:shapes -- --mlx                          # also MLX (F16 0.5B, histories ≤ 2 048) in the cache table
 *
 * An 8 192-token re-prefill of the 1.5B shape takes minutes on 2 cores, so the longest history gets fewer
 * repetitions (`--cache-reps`, per shape). The cache benchmark writes its result after each length, so a
 * run cut short keeps the lengths it finished.
 */
import { spawn } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { formatTable } from "../src/cli/table.js";
import { BENCH_DIR, CORES, intOption, listOption, percent, progress, RESULTS_DIR, writeResult } from "./lib.js";
import { isPresetName } from "./synthetic/synthetic-model.js";

const { values } = parseArgs({
  options: {
    shapes: { type: "string" },
    type: { type: "string" },
    threads: { type: "string" },
    lengths: { type: "string" },
    only: { type: "string" },
    report: { type: "boolean", default: false },
    mlx: { type: "boolean", default: false },
  },
});

const BENCHES = ["cache", "state", "overhead", "churn"] as const;
type Bench = (typeof BENCHES)[number];
/** Cache repetitions per length (512, 2 048, 8 192 by default) for each shape: one re-prefill of 8 192 tokens on the 1.5B shape takes minutes. */
const CACHE_REPS: Record<string, string> = { "qwen2.5-0.5b": "5,3,2", "qwen2.5-1.5b": "3,2,1" };

const shapes = (values.shapes ?? "qwen2.5-0.5b,qwen2.5-1.5b").split(",").map((s) => s.trim());
for (const shape of shapes) if (!isPresetName(shape)) throw new RangeError(`--shapes takes synthetic presets, got ${shape}`);
const type = values.type ?? "q8_0";
const threads = intOption("threads", values.threads, 2);
const lengths = listOption("lengths", values.lengths, [512, 2048, 8192]);
const only = (values.only?.split(",").map((s) => s.trim()) ?? [...BENCHES]) as Bench[];
for (const name of only) if (!BENCHES.includes(name)) throw new RangeError(`--only takes ${BENCHES.join(", ")}, got ${name}`);

const resultName = (bench: string, shape: string, suffix = "") => `shapes-${bench}-${shape}-${type}${suffix}`;

function args(bench: Bench, shape: string): string[] {
  const common = ["--preset", shape, "--type", type, "--threads", String(threads), "--out", resultName(bench, shape)];
  const reps = CACHE_REPS[shape] ?? "3";
  switch (bench) {
    case "cache":
      // --reuse-prefill: the resident agent's first prefill is also the first re-prefill sample.
      return [...common, "--lengths", lengths.join(","), "--reps", reps.split(",").length === lengths.length ? reps : "3", "--reuse-prefill"];
    case "state":
      return [...common, "--lengths", lengths.join(","), "--reps", "3"];
    case "overhead":
      return [...common, "--tokens", "16", "--reps", "3"];
    case "churn":
      return [...common, "--agents", "40", "--turns", "40", "--max-agents", "4", "--tokens", "8"];
  }
}

function run(name: string, argv: string[]): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", resolve(BENCH_DIR, `${name}.ts`), ...argv], {
      stdio: ["ignore", "inherit", "inherit"],
    });
    child.on("error", reject);
    child.on("exit", (code) => resolvePromise(code ?? 1));
  });
}

const started = performance.now();
const failed: string[] = [];
if (!values.report) {
  const steps: { bench: string; argv: string[] }[] = [];
  for (const shape of shapes) for (const bench of only) steps.push({ bench, argv: args(bench, shape) });
  if (values.mlx && only.includes("cache") && shapes.includes("qwen2.5-0.5b")) {
    // MLX on the CPU computes in float32 from F16 weights (Q8_0 does not load); 8 192 tokens would take too long.
    const short = lengths.filter((n) => n <= 2048);
    steps.push({
      bench: "cache",
      argv: ["--preset", "qwen2.5-0.5b", "--type", "f16", "--engine", "mlx", "--threads", String(threads)].concat([
        "--lengths",
        short.join(","),
        "--reps",
        "3",
        "--out",
        `shapes-cache-qwen2.5-0.5b-f16-mlx`,
      ]),
    });
  }
  for (const [i, step] of steps.entries()) {
    progress(`── ${i + 1}/${steps.length} bench:${step.bench} ${step.argv.join(" ")}`);
    const stepStart = performance.now();
    const code = await run(step.bench, step.argv);
    progress(`── bench:${step.bench} ${code === 0 ? "done" : `FAILED (exit ${code})`} in ${((performance.now() - stepStart) / 1000).toFixed(0)} s\n`);
    if (code !== 0) failed.push(`${step.bench} ${step.argv.join(" ")}`);
  }
}

// ── The tables, from whatever result files exist.

async function readJson<T>(name: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(resolve(RESULTS_DIR, `${name}.json`), "utf8")) as T;
  } catch {
    return undefined;
  }
}

interface CacheResult {
  label: string;
  threads: number;
  reps: number[];
  partial?: boolean;
  rows: {
    engine: string;
    historyTokens: number;
    ttftResidentMs: number;
    ttftRehydrateMs: number;
    ttftReprefillMs: number;
    rehydrateVerifyMs: number;
    rehydrateLoadMs: number;
    passivateMs?: number;
    stateBytes: number;
    reps?: number;
  }[];
}
interface StateResult {
  rows: {
    engine: string;
    tokens: number;
    stateBytes: number;
    kvBytesPerToken: number;
    passivateMBps: number;
    rehydrateMBps: number;
    rehydrateWarmMBps: number;
    readRatio: number;
    sameProcessReadRatio: number;
  }[];
}
interface OverheadResult {
  rows: { engine: string; variant: string; tokensPerSecond: number; ttftMs: number; overBaseline: number }[];
  agentrtOverRaw: Record<string, number>;
}
interface ChurnResult {
  turnsPerSecond: number;
  passivationsPerSecond: number;
  rehydrationsPerSecond: number;
  turnLatencyMs: { p50: number; p99: number };
  rssMiB: { peak: number };
}

const cacheRows: Record<string, string | number>[] = [];
const stateRows: Record<string, string | number>[] = [];
const overheadRows: Record<string, string | number>[] = [];
const churnRows: Record<string, string | number>[] = [];
const MB = 1e6;
/**
 * Result files of one benchmark and shape: `shapes-<bench>-<shape>-<type>.json` and any extra runs beside it
 * (`…-<type>-8192-run2.json`, made by hand with `--out`), each with its suffix (the table's `run` column).
 */
async function resultFiles(bench: string, shape: string, fileType = type): Promise<{ name: string; run: string }[]> {
  const prefix = `shapes-${bench}-${shape}-${fileType}`;
  const names = (await readdir(RESULTS_DIR).catch(() => [] as string[])).filter((f) => f.startsWith(prefix) && f.endsWith(".json"));
  return names
    .map((f) => ({ name: f.slice(0, -".json".length), run: f.slice(prefix.length, -".json".length).replace(/^-/, "") }))
    .sort((a, b) => a.run.localeCompare(b.run)); // the default run first
}

const cacheFiles = (await Promise.all(shapes.map((shape) => resultFiles("cache", shape)))).flat();
if (shapes.includes("qwen2.5-0.5b")) cacheFiles.push(...(await resultFiles("cache", "qwen2.5-0.5b", "f16")));
for (const file of cacheFiles) {
  const cache = await readJson<CacheResult>(file.name);
  for (const row of cache?.rows ?? []) {
    cacheRows.push({
      shape: cache!.label,
      run: file.run,
      engine: row.engine,
      "history tok": row.historyTokens,
      "resident ms": row.ttftResidentMs,
      "rehydrated ms": row.ttftRehydrateMs,
      "re-prefill ms": row.ttftReprefillMs,
      "res/pre": percent(row.ttftResidentMs / row.ttftReprefillMs),
      "reh/pre": percent(row.ttftRehydrateMs / row.ttftReprefillMs),
      "state B/token": Math.round(row.stateBytes / row.historyTokens),
      "state MiB": row.stateBytes / 2 ** 20,
      "passivate ms": row.passivateMs ?? NaN,
      "rehydrate ms": row.rehydrateVerifyMs + row.rehydrateLoadMs,
      reps: row.reps ?? "",
    });
  }
}
for (const shape of shapes) {
  const stateFiles = await resultFiles("state", shape);
  const states = await Promise.all(stateFiles.map((file) => readJson<StateResult>(file.name)));
  for (const row of states.flatMap((state) => state?.rows ?? []).sort((a, b) => a.tokens - b.tokens)) {
    stateRows.push({
      shape: `${shape}-${type}`,
      tokens: row.tokens,
      "state MB": row.stateBytes / MB,
      "B/token": Math.round(row.stateBytes / row.tokens),
      "KV B/token": row.kvBytesPerToken,
      "passivate ms": ((row.stateBytes / MB / row.passivateMBps) * 1000).toFixed(1),
      "passivate MB/s": row.passivateMBps,
      "rehydrate ms": ((row.stateBytes / MB / row.rehydrateMBps) * 1000).toFixed(1),
      "rehydrate MB/s": row.rehydrateMBps,
      "vs raw read": percent(row.readRatio),
      "same-process rehydrate ms": ((row.stateBytes / MB / row.rehydrateWarmMBps) * 1000).toFixed(1),
      "same-process vs raw read": percent(row.sameProcessReadRatio),
    });
  }
  const overhead = await readJson<OverheadResult>(resultName("overhead", shape));
  for (const row of overhead?.rows ?? []) {
    overheadRows.push({
      shape: `${shape}-${type}`,
      variant: row.variant,
      "tok/s": row.tokensPerSecond,
      "TTFT ms": row.ttftMs,
      "vs raw": percent(row.overBaseline),
    });
  }
  const churn = await readJson<ChurnResult>(resultName("churn", shape));
  if (churn) {
    churnRows.push({
      shape: `${shape}-${type}`,
      "turns/s": churn.turnsPerSecond,
      "passivations/s": churn.passivationsPerSecond,
      "rehydrations/s": churn.rehydrationsPerSecond,
      "p50 turn ms": churn.turnLatencyMs.p50,
      "p99 turn ms": churn.turnLatencyMs.p99,
      "RSS peak MiB": churn.rssMiB.peak,
    });
  }
}

console.log(`shapes: ${shapes.join(", ")} (${type}), ${threads} engine threads, ${CORES} cores`);
for (const [title, rows] of [
  ["cache (TTFT of the next turn; passivate = save + commit, rehydrate = check + load)", cacheRows],
  ["state", stateRows],
  ["overhead (16 tokens)", overheadRows],
  ["churn (40 agents, 4 resident, 40 turns × 8 tokens)", churnRows],
] as const) {
  if (rows.length === 0) continue;
  console.log(`\n${title}`);
  console.log(formatTable(rows));
}
if (failed.length > 0) console.log(`\nFAILED: ${failed.join("; ")}`);
const path = await writeResult("shapes.json", {
  shapes,
  type,
  threads,
  cores: CORES,
  lengths,
  seconds: (performance.now() - started) / 1000,
  failed,
  cache: cacheRows,
  state: stateRows,
  overhead: overheadRows,
  churn: churnRows,
});
progress(`wrote ${path}`);
if (failed.length > 0) process.exitCode = 1;
