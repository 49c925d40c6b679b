/**
 * Converts a small float GGUF (Llama architecture) into an mlx-community style folder, optionally 4-bit quantized:
 *  - model.safetensors with Hugging Face tensor names; q/k rows un-permuted (llama.cpp's converter permutes them
 *    for its adjacent-pair RoPE; HF/mlx-lm weights use the half-split RoPE);
 *  - config.json (plus mlx-lm's "quantization" block when quantized);
 *  - tokenizer.json (a byte-fallback BPE built from the GGUF's SentencePiece vocabulary: merges ordered by the
 *    merged piece's score, which is how llama.cpp's SPM tokenizer picks merges) and tokenizer_config.json whose
 *    chat_template is the GGUF's own (none when it has none: both then get the completion format).
 *
 * Quantization follows mlx-lm's `convert -q`: MLX affine quantization (per group of `groupSize` inputs:
 * scale = (max - min) / (2^bits - 1), bias = min, w ≈ scale·q + bias, 32/bits values packed per uint32,
 * lowest bits first), and, like mlx-lm's quantize predicate, layers whose input dimension is not a multiple of the
 * group size stay float. The quantizer is written in JavaScript because this binding's mx.quantize refuses inputs
 * narrower than 256 at 4 bits. Weights pass through JavaScript arrays: meant for small models (tests, demos).
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { AgentRuntimeError } from "../../errors.js";
import { HF_NAMES } from "./build-weights.js";
import { loadGgufWeights } from "./gguf-source.js";
import { loadMlx, type Mx, type MxArray } from "./mlx.js";
import { writeSafetensors, type TensorToWrite } from "./safetensors.js";
import type { Linear } from "./weights.js";

export interface ConvertOptions {
  /** Quantize linear layers (and the embedding) to `bits` with `groupSize` inputs per group. */
  quantize?: { bits: 4 | 8; groupSize: number };
}

export interface ConvertResult {
  folder: string;
  /** HF names of the layers stored quantized. */
  quantizedLayers: string[];
  /** HF names of the layers kept float because their input dim is not a multiple of the group size. */
  floatLayers: string[];
}

