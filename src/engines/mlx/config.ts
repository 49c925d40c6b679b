/**
 * The hyperparameters the forward pass needs, in one shape whatever the source format (GGUF metadata or an
 * mlx-community config.json). Only decoder-only Llama-family models are supported: Llama, Mistral, Qwen2, SmolLM.
 */

export interface RopeConfig {
  /** Rotated dimensions per head (partial rotary when smaller than headDim). */
  dims: number;
  base: number;
  /**
   * true: rotate adjacent pairs (x0,x1),(x2,x3)… — llama.cpp's GGUF layout, whose converter permutes q/k rows.
   * false: rotate the two halves (x_i, x_{i+d/2}) — the Hugging Face / mlx-lm layout.
   */
  traditional: boolean;
  /** Position multiplier for linear scaling (1 / factor); 1 means none. */
  scale: number;
  /** Per-frequency inverse wavelengths when the scaling needs custom frequencies (Llama 3 style); else undefined. */
  freqs?: number[];
}

export interface ModelConfig {
  /** "llama", "mistral", "qwen2" … as named by the source. */
  architecture: string;
  hiddenSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  rmsNormEps: number;
  rope: RopeConfig;
  /** Context length the model was trained with (informational; longer contexts are allowed). */
  trainedContext: number | undefined;
}

/** Llama 3 RoPE scaling, as mlx-lm's Llama3RoPE computes it (frequencies here are 1/wavelength multipliers). */
export function llama3RopeFreqs(
  dims: number,
  base: number,
  scaling: { factor: number; low_freq_factor?: number; high_freq_factor?: number; original_max_position_embeddings?: number },
): number[] {
  const factor = scaling.factor;
  const low = scaling.low_freq_factor ?? 1.0;
  const high = scaling.high_freq_factor ?? 4.0;
  const oldContext = scaling.original_max_position_embeddings ?? 8192;
  const lowWavelen = oldContext / low;
  const highWavelen = oldContext / high;
  const out: number[] = [];
  for (let i = 0; i < dims; i += 2) {
    // mlx-lm keeps "freqs" as wavelength divisors: base^(i/dims); rope then uses position / freq.
    let freq = base ** (i / dims);
    const wavelen = 2 * Math.PI * freq;
    if (wavelen > lowWavelen) freq *= factor;
    const isMedium = wavelen > highWavelen && wavelen < lowWavelen;
    if (isMedium) {
      const smooth = (oldContext / wavelen - low) / (high - low);
      freq = freq / ((1 - smooth) / factor + smooth);
    }
    out.push(freq);
  }
  return out;
}
