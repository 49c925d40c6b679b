import { createHash } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import type { ChatMessage, EvaluationCounts, GenerateInput, GenerateOutput, ModelInfo, SavedState, SequenceStats } from "../engines/engine.js";
import { commonPrefixLength } from "../engines/chat-history.js";
import { findContextShift } from "../engines/context-shift.js";
import { AgentRuntimeError } from "../errors.js";
import { kvReservedBytes, type HostedEngine } from "../engines/engine.js";

export interface FakeEngineOptions {
  /** Sequences available (the runtime's maxAgents). Default 3. */
  sequences?: number;
  /** Tokens per sequence. Default 4096. */
  contextSize?: number;
  /** Distinguishes fake "models": state files of another fingerprint are foreign. Default "fake-model". */
  model?: string;
  /**
   * KV memory is reserved in steps of this many tokens (`info.kvStepTokens`): the default, `contextSize`, reserves
   * the whole context per sequence as llama.cpp does; 256 grows the cache as MLX does.
   */
  kvStepTokens?: number;
  /** Called before each generation; await something here to hold a turn mid-flight in tests. */
  beforeGenerate?: (key: string, messages: ChatMessage[]) => Promise<void> | void;
}

const KV_BYTES_PER_TOKEN = 16;

/**
 * An in-process engine for fast tests: a "token" is one character of the rendered conversation, and
 * the reply is a deterministic function of the prompt. It keeps real per-sequence caches (so reuse and
 * rewinds are counted honestly) and writes real state files. No model, no threads.
 */
export class FakeEngine implements HostedEngine {
  readonly concurrent = true;
  readonly info: ModelInfo;
  readonly #options: FakeEngineOptions;
  readonly #caches = new Map<string, number[]>();
  readonly #crashListeners = new Set<(error: Error) => void>();
  #crashed = false;
  #disposed = false;
  #evaluatedTokens = 0;

  constructor(options: FakeEngineOptions = {}) {
    for (const name of ["sequences", "contextSize", "kvStepTokens"] as const) {
      const value = options[name];
      const min = name === "contextSize" ? 2 : 1;
      if (value !== undefined && (!Number.isInteger(value) || value < min))
        throw new RangeError(`${name} must be an integer >= ${min}, got ${String(value)}`);
    }
    this.#options = options;
    const model = options.model ?? "fake-model";
    this.info = {
      engine: "llama.cpp",
      name: model,
      path: `fake://${model}`,
      fingerprint: createHash("sha256").update(model).digest("hex"),
      modelBytes: 1000,
      contextSize: options.contextSize ?? 4096,
      kvBytesPerToken: KV_BYTES_PER_TOKEN,
      sequences: options.sequences ?? 3,
      kvStepTokens: options.kvStepTokens ?? options.contextSize ?? 4096,
      chatFormat: "fake",
      stateFileExtension: ".json",
      threads: 1,
    };
  }

  /** Renders like a chat template; `openResponse` ends with an open assistant tag, as engines do. */
  static render(messages: readonly ChatMessage[], openResponse = false): number[] {
    const text = messages.map((message) => `<${message.role}>${message.content}</${message.role}>`).join("") + (openResponse ? "<assistant>" : "");
    return [...text].map((char) => char.codePointAt(0)!);
  }

  /** The reply the fake model gives to a rendered prompt: short, deterministic, prompt-dependent. */
  static reply(prompt: readonly number[]): string {
    return `r${createHash("sha256").update(Uint32Array.from(prompt)).digest("hex").slice(0, 8)}`;
  }

  /** Prompt tokens evaluated over the engine's life. */
  get evaluatedTokens(): number {
    return this.#evaluatedTokens;
  }

  #check(): void {
    if (this.#crashed) throw new AgentRuntimeError("ERR_WORKER_CRASHED", "The fake engine crashed");
    if (this.#disposed) throw new AgentRuntimeError("ERR_ENGINE_CLOSED", "The fake engine has been disposed");
  }

  #cache(key: string): number[] {
    this.#check();
    const cache = this.#caches.get(key);
    if (!cache) throw new AgentRuntimeError("ERR_SEQUENCE_NOT_OPEN", `No sequence is open for ${key}`, { details: { key } });
    return cache;
  }

