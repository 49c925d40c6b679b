/**
 * Shared helpers for the benchmarks: model choice (real GGUF or synthetic preset), interleaved
 * repetitions, medians and percentiles, RSS sampling, result files.
 *
 * The benchmark machines are small and shared, so every comparison is measured as a ratio inside one
 * run, with the variants interleaved (A, B, B, A, …) and summarised by medians.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { basename, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { defaultModel } from "../src/cli/defaults.js";
import type { ChatMessage, EngineName } from "../src/engines/engine.js";
import { loadGgufChat } from "../src/engines/mlx/gguf-chat.js";
import { ensureSyntheticModel, isPresetName, PRESETS, type WeightType } from "./synthetic/synthetic-model.js";

export const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
export const RESULTS_DIR = resolve(BENCH_DIR, "results");
export const CORES = availableParallelism();

/**
 * Engine threads when `--threads` is not given. One, not the runtime's default (available parallelism):
 * on the shared 2-core machines these benchmarks run on, two llama.cpp threads spin-wait on each other
 * and any other process stalls every step (bench:threads measures it). Pass `--threads` to compare.
 */
export const DEFAULT_THREADS = 1;

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/** Nearest-rank percentile (p in [0, 100]). */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

export async function writeResult(name: string, data: unknown): Promise<string> {
  await mkdir(RESULTS_DIR, { recursive: true });
  const path = resolve(RESULTS_DIR, name);
  await writeFile(path, JSON.stringify(data, null, 2) + "\n");
  return path;
}

/** Progress on stderr, so stdout stays the table. */
export function progress(message: string): void {
  process.stderr.write(`[bench] ${message}\n`);
}

/**
 * Runs every variant once per repetition, alternating the order (A B, B A, A B, …) so that a slow
 * stretch of a shared machine, or warm-up, does not land on one variant only. Returns the samples.
 */
export async function interleave<K extends string>(
  reps: number,
  variants: Record<K, (rep: number) => Promise<number>>,
  onRep?: (rep: number) => void,
): Promise<Record<K, number[]>> {
  const names = Object.keys(variants) as K[];
  const samples = Object.fromEntries(names.map((name) => [name, [] as number[]])) as Record<K, number[]>;
  for (let rep = 0; rep < reps; rep++) {
    onRep?.(rep);
    const order = rep % 2 === 0 ? names : [...names].reverse();
    for (const name of order) samples[name].push(await variants[name](rep));
  }
  return samples;
}

/** Parses a positive integer option, naming it in the error. */
export function intOption(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`--${name} must be a positive integer, got ${value}`);
  return n;
}

export function listOption(name: string, value: string | undefined, fallback: number[]): number[] {
  if (value === undefined) return fallback;
  return value.split(",").map((part) => intOption(name, part.trim(), 0));
}

/**
 * `--out NAME` (or `NAME.json`): the result file `results/NAME.json`, so runs on other shapes or settings keep
 * their own results. `fallback` is the benchmark's default name.
 */
export function outName(value: string | undefined, fallback: string): string {
  return (value ?? fallback).replace(/\.json$/, "");
}

/** parseArgs options every model-driven benchmark accepts. */
export const MODEL_OPTIONS = {
  model: { type: "string" },
  preset: { type: "string" },
  type: { type: "string" },
  threads: { type: "string" },
  reps: { type: "string" },
} as const;

export interface ModelChoice {
  /** Path of the GGUF file. */
  path: string;
  /** Short name for tables: the preset and weight type, or the file name. */
  label: string;
  preset?: string;
}

/**
 * `--preset smollm2-135m [--type f16|q8_0]` → the synthetic model of that shape (generated once into
 * models/); else `--model <path>`; else the small real model the tests use.
 */
export async function resolveModel(values: {
  model?: string | undefined;
  preset?: string | undefined;
  type?: string | undefined;
}): Promise<ModelChoice> {
  if (values.preset !== undefined) {
    if (!isPresetName(values.preset)) {
      throw new RangeError(`--preset must be one of ${Object.keys(PRESETS).join(", ")}, got ${values.preset}`);
    }
    const type = (values.type ?? "f16") as WeightType;
    if (type !== "f16" && type !== "q8_0") throw new RangeError(`--type must be f16 or q8_0, got ${type}`);
    progress(`synthetic model ${values.preset} ${type} (generated on first use)…`);
    const path = await ensureSyntheticModel(values.preset, type);
    return { path, label: `${values.preset}-${type}`, preset: values.preset };
  }
  const path = values.model ?? defaultModel();
  return { path, label: basename(path).replace(/\.gguf$/, "") };
}

