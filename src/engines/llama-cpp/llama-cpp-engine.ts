import { basename } from "node:path";
import {
  getLlama,
  GgmlType,
  LlamaLogLevel,
  readGgufFileInfo,
  resolveChatWrapper,
  SpecialToken,
  SpecialTokensText,
  type ChatWrapper,
  type Llama,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaModel,
  type Token,
} from "node-llama-cpp";
import { AgentRuntimeError, isAgentRuntimeError } from "../../errors.js";
import { COMPLETION_FORMAT, commonPrefixLength, completionChatWrapper, toChatHistory } from "../chat-history.js";
import { findContextShift } from "../context-shift.js";
import type {
  ChatMessage,
  Engine,
  EngineLoadOptions,
  EvaluationCounts,
  GenerateInput,
  GenerateOutput,
  ModelInfo,
  SavedState,
  SequenceStats,
  StopReason,
} from "../engine.js";
import { modelFingerprint } from "../fingerprint.js";
import { validateLoadOptions } from "../load-options.js";
import { splitStopTriggers } from "../stop-triggers.js";
import { TextStream } from "../text-stream.js";
import { resolveGgufModel } from "../model-source.js";
import { attentionShape, kvBytesPerToken, Q8_0_BLOCK } from "./kv-size.js";

/**
 * Refuses `kvType: "q8_0"` for a model whose head dimension is not a multiple of 32 (stories260K's is 8), from
 * the GGUF's header alone: llama.cpp would only fail later, and a native failure can take the process down.
 */
async function assertQuantizableKv(modelPath: string): Promise<void> {
  const { metadata } = await readGgufFileInfo(modelPath, { readTensorInfo: false });
  const raw = metadata as unknown as Record<string, unknown>;
  const architecture = String((raw.general as Record<string, unknown> | undefined)?.architecture ?? "llama");
  const { keyLength, valueLength } = attentionShape(raw, architecture);
  if (keyLength % Q8_0_BLOCK !== 0 || valueLength % Q8_0_BLOCK !== 0) {
    throw new RangeError(
      `kvType "q8_0" needs attention heads whose dimension is a multiple of ${Q8_0_BLOCK}; ${basename(modelPath)} has keys of ${keyLength} and values of ${valueLength}: use "f16"`,
    );
  }
}

interface StopSet {
  tokens: ReadonlySet<Token>;
  strings: readonly string[];
}

/** Bumped when the on-disk state this engine writes changes meaning. */
const STATE_FORMAT = "llama.cpp-seq-state-v1";

interface SequenceSlot {
  sequence: LlamaContextSequence;
}

/** The llama.cpp engine: one context, one sequence per resident agent, through node-llama-cpp. */
export class LlamaCppEngine implements Engine {
  readonly concurrent = true;
  readonly info: ModelInfo;
  readonly #llama: Llama;
  readonly #model: LlamaModel;
  readonly #context: LlamaContext;
  readonly #chatWrapper: ChatWrapper;
  readonly #slots = new Map<string, SequenceSlot>();
  /** Stop triggers split into ids and texts, per distinct trigger list of the chat wrapper. */
  readonly #stops = new Map<string, StopSet>();
  #disposed = false;

  private constructor(llama: Llama, model: LlamaModel, context: LlamaContext, chatWrapper: ChatWrapper, info: ModelInfo) {
    this.#llama = llama;
    this.#model = model;
    this.#context = context;
    this.#chatWrapper = chatWrapper;
    this.info = info;
  }