  async openSequence(key: string): Promise<void> {
    this.#check();
    if (this.#caches.has(key)) return;
    const sequences = this.#options.sequences ?? 3;
    if (this.#caches.size >= sequences) {
      throw new AgentRuntimeError("ERR_NO_FREE_SEQUENCE", `All ${sequences} sequences are taken`, { details: { key, sequences } });
    }
    this.#caches.set(key, []);
  }

  async closeSequence(key: string): Promise<void> {
    this.#caches.delete(key);
  }

  /** Keys with an open sequence (tests assert residency against it). */
  openKeys(): string[] {
    return [...this.#caches.keys()];
  }

  /** Brings the cache to `tokens`, shifting out a dropped middle as the real engines do when `contextShift` is set. */
  #evaluate(key: string, tokens: number[], contextShift = false): EvaluationCounts & { shiftedTokens: number } {
    const cache = this.#cache(key);
    if (tokens.length >= this.info.contextSize) {
      throw new AgentRuntimeError("ERR_CONTEXT_FULL", `The conversation needs ${tokens.length} tokens`);
    }
    let reused = commonPrefixLength(cache, tokens);
    const shift = contextShift ? findContextShift(cache, tokens, reused) : undefined;
    if (shift) {
      cache.splice(shift.prefix, shift.removed);
      reused += shift.kept;
    }
    cache.length = reused;
    cache.push(...tokens.slice(reused));
    this.#evaluatedTokens += tokens.length - reused;
    return {
      promptTokens: tokens.length,
      reusedTokens: reused,
      evaluatedTokens: tokens.length - reused,
      cacheTokens: cache.length,
      shiftedTokens: shift?.removed ?? 0,
    };
  }

  async prefill(key: string, messages: ChatMessage[], signal: AbortSignal): Promise<EvaluationCounts> {
    signal.throwIfAborted();
    const { shiftedTokens: _, ...counts } = this.#evaluate(key, FakeEngine.render(messages));
    return counts;
  }

  /** Characters of the rendering `generate` would evaluate (opened for the reply after a user message). */
  async countTokens(messages: ChatMessage[]): Promise<number> {
    this.#check();
    return FakeEngine.render(messages, messages.at(-1)?.role === "user").length;
  }

  async generate(key: string, input: GenerateInput): Promise<GenerateOutput> {
    input.signal.throwIfAborted();
    const started = performance.now();
    await this.#options.beforeGenerate?.(key, input.messages);
    const prompt = FakeEngine.render(input.messages, true);
    const counts = this.#evaluate(key, prompt, input.contextShift === true);
    // Like the real engines, the reply stops where the context ends (the next token needs a cell).
    const room = this.info.contextSize - prompt.length - 1;
    const full = FakeEngine.reply(prompt);
    const reply = full.slice(0, Math.min(input.maxTokens, room));
    let text = "";
    for (const char of reply) {
      if (input.signal.aborted) break;
      text += char;
      input.onText(char);
    }
    const cache = this.#cache(key);
    cache.push(...[...text].map((char) => char.codePointAt(0)!));
    const ttftMs = performance.now() - started;
    return {
      ...counts,
      cacheTokens: cache.length,
      text,
      generatedTokens: text.length,
      stopReason: input.signal.aborted
        ? "aborted"
        : text.length < full.length
          ? room < input.maxTokens && text.length === room
            ? "contextFull"
            : "maxTokens"
          : "eos",
      ttftMs,
      decodeMs: 0,
    };
  }

  async saveState(key: string, path: string): Promise<SavedState> {
    const cache = this.#cache(key);
    const data = JSON.stringify({ fingerprint: this.info.fingerprint, tokens: cache });
    await writeFile(path, data);
    return { bytes: Buffer.byteLength(data), tokens: cache.length };
  }

  async loadState(key: string, path: string): Promise<{ tokens: number }> {
    const cache = this.#cache(key);
    const data = JSON.parse(await readFile(path, "utf8")) as { fingerprint: string; tokens: number[] };
    if (data.fingerprint !== this.info.fingerprint) throw new Error("foreign state handed to the engine");
    cache.length = 0;
    cache.push(...data.tokens);
    return { tokens: cache.length };
  }

  async stats(keys: string[]): Promise<Record<string, SequenceStats>> {
    return Object.fromEntries(
      keys.map((key) => {
        const tokens = this.#caches.get(key)?.length ?? 0;
        return [key, { tokens, bytes: tokens * KV_BYTES_PER_TOKEN, allocatedBytes: this.#caches.has(key) ? kvReservedBytes(this.info, tokens) : 0 }];
      }),
    );
  }

  onCrash(listener: (error: Error) => void): () => void {
    this.#crashListeners.add(listener);
    return () => this.#crashListeners.delete(listener);
  }

  async crash(): Promise<void> {
    this.#crashed = true;
    this.#caches.clear();
    for (const listener of this.#crashListeners) listener(new Error("fake engine crashed"));
  }

  async dispose(): Promise<void> {
    this.#disposed = true;
    this.#caches.clear();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}
