/**
 * Per-agent KV cache, shaped like mlx-lm's `KVCache`: per layer one keys and one values array of shape
 * [1, kvHeads, capacity, headDim], grown to whole steps of 256 positions (a concat per step, not per token), with
 * `offset` valid positions. Rewinding only moves `offset` back (what mlx-lm's `trim` does); the next write
 * overwrites the stale positions.
 */
import type { Mx, MxArray } from "./mlx.js";

/** Growth step, as mlx-lm's KVCache.step. */
export const KV_STEP = 256;

/** Re-rotates keys already rotated by RoPE by `delta` positions (see rope.ts `makeKeyShift`). */
export type KeyShift = (keys: MxArray, delta: number) => MxArray;

export class LayerCache {
  readonly #mx: Mx;
  #keys: MxArray | undefined;
  #values: MxArray | undefined;
  #offset = 0;

  constructor(mx: Mx) {
    this.#mx = mx;
  }

  /** Valid positions. */
  get offset(): number {
    return this.#offset;
  }

  /** Appends [1, kvHeads, n, headDim] keys/values at `offset` and returns views of all valid positions. */
  updateAndFetch(keys: MxArray, values: MxArray): [MxArray, MxArray] {
    const mx = this.#mx;
    const prev = this.#offset;
    const n = keys.shape[2]!;
    if (this.#keys === undefined || this.#values === undefined || prev + n > this.#keys.shape[2]!) {
      const [b, heads, , kDim] = keys.shape as [number, number, number, number];
      const vDim = values.shape[3]!;
      // Capacity stays whole steps of positions (mlx-lm adds the steps to `prev`, which after a rewind or a loaded
      // state is no multiple of the step): what a sequence reserves is then ceil(peak tokens / step) steps, the
      // bound the supervisor charges against kvBudgetBytes (see kvReservedBytes).
      const added = Math.ceil((prev + n) / KV_STEP) * KV_STEP - prev;
      const newK = mx.zeros([b, heads, added, kDim], keys.dtype);
      const newV = mx.zeros([b, heads, added, vDim], values.dtype);
      if (this.#keys !== undefined && this.#values !== undefined && prev > 0) {
        // Drop stale positions past `offset` first.
        const k = prev !== this.#keys.shape[2] ? this.#valid(this.#keys, 0, prev) : this.#keys;
        const v = prev !== this.#values.shape[2] ? this.#valid(this.#values, 0, prev) : this.#values;
        this.#keys = mx.concatenate([k, newK], 2);
        this.#values = mx.concatenate([v, newV], 2);
      } else {
        this.#keys = newK;
        this.#values = newV;
      }
    }
    this.#offset = prev + n;
    // indexPut_ rebinds the array to the updated buffer, like `self.keys[..., prev:offset, :] = keys` in Python.
    this.#keys.indexPut_(["...", mx.Slice(prev, this.#offset), mx.Slice()], keys);
    this.#values.indexPut_(["...", mx.Slice(prev, this.#offset), mx.Slice()], values);
    return [this.#valid(this.#keys, 0, this.#offset), this.#valid(this.#values, 0, this.#offset)];
  }

  /** The valid positions, as mlx-lm's `KVCache.state` returns them (what gets saved). */
  state(): [MxArray, MxArray] | undefined {
    if (this.#keys === undefined || this.#values === undefined) return undefined;
    if (this.#offset === this.#keys.shape[2]) return [this.#keys, this.#values];
    return [this.#valid(this.#keys, 0, this.#offset), this.#valid(this.#values, 0, this.#offset)];
  }

  /** Adopts loaded arrays as the whole content, as mlx-lm's `state` setter does. */
  setState(keys: MxArray, values: MxArray): void {
    this.#keys = keys;
    this.#values = values;
    this.#offset = keys.shape[2]!;
  }

  /** Rewinds to the first `keep` positions (the arrays keep their capacity). */
  trim(keep: number): void {
    this.#offset = Math.max(0, Math.min(keep, this.#offset));
  }

  /**
   * Removes positions [start, end) and moves the later ones down by `end − start`. Keys carry their position in
   * their RoPE rotation, so `shift` re-rotates the moved keys by −(end − start): afterwards every key is rotated
   * for the position it now holds, as if it had been evaluated there (values carry no position).
   */
  erase(start: number, end: number, shift: KeyShift): void {
    const removed = end - start;
    if (this.#keys === undefined || this.#values === undefined || removed <= 0) return;
    const mx = this.#mx;
    const last = this.#offset;
    if (end < last) {
      const keys = shift(this.#valid(this.#keys, end, last), -removed);
      const values = this.#valid(this.#values, end, last);
      // MLX arrays are values: the slices above read the arrays as they were before these writes.
      this.#keys.indexPut_(["...", mx.Slice(start, last - removed), mx.Slice()], keys);
      this.#values.indexPut_(["...", mx.Slice(start, last - removed), mx.Slice()], values);
    }
    this.#offset = last - removed;
  }

  /** The arrays a step must evaluate. */
  arrays(): MxArray[] {
    return this.#keys === undefined || this.#values === undefined ? [] : [this.#keys, this.#values];
  }

  clear(): void {
    this.#keys = undefined;
    this.#values = undefined;
    this.#offset = 0;
  }

  /** Bytes of the arrays this layer holds (allocated capacity, including positions past `offset`). */
  get nbytes(): number {
    if (this.#keys === undefined || this.#values === undefined) return 0;
    return arrayBytes(this.#keys) + arrayBytes(this.#values);
  }

  #valid(array: MxArray, from: number, to: number): MxArray {
    return array.index("...", this.#mx.Slice(from, to), this.#mx.Slice());
  }
}

export function arrayBytes(a: MxArray): number {
  return a.nbytes ?? a.size * a.itemsize;
}

/** One agent's cache: the per-layer arrays plus the token ids they hold, used to find the reusable prefix. */
export class SequenceCache {
  readonly layers: readonly LayerCache[];
  /** Token ids at positions 0..length-1; `undefined` entries are unknown (a cache loaded without token ids). */
  #tokens: (number | undefined)[] = [];

  constructor(mx: Mx, layerCount: number) {
    this.layers = Array.from({ length: layerCount }, () => new LayerCache(mx));
  }

  get length(): number {
    return this.layers[0]?.offset ?? 0;
  }

  get tokens(): readonly (number | undefined)[] {
    return this.#tokens;
  }

  /** Records the ids of tokens a forward call just appended. */
  append(tokens: readonly number[]): void {
    this.#tokens.push(...tokens);
  }

  /** Replaces unknown ids of the first `tokens.length` positions with `tokens` (a prompt confirmed them). */
  confirm(tokens: readonly number[]): void {
    for (let i = 0; i < tokens.length && i < this.#tokens.length; i++) this.#tokens[i] = tokens[i];
  }

  /** Adopts loaded per-layer arrays and their token ids (unknown ids when the file had none). */
  adopt(keys: readonly MxArray[], values: readonly MxArray[], length: number, tokens: readonly number[] | undefined): void {
    this.clear();
    if (length > 0) this.layers.forEach((layer, i) => layer.setState(keys[i]!, values[i]!));
    this.#tokens = tokens ? [...tokens] : new Array<number | undefined>(length).fill(undefined);
  }

  /** Rewinds to the first `keep` positions. */
  trimTo(keep: number): void {
    const target = Math.max(0, Math.min(keep, this.length));
    for (const layer of this.layers) layer.trim(target);
    this.#tokens.length = target;
  }

  /** Removes positions [start, end), moving (and re-rotating, see LayerCache.erase) the later ones down. */
  erase(start: number, end: number, shift: KeyShift): void {
    for (const layer of this.layers) layer.erase(start, end, shift);
    this.#tokens.splice(start, Math.max(0, end - start));
  }

  /** Arrays to evaluate after a step so the lazy graph does not grow across steps. */
  arrays(): MxArray[] {
    return this.layers.flatMap((layer) => layer.arrays());
  }

  get nbytes(): number {
    return this.layers.reduce((sum, layer) => sum + layer.nbytes, 0);
  }

  clear(): void {
    for (const layer of this.layers) layer.clear();
    this.#tokens = [];
  }
}