  static async load(options: EngineLoadOptions, onLog?: (level: "warn" | "info", msg: string) => void): Promise<LlamaCppEngine> {
    validateLoadOptions(options);
    if (options.engine !== "llama.cpp") throw new TypeError(`engine must be "llama.cpp" to load the llama.cpp engine, got "${options.engine}"`);
    const modelPath = await resolveGgufModel(options.model, options.modelCacheDir);
    const kvType = options.kvType ?? "f16";
    if (kvType === "q8_0") await assertQuantizableKv(modelPath);
    const llama = await getLlama({
      gpu: "auto",
      build: "never",
      logLevel: LlamaLogLevel.error,
      logger: (level, message) => {
        if (level === LlamaLogLevel.error || level === LlamaLogLevel.fatal) onLog?.("warn", message.trim());
      },
    });
    let model: LlamaModel;
    try {
      model = await llama.loadModel({ modelPath });
    } catch (error) {
      throw new AgentRuntimeError("ERR_MODEL_INVALID", `llama.cpp could not load ${modelPath}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    const metadata = model.fileInfo.metadata as unknown as Record<string, unknown>;
    const architecture = String((metadata.general as Record<string, unknown> | undefined)?.architecture ?? "llama");
    let sequences: number;
    try {
      sequences = budgetedSequences(options, metadata, architecture, kvType);
    } catch (error) {
      await model.dispose();
      await llama.dispose();
      throw error;
    }
    let context: LlamaContext;
    try {
      context = await model.createContext({
        contextSize: options.contextSize,
        sequences,
        threads: options.threads,
        batchSize: options.batchSize ?? Math.min(512, options.contextSize),
        // A quantized V cache needs flash attention, which "auto" (the default) turns on where it runs.
        ...(kvType === "q8_0" ? { experimentalKvCacheKeyType: "Q8_0", experimentalKvCacheValueType: "Q8_0" } : {}),
      });
    } catch (error) {
      await model.dispose();
      await llama.dispose();
      throw error;
    }
    const hasTemplate = typeof (metadata.tokenizer as Record<string, unknown> | undefined)?.chat_template === "string";
    // Without a template, resolveChatWrapper guesses from the model's name; a base model continues text.
    const chatWrapper = (hasTemplate ? resolveChatWrapper(model) : null) ?? (await completionChatWrapper());
    const fingerprint = await modelFingerprint(modelPath, [
      "llama.cpp",
      STATE_FORMAT,
      String(context.kvCacheKeyType),
      String(context.kvCacheValueType),
    ]);
    const info: ModelInfo = {
      engine: "llama.cpp",
      name: String((metadata.general as Record<string, unknown> | undefined)?.name ?? basename(modelPath)),
      path: modelPath,
      fingerprint,
      modelBytes: model.size,
      contextSize: context.contextSize,
      kvBytesPerToken: kvBytesPerToken(metadata, architecture, context.kvCacheKeyType, context.kvCacheValueType),
      sequences: context.totalSequences,
      // The context reserves every sequence's whole cache when it is created.
      kvStepTokens: context.contextSize,
      kvType,
      chatFormat: hasTemplate ? chatWrapper.wrapperName : COMPLETION_FORMAT,
      stateFileExtension: ".bin",
      threads: options.threads,
    };
    return new LlamaCppEngine(llama, model, context, chatWrapper, info);
  }

  async openSequence(key: string): Promise<void> {
    this.#checkOpen();
    if (this.#slots.has(key)) return;
    if (this.#context.sequencesLeft === 0) {
      throw new AgentRuntimeError("ERR_NO_FREE_SEQUENCE", `All ${this.#context.totalSequences} sequences of the context are taken`, {
        details: { key, sequences: this.#context.totalSequences },
      });
    }
    this.#slots.set(key, { sequence: this.#context.getSequence() });
  }

  async closeSequence(key: string): Promise<void> {
    const slot = this.#slots.get(key);
    if (!slot) return;
    this.#slots.delete(key);
    // Disposing the sequence clears its KV cells and returns the sequence id to the context.
    await slot.sequence.dispose();
  }

  #checkOpen(): void {
    if (this.#disposed) throw new AgentRuntimeError("ERR_ENGINE_CLOSED", "The llama.cpp engine has been disposed");
  }

  #slot(key: string): SequenceSlot {
    this.#checkOpen();
    const slot = this.#slots.get(key);
    if (!slot) throw new AgentRuntimeError("ERR_SEQUENCE_NOT_OPEN", `No sequence is open for ${key}`, { details: { key } });
    return slot;
  }

