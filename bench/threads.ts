/**
 * Thread sweep: prompt (prefill) and decode tokens/s of the bare engine with 1, 2 and
 * os.availableParallelism() threads, to check the runtime's default thread count (available
 * parallelism). Default model: the SmolLM2-135M shape (synthetic F16 weights).
 *
 * llama.cpp: one model, one context per thread count, interleaved in one process.
 * MLX (`--engine mlx`): OpenBLAS fixes its thread count when it loads, once per process, so every
 * (repetition, thread count) runs in a child process of its own, interleaved; model loading is not timed.
 *
 *   npm run bench:threads
 *   npm run bench:threads -- --engine llama.cpp --engine mlx --threads 1,2,4 --reps 5
 */
import { execFile } from "node:child_process";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { parseArgs } from "node:util";
import { formatTable } from "../src/cli/table.js";
import type { EngineName } from "../src/engines/engine.js";
import {
  CORES,
  engineOption,
  fillerText,
  intOption,
  listOption,
  median,
  MODEL_OPTIONS,
  plotName,
  progress,
  resolveModel,
  writeResult,
} from "./lib.js";
import { lineChart } from "./plot.js";
import { PromptRenderer, RawLlama, RawMlx, type RawLlamaContext } from "./raw.js";

const { values } = parseArgs({
  options: {
    ...MODEL_OPTIONS,
    engine: { type: "string", multiple: true },
    prompt: { type: "string" },
    decode: { type: "string" },
    /** Internal: run one MLX measurement in this (child) process and print it as JSON. */
    child: { type: "boolean" },
  },
});
const choice = await resolveModel(values.model === undefined && values.preset === undefined ? { preset: "smollm2-135m", type: values.type } : values);
const threadCounts = [...new Set(listOption("threads", values.threads, [1, 2, availableParallelism()]))].sort((a, b) => a - b);
const reps = intOption("reps", values.reps, 3);
const promptTokens = intOption("prompt", values.prompt, 256);
const decodeTokens = intOption("decode", values.decode, 32);
const engines = engineOption(values.engine);

interface Measurement {
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
}

/** `count` tokens of English text as the model tokenizes it (plain text, no chat template). */
async function textTokens(count: number): Promise<number[]> {
  const renderer = await PromptRenderer.load(choice.path);
  try {
    const tokens: number[] = [];
    for (let i = 0; tokens.length < count + 1; i++) tokens.push(...renderer.tokens([{ role: "system", content: fillerText(i, 8) }]));
    return tokens.slice(0, count + 1);
  } finally {
    await renderer.dispose();
  }
}

function rates(prefillMs: number, decode: { ms: number; ttftMs: number; tokens: number }): Measurement {
  return {
    prefillTokensPerSecond: (promptTokens * 1000) / prefillMs,
    // The first generated token comes from evaluating the last prompt token: decode = steps after it.
    decodeTokensPerSecond: ((decode.tokens - 1) * 1000) / (decode.ms - decode.ttftMs),
  };
}

if (values.child) {
  // One MLX measurement with OPENBLAS_NUM_THREADS set by the parent; prints JSON on stdout.
  const threads = Number(process.env["OPENBLAS_NUM_THREADS"]);
  const tokens = await textTokens(promptTokens);
  const raw = await RawMlx.load(choice.path, threads);
  raw.reset(tokens.slice(0, 8)); // warm-up
  raw.reset([]);
  const prefillMs = raw.prefill(tokens.slice(0, promptTokens));
  const decode = raw.generate(tokens.slice(promptTokens), decodeTokens);
  raw.dispose();
  process.stdout.write(JSON.stringify(rates(prefillMs, decode)) + "\n");
  process.exit(0);
}

interface Row extends Measurement {
  engine: EngineName;
  threads: number;
  prefillSamples: number[];
  decodeSamples: number[];
}

const tokens = await textTokens(promptTokens);
const results = new Map<string, Measurement[]>();
const push = (engine: EngineName, threads: number, m: Measurement) => {
  const key = `${engine}|${threads}`;
  results.set(key, [...(results.get(key) ?? []), m]);
};

