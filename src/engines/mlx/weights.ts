/**
 * Weight containers shared by both source formats, and the two ops that read them. A linear layer is either a
 * float32 matrix [out, in] or an MLX affine-quantized one (packed uint32 weight + per-group scales and biases, the
 * layout mlx-lm writes for mlx-community models).
 */
import { quantizedMatmul, type Mx, type MxArray } from "./mlx.js";

export interface Quantization {
  scales: MxArray;
  biases: MxArray;
  groupSize: number;
  bits: number;
}

export interface Linear {
  /** float32 [out, in], or packed uint32 [out, in * bits / 32] when `quantized` is set. */
  weight: MxArray;
  bias?: MxArray;
  quantized?: Quantization;
}

export interface LayerWeights {
  inputNorm: MxArray;
  q: Linear;
  k: Linear;
  v: Linear;
  o: Linear;
  postNorm: MxArray;
  gate: Linear;
  up: Linear;
  down: Linear;
}

export interface ModelWeights {
  /** Token embedding table, used as a lookup (and as the output projection when embeddings are tied). */
  embed: Linear;
  layers: LayerWeights[];
  norm: MxArray;
  /** The output projection; the same object as `embed` for tied embeddings. */
  lmHead: Linear;
}

/** y = x · Wᵀ + b */
export function linear(mx: Mx, x: MxArray, layer: Linear): MxArray {
  const q = layer.quantized;
  const y = q ? quantizedMatmul(mx, x, layer.weight, q.scales, q.biases, q.groupSize, q.bits) : mx.matmul(x, layer.weight.T);
  return layer.bias ? mx.add(y, layer.bias) : y;
}

/** Rows of the embedding table for `ids` (int32 [L]) → [L, hidden]. Quantized tables are dequantized per row. */
export function embed(mx: Mx, ids: MxArray, table: Linear): MxArray {
  const q = table.quantized;
  if (!q) return mx.take(table.weight, ids, 0);
  return mx.dequantize(mx.take(table.weight, ids, 0), mx.take(q.scales, ids, 0), mx.take(q.biases, ids, 0), q.groupSize, q.bits);
}

/** Every array the weights hold (for evaluation and byte counts); tied tables are counted once. */
export function allArrays(weights: ModelWeights): MxArray[] {
  const seen = new Set<MxArray>();
  const addLinear = (l: Linear) => {
    seen.add(l.weight);
    if (l.bias) seen.add(l.bias);
    if (l.quantized) {
      seen.add(l.quantized.scales);
      seen.add(l.quantized.biases);
    }
  };
  addLinear(weights.embed);
  addLinear(weights.lmHead);
  seen.add(weights.norm);
  for (const layer of weights.layers) {
    seen.add(layer.inputNorm);
    seen.add(layer.postNorm);
    for (const l of [layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down]) addLinear(l);
  }
  return [...seen];
}
