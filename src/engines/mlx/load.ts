/**
 * Loading what the MLX engine runs on, from either
 *  - a GGUF file (F32/F16/BF16 tensors; Llama/Mistral/Qwen2 architectures): weights via mx.load, vocabulary and
 *    chat formatting via node-llama-cpp (vocab-only load), so prompts are rendered exactly as the llama.cpp
 *    engine renders them; or
 *  - an mlx-community style folder (config.json, *.safetensors float or 4/8-bit quantized, tokenizer.json,
 *    tokenizer_config.json with its chat_template).
 *
 * Threads: MLX's CPU matmuls run in OpenBLAS, which takes its thread count from OPENBLAS_NUM_THREADS when the
 * library is first loaded. On the main thread we set it from `options.threads` when unset; inside a worker
 * thread Node does not pass `process.env` writes to native code, so the process that starts the worker must set
 * OPENBLAS_NUM_THREADS (e.g. in the worker's parent before `new Worker`). `info.threads` reports the value in force.
 */
import { stat } from "node:fs/promises";
import { resolve } from "node:path";
import { AgentRuntimeError } from "../../errors.js";
import type { EngineLoadOptions, ModelInfo } from "../engine.js";
import { modelFingerprint } from "../fingerprint.js";
import { validateLoadOptions } from "../load-options.js";
import type { ChatFrontend } from "./chat.js";
import { loadGgufChat } from "./gguf-chat.js";
import { loadGgufWeights, type LoadedWeights } from "./gguf-source.js";
import { loadHfChat } from "./hf-chat.js";
import { loadHfWeights, readHfConfig } from "./hf-source.js";
import { arrayBytes, KV_STEP } from "./kv-cache.js";
import { loadMlx, type Mx } from "./mlx.js";
import { LlamaModel } from "./model.js";
import { FORMAT_VERSION } from "./prompt-cache.js";
import { allArrays } from "./weights.js";

/** Prompt tokens per forward call when `batchSize` is not given. */
const DEFAULT_BATCH = 512;

/** Everything an MlxEngine is made of. */
export interface MlxEngineParts {
  mx: Mx;
  model: LlamaModel;
  chat: ChatFrontend;
  info: ModelInfo;
  maxSequences: number;
  /** Prompt tokens evaluated per forward call (bounds the attention matrix and the lazy graph). */
  batchSize: number;
}

export async function loadMlxParts(options: EngineLoadOptions): Promise<MlxEngineParts> {
  validateLoadOptions(options);
  if (options.engine !== "mlx") throw new TypeError(`engine must be "mlx" to load the MLX engine, got "${options.engine}"`);
  if (options.kvType !== undefined && options.kvType !== "f16") {
    // Not yet: a quantized cache (mlx-lm's QuantizedKVCache) needs quantized attention matmuls in model.ts.
    throw new RangeError(
      `kvType ${JSON.stringify(options.kvType)} is not supported by the MLX engine (its KV cache is float32); use "f16" or the llama.cpp engine`,
    );
  }
  if (options.model.startsWith("hf:")) {
    throw new AgentRuntimeError("ERR_MODEL_NOT_FOUND", "The MLX engine loads local files only: download the model and pass its path", {
      details: { model: options.model },
    });
  }
  const path = resolve(options.model);
  let isDirectory: boolean;
  try {
    isDirectory = (await stat(path)).isDirectory();
  } catch (error) {
    throw new AgentRuntimeError("ERR_MODEL_NOT_FOUND", `No model at ${path}`, { cause: error, details: { model: path } });
  }
  const mx = await loadMlx(options.threads);

  let loaded: LoadedWeights;
  let chat: ChatFrontend;
  if (isDirectory) {
    const config = await readHfConfig(path);
    loaded = await loadHfWeights(mx, path, config);
    chat = await loadHfChat(path, config);
  } else {
    loaded = await loadGgufWeights(mx, path);
    chat = await loadGgufChat(path);
  }
  try {
    const arrays = allArrays(loaded.weights);
    // Materialize (and upcast) the weights now, so load errors surface here rather than in the first turn.
    mx.eval(...arrays);
    const { config } = loaded;
    const info: ModelInfo = {
      engine: "mlx",
      name: loaded.name,
      path,
      fingerprint: await modelFingerprint(path, ["mlx", "kv:float32", `prompt-cache:${FORMAT_VERSION}`]),
      modelBytes: arrays.reduce((sum, a) => sum + arrayBytes(a), 0),
      contextSize: options.contextSize,
      kvBytesPerToken: config.layers * 2 * config.kvHeads * config.headDim * 4,
      // The cache grows as the agent talks: kvBudgetBytes is enforced by the supervisor, not here.
      sequences: options.sequences,
      kvStepTokens: KV_STEP,
      chatFormat: chat.formatName,
      stateFileExtension: ".safetensors",
      threads: Number(process.env["OPENBLAS_NUM_THREADS"] ?? options.threads) || options.threads,
    };
    return {
      mx,
      model: new LlamaModel(mx, config, loaded.weights),
      chat,
      info,
      maxSequences: options.sequences,
      batchSize: options.batchSize ?? DEFAULT_BATCH,
    };
  } catch (error) {
    await chat.dispose();
    if (error instanceof AgentRuntimeError) throw error;
    throw new AgentRuntimeError("ERR_MODEL_INVALID", `MLX could not prepare ${path}: ${(error as Error).message}`, { cause: error });
  }
}
