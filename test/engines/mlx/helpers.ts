/** Shared test fixtures for the MLX engine: the real 260K-parameter GGUF from the workspace's shared/ folder. */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { ChatMessage, Engine, GenerateOutput, SamplingOptions } from "../../../src/engines/engine.js";
import { MlxProbe } from "../../../src/testing/index.js";

/** ../shared/models/aidreams260K.gguf relative to the repository root. */
export const MODEL = fileURLToPath(new URL("../../../../shared/models/aidreams260K.gguf", import.meta.url));

/** ../shared/models/stories260K.gguf: grouped-query attention (8 query heads share 4 KV heads). */
export const STORIES = fileURLToPath(new URL("../../../../shared/models/stories260K.gguf", import.meta.url));

/** Fails loudly (never skips) when the model is missing. */
export function requireModel(model = MODEL): string {
  if (!existsSync(model)) throw new Error(`The MLX tests need the model at ${model} (shared/models/ beside the repo)`);
  return model;
}

/**
 * threads: 1. MLX's CPU matmuls run in OpenBLAS, whose idle workers spin-wait: with 2 BLAS threads sharing this
 * 2-core machine with llama.cpp's threads in the same process, the cross-engine test ran 4x slower (46 s vs 10 s).
 * For a 260K-parameter model one BLAS thread is also the fastest choice on its own.
 */
export async function openEngine(model = requireModel(), contextSize = 512, sequences = 4, threads = 1): Promise<MlxProbe> {
  return MlxProbe.load({ model, contextSize, sequences, threads });
}

export async function reply(
  engine: Engine,
  key: string,
  messages: ChatMessage[],
  maxTokens = 24,
  sampling: SamplingOptions = { temperature: 0 },
  signal: AbortSignal = new AbortController().signal,
  onText: (text: string) => void = () => {},
): Promise<GenerateOutput> {
  return engine.generate(key, { messages, maxTokens, sampling, signal, onText });
}

/** Python mlx.utils.tree_flatten over lists and string-keyed objects, as mlx-lm's save_prompt_cache uses it. */
export function treeFlatten(tree: unknown, prefix = ""): [string, unknown][] {
  if (Array.isArray(tree)) return tree.flatMap((item, i) => treeFlatten(item, `${prefix}.${i}`));
  if (tree !== null && typeof tree === "object" && !isLeaf(tree)) {
    return Object.entries(tree as Record<string, unknown>).flatMap(([k, v]) => treeFlatten(v, `${prefix}.${k}`));
  }
  return [[prefix.slice(1), tree]];
}

function isLeaf(value: object): boolean {
  // MLX arrays are leaves.
  return "shape" in value && "dtype" in value;
}

export const PROMPTS: ChatMessage[][] = [
  [{ role: "user", content: "Once upon a time" }],
  [
    { role: "system", content: "You are a storyteller." },
    { role: "user", content: "Tell me about the whispers of the patterns." },
  ],
  [
    { role: "user", content: "Hi" },
    { role: "assistant", content: "Hello there" },
    { role: "user", content: "More, please: the gentle weights unfold." },
  ],
  [{ role: "user", content: "The threshold of the echo" }],
];