if (engines.includes("llama.cpp")) {
  progress(`llama.cpp: ${choice.label}, contexts with ${threadCounts.join(", ")} threads`);
  const raw = await RawLlama.load(choice.path);
  const contexts = new Map<number, RawLlamaContext>();
  try {
    for (const threads of threadCounts)
      contexts.set(threads, await raw.context({ contextSize: Math.max(512, promptTokens + decodeTokens + 16), threads }));
    for (const context of contexts.values()) {
      await context.reset(tokens.slice(0, 8)); // warm-up
    }
    for (let rep = 0; rep < reps; rep++) {
      progress(`llama.cpp: repetition ${rep + 1}/${reps}`);
      const order = rep % 2 === 0 ? threadCounts : [...threadCounts].reverse();
      for (const threads of order) {
        const context = contexts.get(threads)!;
        await context.reset([]);
        const prefillMs = await context.prefill(tokens.slice(0, promptTokens));
        const decode = await context.generate(tokens.slice(promptTokens), decodeTokens);
        push("llama.cpp", threads, rates(prefillMs, decode));
      }
    }
  } finally {
    for (const context of contexts.values()) await context.dispose();
    await raw.dispose();
  }
}

if (engines.includes("mlx")) {
  const run = promisify(execFile);
  const script = fileURLToPath(import.meta.url);
  const args = ["--import", "tsx", script, "--child", "--model", choice.path, "--prompt", String(promptTokens), "--decode", String(decodeTokens)];
  for (let rep = 0; rep < reps; rep++) {
    const order = rep % 2 === 0 ? threadCounts : [...threadCounts].reverse();
    for (const threads of order) {
      progress(`mlx: repetition ${rep + 1}/${reps}, ${threads} threads (child process)`);
      const { stdout } = await run(process.execPath, args, { env: { ...process.env, OPENBLAS_NUM_THREADS: String(threads) }, maxBuffer: 1 << 20 });
      push("mlx", threads, JSON.parse(stdout.trim().split("\n").at(-1)!) as Measurement);
    }
  }
}

const rows: Row[] = [...results.entries()].map(([key, samples]) => {
  const [engine, threads] = key.split("|") as [EngineName, string];
  return {
    engine,
    threads: Number(threads),
    prefillTokensPerSecond: median(samples.map((s) => s.prefillTokensPerSecond)),
    decodeTokensPerSecond: median(samples.map((s) => s.decodeTokensPerSecond)),
    prefillSamples: samples.map((s) => s.prefillTokensPerSecond),
    decodeSamples: samples.map((s) => s.decodeTokensPerSecond),
  };
});
const best = (engine: EngineName, pick: (row: Row) => number) =>
  rows.filter((row) => row.engine === engine).reduce((a, b) => (pick(b) > pick(a) ? b : a)).threads;

console.log(`threads: ${choice.label}, ${CORES} cores, ${promptTokens} prompt tokens, ${decodeTokens} decode tokens, median of ${reps}`);
console.log(
  formatTable(
    rows.map((row) => {
      const single = rows.find((r) => r.engine === row.engine && r.threads === 1);
      return {
        engine: row.engine,
        threads: row.threads,
        "prefill tok/s": row.prefillTokensPerSecond,
        "prefill min-max": `${Math.min(...row.prefillSamples).toFixed(0)}-${Math.max(...row.prefillSamples).toFixed(0)}`,
        "decode tok/s": row.decodeTokensPerSecond,
        "decode min-max": `${Math.min(...row.decodeSamples).toFixed(1)}-${Math.max(...row.decodeSamples).toFixed(1)}`,
        "prefill vs 1": single ? row.prefillTokensPerSecond / single.prefillTokensPerSecond : NaN,
        "decode vs 1": single ? row.decodeTokensPerSecond / single.decodeTokensPerSecond : NaN,
      };
    }),
  ),
);
const fastest = Object.fromEntries(
  [...new Set(rows.map((row) => row.engine))].map((engine) => [
    engine,
    { prefill: best(engine, (row) => row.prefillTokensPerSecond), decode: best(engine, (row) => row.decodeTokensPerSecond) },
  ]),
);
for (const [engine, f] of Object.entries(fastest))
  console.log(
    `${engine}: fastest prefill with ${f.prefill} thread(s), fastest decode with ${f.decode} thread(s) (runtime default: ${availableParallelism()})`,
  );

const path = await writeResult("threads.json", {
  model: choice.path,
  label: choice.label,
  cores: CORES,
  promptTokens,
  decodeTokens,
  reps,
  rows,
  fastest,
});
const plot = await lineChart(
  plotName("threads", choice.label, engines),
  rows.flatMap((row) => [
    { x: row.threads, y: row.prefillTokensPerSecond, series: `${row.engine} prefill` },
    { x: row.threads, y: row.decodeTokensPerSecond, series: `${row.engine} decode` },
  ]),
  {
    title: `Tokens/s vs engine threads (${choice.label}, ${CORES} cores)`,
    xTitle: "threads",
    yTitle: "tokens/s (median, log)",
    logY: true,
    integerX: true,
  },
);
progress(`wrote ${path} and ${plot}`);
