import { rename } from "node:fs/promises";
/**
 * Saving and loading a sequence's KV cache in mlx-lm's prompt-cache layout, so files interoperate with
 * `mlx_lm.models.cache.save_prompt_cache` / `load_prompt_cache` (read from mlx-lm's mlx_lm/models/cache.py):
 *
 *   tensors  = tree_flatten([c.state for c in cache])          → "{layer}.0" = keys, "{layer}.1" = values,
 *              each [1, kvHeads, tokens, headDim]
 *   metadata = tree_flatten([cache_info, metadata, classes])  → "0.{layer}" = meta_state ("" for KVCache),
 *              "1.{key}" = user metadata, "2.{layer}" = class name ("KVCache")
 *
 * Our user metadata adds the cache's token ids ("1.agentrt_tokens", a JSON array), so a load restores the token
 * list and the next turn reuses the right prefix. A file written by mlx-lm has no token ids: it loads as a cache
 * of known length and unknown tokens, which the next prompt is trusted to extend (mlx-lm's own semantics for a
 * prompt cache file: the new prompt is evaluated after it). See SequenceCache.tokens.
 */
import { stat } from "node:fs/promises";
import { AgentRuntimeError } from "../../errors.js";
import { loadArrays, type Mx, type MxArray } from "./mlx.js";
import type { ModelConfig } from "./config.js";
import { SequenceCache } from "./kv-cache.js";
import { readSafetensorsHeader, SafetensorsFormatError, writeSafetensors } from "./safetensors.js";

export const TOKENS_KEY = "agentrt_tokens";
export const FORMAT_KEY = "agentrt_format";
export const FORMAT_VERSION = "1";
/** Cache classes whose state is a plain (keys, values) pair we can adopt. */
const PLAIN_CLASSES = new Set(["KVCache", "ConcatenateKVCache"]);
const FLOAT_DTYPES = new Set(["F32", "F16", "BF16"]);

export function saveTensorsAndMetadata(
  mx: Mx,
  cache: SequenceCache,
  config: ModelConfig,
  userMetadata: Record<string, string>,
): { arrays: Record<string, MxArray>; metadata: Record<string, string> } {
  const arrays: Record<string, MxArray> = {};
  const metadata: Record<string, string> = {};
  cache.layers.forEach((layer, i) => {
    const state = layer.state() ?? [
      mx.zeros([1, config.kvHeads, 0, config.headDim], mx.float32),
      mx.zeros([1, config.kvHeads, 0, config.headDim], mx.float32),
    ];
    arrays[`${i}.0`] = state[0];
    arrays[`${i}.1`] = state[1];
    metadata[`0.${i}`] = ""; // KVCache.meta_state
    metadata[`2.${i}`] = "KVCache";
  });
  for (const [key, value] of Object.entries(userMetadata)) metadata[`1.${key}`] = value;
  return { arrays, metadata };
}

export async function savePromptCache(mx: Mx, filePath: string, cache: SequenceCache, config: ModelConfig, modelName: string): Promise<void> {
  // A cache adopted from an mlx-lm file whose tokens were never confirmed by a prompt is saved without token ids.
  const opaque = cache.tokens.some((t) => t === undefined);
  const user: Record<string, string> = opaque
    ? { model: modelName }
    : { model: modelName, [FORMAT_KEY]: FORMAT_VERSION, [TOKENS_KEY]: JSON.stringify(cache.tokens) };
  const { arrays, metadata } = saveTensorsAndMetadata(mx, cache, config, user);
  if (cache.length === 0) {
    // MLX refuses to serialize empty arrays (as mlx-lm cannot save a KVCache that never saw a token): an empty
    // cache is written as the same metadata with no tensors, which loadPromptCache reads back as empty.
    await writeSafetensors(filePath, [], metadata);
    return;
  }
  if (filePath.endsWith(".safetensors")) {
    mx.saveSafetensors(filePath, arrays, metadata);
    return;
  }
  // MLX appends ".safetensors" to any other name; the caller chose the name (a staging file), so keep it.
  const withSuffix = `${filePath}.safetensors`;
  mx.saveSafetensors(withSuffix, arrays, metadata);
  await rename(withSuffix, filePath);
}

export interface LoadedPromptCache {
  keys: MxArray[];
  values: MxArray[];
  /** Token ids, or undefined when the file carries none (written by mlx-lm). */
  tokens: number[] | undefined;
  length: number;
}

/**
 * Reads and checks a prompt cache file against the model. Everything is checked in JavaScript (header, dtypes,
 * shapes, layer count, token ids) before MLX reads the data, so a corrupt or foreign file is refused with
 * ERR_STATE_CORRUPT instead of failing natively.
 */