  /** node-llama-cpp's own failures mid-evaluation become ERR_ENGINE_FAILED; coded errors and aborts pass as they are. */
  #failed(error: unknown, key: string, signal: AbortSignal): unknown {
    if (isAgentRuntimeError(error) || signal.aborted) return error;
    return new AgentRuntimeError("ERR_ENGINE_FAILED", `llama.cpp evaluation failed: ${(error as Error)?.message ?? String(error)}`, {
      cause: error,
      details: { key },
    });
  }

  #render(messages: readonly ChatMessage[], openResponse: boolean): Token[] {
    const { contextText } = this.#chatWrapper.generateContextState({ chatHistory: toChatHistory(messages, openResponse) });
    return contextText.tokenize(this.#model.tokenizer);
  }

  /** The prompt `generate` evaluates (the assistant's turn opened) and what ends the reply. */
  #renderPrompt(messages: readonly ChatMessage[]): { tokens: Token[]; stops: StopSet } {
    const state = this.#chatWrapper.generateContextState({ chatHistory: toChatHistory(messages, true) });
    const key = JSON.stringify(state.stopGenerationTriggers.map((trigger) => trigger.toJSON()));
    let stops = this.#stops.get(key);
    if (!stops) {
      const split = splitStopTriggers(state.stopGenerationTriggers, this.#model, { SpecialToken, SpecialTokensText });
      stops = { tokens: new Set(split.tokens as Token[]), strings: split.strings };
      this.#stops.set(key, stops);
    }
    return { tokens: state.contextText.tokenize(this.#model.tokenizer), stops };
  }

  /**
   * The tokens of `messages` that every continuation shares: rendering them alone can end differently
   * from how they render with a next message (templates close turns lazily), so the prefix common to
   * two different continuations is what is safe to cache ahead of the next turn.
   */
  #stablePrefix(messages: readonly ChatMessage[]): Token[] {
    const a = this.#render([...messages, { role: "user", content: "a" }], true);
    const b = this.#render([...messages, { role: "user", content: "b" }], true);
    return a.slice(0, commonPrefixLength(a, b));
  }

  #assertFits(promptTokens: number, key: string): void {
    if (promptTokens >= this.info.contextSize) {
      throw new AgentRuntimeError("ERR_CONTEXT_FULL", `The conversation needs ${promptTokens} tokens; the context holds ${this.info.contextSize}`, {
        details: { key, promptTokens, contextSize: this.info.contextSize },
      });
    }
  }

  async prefill(key: string, messages: ChatMessage[], signal: AbortSignal): Promise<EvaluationCounts> {
    signal.throwIfAborted();
    const { sequence } = this.#slot(key);
    const tokens = this.#stablePrefix(messages);
    this.#assertFits(tokens.length, key);
    const reused = commonPrefixLength(sequence.contextTokens, tokens);
    if (reused < sequence.nextTokenIndex) {
      await sequence.eraseContextTokenRanges([{ start: reused, end: sequence.nextTokenIndex }]);
    }
    const before = sequence.tokenMeter.usedInputTokens;
    try {
      if (reused < tokens.length) await sequence.evaluateWithoutGeneratingNewTokens(tokens.slice(reused));
    } catch (error) {
      throw this.#failed(error, key, signal);
    }
    return {
      promptTokens: tokens.length,
      reusedTokens: reused,
      evaluatedTokens: sequence.tokenMeter.usedInputTokens - before,
      cacheTokens: sequence.nextTokenIndex,
    };
  }

  async countTokens(messages: ChatMessage[]): Promise<number> {
    this.#checkOpen();
    return this.#render(messages, true).length;
  }

  /**
   * Removes D from a cache holding P + D + S when the prompt is P + S + N (see context-shift.ts): llama.cpp drops
   * D's cells and moves S's down, re-rotating their keys. Returns the tokens removed and those evaluated again,
   * which is only ever non-zero when llama.cpp could not shift and node-llama-cpp rebuilt the sequence.
   */
  async #shift(sequence: LlamaContextSequence, prompt: readonly Token[]): Promise<{ removed: number; evaluated: number }> {
    const cached = sequence.contextTokens;
    const prefix = commonPrefixLength(cached, prompt);
    const shift = findContextShift(cached, prompt, prefix);
    if (!shift) return { removed: 0, evaluated: 0 };
    const before = sequence.tokenMeter.usedInputTokens;
    const moved = cached.length - prefix - shift.removed;
    await sequence.eraseContextTokenRanges([{ start: prefix, end: prefix + shift.removed }]);
    // node-llama-cpp meters the moved tokens as input; anything beyond them was evaluated.
    return { removed: shift.removed, evaluated: Math.max(0, sequence.tokenMeter.usedInputTokens - before - moved) };
  }

  /**
   * agentrt's own decode loop over `sequence.evaluate` (on stories260K, where per-token costs show, the engine
   * reached 73 % of raw `evaluate` through LlamaChat and 93 % this way): the prompt is the same rendering
   * `countTokens` and `prefill` use, the cache keeps its
   * longest common prefix with it, and the reply stops at an end-of-generation token or one of the chat
   * wrapper's stop triggers (ids, or texts held back while they could still appear, as the MLX engine does).
   */
  async generate(key: string, input: GenerateInput): Promise<GenerateOutput> {
    input.signal.throwIfAborted();
    const { sequence } = this.#slot(key);
    const started = performance.now();
    const { tokens: prompt, stops } = this.#renderPrompt(input.messages);
    this.#assertFits(prompt.length, key);
    let shifted = { removed: 0, evaluated: 0 };
    try {
      if (input.contextShift) shifted = await this.#shift(sequence, prompt);
      // The prompt's last token is always evaluated: its logits pick the first reply token.
      const reused = Math.min(commonPrefixLength(sequence.contextTokens, prompt), prompt.length - 1);
      if (reused < sequence.nextTokenIndex) await sequence.eraseContextTokenRanges([{ start: reused, end: sequence.nextTokenIndex }]);
      const inputBefore = sequence.tokenMeter.usedInputTokens;
      const outputBefore = sequence.tokenMeter.usedOutputTokens;
      // One token at least, as long as it fits: the context holds the prompt and every token fed back after it.
      const room = this.info.contextSize - prompt.length - 1;
      const maxTokens = Math.max(1, Math.min(input.maxTokens, room));
      const { temperature = 0, topK, topP, seed } = input.sampling;
      const stream = new TextStream((tokens) => this.#model.detokenize(tokens as Token[], false), stops.strings, input.onText);
      let stopReason: StopReason = input.maxTokens > maxTokens ? "contextFull" : "maxTokens";
      let firstTokenAt = 0;
      let generated = 0;
      const iterator = sequence.evaluate(prompt.slice(reused), {
        temperature,
        ...(temperature > 0 ? { topK: topK ?? 40, topP: topP ?? 0.95, ...(seed !== undefined ? { seed } : {}) } : {}),
        yieldEogToken: true,
      });
      try {
        for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
          const token = next.value;
          if (firstTokenAt === 0) firstTokenAt = performance.now();
          if (stops.tokens.has(token) || this.#model.isEogToken(token)) {
            stopReason = "eos";
            break;
          }
          generated++;
          if (stream.push(token)) {
            stopReason = "eos";
            break;
          }
          if (generated >= maxTokens) break;
          if (input.signal.aborted) {
            stopReason = "aborted";
            break;
          }
        }
      } finally {
        // Ends the generator without feeding back the last sampled token (it is not in the cache).
        await iterator.return();
      }
      const finished = performance.now();
      if (firstTokenAt === 0) firstTokenAt = finished;
      const text = stream.finish();
      return {
        text,
        shiftedTokens: shifted.removed,
        promptTokens: prompt.length,
        reusedTokens: reused,
        // The engine's own count over the turn, less the generated tokens fed back (the cache past the prompt).
        evaluatedTokens:
          shifted.evaluated +
          sequence.tokenMeter.usedInputTokens -
          inputBefore +
          sequence.tokenMeter.usedOutputTokens -
          outputBefore -
          Math.max(0, sequence.nextTokenIndex - prompt.length),
        cacheTokens: sequence.nextTokenIndex,
        generatedTokens: generated,
        stopReason,
        ttftMs: firstTokenAt - started,
        decodeMs: finished - firstTokenAt,
      };
    } catch (error) {
      throw this.#failed(error, key, input.signal);
    }
  }

  async saveState(key: string, filePath: string): Promise<SavedState> {
    const { sequence } = this.#slot(key);
    try {
      const { fileSize } = await sequence.saveStateToFile(filePath);
      return { bytes: fileSize, tokens: sequence.nextTokenIndex };
    } catch (error) {
      throw new AgentRuntimeError(
        "ERR_STATE_WRITE_FAILED",
        `Could not write the KV state to ${filePath}: ${(error as Error)?.message ?? String(error)}`,
        {
          cause: error,
          details: { key, filePath },
        },
      );
    }
  }

  async loadState(key: string, filePath: string): Promise<{ tokens: number }> {
    const { sequence } = this.#slot(key);
    // The caller verified checksum and fingerprint: llama.cpp may crash on a foreign file.
    await sequence.loadStateFromFile(filePath, { acceptRisk: true });
    return { tokens: sequence.nextTokenIndex };
  }

  /** A key without a sequence holds nothing. */
  stats(key: string): SequenceStats {
    this.#checkOpen();
    const slot = this.#slots.get(key);
    const tokens = slot ? slot.sequence.nextTokenIndex : 0;
    return { tokens, bytes: tokens * this.info.kvBytesPerToken, allocatedBytes: slot ? this.info.contextSize * this.info.kvBytesPerToken : 0 };
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const key of [...this.#slots.keys()]) await this.closeSequence(key);
    await this.#context.dispose();
    await this.#model.dispose();
    await this.#llama.dispose();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

/**
 * Sequences to create under `kvBudgetBytes`: llama.cpp reserves each sequence's whole context when the context is
 * created, so a budget can only lower the number of sequences (agents resident at once), never admit more.
 */
function budgetedSequences(options: EngineLoadOptions, metadata: Record<string, unknown>, architecture: string, kvType: "f16" | "q8_0"): number {
  if (options.kvBudgetBytes === undefined) return options.sequences;
  const type = kvType === "q8_0" ? GgmlType.Q8_0 : GgmlType.F16;
  const perSequence = options.contextSize * kvBytesPerToken(metadata, architecture, type, type);
  const fit = Math.floor(options.kvBudgetBytes / perSequence);
  if (fit < 1) {
    throw new RangeError(
      `kvBudgetBytes (${options.kvBudgetBytes}) is less than one sequence's KV cache on llama.cpp, which reserves the whole ` +
        `context per sequence: ${options.contextSize} tokens × ${perSequence / options.contextSize} bytes = ${perSequence} bytes`,
    );
  }
  return Math.min(options.sequences, fit);
}
