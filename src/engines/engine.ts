/**
 * The narrow seam between agentrt and an inference engine. Everything above it (actors, supervisor,
 * store, server) speaks only these types; everything below it (node-llama-cpp, MLX) lives inside the
 * generation worker. An engine holds one KV cache ("sequence") per resident agent, keyed by agent id.
 */

export type EngineName = "llama.cpp" | "mlx";

/** How K/V are stored: 16-bit floats, or llama.cpp's 8-bit blocks (32 values and one F16 scale, 34 bytes). */
export type KvType = "f16" | "q8_0";

export const KV_TYPES: readonly KvType[] = ["f16", "q8_0"];

export type ChatRole = "system" | "user" | "assistant";

export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/** Sampling settings. `temperature: 0` (the default) is greedy decoding and fully deterministic. */
export interface SamplingOptions {
  /** Default 0 (greedy). */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 disables. Default 40 when temperature > 0. */
  topK?: number;
  /** Nucleus sampling threshold in (0, 1]; 1 disables. Default 0.95 when temperature > 0. */
  topP?: number;
  /** Seed for sampled decoding; a fixed seed repeats the same output. */
  seed?: number;
}

export interface EngineLoadOptions {
  /** Which engine to load. */
  engine: EngineName;
  /** A GGUF file path, an `hf:` URI (llama.cpp), or an mlx-community style folder (mlx). */
  model: string;
  /** Tokens per agent sequence. */
  contextSize: number;
  /** Number of agent sequences held at once (the supervisor's `maxAgents`). */
  sequences: number;
  /** Compute threads; must be explicit (see README: default 4 is very slow on 2 cores). */
  threads: number;
  /** Batch size for prompt evaluation. */
  batchSize?: number;
  /**
   * Whether turns of different agents may be evaluated together in one batch (llama.cpp). When false,
   * the worker runs one request at a time. Default true.
   */
  batching?: boolean;
  /** Where `hf:` downloads are cached. */
  modelCacheDir?: string;
  /**
   * KV cache type, in memory and in state files. `"q8_0"` halves KV memory and state bytes (llama.cpp only; every
   * attention head's dimension must be a multiple of 32, or the load fails with a RangeError before llama.cpp
   * sees it; the MLX engine refuses it). Default `"f16"`.
   */
  kvType?: KvType;
  /**
   * Most bytes the KV caches of all sequences may take. An engine that reserves each sequence's whole context when
   * it loads (llama.cpp) opens min(`sequences`, floor(kvBudgetBytes / (contextSize × kvBytesPerToken))) sequences,
   * and fails with a RangeError when not even one fits; an engine whose caches grow (MLX) ignores it: the
   * supervisor admits agents while their caches fit. Default: no budget.
   */
  kvBudgetBytes?: number;
}

export interface ModelInfo {
  engine: EngineName;
  /** Human-readable model name (file or folder name, or the GGUF's general.name). */
  name: string;
  /** Resolved local path of the model file or folder. */
  path: string;
  /** Identifies model + engine + KV format: a state file is only loaded when its fingerprint matches. */
  fingerprint: string;
  /** Bytes of model weights held by the engine. */
  modelBytes: number;
  /** Tokens per agent sequence. */
  contextSize: number;
  /** KV cache bytes one token costs in memory. */
  kvBytesPerToken: number;
  /** Sequences the engine holds (fewer than asked where `kvBudgetBytes` caps a preallocating engine). */
  sequences: number;
  /**
   * A sequence's KV memory is reserved in steps of this many tokens: `contextSize` where the whole context is
   * reserved up front (llama.cpp, at load), 256 where the cache grows (MLX, as mlx-lm's KVCache).
   */
  kvStepTokens: number;
  /**
   * The `kvType` in force (llama.cpp; part of the fingerprint, so a state file of another type is never loaded).
   * The MLX engine leaves it out: its cache holds float32, the only type its CPU matmul takes.
   */
  kvType?: KvType;
  /** Extension of the engine's state files (".bin" for llama.cpp, ".safetensors" for MLX, which picks its reader by it). */
  stateFileExtension: string;
  /** Name of the chat formatting in use (a template name, or "generic" for models without one). */
  chatFormat: string;
  threads: number;
}

