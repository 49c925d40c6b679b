import { GgmlType } from "node-llama-cpp";

/** Bytes per element (block size folded in) for KV cache types llama.cpp supports. */
const BYTES_PER_ELEMENT: Partial<Record<GgmlType, number>> = {
  [GgmlType.F32]: 4,
  [GgmlType.F16]: 2,
  [GgmlType.BF16]: 2,
  [GgmlType.Q8_0]: 34 / 32,
  [GgmlType.Q4_0]: 18 / 32,
  [GgmlType.Q4_1]: 20 / 32,
  [GgmlType.Q5_0]: 22 / 32,
  [GgmlType.Q5_1]: 24 / 32,
};

/** The GGUF's attention shape: layers, KV heads and the key and value dimensions of one head. */
export function attentionShape(
  metadata: Record<string, unknown>,
  architecture: string,
): { layers: number; kvHeads: number; keyLength: number; valueLength: number } {
  const arch = (metadata[architecture] ?? {}) as Record<string, unknown>;
  const num = (value: unknown, fallback: number): number => {
    if (typeof value === "number") return value;
    // Per-layer arrays (some architectures) — the maximum bounds the cost.
    if (Array.isArray(value) && value.length > 0) return Math.max(...(value as number[]));
    return fallback;
  };
  const layers = num(arch.block_count, 0);
  const embedding = num(arch.embedding_length, 0);
  const attention = (arch.attention ?? {}) as Record<string, unknown>;
  const heads = num(attention.head_count, 1);
  const kvHeads = num(attention.head_count_kv, heads);
  return { layers, kvHeads, keyLength: num(attention.key_length, embedding / heads), valueLength: num(attention.value_length, embedding / heads) };
}

/** Values per block of llama.cpp's 8-bit type: a head dimension it does not divide cannot be stored as Q8_0. */
export const Q8_0_BLOCK = 32;

/**
 * KV bytes one token costs: per layer, a key and a value vector of `headDim × kvHeads` elements.
 * Computed from the GGUF's hyperparameters, because llama.cpp exposes no per-sequence size.
 */
export function kvBytesPerToken(metadata: Record<string, unknown>, architecture: string, keyType: GgmlType, valueType: GgmlType): number {
  const { layers, kvHeads, keyLength, valueLength } = attentionShape(metadata, architecture);
  const keyBytes = BYTES_PER_ELEMENT[keyType] ?? 2;
  const valueBytes = BYTES_PER_ELEMENT[valueType] ?? 2;
  return Math.round(layers * kvHeads * (keyLength * keyBytes + valueLength * valueBytes));
}
