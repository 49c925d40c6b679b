import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { EngineName } from "../../src/index.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The small real model every real-model test uses (never copied into the repo). */
export const MODEL_PATH = process.env.AGENTRT_TEST_MODEL ?? resolve(root, "../shared/models/aidreams260K.gguf");

if (!existsSync(MODEL_PATH)) {
  throw new Error(`The test model is missing at ${MODEL_PATH}: the repo expects ../shared/models/ beside it (or set AGENTRT_TEST_MODEL)`);
}

/** Engines every real-model capability test runs on. */
export const ENGINES: EngineName[] = ["llama.cpp", "mlx"];

/** Settings that keep real-model tests fast and deterministic on 2 cores. */
export const FAST = { contextSize: 1024, threads: 1, maxTokens: 12 } as const;