export interface EvaluationCounts {
  /** Tokens in the rendered prompt (system prompt + history + new message). */
  promptTokens: number;
  /** Prompt tokens already in the agent's KV cache and not evaluated again. */
  reusedTokens: number;
  /** Tokens the engine actually evaluated for the prompt (as counted by the engine). */
  evaluatedTokens: number;
  /** Tokens in the agent's KV cache afterwards. */
  cacheTokens: number;
}

export type StopReason = "eos" | "maxTokens" | "aborted" | "contextFull";

export interface GenerateInput {
  /** The whole conversation including the new user message; the engine reuses the cached prefix. */
  messages: ChatMessage[];
  maxTokens: number;
  sampling: SamplingOptions;
  signal: AbortSignal;
  /** Called with each piece of text as soon as it is decoded. */
  onText: (text: string) => void;
  /**
   * When the cache holds P + D + S and `messages` render as P + S + N (the caller dropped whole turns D after the
   * system prompt), remove D from the cache and keep S, shifting its positions, then evaluate only N; when the
   * rendering is no such continuation (or S would be under 8 tokens), rewind to the common prefix as usual.
   * Replies after a shift approximate those of a fresh cache: S's keys were computed with D in view.
   * Default false (always rewind: exact, but S is evaluated again).
   */
  contextShift?: boolean;
}

export interface GenerateOutput extends EvaluationCounts {
  text: string;
  /** Tokens a context shift removed from the cache before this turn (0 without a shift). */
  shiftedTokens: number;
  generatedTokens: number;
  stopReason: StopReason;
  /** Milliseconds from the call to the first generated token. */
  ttftMs: number;
  /** Milliseconds spent generating after the first token. */
  decodeMs: number;
}

export interface SavedState {
  /** Bytes written by the engine. */
  bytes: number;
  /** Tokens in the saved cache. */
  tokens: number;
}

export interface SequenceStats {
  tokens: number;
  /** KV bytes holding this sequence's tokens (tokens × kvBytesPerToken). */
  bytes: number;
  /** KV bytes reserved for the sequence (llama.cpp preallocates the context; MLX grows in steps). */
  allocatedBytes: number;
}

/**
 * KV bytes the engine reserves for a sequence holding `tokens` tokens: whole steps of `kvStepTokens`, at least one
 * (the whole context on llama.cpp). What the supervisor charges a resident agent against `kvBudgetBytes`.
 */
export function kvReservedBytes(info: Pick<ModelInfo, "kvBytesPerToken" | "kvStepTokens">, tokens: number): number {
  return Math.max(1, Math.ceil(tokens / info.kvStepTokens)) * info.kvStepTokens * info.kvBytesPerToken;
}

export interface Engine {
  readonly info: ModelInfo;
  /** Whether the engine may run several sequences' work at once (llama.cpp batches them). */
  readonly concurrent: boolean;
  /** Claims a sequence for `key`. Throws when every sequence is taken. */
  openSequence(key: string): Promise<void>;
  /** Frees the sequence of `key` and its KV memory. */
  closeSequence(key: string): Promise<void>;
  /** Evaluates `messages` into the sequence without generating (used for the system prompt at spawn). */
  prefill(key: string, messages: ChatMessage[], signal: AbortSignal): Promise<EvaluationCounts>;
  /** Renders `messages`, evaluates only what the cache lacks, then generates the assistant's reply. */
  generate(key: string, input: GenerateInput): Promise<GenerateOutput>;
  /**
   * Tokens the prompt `generate` would render for `messages` occupies (with the assistant's turn opened after a
   * last user message): what `generate` reports as `promptTokens`. Tokenizes only; no sequence is needed.
   */
  countTokens(messages: ChatMessage[]): Promise<number>;
  /** Writes the sequence's KV state to `filePath` (the caller handles atomic rename and checksums). */
  saveState(key: string, filePath: string): Promise<SavedState>;
  /** Replaces the sequence's KV state with a file the caller has verified for this fingerprint. */
  loadState(key: string, filePath: string): Promise<{ tokens: number }>;
  stats(key: string): SequenceStats;
  dispose(): Promise<void>;
}

/** An engine the runtime can lose: it reports when its host (the worker thread) dies. */
export interface HostedEngine extends Omit<Engine, "stats"> {
  /** Stats of several sequences in one round trip. */
  stats(keys: string[]): Promise<Record<string, SequenceStats>>;
  /** Registers a crash listener; returns the function that removes it. */
  onCrash(listener: (error: Error) => void): () => void;
}