export async function loadPromptCache(
  mx: Mx,
  filePath: string,
  config: ModelConfig,
  vocabSize: number,
  contextSize: number,
): Promise<LoadedPromptCache> {
  const corrupt = (message: string, cause?: unknown) =>
    new AgentRuntimeError("ERR_STATE_CORRUPT", `${filePath}: ${message}`, { ...(cause ? { cause } : {}), details: { filePath } });
  let header;
  try {
    await stat(filePath);
    header = await readSafetensorsHeader(filePath);
  } catch (error) {
    if (error instanceof SafetensorsFormatError) throw corrupt(error.message, error);
    throw corrupt(`cannot read the file (${(error as Error).message})`, error);
  }
  const { tensors, metadata } = header;
  const layers = config.layers;
  for (let i = 0; i < layers; i++) {
    const cls = metadata[`2.${i}`];
    if (cls === undefined) throw corrupt(`metadata names ${countLayers(metadata)} cache layers, the model has ${layers}`);
    if (!PLAIN_CLASSES.has(cls)) throw corrupt(`layer ${i} is a ${cls}; only KVCache prompt caches can be loaded`);
  }
  if (countLayers(metadata) !== layers) throw corrupt(`metadata names ${countLayers(metadata)} cache layers, the model has ${layers}`);
  if (tensors.size === 0) {
    // An empty cache (see savePromptCache); its token list must be empty too.
    const raw = metadata[`1.${TOKENS_KEY}`];
    if (raw !== undefined && raw !== "[]") throw corrupt("holds no tensors but lists cached tokens");
    const keys = Array.from({ length: layers }, () => mx.zeros([1, config.kvHeads, 0, config.headDim], mx.float32));
    return { keys, values: keys.map(() => mx.zeros([1, config.kvHeads, 0, config.headDim], mx.float32)), tokens: [], length: 0 };
  }
  if (tensors.size !== 2 * layers) throw corrupt(`holds ${tensors.size} tensors, expected ${2 * layers} for ${layers} layers`);
  let length: number | undefined;
  for (let i = 0; i < layers; i++) {
    for (const part of [0, 1]) {
      const entry = tensors.get(`${i}.${part}`);
      if (!entry) throw corrupt(`missing tensor ${i}.${part}`);
      if (!FLOAT_DTYPES.has(entry.dtype)) throw corrupt(`tensor ${entry.name} has dtype ${entry.dtype}`);
      const [b, heads, tokens, dim] = entry.shape;
      if (entry.shape.length !== 4 || b !== 1 || heads !== config.kvHeads || dim !== config.headDim) {
        throw corrupt(`tensor ${entry.name} has shape [${entry.shape}], expected [1, ${config.kvHeads}, n, ${config.headDim}]`);
      }
      if (length === undefined) length = tokens!;
      else if (tokens !== length) throw corrupt(`tensor ${entry.name} holds ${tokens} positions, others ${length}`);
    }
  }
  length ??= 0;
  if (length > contextSize) {
    throw new AgentRuntimeError("ERR_CONTEXT_FULL", `${filePath} holds ${length} tokens; the context is ${contextSize}`);
  }
  let tokens: number[] | undefined;
  const rawTokens = metadata[`1.${TOKENS_KEY}`];
  if (rawTokens !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(rawTokens);
    } catch (error) {
      throw corrupt("token ids are not JSON", error);
    }
    if (!Array.isArray(parsed) || parsed.length !== length || !parsed.every((t) => Number.isInteger(t) && t >= 0 && t < vocabSize)) {
      throw corrupt(`token ids do not match the ${length} cached positions of a ${vocabSize}-token vocabulary`);
    }
    tokens = parsed as number[];
  }
  let arrays: Record<string, MxArray>;
  const keys: MxArray[] = [];
  const values: MxArray[] = [];
  try {
    arrays = loadArrays(mx, filePath);
    for (let i = 0; i < layers; i++) {
      keys.push(arrays[`${i}.0`]!.astype(mx.float32));
      values.push(arrays[`${i}.1`]!.astype(mx.float32));
    }
    // Read the data now, inside the try: MLX loads lazily and a later failure would surface mid-generation.
    mx.eval(...keys, ...values);
  } catch (error) {
    throw corrupt(`MLX could not read the tensors (${(error as Error).message})`, error);
  }
  return { keys, values, tokens, length };
}

function countLayers(metadata: Record<string, string>): number {
  return Object.keys(metadata).filter((k) => /^2\.\d+$/.test(k)).length;
}
