/**
 * The engines without agentrt: node-llama-cpp driven directly in this process, and agentrt's MLX
 * forward pass (src/engines/mlx/model.ts) driven by a plain greedy loop. Baselines for the overhead
 * and thread benchmarks. Prompts are rendered exactly as the engines render them (the GGUF's chat
 * template through node-llama-cpp), so both sides evaluate the same tokens.
 */
import {
  getLlama,
  LlamaChat,
  LlamaLogLevel,
  type ChatWrapper,
  type Llama,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaModel,
  type Token,
} from "node-llama-cpp";
import type { ChatMessage } from "../src/engines/engine.js";
import type { ChatFrontend } from "../src/engines/mlx/chat.js";
import { loadGgufChat } from "../src/engines/mlx/gguf-chat.js";
import { loadGgufWeights } from "../src/engines/mlx/gguf-source.js";
import { SequenceCache } from "../src/engines/mlx/kv-cache.js";
import { loadMlx, type Mx, type MxArray } from "../src/engines/mlx/mlx.js";
import { LlamaModel as MlxLlamaModel } from "../src/engines/mlx/model.js";
import { reclaimMajor, reclaimMinor } from "../src/engines/mlx/reclaim.js";
import { allArrays } from "../src/engines/mlx/weights.js";
import { toChatHistory } from "../src/engines/chat-history.js";

export interface RawGeneration {
  /** Wall time from the call to the last token. */
  ms: number;
  /** Wall time from the call to the first generated token. */
  ttftMs: number;
  tokens: number;
}

/** Prompt tokens as both engines render them for a GGUF model (vocabulary-only load). */
export class PromptRenderer {
  private constructor(readonly chat: ChatFrontend) {}

  static async load(modelPath: string): Promise<PromptRenderer> {
    return new PromptRenderer(await loadGgufChat(modelPath));
  }

  tokens(messages: readonly ChatMessage[]): number[] {
    return this.chat.render(messages).tokens;
  }

  dispose(): Promise<void> {
    return this.chat.dispose();
  }
}

/** node-llama-cpp in this process: one model, contexts on demand. */
export class RawLlama {
  private constructor(
    readonly llama: Llama,
    readonly model: LlamaModel,
  ) {}

  static async load(modelPath: string): Promise<RawLlama> {
    // The same settings as agentrt's llama.cpp engine (src/engines/llama-cpp/llama-cpp-engine.ts).
    const llama = await getLlama({ gpu: "auto", build: "never", logLevel: LlamaLogLevel.error });
    return new RawLlama(llama, await llama.loadModel({ modelPath }));
  }

  /** A context as agentrt's engine creates it: `sequences` sequences, batch min(512, contextSize). */
  async context(options: { contextSize: number; threads: number; sequences?: number }): Promise<RawLlamaContext> {
    const context = await this.model.createContext({
      contextSize: options.contextSize,
      sequences: options.sequences ?? 1,
      threads: options.threads,
      batchSize: Math.min(512, options.contextSize),
    });
    return new RawLlamaContext(this.model, context);
  }

  async dispose(): Promise<void> {
    await this.model.dispose();
    await this.llama.dispose();
  }
}

export class RawLlamaContext {
  readonly sequence: LlamaContextSequence;

  constructor(
    readonly model: LlamaModel,
    readonly context: LlamaContext,
    sequence?: LlamaContextSequence,
  ) {
    this.sequence = sequence ?? context.getSequence();
  }

  /** Another sequence of the same context (its evaluations batch with this one's when queued together). */
  another(): RawLlamaContext {
    return new RawLlamaContext(this.model, this.context, this.context.getSequence());
  }

  async reset(prefix: readonly number[]): Promise<void> {
    await this.sequence.clearHistory();
    if (prefix.length > 0) await this.sequence.evaluateWithoutGeneratingNewTokens(prefix as Token[]);
  }

  /** Prompt evaluation only; resolves its wall time. */
  async prefill(tokens: readonly number[]): Promise<number> {
    const started = performance.now();
    await this.sequence.evaluateWithoutGeneratingNewTokens(tokens as Token[]);
    return performance.now() - started;
  }