export async function convertGgufToMlx(ggufPath: string, folder: string, options: ConvertOptions = {}): Promise<ConvertResult> {
  const mx = await loadMlx(2);
  const { config, weights } = await loadGgufWeights(mx, ggufPath);
  if (config.architecture !== "llama") {
    throw new AgentRuntimeError("ERR_MODEL_INVALID", `convertGgufToMlx handles llama GGUFs; ${ggufPath} is ${config.architecture}`);
  }
  if (config.rope.dims !== config.headDim || config.rope.freqs || config.rope.scale !== 1) {
    throw new AgentRuntimeError("ERR_MODEL_INVALID", "convertGgufToMlx handles full, unscaled RoPE only");
  }
  const { readGgufFileInfo } = await import("node-llama-cpp");
  const info = await readGgufFileInfo(ggufPath, { readTensorInfo: false, logWarnings: false });
  const tokenizerMeta = (info.metadata as unknown as { tokenizer: { ggml: GgufVocab } }).tokenizer.ggml;
  if (tokenizerMeta.model !== "llama") {
    throw new AgentRuntimeError("ERR_MODEL_INVALID", `convertGgufToMlx builds SentencePiece tokenizers; this GGUF's is "${tokenizerMeta.model}"`);
  }

  const tensors: TensorToWrite[] = [];
  const quantizedLayers: string[] = [];
  const floatLayers: string[] = [];
  const addFloat = (name: string, a: MxArray) => tensors.push(floatTensor(mx, name, a));
  const addLinear = (name: string, layer: Linear, permuteHeads?: number) => {
    let w = layer.weight;
    if (permuteHeads !== undefined) w = unpermute(w, permuteHeads);
    const q = options.quantize;
    const inDim = w.shape[1]!;
    if (q && inDim % q.groupSize === 0) {
      tensors.push(...quantizeTensor(mx, name, w, q.groupSize, q.bits));
      quantizedLayers.push(name);
    } else {
      addFloat(`${name}.weight`, w);
      if (q) floatLayers.push(name);
    }
    if (layer.bias) addFloat(`${name}.bias`, layer.bias);
  };

  const tied = weights.lmHead === weights.embed;
  addLinear(HF_NAMES.embed, weights.embed);
  if (!tied) addLinear(HF_NAMES.lmHead, weights.lmHead);
  addFloat(`${HF_NAMES.norm}.weight`, weights.norm);
  weights.layers.forEach((layer, i) => {
    const n = HF_NAMES.layer(i);
    addFloat(`${n.inputNorm}.weight`, layer.inputNorm);
    addFloat(`${n.postNorm}.weight`, layer.postNorm);
    addLinear(n.q, layer.q, config.heads);
    addLinear(n.k, layer.k, config.kvHeads);
    addLinear(n.v, layer.v);
    addLinear(n.o, layer.o);
    addLinear(n.gate, layer.gate);
    addLinear(n.up, layer.up);
    addLinear(n.down, layer.down);
  });

  await mkdir(folder, { recursive: true });
  await writeSafetensors(join(folder, "model.safetensors"), tensors, { format: "mlx" });
  const bos = tokenizerMeta.bos_token_id ?? 1;
  const eos = tokenizerMeta.eos_token_id ?? 2;
  const hfConfig: Record<string, unknown> = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: config.hiddenSize,
    intermediate_size: config.intermediateSize,
    num_hidden_layers: config.layers,
    num_attention_heads: config.heads,
    num_key_value_heads: config.kvHeads,
    head_dim: config.headDim,
    rms_norm_eps: config.rmsNormEps,
    rope_theta: config.rope.base,
    vocab_size: config.vocabSize,
    max_position_embeddings: config.trainedContext ?? 2048,
    tie_word_embeddings: tied,
    bos_token_id: bos,
    eos_token_id: eos,
    torch_dtype: "float32",
  };
  if (options.quantize) {
    const q = { group_size: options.quantize.groupSize, bits: options.quantize.bits, mode: "affine" };
    hfConfig["quantization"] = q;
    hfConfig["quantization_config"] = q;
  }
  await writeFile(join(folder, "config.json"), JSON.stringify(hfConfig, null, 2));
  await writeFile(join(folder, "tokenizer.json"), JSON.stringify(buildTokenizerJson(tokenizerMeta)));
  const tokens = tokenizerMeta.tokens;
  const hasTemplate = typeof (info.metadata as unknown as { tokenizer: { chat_template?: unknown } }).tokenizer.chat_template === "string";
  await writeFile(
    join(folder, "tokenizer_config.json"),
    JSON.stringify(
      {
        tokenizer_class: "LlamaTokenizerFast",
        bos_token: tokens[bos],
        eos_token: tokens[eos],
        unk_token: tokens[tokenizerMeta.unknown_token_id ?? 0],
        add_bos_token: false,
        add_eos_token: false,
        clean_up_tokenization_spaces: false,
        legacy: false,
        model_max_length: config.trainedContext ?? 2048,
        ...(hasTemplate ? { chat_template: (info.metadata as unknown as { tokenizer: { chat_template: string } }).tokenizer.chat_template } : {}),
      },
      null,
      2,
    ),
  );
  return { folder, quantizedLayers, floatLayers };
}

interface GgufVocab {
  model: string;
  tokens: readonly string[];
  scores?: readonly number[];
  token_type?: readonly number[];
  bos_token_id?: number;
  eos_token_id?: number;
  unknown_token_id?: number;
}

/** SentencePiece token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte. */
const NORMAL = 1;
const UNKNOWN = 2;
const CONTROL = 3;
const USER_DEFINED = 4;

/**
 * A tokenizer.json equivalent to llama.cpp's SPM tokenizer for text without a leading-space prefix (node-llama-cpp
 * tokenizes chat text pieces without one): spaces → "▁", BPE over characters with merges ranked by the merged
 * piece's score (ties: lower id first), unknown characters as <0xXX> byte tokens.
 */
