/**
 * Loading a GGUF file for MLX: hyperparameters from the GGUF metadata (read with node-llama-cpp's header reader,
 * which does not load weights), tensors with mx.load, which reads GGUF tensors under llama.cpp's names.
 *
 * RoPE layout: llama.cpp's converter permutes the q/k rows of Llama-style models so that its "normal" RoPE rotates
 * adjacent pairs; MLX's `traditional` mode is that same rotation (measured: token-for-token agreement with
 * llama.cpp). Qwen2 GGUFs are not permuted and use llama.cpp's NEOX mode, i.e. MLX's non-traditional mode.
 */
import { basename } from "node:path";
import { AgentRuntimeError } from "../../errors.js";
import { loadArrays, type Mx } from "./mlx.js";
import type { ModelConfig } from "./config.js";
import { buildWeights, GGUF_NAMES } from "./build-weights.js";
import type { ModelWeights } from "./weights.js";

/** GGML tensor types the engine accepts; each is upcast to float32 (MLX CPU matmul takes float32 only). */
const FLOAT_GGML_TYPES = new Map<number, string>([
  [0, "F32"],
  [1, "F16"],
  [30, "BF16"],
]);

/** Architectures whose GGUF q/k are permuted for adjacent-pair RoPE (llama.cpp LLAMA_ROPE_TYPE_NORM). */
const TRADITIONAL_ROPE = new Set(["llama", "mistral"]);
const SUPPORTED = new Set([...TRADITIONAL_ROPE, "qwen2"]);

export interface LoadedWeights {
  config: ModelConfig;
  weights: ModelWeights;
  name: string;
}

type Meta = Record<string, unknown>;

export async function loadGgufWeights(mx: Mx, filePath: string): Promise<LoadedWeights> {
  const { readGgufFileInfo } = await import("node-llama-cpp");
  let info: Awaited<ReturnType<typeof readGgufFileInfo>>;
  try {
    info = await readGgufFileInfo(filePath, { readTensorInfo: true, logWarnings: false, ignoreKeys: ["tokenizer.ggml.merges"] });
  } catch (error) {
    throw new AgentRuntimeError("ERR_MODEL_INVALID", `${filePath} is not a readable GGUF file: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const metadata = info.metadata as unknown as Meta;
  const general = (metadata["general"] ?? {}) as Meta;
  const arch = String(general["architecture"] ?? "");
  if (!SUPPORTED.has(arch)) {
    throw new AgentRuntimeError(
      "ERR_MODEL_INVALID",
      `The MLX engine supports GGUF architectures ${[...SUPPORTED].join(", ")}; ${filePath} is "${arch}"`,
    );
  }
  // Refuse quantized GGUF tensors before MLX reads them: only float tensors are mapped to the float32 forward pass.
  for (const tensor of info.fullTensorInfo ?? info.tensorInfo ?? []) {
    if (!FLOAT_GGML_TYPES.has(tensor.ggmlType)) {
      throw new AgentRuntimeError(
        "ERR_MODEL_INVALID",
        `${filePath}: tensor ${tensor.name} has GGML type ${tensor.ggmlType}; the MLX engine reads F32/F16/BF16 GGUF files ` +
          "(use an mlx-community 4-bit folder for quantized weights)",
      );
    }
  }
  const a = (metadata[arch] ?? {}) as Meta;
  const attention = (a["attention"] ?? {}) as Meta;
  const ropeMeta = (a["rope"] ?? {}) as Meta;
  const num = (value: unknown, what: string): number => {
    const n = typeof value === "bigint" ? Number(value) : value;
    if (typeof n !== "number" || !Number.isFinite(n))
      throw new AgentRuntimeError("ERR_MODEL_INVALID", `${filePath}: GGUF metadata lacks ${arch}.${what}`);
    return n;
  };
  const hiddenSize = num(a["embedding_length"], "embedding_length");
  const heads = num(attention["head_count"], "attention.head_count");
  const kvHeads = attention["head_count_kv"] === undefined ? heads : num(attention["head_count_kv"], "attention.head_count_kv");
  const headDim = attention["key_length"] === undefined ? hiddenSize / heads : num(attention["key_length"], "attention.key_length");

  let tensors;
  try {
    tensors = loadArrays(mx, filePath);
  } catch (error) {
    throw new AgentRuntimeError("ERR_MODEL_INVALID", `MLX could not read ${filePath}: ${(error as Error).message}`, { cause: error });
  }
  const embedding = tensors["token_embd.weight"];
  if (!embedding) throw new AgentRuntimeError("ERR_MODEL_INVALID", `${filePath}: missing token_embd.weight`);

  const ropeDims = ropeMeta["dimension_count"] === undefined ? headDim : num(ropeMeta["dimension_count"], "rope.dimension_count");
  const base = ropeMeta["freq_base"] === undefined ? 10000 : num(ropeMeta["freq_base"], "rope.freq_base");
  const scaling = (ropeMeta["scaling"] ?? {}) as Meta;
  let scale = 1;
  let freqs: number[] | undefined;
  if (scaling["type"] === "linear" && scaling["factor"] !== undefined) scale = 1 / num(scaling["factor"], "rope.scaling.factor");
  else if (scaling["type"] !== undefined && scaling["type"] !== "none") {
    throw new AgentRuntimeError("ERR_MODEL_INVALID", `${filePath}: RoPE scaling "${String(scaling["type"])}" is not supported by the MLX engine`);
  }
  // Llama 3 GGUFs carry the scaled frequencies as per-dimension divisors in rope_freqs.weight.
  const ropeFactors = tensors["rope_freqs.weight"];
  if (ropeFactors) {
    const factors = ropeFactors.astype(mx.float32).tolist() as number[];
    if (factors.length !== ropeDims / 2)
      throw new AgentRuntimeError("ERR_MODEL_INVALID", `${filePath}: rope_freqs.weight has ${factors.length} values`);
    freqs = factors.map((f, i) => f * base ** ((2 * i) / ropeDims));
  }

  const config: ModelConfig = {
    architecture: arch,
    hiddenSize,
    layers: num(a["block_count"], "block_count"),
    heads,
    kvHeads,
    headDim,
    intermediateSize: num(a["feed_forward_length"], "feed_forward_length"),
    vocabSize: embedding.shape[0]!,
    rmsNormEps:
      attention["layer_norm_rms_epsilon"] === undefined ? 1e-5 : num(attention["layer_norm_rms_epsilon"], "attention.layer_norm_rms_epsilon"),
    rope: { dims: ropeDims, base, traditional: TRADITIONAL_ROPE.has(arch), scale, ...(freqs ? { freqs } : {}) },
    trainedContext: a["context_length"] === undefined ? undefined : num(a["context_length"], "context_length"),
  };
  const weights = buildWeights(mx, tensors, GGUF_NAMES, config, () => undefined, filePath);
  const name = typeof general["name"] === "string" && general["name"] ? general["name"] : basename(filePath);
  return { config, weights, name };
}
