/**
 * Loading an mlx-community style folder: config.json + *.safetensors (float, or MLX affine-quantized with
 * ".scales"/".biases" beside a packed uint32 ".weight", as mlx-lm's `convert -q` writes). Weight names and the
 * RoPE layout are Hugging Face's (non-traditional, half-split rotation), as in mlx-lm.
 */
import { readdir, readFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { AgentRuntimeError } from "../../errors.js";
import { loadArrays, type Mx, type MxArray } from "./mlx.js";
import { llama3RopeFreqs, type ModelConfig, type RopeConfig } from "./config.js";
import { buildWeights, HF_NAMES, type QuantizationLookup } from "./build-weights.js";
import { readSafetensorsHeader, SafetensorsFormatError } from "./safetensors.js";
import type { LoadedWeights } from "./gguf-source.js";

/** model_type values handled by the Llama forward pass (SmolLM ships as "llama"; Qwen2 adds q/k/v biases). */
const SUPPORTED = new Set(["llama", "mistral", "qwen2"]);
/** Dtypes allowed in weight files: floats are upcast; uint32 only as packed quantized weights. */
const FLOAT_DTYPES = new Set(["F32", "F16", "BF16"]);

export interface HfConfig {
  model_type?: string;
  hidden_size?: number;
  num_hidden_layers?: number;
  num_attention_heads?: number;
  num_key_value_heads?: number;
  head_dim?: number;
  intermediate_size?: number;
  vocab_size?: number;
  rms_norm_eps?: number;
  rope_theta?: number;
  rope_traditional?: boolean;
  rope_scaling?: Record<string, unknown> | null;
  tie_word_embeddings?: boolean;
  max_position_embeddings?: number;
  quantization?: Record<string, unknown>;
  eos_token_id?: number | number[];
  bos_token_id?: number;
}

export async function readHfConfig(folder: string): Promise<HfConfig> {
  try {
    return JSON.parse(await readFile(join(folder, "config.json"), "utf8")) as HfConfig;
  } catch (error) {
    throw new AgentRuntimeError("ERR_MODEL_INVALID", `${folder} has no readable config.json: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

export async function loadHfWeights(mx: Mx, folder: string, raw: HfConfig): Promise<LoadedWeights> {
  const invalid = (message: string) => new AgentRuntimeError("ERR_MODEL_INVALID", `${folder}: ${message}`);
  const type = raw.model_type ?? "";
  if (!SUPPORTED.has(type)) throw invalid(`model_type "${type}" is not supported (supported: ${[...SUPPORTED].join(", ")})`);
  const need = (value: number | undefined, what: string): number => {
    if (typeof value !== "number" || !Number.isFinite(value)) throw invalid(`config.json lacks ${what}`);
    return value;
  };
  const hiddenSize = need(raw.hidden_size, "hidden_size");
  const heads = need(raw.num_attention_heads, "num_attention_heads");
  const headDim = raw.head_dim ?? hiddenSize / heads;
  const config: ModelConfig = {
    architecture: type,
    hiddenSize,
    layers: need(raw.num_hidden_layers, "num_hidden_layers"),
    heads,
    kvHeads: raw.num_key_value_heads ?? heads,
    headDim,
    intermediateSize: need(raw.intermediate_size, "intermediate_size"),
    vocabSize: need(raw.vocab_size, "vocab_size"),
    rmsNormEps: raw.rms_norm_eps ?? 1e-6,
    rope: ropeFromConfig(raw, headDim, type, invalid),
    trainedContext: raw.max_position_embeddings,
  };

  const files = (await readdir(folder)).filter((f) => f.endsWith(".safetensors")).sort();
  if (files.length === 0) throw invalid("no *.safetensors weight files");
  // Check every header before MLX reads anything (see safetensors.ts).
  for (const file of files) {
    let header;
    try {
      header = await readSafetensorsHeader(join(folder, file));
    } catch (error) {
      if (error instanceof SafetensorsFormatError) throw invalid(error.message);
      throw error;
    }
    for (const entry of header.tensors.values()) {
      const packed = entry.dtype === "U32" && entry.name.endsWith(".weight");
      if (!FLOAT_DTYPES.has(entry.dtype) && !packed) throw invalid(`${file}: tensor ${entry.name} has unsupported dtype ${entry.dtype}`);
    }
  }
  const tensors: Record<string, MxArray> = {};
  for (const file of files) {
    try {
      Object.assign(tensors, loadArrays(mx, join(folder, file)));
    } catch (error) {
      throw invalid(`MLX could not read ${file}: ${(error as Error).message}`);
    }
  }
  // As mlx-lm's sanitize: tied models may still ship an lm_head; the embedding is authoritative.
  if (raw.tie_word_embeddings !== false) {
    for (const suffix of [".weight", ".scales", ".biases"]) delete tensors[`lm_head${suffix}`];
  }
  const weights = buildWeights(mx, tensors, HF_NAMES, config, quantizationLookup(raw.quantization), folder);
  return { config, weights, name: basename(folder) };
}

/** mlx-lm's config: {"quantization": {"group_size", "bits", "<layer path>": false | {group_size, bits}}}. */
function quantizationLookup(q: Record<string, unknown> | undefined): QuantizationLookup {
  if (!q) return () => undefined;
  const mode = q["mode"] ?? "affine";
  if (mode !== "affine") {
    throw new AgentRuntimeError("ERR_MODEL_INVALID", `quantization mode "${String(mode)}" is not supported (affine only)`);
  }
  const groupSize = Number(q["group_size"] ?? 64);
  const bits = Number(q["bits"] ?? 4);
  return (prefix) => {
    const own = q[prefix];
    if (own === false) return undefined;
    if (own && typeof own === "object") {
      const o = own as Record<string, unknown>;
      return { groupSize: Number(o["group_size"] ?? groupSize), bits: Number(o["bits"] ?? bits) };
    }
    return { groupSize, bits };
  };
}

function ropeFromConfig(raw: HfConfig, headDim: number, type: string, invalid: (m: string) => Error): RopeConfig {
  const base = raw.rope_theta ?? (type === "qwen2" ? 1000000 : 10000);
  const rope: RopeConfig = { dims: headDim, base, traditional: raw.rope_traditional ?? false, scale: 1 };
  const scaling = raw.rope_scaling;
  if (!scaling) return rope;
  const kind = String(scaling["type"] ?? scaling["rope_type"] ?? "");
  const factor = Number(scaling["factor"] ?? 1);
  if (kind === "linear") return { ...rope, scale: 1 / factor };
  if (kind === "llama3") {
    return { ...rope, freqs: llama3RopeFreqs(headDim, base, scaling as { factor: number }) };
  }
  if (kind === "default" || kind === "") return rope;
  throw invalid(`rope_scaling type "${kind}" is not supported`);
}
