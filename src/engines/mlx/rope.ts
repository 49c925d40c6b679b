/**
 * Rotary position embeddings. mx.fast.rope covers plain and linearly scaled RoPE; this binding's rope takes no
 * custom frequency table, so Llama 3 style scaling is computed with ordinary ops (same maths as mlx-lm's
 * Llama3RoPE: angle = position / freq).
 */
import type { Mx, MxArray } from "./mlx.js";
import type { RopeConfig } from "./config.js";

export type Rope = (x: MxArray, offset: number) => MxArray;

export function makeRope(mx: Mx, rope: RopeConfig): Rope {
  if (!rope.freqs) {
    return (x, offset) => mx.fast.rope(x, rope.dims, rope.traditional, rope.base, rope.scale, offset);
  }
  const inv = mx
    .array(
      rope.freqs.map((f) => 1 / f),
      mx.float32,
    )
    .reshape(1, -1);
  return (x, offset) => applyWithFreqs(mx, x, offset, rope, inv);
}

/**
 * Re-rotates keys that RoPE already rotated, as if they sat `delta` positions further (negative: earlier). RoPE
 * turns each pair of dimensions by an angle proportional to the position, so moving a key from p to p + delta is one
 * more turn by delta's angle, the same for every row. Used when a context shift removes tokens before the keys.
 */
export function makeKeyShift(mx: Mx, rope: RopeConfig): (keys: MxArray, delta: number) => MxArray {
  const half = rope.dims / 2;
  // mx.fast.rope's frequencies: base^(-2i/dims); Llama 3 tables give wavelength divisors (see config.ts).
  const inverse = rope.freqs ? rope.freqs.map((f) => 1 / f) : Array.from({ length: half }, (_, i) => rope.base ** (-(2 * i) / rope.dims));
  const inv = mx.array(inverse, mx.float32).reshape(1, -1);
  return (keys, delta) => (delta === 0 ? keys : rotate(mx, keys, mx.multiply(inv, delta * rope.scale), rope));
}

/** RoPE from an explicit inverse-frequency table `inv` of shape [1, dims/2]; x is [B, heads, L, headDim]. */
export function applyWithFreqs(mx: Mx, x: MxArray, offset: number, rope: RopeConfig, inv: MxArray): MxArray {
  const length = x.shape[2]!;
  const positions = mx.multiply(mx.arange(offset, offset + length, 1, mx.float32), rope.scale).reshape(-1, 1);
  return rotate(mx, x, mx.matmul(positions, inv), rope); // theta: [L, half]
}

/** Turns each rotated pair of x [B, heads, L, headDim] by the angles `theta` ([L, dims/2], or [1, dims/2] for all rows). */
function rotate(mx: Mx, x: MxArray, theta: MxArray, rope: RopeConfig): MxArray {
  const shape = x.shape;
  const length = shape[2]!;
  const headDim = shape[3]!;
  const half = rope.dims / 2;
  const cos = mx.cos(theta);
  const sin = mx.sin(theta);
  const rotated = x.index("...", mx.Slice(0, rope.dims));
  let out: MxArray;
  if (rope.traditional) {
    const pairs = rotated.reshape(shape[0]!, shape[1]!, length, half, 2);
    const x1 = pairs.index("...", 0);
    const x2 = pairs.index("...", 1);
    const r1 = mx.subtract(mx.multiply(x1, cos), mx.multiply(x2, sin));
    const r2 = mx.add(mx.multiply(x1, sin), mx.multiply(x2, cos));
    out = mx.stack([r1, r2], -1).reshape(shape[0]!, shape[1]!, length, rope.dims);
  } else {
    const x1 = rotated.index("...", mx.Slice(0, half));
    const x2 = rotated.index("...", mx.Slice(half, rope.dims));
    const r1 = mx.subtract(mx.multiply(x1, cos), mx.multiply(x2, sin));
    const r2 = mx.add(mx.multiply(x1, sin), mx.multiply(x2, cos));
    out = mx.concatenate([r1, r2], -1);
  }
  if (rope.dims === headDim) return out;
  return mx.concatenate([out, x.index("...", mx.Slice(rope.dims, headDim))], -1);
}
