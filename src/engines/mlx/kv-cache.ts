/**
 * Per-agent KV cache, shaped like mlx-lm's `KVCache`: per layer one keys and one values array of shape
 * [1, kvHeads, capacity, headDim], grown in steps of 256 positions (a concat per step, not per token), with
 * `offset` valid positions. Rewinding only moves `offset` back (what mlx-lm's `trim` does); the next write
 * overwrites the stale positions.
 */
import type { Mx, MxArray } from "./mlx.js";

/** Growth step, as mlx-lm's KVCache.step. */
export const KV_STEP = 256;

export class LayerCache {
  keys: MxArray | undefined;
  values: MxArray | undefined;
  offset = 0;

  constructor(private readonly mx: Mx) {}

  /** Appends [1, kvHeads, n, headDim] keys/values at `offset` and returns views of all valid positions. */
  updateAndFetch(keys: MxArray, values: MxArray): [MxArray, MxArray] {
    const mx = this.mx;
    const prev = this.offset;
    const n = keys.shape[2]!;
    if (this.keys === undefined || this.values === undefined || prev + n > this.keys.shape[2]!) {
      const [b, heads, , kDim] = keys.shape as [number, number, number, number];
      const vDim = values.shape[3]!;
      const steps = Math.ceil(n / KV_STEP) * KV_STEP;
      const newK = mx.zeros([b, heads, steps, kDim], keys.dtype);
      const newV = mx.zeros([b, heads, steps, vDim], values.dtype);
      if (this.keys !== undefined && this.values !== undefined) {
        // Drop stale positions past `offset` first so capacity stays a multiple of the step over valid data.
        const k = prev % KV_STEP !== 0 ? this.keys.index("...", mx.Slice(0, prev), mx.Slice()) : this.keys;
        const v = prev % KV_STEP !== 0 ? this.values.index("...", mx.Slice(0, prev), mx.Slice()) : this.values;
        this.keys = mx.concatenate([k, newK], 2);
        this.values = mx.concatenate([v, newV], 2);
      } else {
        this.keys = newK;
        this.values = newV;
      }
    }
    this.offset = prev + n;
    // indexPut_ rebinds the array to the updated buffer, like `self.keys[..., prev:offset, :] = keys` in Python.
    this.keys.indexPut_(["...", mx.Slice(prev, this.offset), mx.Slice()], keys);
    this.values.indexPut_(["...", mx.Slice(prev, this.offset), mx.Slice()], values);
    return [
      this.keys.index("...", mx.Slice(0, this.offset), mx.Slice()),
      this.values.index("...", mx.Slice(0, this.offset), mx.Slice()),
    ];
  }

  /** The valid positions, as mlx-lm's `KVCache.state` returns them (what gets saved). */
  state(): [MxArray, MxArray] | undefined {
    if (this.keys === undefined || this.values === undefined) return undefined;
    if (this.offset === this.keys.shape[2]) return [this.keys, this.values];
    return [
      this.keys.index("...", this.mx.Slice(0, this.offset), this.mx.Slice()),
      this.values.index("...", this.mx.Slice(0, this.offset), this.mx.Slice()),
    ];
  }

  /** Adopts loaded arrays as the whole content, as mlx-lm's `state` setter does. */
  setState(keys: MxArray, values: MxArray): void {
    this.keys = keys;
    this.values = values;
    this.offset = keys.shape[2]!;
  }

  /** Bytes of the arrays this layer holds (allocated capacity, including positions past `offset`). */
  get nbytes(): number {
    if (this.keys === undefined || this.values === undefined) return 0;
    return arrayBytes(this.keys) + arrayBytes(this.values);
  }
}

export function arrayBytes(a: MxArray): number {
  return a.nbytes ?? a.size * a.itemsize;
}

/** One agent's cache: the per-layer arrays plus the token ids they hold, used to find the reusable prefix. */
export class SequenceCache {
  readonly layers: LayerCache[];
  /** Token ids at positions 0..length-1; `undefined` entries are unknown (a cache loaded without token ids). */
  tokens: (number | undefined)[] = [];

  constructor(mx: Mx, layerCount: number) {
    this.layers = Array.from({ length: layerCount }, () => new LayerCache(mx));
  }

  get length(): number {
    return this.layers[0]?.offset ?? 0;
  }

  /** Rewinds to the first `keep` positions. */
  trimTo(keep: number): void {
    const target = Math.max(0, Math.min(keep, this.length));
    for (const layer of this.layers) layer.offset = target;
    this.tokens.length = target;
  }

  /** Arrays to evaluate after a step so the lazy graph does not grow across steps. */
  arrays(): MxArray[] {
    const out: MxArray[] = [];
    for (const layer of this.layers) {
      if (layer.keys) out.push(layer.keys);
      if (layer.values) out.push(layer.values);
    }
    return out;
  }

  get nbytes(): number {
    return this.layers.reduce((sum, layer) => sum + layer.nbytes, 0);
  }

  clear(): void {
    for (const layer of this.layers) {
      layer.keys = undefined;
      layer.values = undefined;
      layer.offset = 0;
    }
    this.tokens = [];
  }
}
