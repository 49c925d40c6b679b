/**
 * Turns a name → array map (from a GGUF or from safetensors) into {@link ModelWeights}, checking every shape
 * against the config first: a wrong shape reaching a native matmul fails far from its cause, and float16 reaching
 * a CPU matmul aborts the process, so floats are upcast to float32 here.
 */
import { AgentRuntimeError } from "../../errors.js";
import type { Mx, MxArray } from "./mlx.js";
import type { ModelConfig } from "./config.js";
import type { LayerWeights, Linear, ModelWeights } from "./weights.js";

export interface TensorNames {
  embed: string;
  norm: string;
  lmHead: string;
  /** Names of layer `i`'s tensors, without the ".weight"/".bias"/".scales"/".biases" suffix. */
  layer(i: number): Record<"inputNorm" | "q" | "k" | "v" | "o" | "postNorm" | "gate" | "up" | "down", string>;
}

export const GGUF_NAMES: TensorNames = {
  embed: "token_embd",
  norm: "output_norm",
  lmHead: "output",
  layer: (i) => ({
    inputNorm: `blk.${i}.attn_norm`,
    q: `blk.${i}.attn_q`,
    k: `blk.${i}.attn_k`,
    v: `blk.${i}.attn_v`,
    o: `blk.${i}.attn_output`,
    postNorm: `blk.${i}.ffn_norm`,
    gate: `blk.${i}.ffn_gate`,
    up: `blk.${i}.ffn_up`,
    down: `blk.${i}.ffn_down`,
  }),
};

export const HF_NAMES: TensorNames = {
  embed: "model.embed_tokens",
  norm: "model.norm",
  lmHead: "lm_head",
  layer: (i) => ({
    inputNorm: `model.layers.${i}.input_layernorm`,
    q: `model.layers.${i}.self_attn.q_proj`,
    k: `model.layers.${i}.self_attn.k_proj`,
    v: `model.layers.${i}.self_attn.v_proj`,
    o: `model.layers.${i}.self_attn.o_proj`,
    postNorm: `model.layers.${i}.post_attention_layernorm`,
    gate: `model.layers.${i}.mlp.gate_proj`,
    up: `model.layers.${i}.mlp.up_proj`,
    down: `model.layers.${i}.mlp.down_proj`,
  }),
};

/** Quantization of the layer named `prefix`, or undefined when it is stored as floats. */
export type QuantizationLookup = (prefix: string) => { groupSize: number; bits: number } | undefined;

export function buildWeights(
  mx: Mx,
  tensors: Record<string, MxArray>,
  names: TensorNames,
  config: ModelConfig,
  quantization: QuantizationLookup,
  source: string,
): ModelWeights {
  const invalid = (message: string) => new AgentRuntimeError("ERR_MODEL_INVALID", `${source}: ${message}`);
  const float = (name: string, shape: number[]): MxArray => {
    const a = tensors[name];
    if (!a) throw invalid(`missing tensor ${name}`);
    if (!sameShape(a.shape, shape)) throw invalid(`tensor ${name} has shape [${a.shape}], expected [${shape}]`);
    return toFloat32(mx, a, name, invalid);
  };
  const optionalFloat = (name: string, shape: number[]): MxArray | undefined => (tensors[name] ? float(name, shape) : undefined);

  const linearOf = (prefix: string, out: number, inDim: number, withBias = false): Linear => {
    const q = quantization(prefix);
    const scales = tensors[`${prefix}.scales`];
    if (q && scales) {
      const { groupSize, bits } = q;
      if (inDim % groupSize !== 0 || (inDim * bits) % 32 !== 0) {
        throw invalid(`${prefix}: input dim ${inDim} is not divisible by group size ${groupSize}`);
      }
      const weight = tensors[`${prefix}.weight`];
      if (!weight) throw invalid(`missing tensor ${prefix}.weight`);
      if (weight.dtype !== mx.uint32 || !sameShape(weight.shape, [out, (inDim * bits) / 32])) {
        throw invalid(`${prefix}.weight must be uint32 [${out}, ${(inDim * bits) / 32}] for ${bits}-bit quantization`);
      }
      const layer: Linear = {
        weight,
        quantized: {
          scales: float(`${prefix}.scales`, [out, inDim / groupSize]),
          biases: float(`${prefix}.biases`, [out, inDim / groupSize]),
          groupSize,
          bits,
        },
      };
      const bias = withBias ? optionalFloat(`${prefix}.bias`, [out]) : undefined;
      if (bias) layer.bias = bias;
      return layer;
    }
    const layer: Linear = { weight: float(`${prefix}.weight`, [out, inDim]) };
    const bias = withBias ? optionalFloat(`${prefix}.bias`, [out]) : undefined;
    if (bias) layer.bias = bias;
    return layer;
  };

  const { hiddenSize: d, heads, kvHeads, headDim, intermediateSize: ff, vocabSize, layers } = config;
  const embed = linearOf(names.embed, vocabSize, d);
  const hasHead = tensors[`${names.lmHead}.weight`] !== undefined;
  const lmHead = hasHead ? linearOf(names.lmHead, vocabSize, d) : embed;
  const layerWeights: LayerWeights[] = [];
  for (let i = 0; i < layers; i++) {
    const n = names.layer(i);
    layerWeights.push({
      inputNorm: float(`${n.inputNorm}.weight`, [d]),
      q: linearOf(n.q, heads * headDim, d, true),
      k: linearOf(n.k, kvHeads * headDim, d, true),
      v: linearOf(n.v, kvHeads * headDim, d, true),
      o: linearOf(n.o, d, heads * headDim, true),
      postNorm: float(`${n.postNorm}.weight`, [d]),
      gate: linearOf(n.gate, ff, d, true),
      up: linearOf(n.up, ff, d, true),
      down: linearOf(n.down, d, ff, true),
    });
  }
  return { embed, layers: layerWeights, norm: float(`${names.norm}.weight`, [d]), lmHead };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function toFloat32(mx: Mx, a: MxArray, name: string, invalid: (m: string) => Error): MxArray {
  if (a.dtype === mx.float32) return a;
  if (a.dtype === mx.float16 || a.dtype === mx.bfloat16) return a.astype(mx.float32);
  throw invalid(`tensor ${name} has dtype ${String(a.dtype)}; only float32, float16 and bfloat16 are supported`);
}
