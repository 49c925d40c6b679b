import type { SamplingOptions } from "./engine.js";

/** Validates sampling settings; the error names the offending option. */
export function validateSampling(sampling: unknown): SamplingOptions {
  if (sampling === undefined) return { temperature: 0 };
  if (typeof sampling !== "object" || sampling === null) throw new TypeError("sampling must be an object");
  const { temperature = 0, topK, topP, seed, ...rest } = sampling as Record<string, unknown>;
  const unknownKeys = Object.keys(rest);
  if (unknownKeys.length > 0) throw new TypeError(`sampling has unknown option(s): ${unknownKeys.join(", ")}`);
  if (typeof temperature !== "number" || !Number.isFinite(temperature) || temperature < 0 || temperature > 10) {
    throw new RangeError(`sampling.temperature must be a number in [0, 10], got ${String(temperature)}`);
  }
  if (topK !== undefined && (typeof topK !== "number" || !Number.isInteger(topK) || topK < 0)) {
    throw new RangeError(`sampling.topK must be an integer ≥ 0, got ${String(topK)}`);
  }
  if (topP !== undefined && (typeof topP !== "number" || !(topP > 0 && topP <= 1))) {
    throw new RangeError(`sampling.topP must be a number in (0, 1], got ${String(topP)}`);
  }
  if (seed !== undefined && (typeof seed !== "number" || !Number.isSafeInteger(seed) || seed < 0)) {
    throw new RangeError(`sampling.seed must be a non-negative integer, got ${String(seed)}`);
  }
  return {
    temperature,
    ...(topK !== undefined ? { topK: topK as number } : {}),
    ...(topP !== undefined ? { topP: topP as number } : {}),
    ...(seed !== undefined ? { seed: seed as number } : {}),
  };
}
