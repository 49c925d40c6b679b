/**
 * Random-weight GGUF models with the shapes of real small models, for benchmarks where speed depends on
 * the shape (prefill, decode, KV state I/O) and not on the weights.
 */
import { createHash, randomUUID } from "node:crypto";
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { GgmlType, GgufValueType, GgufWriter, type TensorFiller, type WriteProgress } from "./gguf-writer.js";
import { CHATML_TEMPLATE, buildBpeVocab } from "./tokenizer.js";

export type WeightType = "f16" | "q8_0";

export interface ModelShape {
  /** GGUF `general.architecture`: "llama", or "qwen2" (adds q/k/v biases). */
  architecture: "llama" | "qwen2";
  name: string;
  hiddenSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffnSize: number;
  vocabSize: number;
  ropeTheta: number;
  contextLength: number;
  rmsNormEps: number;
  tiedEmbeddings: boolean;
  /** `tokenizer.ggml.pre`: a pre-tokenizer name llama.cpp knows. */
  preTokenizer: string;
}

/**
 * Dimensions from the models' config.json:
 * HuggingFaceTB/SmolLM2-135M (LlamaForCausalLM) and Qwen/Qwen2.5-0.5B (Qwen2ForCausalLM).
 */
export const PRESETS = {
  "smollm2-135m": {
    architecture: "llama",
    name: "synthetic SmolLM2-135M shape",
    hiddenSize: 576,
    layers: 30,
    heads: 9,
    kvHeads: 3,
    ffnSize: 1536,
    vocabSize: 49152,
    ropeTheta: 100000,
    contextLength: 8192,
    rmsNormEps: 1e-5,
    tiedEmbeddings: true,
    preTokenizer: "smollm",
  },
  "qwen2.5-0.5b": {
    architecture: "qwen2",
    name: "synthetic Qwen2.5-0.5B shape",
    hiddenSize: 896,
    layers: 24,
    heads: 14,
    kvHeads: 2,
    ffnSize: 4864,
    vocabSize: 151936,
    ropeTheta: 1000000,
    contextLength: 32768,
    rmsNormEps: 1e-6,
    tiedEmbeddings: true,
    preTokenizer: "qwen2",
  },
  /** Qwen2.5-1.5B's shape (head dimension 128, tied embeddings as released). */
  "qwen2.5-1.5b": {
    architecture: "qwen2",
    name: "synthetic Qwen2.5-1.5B shape",
    hiddenSize: 1536,
    layers: 28,
    heads: 12,
    kvHeads: 2,
    ffnSize: 8960,
    vocabSize: 151936,
    ropeTheta: 1000000,
    contextLength: 32768,
    rmsNormEps: 1e-6,
    tiedEmbeddings: true,
    preTokenizer: "qwen2",
  },
  /** A tiny shape for tests: loads and runs in well under a second. */
  tiny: {
    architecture: "llama",
    name: "synthetic tiny",
    hiddenSize: 64,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    ffnSize: 128,
    vocabSize: 1024,
    ropeTheta: 10000,
    contextLength: 2048,
    rmsNormEps: 1e-5,
    tiedEmbeddings: true,
    preTokenizer: "smollm",
  },
} as const satisfies Record<string, ModelShape>;

export type PresetName = keyof typeof PRESETS;

export function isPresetName(name: string): name is PresetName {
  return Object.hasOwn(PRESETS, name);
}

export interface SyntheticModelParams extends ModelShape {
  type: WeightType;
  seed: number;
}

/** Bumped whenever the bytes written for the same parameters change. */
export const GENERATOR_VERSION = 2;