  /**
   * Evaluates `tokens` and then generates exactly `count` tokens greedily (an end-of-generation token
   * does not stop it), the fixed-budget loop node-llama-cpp's docs describe for `sequence.evaluate`.
   */
  async generate(tokens: readonly number[], count: number): Promise<RawGeneration> {
    const started = performance.now();
    let first = 0;
    let generated = 0;
    for await (const _token of this.sequence.evaluate(tokens as Token[], { temperature: 0, yieldEogToken: true })) {
      if (generated === 0) first = performance.now();
      if (++generated >= count) break;
    }
    const finished = performance.now();
    return { ms: finished - started, ttftMs: (first || finished) - started, tokens: generated };
  }

  /**
   * The same turn through LlamaChat with the options agentrt's engine passes (chat wrapper, text
   * chunks, stop triggers), in this process: the worker, the runtime and the durable turn are what
   * agentrt adds on top.
   */
  async chat(chatWrapper: ChatWrapper, messages: readonly ChatMessage[], maxTokens: number): Promise<RawGeneration> {
    const chat = new LlamaChat({ contextSequence: this.sequence, chatWrapper, autoDisposeSequence: false });
    try {
      const started = performance.now();
      const sampledBefore = this.sequence.tokenMeter.usedOutputTokens;
      let first = 0;
      let generated = 0;
      await chat.generateResponse(toChatHistory(messages, false), {
        maxTokens,
        temperature: 0,
        onToken: (tokens) => {
          if (first === 0) first = performance.now();
          generated += tokens.length;
        },
        // As agentrt's engine does: asking for text makes LlamaChat detokenize every token.
        onTextChunk: () => {},
      });
      const finished = performance.now();
      // LlamaChat holds back tokens that could begin a stop trigger and never passes them to onToken (on the
      // synthetic ChatML models, every one of them): the sequence's meter counts each sampled token.
      generated = Math.max(generated, this.sequence.tokenMeter.usedOutputTokens - sampledBefore);
      return { ms: finished - started, ttftMs: (first || finished) - started, tokens: generated };
    } finally {
      await chat.dispose({ disposeSequence: false });
    }
  }

  dispose(): Promise<void> {
    return this.context.dispose();
  }
}

/**
 * agentrt's MLX forward pass without the engine around it: weights loaded as the engine loads them,
 * one KV cache, greedy argmax. Each step does what MlxEngine.step does (collect dead wrappers, forward,
 * evaluate logits and cache); there is no chat rendering, text decoding or yielding to the event loop.
 * MLX's thread count is the process's OPENBLAS_NUM_THREADS (see lib.ts pinMlxThreads).
 */
export class RawMlx {
  readonly #cache: SequenceCache;

  private constructor(
    readonly mx: Mx,
    readonly model: MlxLlamaModel,
    readonly batchSize: number,
  ) {
    this.#cache = new SequenceCache(mx, model.config.layers);
  }

  static async load(modelPath: string, threads: number): Promise<RawMlx> {
    const mx = await loadMlx(threads);
    const { config, weights } = await loadGgufWeights(mx, modelPath);
    mx.eval(...allArrays(weights));
    return new RawMlx(mx, new MlxLlamaModel(mx, config, weights), 512);
  }

  #step(tokens: readonly number[]): MxArray {
    reclaimMinor();
    const logits = this.model.forward(tokens, this.#cache);
    this.mx.eval(logits, ...this.#cache.arrays());
    this.#cache.append(tokens);
    return logits;
  }

  #evaluate(tokens: readonly number[]): MxArray | undefined {
    let logits: MxArray | undefined;
    for (let start = 0; start < tokens.length; start += this.batchSize) logits = this.#step(tokens.slice(start, start + this.batchSize));
    return logits;
  }

  reset(prefix: readonly number[]): void {
    this.#cache.clear();
    reclaimMajor();
    this.#evaluate(prefix);
  }

  prefill(tokens: readonly number[]): number {
    const started = performance.now();
    this.#evaluate(tokens);
    return performance.now() - started;
  }

  generate(tokens: readonly number[], count: number): RawGeneration {
    const started = performance.now();
    let logits = this.#evaluate(tokens)!;
    let first = 0;
    let generated = 0;
    for (;;) {
      const token = this.mx.argmax(logits).item() as number;
      if (generated === 0) first = performance.now();
      if (++generated >= count) break;
      logits = this.#step([token]);
    }
    const finished = performance.now();
    return { ms: finished - started, ttftMs: first - started, tokens: generated };
  }

  dispose(): void {
    this.#cache.clear();
    reclaimMajor();
  }
}
