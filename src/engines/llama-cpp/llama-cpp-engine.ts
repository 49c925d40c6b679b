import { basename } from "node:path";
import {
  getLlama,
  LlamaChat,
  LlamaLogLevel,
  resolveChatWrapper,
  type ChatWrapper,
  type Llama,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaModel,
  type Token,
} from "node-llama-cpp";
import { AgentRuntimeError } from "../../errors.js";
import { COMPLETION_FORMAT, commonPrefixLength, completionChatWrapper, toChatHistory } from "../chat-history.js";
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
import { resolveGgufModel } from "../model-source.js";
import { kvBytesPerToken } from "./kv-size.js";

/** Bumped when the on-disk state this engine writes changes meaning. */
const STATE_FORMAT = "llama.cpp-seq-state-v1";

interface SequenceSlot {
  sequence: LlamaContextSequence;
  chat: LlamaChat;
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

  private constructor(llama: Llama, model: LlamaModel, context: LlamaContext, chatWrapper: ChatWrapper, info: ModelInfo) {
    this.#llama = llama;
    this.#model = model;
    this.#context = context;
    this.#chatWrapper = chatWrapper;
    this.info = info;
  }

  static async load(options: EngineLoadOptions, onLog?: (level: "warn" | "info", msg: string) => void): Promise<LlamaCppEngine> {
    const modelPath = await resolveGgufModel(options.model, options.modelCacheDir);
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
    const context = await model.createContext({
      contextSize: options.contextSize,
      sequences: options.sequences,
      threads: options.threads,
      batchSize: options.batchSize ?? Math.min(512, options.contextSize),
    });
    const metadata = model.fileInfo.metadata as unknown as Record<string, unknown>;
    const architecture = String((metadata.general as Record<string, unknown> | undefined)?.architecture ?? "llama");
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
      chatFormat: hasTemplate ? chatWrapper.wrapperName : COMPLETION_FORMAT,
      stateFileExtension: ".bin",
      threads: options.threads,
    };
    return new LlamaCppEngine(llama, model, context, chatWrapper, info);
  }

  async openSequence(key: string): Promise<void> {
    if (this.#slots.has(key)) return;
    if (this.#context.sequencesLeft === 0) {
      throw new AgentRuntimeError("ERR_ENGINE_FAILED", "No free sequence in the context", { details: { key } });
    }
    const sequence = this.#context.getSequence();
    const chat = new LlamaChat({ contextSequence: sequence, chatWrapper: this.#chatWrapper, autoDisposeSequence: false });
    this.#slots.set(key, { sequence, chat });
  }

  async closeSequence(key: string): Promise<void> {
    const slot = this.#slots.get(key);
    if (!slot) return;
    this.#slots.delete(key);
    await slot.chat.dispose({ disposeSequence: false });
    // Disposing the sequence clears its KV cells and returns the sequence id to the context.
    await slot.sequence.dispose();
  }

  #slot(key: string): SequenceSlot {
    const slot = this.#slots.get(key);
    if (!slot) throw new AgentRuntimeError("ERR_ENGINE_FAILED", `No open sequence for ${key}`, { details: { key } });
    return slot;
  }

  #render(messages: readonly ChatMessage[], openResponse: boolean): Token[] {
    const { contextText } = this.#chatWrapper.generateContextState({ chatHistory: toChatHistory(messages, openResponse) });
    return contextText.tokenize(this.#model.tokenizer);
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
      throw new AgentRuntimeError(
        "ERR_CONTEXT_FULL",
        `The conversation needs ${promptTokens} tokens; the context holds ${this.info.contextSize}`,
        { details: { key, promptTokens, contextSize: this.info.contextSize } },
      );
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
    if (reused < tokens.length) await sequence.evaluateWithoutGeneratingNewTokens(tokens.slice(reused));
    return {
      promptTokens: tokens.length,
      reusedTokens: reused,
      evaluatedTokens: sequence.tokenMeter.usedInputTokens - before,
      cacheTokens: sequence.nextTokenIndex,
    };
  }

  async generate(key: string, input: GenerateInput): Promise<GenerateOutput> {
    input.signal.throwIfAborted();
    const { sequence, chat } = this.#slot(key);
    const prompt = this.#render(input.messages, true);
    this.#assertFits(prompt.length, key);
    const reused = commonPrefixLength(sequence.contextTokens, prompt);
    const room = this.info.contextSize - prompt.length - 1;
    const maxTokens = Math.max(0, Math.min(input.maxTokens, room));
    const started = performance.now();
    const inputBefore = sequence.tokenMeter.usedInputTokens;
    const outputBefore = sequence.tokenMeter.usedOutputTokens;
    let firstTokenAt = 0;
    let generatedTokens = 0;
    const { temperature = 0, topK, topP, seed } = input.sampling;
    const response = await chat.generateResponse(toChatHistory(input.messages, false), {
      maxTokens: Math.max(1, maxTokens),
      temperature,
      ...(temperature > 0 ? { topK: topK ?? 40, topP: topP ?? 0.95, ...(seed !== undefined ? { seed } : {}) } : {}),
      signal: input.signal,
      stopOnAbortSignal: true,
      onToken: (tokens) => {
        if (firstTokenAt === 0) firstTokenAt = performance.now();
        generatedTokens += tokens.length;
      },
      onTextChunk: (text) => input.onText(text),
    });
    const finished = performance.now();
    // The engine's own count over the turn, minus generated tokens fed back (the cache past the prompt).
    const evaluatedTokens =
      sequence.tokenMeter.usedInputTokens - inputBefore + sequence.tokenMeter.usedOutputTokens - outputBefore -
      Math.max(0, sequence.nextTokenIndex - prompt.length);
    if (firstTokenAt === 0) firstTokenAt = finished;
    // LlamaChat holds back tokens that may start a stop trigger or an incomplete character and never
    // passes them to onToken; the cache past the prompt counts every token that was generated and fed back.
    generatedTokens = Math.max(generatedTokens, sequence.nextTokenIndex - prompt.length);
    const stopReason: StopReason =
      response.metadata.stopReason === "abort"
        ? "aborted"
        : response.metadata.stopReason === "maxTokens"
          ? maxTokens < input.maxTokens
            ? "contextFull"
            : "maxTokens"
          : "eos";
    return {
      text: response.response,
      promptTokens: prompt.length,
      reusedTokens: reused,
      evaluatedTokens,
      cacheTokens: sequence.nextTokenIndex,
      generatedTokens,
      stopReason,
      ttftMs: firstTokenAt - started,
      decodeMs: finished - firstTokenAt,
    };
  }

  async saveState(key: string, filePath: string): Promise<SavedState> {
    const { sequence } = this.#slot(key);
    const { fileSize } = await sequence.saveStateToFile(filePath);
    return { bytes: fileSize, tokens: sequence.nextTokenIndex };
  }

  async loadState(key: string, filePath: string): Promise<{ tokens: number }> {
    const { sequence } = this.#slot(key);
    // The caller verified checksum and fingerprint: llama.cpp may crash on a foreign file.
    await sequence.loadStateFromFile(filePath, { acceptRisk: true });
    return { tokens: sequence.nextTokenIndex };
  }

  stats(key: string): SequenceStats {
    const slot = this.#slots.get(key);
    const tokens = slot ? slot.sequence.nextTokenIndex : 0;
    return { tokens, bytes: tokens * this.info.kvBytesPerToken, allocatedBytes: slot ? this.info.contextSize * this.info.kvBytesPerToken : 0 };
  }

  async dispose(): Promise<void> {
    for (const key of [...this.#slots.keys()]) await this.closeSequence(key);
    await this.#context.dispose();
    await this.#model.dispose();
    await this.#llama.dispose();
  }
}