/** Engines from repeated `--engine` options; llama.cpp when none is given. */
export function engineOption(values: string[] | undefined, fallback: EngineName[] = ["llama.cpp"]): EngineName[] {
  const engines = values ?? fallback;
  for (const engine of engines) {
    if (engine !== "llama.cpp" && engine !== "mlx") throw new RangeError(`--engine must be llama.cpp or mlx, got ${engine}`);
  }
  return engines as EngineName[];
}

/**
 * MLX's OpenBLAS reads OPENBLAS_NUM_THREADS once per process, when the library loads (the runtime sets
 * it before starting its worker; a raw MLX loop in this process shares the same library). Call before
 * anything loads MLX. Returns the thread count in force.
 */
export function pinMlxThreads(threads: number): number {
  const current = process.env["OPENBLAS_NUM_THREADS"];
  if (current === undefined) {
    process.env["OPENBLAS_NUM_THREADS"] = String(threads);
    return threads;
  }
  if (Number(current) !== threads) progress(`OPENBLAS_NUM_THREADS=${current} is already set: MLX runs with ${current} threads, not ${threads}`);
  return Number(current);
}

/** Samples the process's resident set size (main thread + generation worker: one process) over time. */
export class RssSampler {
  readonly samples: { seconds: number; rssMiB: number }[] = [];
  readonly #started = performance.now();
  readonly #timer: NodeJS.Timeout;

  constructor(intervalMs: number) {
    this.sample();
    this.#timer = setInterval(() => this.sample(), intervalMs);
    this.#timer.unref();
  }

  sample(): void {
    this.samples.push({ seconds: (performance.now() - this.#started) / 1000, rssMiB: process.memoryUsage.rss() / 2 ** 20 });
  }

  stop(): void {
    clearInterval(this.#timer);
    this.sample();
  }
}

/** Filler conversation text: varied English so tokenizers behave as on real chats. */
const SENTENCES = [
  "The robot walked through the quiet garden and counted the flowers one by one.",
  "Our team shipped the new scheduler last week, and latency dropped by a third.",
  "Customers asked for cheaper plans, so the business analyst drew up three options.",
  "At night the lighthouse keeper wrote letters to a friend across the sea.",
  "The coordinator split the work into small tasks and assigned each to an owner.",
  "A cache keeps what was already computed, so nothing is paid for twice.",
  "She opened the old map and traced the river to the mountains in the north.",
  "The engineers measured every change and kept only what made things faster.",
];

export function fillerText(index: number, sentences: number): string {
  return Array.from({ length: sentences }, (_, i) => SENTENCES[(index + i) % SENTENCES.length]).join(" ");
}

/**
 * Conversations of at least each target length, counted with the model's own tokenizer and chat
 * template (a vocabulary-only load; both engines render GGUF prompts this way), so no evaluation is
 * needed to build them and both engines get the same messages.
 */
export async function buildHistories(modelPath: string, targets: number[]): Promise<Map<number, ChatMessage[]>> {
  const chat = await loadGgufChat(modelPath);
  const count = (messages: ChatMessage[]) => chat.render(messages).tokens.length;
  const histories = new Map<number, ChatMessage[]>();
  try {
    for (const target of targets) {
      const messages: ChatMessage[] = [{ role: "system", content: "You remember." }];
      // Grow by whole turns, then trim the last reply word by word so the history lands just above the target.
      for (let turn = 0; count(messages) < target; turn++) {
        messages.push({ role: "user", content: fillerText(turn, 1) }, { role: "assistant", content: fillerText(turn + 3, 2) });
      }
      const last = messages.at(-1)!;
      while (messages.length > 2) {
        const words = last.content.split(" ");
        if (words.length <= 1) break;
        const shorter = words.slice(0, -1).join(" ");
        if (count([...messages.slice(0, -1), { ...last, content: shorter }]) < target) break;
        last.content = shorter;
      }
      histories.set(target, messages);
    }
  } finally {
    await chat.dispose();
  }
  return histories;
}

/** A deterministic PRNG (mulberry32), so random access patterns repeat from run to run. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Plot file name: benchmark, model and (when not only llama.cpp) the engines, so runs on other setups keep their own plot. */
export function plotName(bench: string, label: string, engines: readonly EngineName[] = ["llama.cpp"]): string {
  const suffix = engines.length === 1 && engines[0] === "llama.cpp" ? "" : `-${engines.join("+")}`;
  return `${bench}-${label}${suffix}`;
}

/** Formats a ratio as a percentage with one decimal. */
export function percent(ratio: number): string {
  return `${(ratio * 100).toFixed(1)} %`;
}
