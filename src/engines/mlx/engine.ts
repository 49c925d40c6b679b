/**
 * The MLX engine: one loaded model, one {@link SequenceCache} per agent. Calls are serialized by the caller
 * (`concurrent` is false); every method runs to completion on the calling thread, yielding to the event loop
 * between tokens so aborts and streamed text get through.
 */
import { stat } from "node:fs/promises";
import { AgentRuntimeError, isAgentRuntimeError } from "../../errors.js";
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
import type { ChatFrontend } from "./chat.js";
import type { ModelConfig } from "./config.js";
import { findContextShift } from "../context-shift.js";
import { SequenceCache, type KeyShift } from "./kv-cache.js";
import { loadMlxParts, type MlxEngineParts } from "./load.js";
import type { Mx, MxArray } from "./mlx.js";
import type { LlamaModel } from "./model.js";
import { loadPromptCache, savePromptCache } from "./prompt-cache.js";
import { reclaimMajor, reclaimMinor } from "./reclaim.js";
import { makeKeyShift } from "./rope.js";
import { Sampler } from "./sampler.js";
import { TextStream } from "../text-stream.js";

export class MlxEngine implements Engine {
  readonly info: ModelInfo;
  readonly concurrent = false;
  readonly #mx: Mx;
  readonly #model: LlamaModel;
  readonly #chat: ChatFrontend;
  readonly #config: ModelConfig;
  readonly #maxSequences: number;
  readonly #batchSize: number;
  readonly #keyShift: KeyShift;
  readonly #sequences = new Map<string, SequenceCache>();
  #disposed = false;

  private constructor(parts: MlxEngineParts) {
    this.info = parts.info;
    this.#mx = parts.mx;
    this.#model = parts.model;
    this.#chat = parts.chat;
    this.#config = parts.model.config;
    this.#maxSequences = parts.maxSequences;
    this.#batchSize = parts.batchSize;
    this.#keyShift = makeKeyShift(parts.mx, parts.model.config.rope);
  }

  /** Loads a GGUF file or an mlx-community folder (see load.ts). */
  static async load(options: EngineLoadOptions): Promise<MlxEngine> {
    return MlxEngine.fromParts(await loadMlxParts(options));
  }

  /** An engine over parts already loaded (`agentrt/testing` wraps some of them to observe the engine). */
  static fromParts(parts: MlxEngineParts): MlxEngine {
    for (const name of ["maxSequences", "batchSize"] as const) {
      if (!Number.isInteger(parts[name]) || parts[name] < 1) throw new RangeError(`${name} must be an integer >= 1, got ${String(parts[name])}`);
    }
    return new MlxEngine(parts);
  }

