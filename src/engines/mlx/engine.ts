/**
 * The MLX engine: one loaded model, one {@link SequenceCache} per agent. Calls are serialized by the caller
 * (`concurrent` is false); every method runs to completion on the calling thread, yielding to the event loop
 * between tokens so aborts and streamed text get through.
 */
import { AgentRuntimeError, isAgentRuntimeError } from "../../errors.js";
import type {
  ChatMessage,
  Engine,
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
import { SequenceCache } from "./kv-cache.js";
import type { Mx, MxArray } from "./mlx.js";
import type { LlamaModel } from "./model.js";
import { loadPromptCache, savePromptCache } from "./prompt-cache.js";
import { Sampler } from "./sampler.js";
import { TextStream } from "./text-stream.js";
import { reclaimMajor, reclaimMinor } from "./reclaim.js";
import { stat } from "node:fs/promises";

export interface MlxEngineParts {
  mx: Mx;
  model: LlamaModel;
  chat: ChatFrontend;
  info: ModelInfo;
  maxSequences: number;
  /** Prompt tokens evaluated per forward call (bounds the attention matrix and the lazy graph). */
  batchSize: number;
}

export class MlxEngine implements Engine {
  readonly info: ModelInfo;
  readonly concurrent = false;
  private readonly mx: Mx;
  private readonly model: LlamaModel;
  private readonly chat: ChatFrontend;
  private readonly config: ModelConfig;
  private readonly sequences = new Map<string, SequenceCache>();
  private readonly replies = new Map<string, number[]>();
  private disposed = false;

  constructor(private readonly parts: MlxEngineParts) {
    this.info = parts.info;
    this.mx = parts.mx;
    this.model = parts.model;
    this.chat = parts.chat;
    this.config = parts.model.config;
  }

  async openSequence(key: string): Promise<void> {
    this.checkOpen();
    if (this.sequences.has(key)) return;
    if (this.sequences.size >= this.parts.maxSequences) {
      throw new AgentRuntimeError("ERR_ENGINE_FAILED", `All ${this.parts.maxSequences} sequences are taken`, {
        details: { key, sequences: this.parts.maxSequences },
      });
    }
    this.sequences.set(key, new SequenceCache(this.mx, this.config.layers));
  }

  async closeSequence(key: string): Promise<void> {
    this.sequences.get(key)?.clear();
    this.sequences.delete(key);
    this.replies.delete(key);
    reclaimMajor();
  }

  async prefill(key: string, messages: ChatMessage[], signal: AbortSignal): Promise<EvaluationCounts> {
    const seq = this.sequence(key);
    const prompt = this.chat.render(messages);
    if (prompt.tokens.length > this.info.contextSize) throw this.contextFull(prompt.tokens.length);
    const result = await this.evaluatePrompt(seq, prompt.tokens, false, signal);
    if (result.aborted) throw new AgentRuntimeError("ERR_ABORTED", "Prefill was aborted", { details: { key } });
    return this.counts(prompt.tokens.length, result.reused, result.evaluated, seq);
  }

  async generate(key: string, input: GenerateInput): Promise<GenerateOutput> {
    const started = performance.now();
    const seq = this.sequence(key);
    const prompt = this.chat.render(input.messages);
    // The prompt plus the first generated token must fit: the token after the prompt needs a cache slot.
    if (prompt.tokens.length >= this.info.contextSize) throw this.contextFull(prompt.tokens.length);
    const sampler = new Sampler(input.sampling);
    const evaluation = await this.evaluatePrompt(seq, prompt.tokens, true, input.signal);
    const counts = this.counts(prompt.tokens.length, evaluation.reused, evaluation.evaluated, seq);
    const stream = new TextStream((t) => this.chat.decode(t), prompt.stopStrings, input.onText);
    let stopReason: StopReason = "maxTokens";
    let ttftMs = 0;
    let firstAt = 0;
    let generated = 0;
    let logits = evaluation.logits;
    const reply: number[] = [];
    this.replies.set(key, reply);
    if (evaluation.aborted || !logits) stopReason = "aborted";
    else if (input.maxTokens <= 0) stopReason = "maxTokens";
    else {
      try {
        for (;;) {
          const token = sampler.sample(this.mx, logits);
          if (generated === 0) {
            firstAt = performance.now();
            ttftMs = firstAt - started;
          }
          if (prompt.stopTokens.has(token)) {
            stopReason = "eos";
            break;
          }
          generated++;
          reply.push(token);
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
          logits = this.step([token], seq);
        }
      } catch (error) {
        throw this.failed(error, seq);
      }
    }
    const text = stream.finish();
    return {
      ...counts,
      cacheTokens: seq.length,
      text,
      generatedTokens: generated,
      stopReason,
      ttftMs: firstAt > 0 ? ttftMs : performance.now() - started,
      decodeMs: firstAt > 0 ? performance.now() - firstAt : 0,
    };
  }

  async saveState(key: string, filePath: string): Promise<SavedState> {
    const seq = this.sequence(key);
    try {
      await savePromptCache(this.mx, filePath, seq, this.config, this.info.name);
    } catch (error) {
      throw new AgentRuntimeError("ERR_ENGINE_FAILED", `Could not write the KV state to ${filePath}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    const { size } = await stat(filePath);
    return { bytes: size, tokens: seq.length };
  }

  async loadState(key: string, filePath: string): Promise<{ tokens: number }> {
    const seq = this.sequence(key);
    const loaded = await loadPromptCache(this.mx, filePath, this.config, this.chat.vocabSize || this.config.vocabSize, this.info.contextSize);
    seq.clear();
    if (loaded.length > 0) seq.layers.forEach((layer, i) => layer.setState(loaded.keys[i]!, loaded.values[i]!));
    seq.tokens = loaded.tokens ? [...loaded.tokens] : new Array<number | undefined>(loaded.length).fill(undefined);
    return { tokens: seq.length };
  }

  /** Diagnostics beyond the Engine interface (tests, tools): the token ids the sequence's cache holds. */
  cachedTokens(key: string): readonly (number | undefined)[] {
    return [...this.sequence(key).tokens];
  }

  /** Diagnostics: the reply tokens of the sequence's last `generate` (stop token excluded). */
  lastReplyTokens(key: string): readonly number[] {
    return [...(this.replies.get(key) ?? [])];
  }

  /** Diagnostics: next-token logits after `tokens`, computed in a scratch cache (no agent's cache is touched). */
  logitsAfter(tokens: readonly number[]): number[] {
    this.checkOpen();
    const scratch = new SequenceCache(this.mx, this.config.layers);
    const logits = this.model.forward(tokens, scratch);
    this.mx.eval(logits);
    return logits.tolist() as number[];
  }

  stats(key: string): SequenceStats {
    const seq = this.sequence(key);
    return { tokens: seq.length, bytes: seq.length * this.info.kvBytesPerToken, allocatedBytes: seq.nbytes };
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    for (const seq of this.sequences.values()) seq.clear();
    this.sequences.clear();
    await this.chat.dispose();
  }

  /**
   * Brings the cache to `tokens`: keeps the longest common prefix with the cached tokens, rewinds past it and
   * evaluates the rest in batches. With `needLogits`, at least the last prompt token is evaluated (its logits pick
   * the first reply token), as mlx-lm does when the whole prompt is cached.
   */
  private async evaluatePrompt(
    seq: SequenceCache,
    tokens: readonly number[],
    needLogits: boolean,
    signal: AbortSignal,
  ): Promise<{ reused: number; evaluated: number; logits: MxArray | undefined; aborted: boolean }> {
    let common = 0;
    const cached = seq.tokens;
    // Unknown (undefined) cached tokens come from an mlx-lm file without token ids. Like mlx-lm, which evaluates a
    // new prompt after a loaded prompt cache, we trust them to match, but only when the prompt extends the whole
    // cache; a shorter prompt cannot be its continuation, so the cache is dropped.
    const opaque = cached.some((t) => t === undefined);
    if (!opaque || tokens.length >= cached.length) {
      while (common < cached.length && common < tokens.length && (cached[common] === undefined || cached[common] === tokens[common])) common++;
    }
    if (needLogits && common === tokens.length) common = Math.max(0, common - 1);
    seq.trimTo(common);
    for (let i = 0; i < common; i++) seq.tokens[i] = tokens[i];
    let logits: MxArray | undefined;
    let evaluated = 0;
    const batch = Math.max(1, this.parts.batchSize);
    try {
      for (let start = common; start < tokens.length; start += batch) {
        if (signal.aborted) return { reused: common, evaluated, logits: undefined, aborted: true };
        const chunk = tokens.slice(start, start + batch);
        logits = this.step(chunk, seq);
        evaluated += chunk.length;
        if (start + batch < tokens.length) await yieldToEventLoop();
      }
    } catch (error) {
      throw this.failed(error, seq);
    }
    return { reused: common, evaluated, logits, aborted: false };
  }

  /** One forward call, evaluated right away so the lazy graph never spans more than one step. */
  private step(tokens: readonly number[], seq: SequenceCache): MxArray {
    // Collect last step's dead views first so MLX can write the cache in place (see reclaim.ts).
    reclaimMinor();
    const logits = this.model.forward(tokens, seq);
    this.mx.eval(logits, ...seq.arrays());
    seq.tokens.push(...tokens);
    return logits;
  }

  private counts(promptTokens: number, reusedTokens: number, evaluatedTokens: number, seq: SequenceCache): EvaluationCounts {
    return { promptTokens, reusedTokens, evaluatedTokens, cacheTokens: seq.length };
  }

  private sequence(key: string): SequenceCache {
    this.checkOpen();
    const seq = this.sequences.get(key);
    if (!seq) throw new AgentRuntimeError("ERR_ENGINE_FAILED", `No sequence is open for ${key}`, { details: { key } });
    return seq;
  }

  private checkOpen(): void {
    if (this.disposed) throw new AgentRuntimeError("ERR_ENGINE_FAILED", "The MLX engine has been disposed");
  }

  private contextFull(promptTokens: number): AgentRuntimeError {
    return new AgentRuntimeError(
      "ERR_CONTEXT_FULL",
      `The prompt has ${promptTokens} tokens; the context holds ${this.info.contextSize}`,
      { details: { promptTokens, contextSize: this.info.contextSize } },
    );
  }

  /** A failure mid-evaluation leaves the cache in an unknown state: drop it so the next turn starts clean. */
  private failed(error: unknown, seq: SequenceCache): Error {
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