export function buildTokenizerJson(vocab: GgufVocab): Record<string, unknown> {
  const { tokens } = vocab;
  const scores = vocab.scores ?? tokens.map((_, i) => -i);
  const types = vocab.token_type ?? tokens.map(() => NORMAL);
  const ids = new Map<string, number>();
  tokens.forEach((t, i) => {
    if (!ids.has(t)) ids.set(t, i);
  });
  const mergeable = (id: number | undefined) => id !== undefined && (types[id] === NORMAL || types[id] === USER_DEFINED);
  const merges: { left: string; right: string; score: number; id: number; leftId: number }[] = [];
  tokens.forEach((piece, id) => {
    if (!mergeable(id)) return;
    const chars = [...piece];
    for (let cut = 1; cut < chars.length; cut++) {
      const left = chars.slice(0, cut).join("");
      const right = chars.slice(cut).join("");
      const leftId = ids.get(left);
      if (mergeable(leftId) && mergeable(ids.get(right))) merges.push({ left, right, score: scores[id]!, id, leftId: leftId! });
    }
  });
  merges.sort((a, b) => b.score - a.score || a.id - b.id || a.leftId - b.leftId);
  const vocabMap: Record<string, number> = {};
  tokens.forEach((t, i) => {
    if (!(t in vocabMap)) vocabMap[t] = i;
  });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: tokens
      .map((content, id) => ({ content, id, type: types[id] }))
      .filter((t) => t.type === CONTROL || t.type === UNKNOWN || t.type === USER_DEFINED)
      .map(({ content, id, type }) => ({
        id,
        content,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: type !== USER_DEFINED,
      })),
    normalizer: { type: "Replace", pattern: { String: " " }, content: "▁" },
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: "Sequence",
      // Strip: the text's first space is the one SentencePiece prefixed, as in HF's Llama tokenizer and llama.cpp.
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: tokens[vocab.unknown_token_id ?? 0],
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: vocabMap,
      merges: merges.map((m) => [m.left, m.right]),
    },
  };
}

/** Inverse of llama.cpp's q/k permutation: [heads, 2, hd/2, in] → swap → back; here [heads, hd/2, 2, in] → swap. */
function unpermute(w: MxArray, heads: number): MxArray {
  const [out, inDim] = w.shape as [number, number];
  return w
    .reshape(heads, out / heads / 2, 2, inDim)
    .transpose(0, 2, 1, 3)
    .reshape(out, inDim);
}

function floatTensor(mx: Mx, name: string, a: MxArray): TensorToWrite {
  const data = Float32Array.from(a.astype(mx.float32).reshape([-1]).tolist() as number[]);
  return { name, dtype: "F32", shape: [...a.shape], data: new Uint8Array(data.buffer) };
}

/**
 * MLX affine quantization of a float [out, in] matrix → `${name}.weight` (uint32 [out, in·bits/32]),
 * `${name}.scales` and `${name}.biases` (float32 [out, in/groupSize]).
 */
export function quantizeTensor(mx: Mx, name: string, w: MxArray, groupSize: number, bits: number): TensorToWrite[] {
  const [out, inDim] = w.shape as [number, number];
  const values = Float32Array.from(w.astype(mx.float32).reshape([-1]).tolist() as number[]);
  const groups = inDim / groupSize;
  const perWord = 32 / bits;
  const levels = 2 ** bits - 1;
  const packed = new Uint32Array((out * inDim) / perWord);
  const scales = new Float32Array(out * groups);
  const biases = new Float32Array(out * groups);
  for (let r = 0; r < out; r++) {
    for (let g = 0; g < groups; g++) {
      const start = r * inDim + g * groupSize;
      let min = Infinity;
      let max = -Infinity;
      for (let j = 0; j < groupSize; j++) {
        const v = values[start + j]!;
        if (v < min) min = v;
        if (v > max) max = v;
      }
      const scale = max > min ? (max - min) / levels : 1;
      scales[r * groups + g] = scale;
      biases[r * groups + g] = min;
      for (let j = 0; j < groupSize; j++) {
        const q = Math.min(levels, Math.max(0, Math.round((values[start + j]! - min) / scale)));
        const index = start + j;
        const word = Math.floor(index / perWord);
        packed[word] = (packed[word]! | (q << (bits * (index % perWord)))) >>> 0;
      }
    }
  }
  return [
    { name: `${name}.weight`, dtype: "U32", shape: [out, inDim / perWord], data: new Uint8Array(packed.buffer) },
    { name: `${name}.scales`, dtype: "F32", shape: [out, groups], data: new Uint8Array(scales.buffer) },
    { name: `${name}.biases`, dtype: "F32", shape: [out, groups], data: new Uint8Array(biases.buffer) },
  ];
}
