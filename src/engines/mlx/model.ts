/**
 * The Llama-family decoder forward pass on MLX primitives (mx.fast.rmsNorm / rope / scaledDotProductAttention),
 * following mlx-lm's models/llama.py: pre-norm blocks, grouped-query attention, SwiGLU MLP. Qwen2 differs only by
 * q/k/v biases, which the weights carry.
 */
import { int32Array, type Mx, type MxArray } from "./mlx.js";
import type { ModelConfig } from "./config.js";
import { makeRope, type Rope } from "./rope.js";
import { embed, linear, type ModelWeights } from "./weights.js";
import type { SequenceCache } from "./kv-cache.js";

export class LlamaModel {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  readonly #mx: Mx;
  readonly #rope: Rope;
  readonly #scale: number;

  constructor(mx: Mx, config: ModelConfig, weights: ModelWeights) {
    this.#mx = mx;
    this.config = config;
    this.weights = weights;
    this.#rope = makeRope(mx, config.rope);
    this.#scale = 1 / Math.sqrt(config.headDim);
  }

  /**
   * Runs `tokens` at positions cache.length… through the model, appending their keys/values to `cache`, and
   * returns the (lazy) float32 logits of the last position, shape [vocab]. The caller evaluates.
   */
  forward(tokens: readonly number[], cache: SequenceCache): MxArray {
    const mx = this.#mx;
    const { heads, kvHeads, headDim, rmsNormEps } = this.config;
    const length = tokens.length;
    const offset = cache.length;
    let x = embed(mx, int32Array(mx, tokens), this.weights.embed).reshape(1, length, -1);
    const mask = length > 1 ? causalMask(mx, length, offset) : undefined;

    this.weights.layers.forEach((layer, i) => {
      const h = mx.fast.rmsNorm(x, layer.inputNorm, rmsNormEps);
      let q = linear(mx, h, layer.q).reshape(1, length, heads, headDim).transpose(0, 2, 1, 3);
      let k = linear(mx, h, layer.k).reshape(1, length, kvHeads, headDim).transpose(0, 2, 1, 3);
      const v = linear(mx, h, layer.v).reshape(1, length, kvHeads, headDim).transpose(0, 2, 1, 3);
      q = this.#rope(q, offset);
      k = this.#rope(k, offset);
      const [keys, values] = cache.layers[i]!.updateAndFetch(k, v);
      const attn = mx.fast.scaledDotProductAttention(q, keys, values, this.#scale, mask);
      x = mx.add(x, linear(mx, attn.transpose(0, 2, 1, 3).reshape(1, length, heads * headDim), layer.o));
      const h2 = mx.fast.rmsNorm(x, layer.postNorm, rmsNormEps);
      const gate = linear(mx, h2, layer.gate);
      const act = mx.multiply(mx.multiply(gate, mx.sigmoid(gate)), linear(mx, h2, layer.up)); // SwiGLU
      x = mx.add(x, linear(mx, act, layer.down));
    });

    // Only the last position's logits are needed for the next token.
    const last = x.index(0, length - 1).reshape(1, -1);
    const normed = mx.fast.rmsNorm(last, this.weights.norm, rmsNormEps);
    return linear(mx, normed, this.weights.lmHead).reshape([-1]);
  }
}

/** Additive causal mask [length, offset+length]: 0 where a query may see a key, -inf elsewhere. (Boolean masks are
 * not honoured by this binding's attention: measured.) */
function causalMask(mx: Mx, length: number, offset: number): MxArray {
  const rows = mx.arange(offset, offset + length, 1, mx.int32).reshape(-1, 1);
  const cols = mx.arange(0, offset + length, 1, mx.int32).reshape(1, -1);
  return mx.where(mx.greaterEqual(rows, cols), mx.array(0, mx.float32), mx.array(-Infinity, mx.float32));
}