function validateShape(p: SyntheticModelParams): void {
  const ints: Array<keyof ModelShape> = ["hiddenSize", "layers", "heads", "kvHeads", "ffnSize", "vocabSize", "contextLength"];
  for (const k of ints) {
    const v = p[k];
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) throw new Error(`${k} must be a positive integer`);
  }
  if (p.hiddenSize % p.heads !== 0) throw new Error(`hiddenSize ${p.hiddenSize} is not a multiple of heads ${p.heads}`);
  if (p.heads % p.kvHeads !== 0) throw new Error(`heads ${p.heads} is not a multiple of kvHeads ${p.kvHeads}`);
  const headDim = p.hiddenSize / p.heads;
  if (headDim % 2 !== 0) throw new Error("head dimension must be even for RoPE");
  if (p.type === "q8_0") {
    for (const [k, v] of [
      ["hiddenSize", p.hiddenSize],
      ["ffnSize", p.ffnSize],
    ] as const) {
      if (v % 32 !== 0) throw new Error(`q8_0 needs ${k} to be a multiple of 32 (got ${v})`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Tensor fillers. Values are small (|x| < 0.032) so activations stay finite; norms are exactly 1.0.

/** Seeds a tensor's PRNG from the model seed and the tensor name. */
function tensorSeed(seed: number, name: string): number {
  const h = createHash("sha256").update(`${seed}\0${name}`).digest();
  return h.readUInt32LE(0) || 1;
}

/** Fills `words` with xorshift32 output; returns the new state. */
function xorshiftFill(words: Uint32Array, state: number): number {
  let x = state >>> 0;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return x;
}

/**
 * F16 weights: random sign, mantissa and one of 8 exponents (2^-13 .. 2^-6), i.e. log-uniform magnitudes
 * below 0.032. Fresh random bits for every chunk, seeded per tensor (chunks are filled in order).
 */
function f16Filler(seed: number): TensorFiller {
  let state = seed;
  return (chunk) => {
    const words = new Uint32Array(chunk.buffer, chunk.byteOffset, chunk.length >>> 2);
    state = xorshiftFill(words, state);
    for (let i = 0; i < words.length; i++) {
      const r = words[i] as number;
      const lo = (r & 0x83ff) | ((2 + ((r >>> 10) & 7)) << 10);
      const hi = ((r >>> 16) & 0x83ff) | ((2 + ((r >>> 26) & 7)) << 10);
      words[i] = (lo | (hi << 16)) >>> 0;
    }
    // chunk.length is a multiple of 4 except possibly for a tensor's last chunk (2 bytes left).
    if (chunk.length & 2) chunk.writeUInt16LE(0x1c00 | (state & 0x83ff), chunk.length - 2);
  };
}

/** IEEE half-precision bits of a value in the normal f16 range (truncating the mantissa). */
export function f16Bits(value: number): number {
  const u = new Uint32Array(new Float32Array([value]).buffer)[0] as number;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  if (exp <= 0 || exp >= 31) throw new Error(`${value} is outside the normal f16 range`);
  return ((u >>> 16) & 0x8000) | (exp << 10) | ((u >>> 13) & 0x3ff);
}

/** Q8_0 scale 0.02 / 127: with int8 quants in [-128, 127], values stay within about ±0.02. */
const Q8_0_SCALE_F16 = f16Bits(0.02 / 127);

/** Q8_0 weights: each 34-byte block is an f16 scale (fixed) followed by 32 random int8 quants. */
function q8_0Filler(seed: number): TensorFiller {
  let state = seed;
  return (chunk) => {
    const words = new Uint32Array(chunk.buffer, chunk.byteOffset, chunk.length >>> 2);
    state = xorshiftFill(words, state);
    for (let i = words.length * 4; i < chunk.length; i++) chunk[i] = state & 0xff;
    for (let b = 0; b < chunk.length; b += 34) {
      chunk[b] = Q8_0_SCALE_F16 & 0xff;
      chunk[b + 1] = Q8_0_SCALE_F16 >>> 8;
    }
  };
}

/** F32 constant (norm weights 1.0, biases 0). */
function f32ConstFiller(value: number): TensorFiller {
  return (chunk) => {
    const floats = new Float32Array(chunk.buffer, chunk.byteOffset, chunk.length >>> 2);
    floats.fill(value);
  };
}

// ---------------------------------------------------------------------------------------------------

export interface BuiltModel {
  writer: GgufWriter;
  /** Sum of every tensor's bytes (no padding), and the parameter count. */
  tensorBytes: number;
  parameters: number;
}

/** Describes the whole file (metadata + tensors) without writing anything. */
export function buildSyntheticModel(p: SyntheticModelParams): BuiltModel {
  validateShape(p);
  const arch = p.architecture;
  const headDim = p.hiddenSize / p.heads;
  const qDim = p.heads * headDim;
  const kvDim = p.kvHeads * headDim;
  const weightType = p.type === "f16" ? GgmlType.F16 : GgmlType.Q8_0;
  const weightFiller = (name: string): TensorFiller =>
    p.type === "f16" ? f16Filler(tensorSeed(p.seed, name)) : q8_0Filler(tensorSeed(p.seed, name));

  const w = new GgufWriter({ alignment: 32 });
  w.addString("general.architecture", arch);
  w.addString("general.type", "model");
  w.addString("general.name", p.name);
  w.addString("general.description", "Random weights with a real model's shape, for benchmarks (agentrt bench/synthetic)");
  // llama_ftype: 1 = MOSTLY_F16, 7 = MOSTLY_Q8_0.
  w.addUint32("general.file_type", p.type === "f16" ? 1 : 7);
  w.addUint32("general.quantization_version", 2);

  w.addUint32(`${arch}.context_length`, p.contextLength);
  w.addUint32(`${arch}.embedding_length`, p.hiddenSize);
  w.addUint32(`${arch}.block_count`, p.layers);
  w.addUint32(`${arch}.feed_forward_length`, p.ffnSize);
  w.addUint32(`${arch}.attention.head_count`, p.heads);
  w.addUint32(`${arch}.attention.head_count_kv`, p.kvHeads);
  w.addUint32(`${arch}.rope.dimension_count`, headDim);
  w.addFloat32(`${arch}.rope.freq_base`, p.ropeTheta);
  w.addFloat32(`${arch}.attention.layer_norm_rms_epsilon`, p.rmsNormEps);
  w.addUint32(`${arch}.vocab_size`, p.vocabSize);

  const vocab = buildBpeVocab(p.vocabSize, p.seed);
  w.addString("tokenizer.ggml.model", "gpt2");
  w.addString("tokenizer.ggml.pre", p.preTokenizer);
  w.addArray("tokenizer.ggml.tokens", GgufValueType.STRING, vocab.tokens);
  w.addArray("tokenizer.ggml.token_type", GgufValueType.INT32, vocab.tokenTypes);
  w.addArray("tokenizer.ggml.merges", GgufValueType.STRING, vocab.merges);
  w.addUint32("tokenizer.ggml.bos_token_id", vocab.specialIds["<|endoftext|>"]);
  w.addUint32("tokenizer.ggml.eos_token_id", vocab.specialIds["<|im_end|>"]);
  w.addUint32("tokenizer.ggml.padding_token_id", vocab.specialIds["<|endoftext|>"]);
  w.addBool("tokenizer.ggml.add_bos_token", false);
  w.addString("tokenizer.chat_template", CHATML_TEMPLATE);

  let tensorBytes = 0;
  let parameters = 0;
  const add = (name: string, dims: number[], type: GgmlType, fill: TensorFiller): void => {
    w.addTensor({ name, dims, type, fill });
    const elements = dims.reduce((a, b) => a * b, 1);
    parameters += elements;
    tensorBytes += type === GgmlType.F32 ? elements * 4 : type === GgmlType.F16 ? elements * 2 : (elements / 32) * 34;
  };
  const matrix = (name: string, ne0: number, ne1: number): void => add(name, [ne0, ne1], weightType, weightFiller(name));
  const norm = (name: string, n: number): void => add(name, [n], GgmlType.F32, f32ConstFiller(1));
  const bias = (name: string, n: number): void => add(name, [n], GgmlType.F32, f32ConstFiller(0));

  // ne0 is the input (contiguous) dimension of every matrix: y = W x with W stored [ne0 = in, ne1 = out].
  matrix("token_embd.weight", p.hiddenSize, p.vocabSize);
  for (let i = 0; i < p.layers; i++) {
    const b = `blk.${i}`;
    norm(`${b}.attn_norm.weight`, p.hiddenSize);
    matrix(`${b}.attn_q.weight`, p.hiddenSize, qDim);
    matrix(`${b}.attn_k.weight`, p.hiddenSize, kvDim);
    matrix(`${b}.attn_v.weight`, p.hiddenSize, kvDim);
    if (arch === "qwen2") {
      bias(`${b}.attn_q.bias`, qDim);
      bias(`${b}.attn_k.bias`, kvDim);
      bias(`${b}.attn_v.bias`, kvDim);
    }
    matrix(`${b}.attn_output.weight`, qDim, p.hiddenSize);
    norm(`${b}.ffn_norm.weight`, p.hiddenSize);
    matrix(`${b}.ffn_gate.weight`, p.hiddenSize, p.ffnSize);
    matrix(`${b}.ffn_up.weight`, p.hiddenSize, p.ffnSize);
    matrix(`${b}.ffn_down.weight`, p.ffnSize, p.hiddenSize);
  }
  norm("output_norm.weight", p.hiddenSize);
  if (!p.tiedEmbeddings) matrix("output.weight", p.hiddenSize, p.vocabSize);

  return { writer: w, tensorBytes, parameters };
}

export interface GenerateResult {
  path: string;
  bytes: number;
  parameters: number;
  seconds: number;
  skipped: boolean;
}

/** The sidecar file that records what a model file was generated from. */
export function sidecarPath(modelPath: string): string {
  return `${modelPath}.params.json`;
}

function sidecarContent(p: SyntheticModelParams, bytes: number): string {
  return `${JSON.stringify({ generatorVersion: GENERATOR_VERSION, params: p, bytes }, null, 2)}\n`;
}

async function upToDate(path: string, p: SyntheticModelParams): Promise<boolean> {
  try {
    const side = JSON.parse(await readFile(sidecarPath(path), "utf8")) as {
      generatorVersion?: number;
      params?: unknown;
      bytes?: number;
    };
    const { size } = await stat(path);
    return side.generatorVersion === GENERATOR_VERSION && JSON.stringify(side.params) === JSON.stringify(p) && side.bytes === size;
  } catch {
    return false;
  }
}

/**
 * Writes the model to `path` unless a file with a matching sidecar is already there.
 * Writes to a temporary name and renames, so an interrupted run never leaves a file that looks complete.
 */
export async function generateSyntheticModel(
  path: string,
  p: SyntheticModelParams,
  options: { force?: boolean; onProgress?: (p: WriteProgress) => void } = {},
): Promise<GenerateResult> {
  const started = performance.now();
  const built = buildSyntheticModel(p);
  if (!options.force && (await upToDate(path, p))) {
    const { size } = await stat(path);
    return { path, bytes: size, parameters: built.parameters, seconds: 0, skipped: true };
  }
  await mkdir(dirname(path), { recursive: true });
  await rm(sidecarPath(path), { force: true });
  const tmp = `${path}.partial-${process.pid}-${randomUUID().slice(0, 8)}`;
  try {
    const bytes = await built.writer.write(tmp, options.onProgress ? { onProgress: options.onProgress } : {});
    await rename(tmp, path);
    await writeFile(sidecarPath(path), sidecarContent(p, bytes));
    return { path, bytes, parameters: built.parameters, seconds: (performance.now() - started) / 1000, skipped: false };
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

export type ShapeOverrides = Partial<Omit<ModelShape, "name">> & { name?: string };

/** Parameters of a preset with overrides applied. */
export function presetParams(preset: PresetName, type: WeightType, overrides: ShapeOverrides = {}, seed = 1): SyntheticModelParams {
  const base: ModelShape = PRESETS[preset];
  const shape: ModelShape = { ...base, ...overrides };
  const changed = Object.keys(overrides).filter((k) => k !== "name" && overrides[k as keyof ShapeOverrides] !== undefined);
  if (overrides.name === undefined && changed.length > 0) shape.name = `${base.name} (${changed.join(", ")} changed)`;
  return { ...shape, type, seed };
}

/** Default file name for a preset: `<preset>-<type>.gguf`, with overrides spelled out. */
export function defaultFileName(preset: PresetName, type: WeightType, overrides: ShapeOverrides = {}): string {
  const parts = Object.entries(overrides)
    .filter(([k, v]) => k !== "name" && v !== undefined)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}${String(v)}`);
  return `${[preset, ...parts, type].join("-")}.gguf`;
}

/** The repository's git-ignored `models/` folder. */
export const DEFAULT_MODELS_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "models");

/**
 * Returns the path of the synthetic model for `preset` and `type` in `dir` (default: repo `models/`),
 * generating it first if it is missing or was made from other parameters.
 */
export async function ensureSyntheticModel(
  preset: PresetName,
  type: WeightType,
  dir: string = DEFAULT_MODELS_DIR,
  overrides: ShapeOverrides = {},
): Promise<string> {
  const path = resolve(dir, defaultFileName(preset, type, overrides));
  // Calls for the same file in one process share one generation.
  let pending = inFlight.get(path);
  if (pending === undefined) {
    pending = generateSyntheticModel(path, presetParams(preset, type, overrides))
      .then(() => path)
      .finally(() => inFlight.delete(path));
    inFlight.set(path, pending);
  }
  return pending;
}

const inFlight = new Map<string, Promise<string>>();
