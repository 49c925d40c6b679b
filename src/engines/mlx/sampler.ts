/**
 * Next-token choice. Greedy (temperature 0) is an argmax in MLX. Sampled decoding narrows to the top-k logits in
 * MLX, then applies temperature, top-p and the draw in JavaScript with a seeded PRNG, so a fixed seed repeats the
 * same output exactly (MLX's own random state is process-global and would couple agents to each other).
 */
import type { SamplingOptions } from "../engine.js";
import type { Mx, MxArray } from "./mlx.js";

export const DEFAULT_TOP_K = 40;
export const DEFAULT_TOP_P = 0.95;

export class Sampler {
  readonly #temperature: number;
  readonly #topK: number;
  readonly #topP: number;
  readonly #random: () => number;

  constructor(options: SamplingOptions) {
    this.#temperature = Math.max(0, options.temperature ?? 0);
    this.#topK = Math.max(0, Math.floor(options.topK ?? DEFAULT_TOP_K));
    const topP = options.topP ?? DEFAULT_TOP_P;
    this.#topP = topP > 0 && topP <= 1 ? topP : 1;
    const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
    this.#random = mulberry32(seed >>> 0);
  }

  get greedy(): boolean {
    return this.#temperature === 0;
  }

  /** Picks the next token from float32 logits of shape [vocab]. */
  sample(mx: Mx, logits: MxArray): number {
    if (this.greedy) return mx.argmax(logits).item() as number;
    const vocab = logits.shape[0]!;
    let ids: number[];
    let values: number[];
    if (this.#topK > 0 && this.#topK < vocab) {
      const top = mx.argpartition(mx.negative(logits), this.#topK - 1).index(mx.Slice(0, this.#topK));
      ids = top.tolist() as number[];
      values = mx.take(logits, top, 0).tolist() as number[];
    } else {
      values = logits.tolist() as number[];
      ids = values.map((_, i) => i);
    }
    return this.#draw(ids, values);
  }

  /** Softmax at the temperature, nucleus cut, then one draw. Ties are ordered by token id so the order is stable. */
  #draw(ids: number[], logits: number[]): number {
    const order = ids.map((id, i) => ({ id, logit: logits[i]! / this.#temperature }));
    order.sort((a, b) => b.logit - a.logit || a.id - b.id);
    const max = order[0]!.logit;
    let total = 0;
    const weights = order.map((o) => {
      const w = Math.exp(o.logit - max);
      total += w;
      return w;
    });
    let keep = order.length;
    if (this.#topP < 1) {
      let cumulative = 0;
      for (let i = 0; i < order.length; i++) {
        cumulative += weights[i]! / total;
        if (cumulative >= this.#topP) {
          keep = i + 1;
          break;
        }
      }
    }
    let kept = 0;
    for (let i = 0; i < keep; i++) kept += weights[i]!;
    let r = this.#random() * kept;
    for (let i = 0; i < keep; i++) {
      r -= weights[i]!;
      if (r < 0) return order[i]!.id;
    }
    return order[keep - 1]!.id;
  }
}

/** Small, fast, seedable PRNG (public domain); quality is ample for token sampling. */
function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
