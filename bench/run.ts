/**
 * `npm run bench`: every benchmark in sequence with small defaults (each in its own process, so one
 * model's memory and threads never overlap the next), then a summary of the targets:
 * on the SmolLM2-135M shape at a 2 048-token history, resident TTFT ≤ 5 % and rehydrate TTFT ≤ 10 % of
 * re-prefill; agentrt tokens/s ≥ 98 % of raw node-llama-cpp; state read ≥ 50 % of a plain file read;
 * a turn through a non-owner cluster node < 2 ms extra at p50.
 *
 *   npm run bench                       # all, llama.cpp (about 10 minutes on 2 cores)
 *   npm run bench -- --mlx              # also MLX where a benchmark compares engines (much longer)
 *   npm run bench -- --only cache,state
 */
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { BENCH_DIR, CORES, DEFAULT_THREADS, percent, progress, RESULTS_DIR, writeResult } from "./lib.js";

const { values } = parseArgs({
  options: {
    only: { type: "string" },
    mlx: { type: "boolean", default: false },
  },
});
const mlx = values.mlx ? ["--engine", "llama.cpp", "--engine", "mlx"] : [];
const PRESET = ["--preset", "smollm2-135m"];

/** Each benchmark and the arguments of its short run. */
const PLAN: { name: string; args: string[] }[] = [
  { name: "cache", args: [...PRESET, "--lengths", "64,256,1024,2048", "--reps", "3", ...mlx] },
  { name: "overhead", args: [...PRESET, "--tokens", "64", "--reps", "7", ...mlx] },
  { name: "state", args: [...PRESET, "--lengths", "256,2048", "--reps", "5", ...mlx] },
  { name: "churn", args: [] },
  { name: "threads", args: [...(values.mlx ? ["--engine", "llama.cpp", "--engine", "mlx"] : [])] },
  { name: "batching", args: [] },
  { name: "prefix", args: [] },
  { name: "quant", args: [] },
  { name: "budget", args: [] },
  // The store-level cluster figures (heartbeats, commits, objects), then the node-level ones.
  { name: "cluster", args: ["--agents", "2000", "--window", "5", "--mib", "16", "--reps", "2"] },
  { name: "cluster-nodes", args: ["--rounds", "100", "--ttls", "3000", "--takeover-reps", "1"] },
];

const only = values.only?.split(",").map((s) => s.trim());
const plan = only ? PLAN.filter((step) => only.includes(step.name)) : PLAN;
if (only && plan.length !== only.length) throw new RangeError(`--only takes ${PLAN.map((s) => s.name).join(", ")}`);

function run(name: string, args: string[]): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", resolve(BENCH_DIR, `${name}.ts`), ...args], {
      stdio: ["ignore", "inherit", "inherit"],
    });
    child.on("error", reject);
    child.on("exit", (code) => resolvePromise(code ?? 1));
  });
}

const failed: string[] = [];
const started = performance.now();
for (const step of plan) {
  progress(`── bench:${step.name} ${step.args.join(" ")}`);
  const stepStart = performance.now();
  const code = await run(step.name, step.args);
  progress(`── bench:${step.name} ${code === 0 ? "done" : `FAILED (exit ${code})`} in ${((performance.now() - stepStart) / 1000).toFixed(0)} s\n`);
  if (code !== 0) failed.push(step.name);
  console.log();
}

async function result<T>(name: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(resolve(RESULTS_DIR, `${name}.json`), "utf8")) as T;
  } catch {
    return undefined;
  }
}

interface Target {
  target: string;
  measured: string;
  value: number | undefined;
  met: boolean | undefined;
  source: string;
}
const targets: Target[] = [];
const add = (target: string, value: number | undefined, met: (v: number) => boolean, source: string) =>
  targets.push({
    target,
    value,
    measured: value === undefined ? "not measured" : percent(value),
    met: value === undefined ? undefined : met(value),
    source,
  });

type CacheRow = { engine?: string; historyTokens: number; residentOverReprefill: number; rehydrateOverReprefill: number };
const cache = await result<{ label?: string; rows: CacheRow[] }>("cache");
const cacheRow = cache?.rows
  .filter((r) => (r.engine ?? "llama.cpp") === "llama.cpp" && r.historyTokens >= 2048)
  .sort((a, b) => a.historyTokens - b.historyTokens)[0];
const cacheSource = cacheRow ? `cache.json: ${cache?.label}, llama.cpp, ${cacheRow.historyTokens} tokens` : "cache.json";
add("resident TTFT ≤ 5 % of re-prefill", cacheRow?.residentOverReprefill, (v) => v <= 0.05, cacheSource);
add("rehydrate TTFT ≤ 10 % of re-prefill", cacheRow?.rehydrateOverReprefill, (v) => v <= 0.1, cacheSource);
const overhead = await result<{ label?: string; agentrtOverRaw: Record<string, number> }>("overhead");
add("agentrt tokens/s ≥ 98 % of raw", overhead?.agentrtOverRaw["llama.cpp"], (v) => v >= 0.98, `overhead.json: ${overhead?.label}, llama.cpp`);
type StateRow = { engine: string; tokens: number; readRatio: number; sameProcessReadRatio?: number; verifyShare: number; verifyReadRatio?: number };
const state = await result<{ label?: string; rows: StateRow[] }>("state");
const stateRow = state?.rows.filter((r) => r.engine === "llama.cpp").sort((a, b) => b.tokens - a.tokens)[0];
add(
  "state read ≥ 50 % of raw read (after restart)",
  stateRow?.readRatio,
  (v) => v >= 0.5,
  stateRow
    ? `state.json: ${state?.label}, llama.cpp, ${stateRow.tokens} tokens (checksum ${percent(stateRow.verifyShare)} of it; read + verify alone ${stateRow.verifyReadRatio === undefined ? "?" : percent(stateRow.verifyReadRatio)})`
    : "state.json",
);
add(
  "state read ≥ 50 % of raw read (same process)",
  stateRow?.sameProcessReadRatio,
  (v) => v >= 0.5,
  "state.json: the store that wrote the file skips the re-hash",
);

const cluster = await result<{ latency?: { extraMs: { p50OfPairedDelta: number } } }>("cluster-nodes");
const extraMs = cluster?.latency?.extraMs.p50OfPairedDelta;
targets.push({
  target: "turn via a non-owner node: < 2 ms extra p50",
  value: extraMs,
  measured: extraMs === undefined ? "not measured" : `${extraMs.toFixed(2)} ms`,
  met: extraMs === undefined ? undefined : extraMs < 2,
  source: "cluster-nodes.json: stories260K, both nodes in one process, paired deltas",
});

console.log(
  `Summary: ${CORES} cores (shared machine: timings are noisy), ${DEFAULT_THREADS} engine thread(s), ${((performance.now() - started) / 60000).toFixed(1)} minutes`,
);
for (const t of targets) {
  const verdict = t.met === undefined ? "NOT MEASURED" : t.met ? "MET" : "MISSED";
  console.log(`  ${t.target.padEnd(40)} ${t.measured.padStart(12)}  ${verdict.padEnd(12)} (${t.source})`);
}
if (failed.length > 0) console.log(`  failed: ${failed.join(", ")}`);
await writeResult("summary.json", { cores: CORES, threads: DEFAULT_THREADS, targets, failed });
process.exitCode = failed.length > 0 ? 1 : 0;