  async openSequence(key: string): Promise<void> {
    this.#checkOpen();
    if (this.#sequences.has(key)) return;
    if (this.#sequences.size >= this.#maxSequences) {
      throw new AgentRuntimeError("ERR_NO_FREE_SEQUENCE", `All ${this.#maxSequences} sequences are taken`, {
        details: { key, sequences: this.#maxSequences },
      });
    }
    this.#sequences.set(key, new SequenceCache(this.#mx, this.#config.layers));
  }

  async closeSequence(key: string): Promise<void> {
    const seq = this.#sequences.get(key);
    if (!seq) return;
    seq.clear();
    this.#sequences.delete(key);
    reclaimMajor();
  }

  async prefill(key: string, messages: ChatMessage[], signal: AbortSignal): Promise<EvaluationCounts> {
    const seq = this.#sequence(key);
    const prompt = this.#chat.render(messages);
    if (prompt.tokens.length > this.info.contextSize) throw this.#contextFull(prompt.tokens.length);
    const result = await this.#evaluatePrompt(seq, prompt.tokens, false, false, signal);
    if (result.aborted) throw new AgentRuntimeError("ERR_ABORTED", "Prefill was aborted", { details: { key } });
    return this.#counts(prompt.tokens.length, result.reused, result.evaluated, seq);
  }

  async countTokens(messages: ChatMessage[]): Promise<number> {
    this.#checkOpen();
    return this.#chat.render(messages).tokens.length;
  }

  async generate(key: string, input: GenerateInput): Promise<GenerateOutput> {
    const started = performance.now();
    const seq = this.#sequence(key);
    const prompt = this.#chat.render(input.messages);
    // The prompt plus the first generated token must fit: the token after the prompt needs a cache slot.
    if (prompt.tokens.length >= this.info.contextSize) throw this.#contextFull(prompt.tokens.length);
    const sampler = new Sampler(input.sampling);
    const evaluation = await this.#evaluatePrompt(seq, prompt.tokens, true, input.contextShift === true, input.signal);
    const counts = this.#counts(prompt.tokens.length, evaluation.reused, evaluation.evaluated, seq);
    const stream = new TextStream((t) => this.#chat.decode(t), prompt.stopStrings, input.onText);
    let stopReason: StopReason = "maxTokens";
    let ttftMs = 0;
    let firstAt = 0;
    let generated = 0;
    let logits = evaluation.logits;
    if (evaluation.aborted || !logits) stopReason = "aborted";
    else if (input.maxTokens <= 0) stopReason = "maxTokens";
    else {
      try {
        for (;;) {
          const token = sampler.sample(this.#mx, logits);
          if (generated === 0) {
            firstAt = performance.now();
            ttftMs = firstAt - started;
          }
          if (prompt.stopTokens.has(token)) {
            stopReason = "eos";
            break;
          }
          generated++;
          if (stream.push(token)) {
            stopReason = "eos";
            break;
          }
          if (generated >= input.maxTokens) {
            stopReason = "maxTokens";
            break;
          }
          if (seq.length >= this.info.contextSize) {
            stopReason = "contextFull";
            break;
          }
          // Let the caller's abort and the streamed text through between tokens.
          await yieldToEventLoop();
          if (input.signal.aborted) {
            stopReason = "aborted";
            break;
          }
          logits = this.#step([token], seq);
        }
      } catch (error) {
        throw this.#failed(error, seq);
      }
    }
    const text = stream.finish();
    return {
      ...counts,
      cacheTokens: seq.length,
      shiftedTokens: evaluation.shifted,
      text,
      generatedTokens: generated,
      stopReason,
      ttftMs: firstAt > 0 ? ttftMs : performance.now() - started,
      decodeMs: firstAt > 0 ? performance.now() - firstAt : 0,
    };
  }

  async saveState(key: string, filePath: string): Promise<SavedState> {
    const seq = this.#sequence(key);
    try {
      await savePromptCache(this.#mx, filePath, seq, this.#config, this.info.name);
    } catch (error) {
      throw new AgentRuntimeError("ERR_STATE_WRITE_FAILED", `Could not write the KV state to ${filePath}: ${(error as Error).message}`, {
        cause: error,
        details: { key, filePath },
      });
    }
    const { size } = await stat(filePath);
    return { bytes: size, tokens: seq.length };
  }

  async loadState(key: string, filePath: string): Promise<{ tokens: number }> {
    const seq = this.#sequence(key);
    const loaded = await loadPromptCache(this.#mx, filePath, this.#config, this.#chat.vocabSize || this.#config.vocabSize, this.info.contextSize);
    seq.adopt(loaded.keys, loaded.values, loaded.length, loaded.tokens);
    return { tokens: seq.length };
  }

  /** A key without a sequence holds nothing (as in the llama.cpp engine). */
  stats(key: string): SequenceStats {
    this.#checkOpen();
    const seq = this.#sequences.get(key);
    if (!seq) return { tokens: 0, bytes: 0, allocatedBytes: 0 };
    return { tokens: seq.length, bytes: seq.length * this.info.kvBytesPerToken, allocatedBytes: seq.nbytes };
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const seq of this.#sequences.values()) seq.clear();
    this.#sequences.clear();
    await this.#chat.dispose();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }

  /**
   * Brings the cache to `tokens`: keeps the longest common prefix with the cached tokens, rewinds past it and
   * evaluates the rest in batches. With `needLogits`, at least the last prompt token is evaluated (its logits pick
   * the first reply token), as mlx-lm does when the whole prompt is cached. With `contextShift`, a cache holding
   * P + D + S for a prompt P + S + N loses D first and keeps S (see context-shift.ts and LayerCache.erase).
   */
  async #evaluatePrompt(
    seq: SequenceCache,
    tokens: readonly number[],
    needLogits: boolean,
    contextShift: boolean,
    signal: AbortSignal,
  ): Promise<{ reused: number; evaluated: number; shifted: number; logits: MxArray | undefined; aborted: boolean }> {
    let common = 0;
    const cached = seq.tokens;
    // Unknown (undefined) cached tokens come from an mlx-lm file without token ids. Like mlx-lm, which evaluates a
    // new prompt after a loaded prompt cache, we trust them to match, but only when the prompt extends the whole
    // cache; a shorter prompt cannot be its continuation, so the cache is dropped.
    const opaque = cached.some((t) => t === undefined);
    if (!opaque || tokens.length >= cached.length) {
      while (common < cached.length && common < tokens.length && (cached[common] === undefined || cached[common] === tokens[common])) common++;
    }
    let shifted = 0;
    const shift = contextShift && !opaque ? findContextShift(cached, tokens, common) : undefined;
    if (shift) {
      try {
        seq.erase(shift.prefix, shift.prefix + shift.removed, this.#keyShift);
        this.#mx.eval(...seq.arrays());
      } catch (error) {
        throw this.#failed(error, seq);
      }
      common += shift.kept;
      shifted = shift.removed;
    }
    if (needLogits && common === tokens.length) common = Math.max(0, common - 1);
    seq.trimTo(common);
    seq.confirm(tokens.slice(0, common));
    let logits: MxArray | undefined;
    let evaluated = 0;
    const batch = this.#batchSize;
    try {
      for (let start = common; start < tokens.length; start += batch) {
        if (signal.aborted) return { reused: common, evaluated, shifted, logits: undefined, aborted: true };
        const chunk = tokens.slice(start, start + batch);
        logits = this.#step(chunk, seq);
        evaluated += chunk.length;
        if (start + batch < tokens.length) await yieldToEventLoop();
      }
    } catch (error) {
      throw this.#failed(error, seq);
    }
    return { reused: common, evaluated, shifted, logits, aborted: false };
  }

  /** One forward call, evaluated right away so the lazy graph never spans more than one step. */
  #step(tokens: readonly number[], seq: SequenceCache): MxArray {
    // Collect last step's dead views first so MLX can write the cache in place (see reclaim.ts).
    reclaimMinor();
    const logits = this.#model.forward(tokens, seq);
    this.#mx.eval(logits, ...seq.arrays());
    seq.append(tokens);
    return logits;
  }

  #counts(promptTokens: number, reusedTokens: number, evaluatedTokens: number, seq: SequenceCache): EvaluationCounts {
    return { promptTokens, reusedTokens, evaluatedTokens, cacheTokens: seq.length };
  }

  #sequence(key: string): SequenceCache {
    this.#checkOpen();
    const seq = this.#sequences.get(key);
    if (!seq) throw new AgentRuntimeError("ERR_SEQUENCE_NOT_OPEN", `No sequence is open for ${key}`, { details: { key } });
    return seq;
  }

  #checkOpen(): void {
    if (this.#disposed) throw new AgentRuntimeError("ERR_ENGINE_CLOSED", "The MLX engine has been disposed");
  }

  #contextFull(promptTokens: number): AgentRuntimeError {
    return new AgentRuntimeError("ERR_CONTEXT_FULL", `The prompt has ${promptTokens} tokens; the context holds ${this.info.contextSize}`, {
      details: { promptTokens, contextSize: this.info.contextSize },
    });
  }

  /** A failure mid-evaluation leaves the cache in an unknown state: drop it so the next turn starts clean. */
  #failed(error: unknown, seq: SequenceCache): Error {
    if (isAgentRuntimeError(error)) return error;
    seq.clear();
    return new AgentRuntimeError("ERR_ENGINE_FAILED", `MLX evaluation failed: ${(error as Error)?.message ?? String(error)}`, {
      cause: error,
    });
  }
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
