/**
 * The MLX engine as its tests see it: a real {@link MlxEngine} plus three diagnostics that the production engine
 * does not carry, each read from outside it:
 *  - `cachedTokens(key)`: the token ids of the sequence's cache, read back from a state file the engine writes
 *    (`saveState`; mlx-lm's layout lists them under `agentrt_tokens`, unknown ids come back `undefined`);
 *  - `lastReplyTokens(key)`: the token ids of the key's last reply, seen through the chat front end the probe
 *    hands the engine (the engine decodes the whole reply so far after each token, see text-stream.ts);
 *  - `logitsAfter(tokens)`: next-token logits from a scratch cache, through the probe's own handle on the model.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
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
} from "../engines/engine.js";
import type { ChatFrontend } from "../engines/mlx/chat.js";
import { MlxEngine } from "../engines/mlx/engine.js";
import { SequenceCache } from "../engines/mlx/kv-cache.js";
import { loadMlxParts, type MlxEngineParts } from "../engines/mlx/load.js";
import { TOKENS_KEY } from "../engines/mlx/prompt-cache.js";
import { readSafetensorsHeader } from "../engines/mlx/safetensors.js";

export type MlxProbeOptions = Omit<EngineLoadOptions, "engine">;

export class MlxProbe implements Engine {
  readonly engine: MlxEngine;
  readonly #parts: MlxEngineParts;
  readonly #replies = new Map<string, number[]>();
  #decoded: number[] = [];
  #dir: string | undefined;
  #files = 0;

  private constructor(parts: MlxEngineParts) {
    this.#parts = parts;
    const chat = parts.chat;
    const observed: ChatFrontend = {
      formatName: chat.formatName,
      vocabSize: chat.vocabSize,
      render: (messages) => chat.render(messages),
      decode: (tokens) => {
        this.#decoded = [...tokens];
        return chat.decode(tokens);
      },
      dispose: () => chat.dispose(),
    };
    this.engine = MlxEngine.fromParts({ ...parts, chat: observed });
  }

  static async load(options: MlxProbeOptions): Promise<MlxProbe> {
    return new MlxProbe(await loadMlxParts({ ...options, engine: "mlx" }));
  }

  get info(): ModelInfo {
    return this.engine.info;
  }

  get concurrent(): boolean {
    return this.engine.concurrent;
  }

  openSequence(key: string): Promise<void> {
    return this.engine.openSequence(key);
  }

  closeSequence(key: string): Promise<void> {
    this.#replies.delete(key);
    return this.engine.closeSequence(key);
  }

  prefill(key: string, messages: ChatMessage[], signal: AbortSignal): Promise<EvaluationCounts> {
    return this.engine.prefill(key, messages, signal);
  }

  async generate(key: string, input: GenerateInput): Promise<GenerateOutput> {
    this.#decoded = [];
    this.#replies.delete(key);
    const output = await this.engine.generate(key, input);
    this.#replies.set(key, this.#decoded);
    return output;
  }

  countTokens(messages: ChatMessage[]): Promise<number> {
    return this.engine.countTokens(messages);
  }

  saveState(key: string, filePath: string): Promise<SavedState> {
    return this.engine.saveState(key, filePath);
  }

  loadState(key: string, filePath: string): Promise<{ tokens: number }> {
    return this.engine.loadState(key, filePath);
  }

  stats(key: string): SequenceStats {
    return this.engine.stats(key);
  }

  /** Token ids in the sequence's cache (`undefined` where a loaded mlx-lm file did not name them). */
  async cachedTokens(key: string): Promise<(number | undefined)[]> {
    const { tokens } = this.engine.stats(key);
    if (tokens === 0) return [];
    this.#dir ??= await mkdtemp(join(tmpdir(), "agentrt-mlx-probe-"));
    const file = join(this.#dir, `${this.#files++}.safetensors`);
    try {
      await this.engine.saveState(key, file);
      const listed = (await readSafetensorsHeader(file)).metadata[`1.${TOKENS_KEY}`];
      return listed === undefined ? new Array<undefined>(tokens).fill(undefined) : (JSON.parse(listed) as number[]);
    } finally {
      await rm(file, { force: true });
    }
  }

  /** The prompt token ids the engine renders for `messages` (with the assistant's turn opened after a user message). */
  renderedTokens(messages: readonly ChatMessage[]): number[] {
    return [...this.#parts.chat.render(messages).tokens];
  }

  /** Token ids of the key's last reply (stop token excluded), as generated, whatever the text decodes to. */
  lastReplyTokens(key: string): number[] {
    return [...(this.#replies.get(key) ?? [])];
  }

  /** Next-token logits after `tokens`, computed in a scratch cache (no sequence is touched). */
  logitsAfter(tokens: readonly number[]): number[] {
    const { mx, model } = this.#parts;
    const scratch = new SequenceCache(mx, model.config.layers);
    const logits = model.forward(tokens, scratch);
    mx.eval(logits);
    const values = logits.tolist() as number[];
    scratch.clear();
    return values;
  }

  async dispose(): Promise<void> {
    await this.engine.dispose();
    if (this.#dir) await rm(this.#dir, { recursive: true, force: true });
    this.#dir = undefined;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}
