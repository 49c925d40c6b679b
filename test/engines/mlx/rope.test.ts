/**
 * RoPE with an explicit frequency table (used for Llama 3 scaling, which this binding's mx.fast.rope cannot take)
 * must equal mx.fast.rope when the table is the plain one, in both layouts and with partial rotation.
 */
import { describe, expect, it } from "vitest";
import { llama3RopeFreqs } from "../../../src/engines/mlx/config.js";
import { loadMlx } from "../../../src/engines/mlx/mlx.js";
import { applyWithFreqs, makeKeyShift, makeRope } from "../../../src/engines/mlx/rope.js";

describe("RoPE", () => {
  it.each([
    [true, 16],
    [true, 8],
    [false, 16],
    [false, 8],
  ])("traditional=%s dims=%i matches mx.fast.rope", async (traditional, dims) => {
    const mx = await loadMlx(1);
    const x = mx
      .array(
        Array.from({ length: 4 * 5 * 16 }, (_, i) => Math.sin(i * 0.7)),
        mx.float32,
      )
      .reshape(1, 4, 5, 16);
    const freqs = Array.from({ length: dims / 2 }, (_, i) => 10000 ** ((2 * i) / dims));
    const inv = mx
      .array(
        freqs.map((f) => 1 / f),
        mx.float32,
      )
      .reshape(1, -1);
    const expected = mx.fast.rope(x, dims, traditional, 10000, 0.5, 7);
    const actual = applyWithFreqs(mx, x, 7, { dims, base: 10000, traditional, scale: 0.5 }, inv);
    expect(mx.max(mx.abs(mx.subtract(expected, actual))).item()).toBeLessThan(1e-5);
  });

  it.each([
    [true, 16, undefined],
    [false, 8, undefined],
    [false, 16, llama3RopeFreqs(16, 10000, { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8 })],
  ])("a context shift re-rotates keys to their new position (traditional=%s dims=%i, custom freqs: %s)", async (traditional, dims, freqs) => {
    const mx = await loadMlx(1);
    const config = { dims, base: 10000, traditional, scale: 1, ...(freqs ? { freqs } : {}) };
    const rope = makeRope(mx, config);
    const x = mx
      .array(
        Array.from({ length: 4 * 5 * 16 }, (_, i) => Math.cos(i * 0.3)),
        mx.float32,
      )
      .reshape(1, 4, 5, 16);
    // Keys rotated at positions 40.. and moved down by 27 equal keys rotated at 13.. in the first place.
    const moved = makeKeyShift(mx, config)(rope(x, 40), -27);
    expect(mx.max(mx.abs(mx.subtract(moved, rope(x, 13)))).item()).toBeLessThan(1e-4);
  });

  it("Llama 3 scaling leaves high frequencies alone and divides low ones by the factor", () => {
    const freqs = llama3RopeFreqs(128, 500000, { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 });
    expect(freqs[0]).toBeCloseTo(1, 10);
    expect(freqs[63]!).toBeCloseTo(500000 ** (126 / 128) * 8, 0);
  });
});
