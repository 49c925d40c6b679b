import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { EngineName } from "../../src/index.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/**
 * The small real models of ../shared/models (never copied into the repo; provenance in its README).
 * - `aidreams`: 4 heads and 4 KV heads, 128-token training context; what most real-model tests use.
 * - `stories`: the default model, TinyStories; 8 query heads share 4 KV heads (grouped-query attention),
 *   512-token context. Tests of what GQA could break (KV sizes, state files, rehydration, cache reuse)
 *   run on it too.
 */
export const MODELS = {
  aidreams: process.env.AGENTRT_TEST_MODEL ?? resolve(root, "../shared/models/aidreams260K.gguf"),
  stories: resolve(root, "../shared/models/stories260K.gguf"),
} as const;

/** The small real model every real-model test uses. */
export const MODEL_PATH = MODELS.aidreams;

for (const path of Object.values(MODELS)) {
  if (!existsSync(path)) {
    throw new Error(`A test model is missing at ${path}: the repo expects ../shared/models/ beside it (or set AGENTRT_TEST_MODEL)`);
  }
}

/** Engines every real-model capability test runs on. */
export const ENGINES: EngineName[] = ["llama.cpp", "mlx"];

/** Settings that keep real-model tests fast and deterministic on 2 cores. */
export const FAST = { contextSize: 1024, threads: 1, maxTokens: 12 } as const;
