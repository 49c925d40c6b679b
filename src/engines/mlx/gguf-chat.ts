/**
 * Tokenization and chat formatting for GGUF models, reusing node-llama-cpp with a vocabulary-only model load
 * (no weights) so the rendered prompt is token-for-token what the llama.cpp engine renders: a chat template in
 * the GGUF → resolveChatWrapper(model), else completionChatWrapper(); rendered with
 * `chatWrapper.generateContextState({chatHistory}).contextText.tokenize(model.tokenizer)`.
 */
import type { ChatWrapper, Llama, LlamaModel, LlamaText } from "node-llama-cpp";
import { AgentRuntimeError } from "../../errors.js";
import { COMPLETION_FORMAT, completionChatWrapper, toChatHistory } from "../chat-history.js";
import type { ChatMessage } from "../engine.js";
import { splitStopTriggers, type SplitStopTriggers } from "../stop-triggers.js";
import type { ChatFrontend, RenderedPrompt } from "./chat.js";

type LlamaCppModule = typeof import("node-llama-cpp");

/** Loads the GGUF chat front end (see the file comment). */
export function loadGgufChat(filePath: string): Promise<ChatFrontend> {
  return GgufChat.load(filePath);
}

class GgufChat implements ChatFrontend {
  readonly formatName: string;
  readonly vocabSize: number;
  readonly #triggerCache = new Map<string, SplitStopTriggers>();
  readonly #llama: Llama;
  readonly #model: LlamaModel;
  readonly #wrapper: ChatWrapper;
  readonly #llamaCpp: LlamaCppModule;

  static async load(filePath: string): Promise<GgufChat> {
    const llamaCpp = await import("node-llama-cpp");
    let model: LlamaModel;
    let llama: Llama | undefined;
    try {
      // getLlama returns a new instance per call: this one is ours alone, and dispose() releases it.
      llama = await llamaCpp.getLlama({ gpu: false, build: "never" });
    } catch (error) {
      throw new AgentRuntimeError(
        "ERR_ENGINE_UNAVAILABLE",
        `The MLX engine reads GGUF vocabularies with node-llama-cpp, whose prebuilt binary did not load: ${(error as Error).message}`,
        { cause: error },
      );
    }
    try {
      model = await llama.loadModel({ modelPath: filePath, vocabOnly: true });
    } catch (error) {
      await llama.dispose();
      throw new AgentRuntimeError("ERR_MODEL_INVALID", `node-llama-cpp could not read the vocabulary of ${filePath}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    const template = (model.fileInfo.metadata as { tokenizer?: { chat_template?: unknown } }).tokenizer?.chat_template;
    const wrapper: ChatWrapper =
      typeof template === "string" && template.length > 0 ? llamaCpp.resolveChatWrapper(model) : await completionChatWrapper();
    return new GgufChat(llama, model, wrapper, typeof template === "string" && template.length > 0, llamaCpp);
  }

  private constructor(llama: Llama, model: LlamaModel, wrapper: ChatWrapper, hasTemplate: boolean, llamaCpp: LlamaCppModule) {
    this.#llama = llama;
    this.#model = model;
    this.#wrapper = wrapper;
    this.#llamaCpp = llamaCpp;
    this.formatName = hasTemplate ? wrapper.wrapperName : COMPLETION_FORMAT;
    this.vocabSize = Number(
      (model.fileInfo.metadata as unknown as { tokenizer?: { ggml?: { tokens?: readonly unknown[] } } }).tokenizer?.ggml?.tokens?.length ?? 0,
    );
  }

  render(messages: readonly ChatMessage[]): RenderedPrompt {
    const state = this.#wrapper.generateContextState({ chatHistory: toChatHistory(messages, true) });
    const tokens = state.contextText.tokenize(this.#model.tokenizer).map(Number);
    const { tokens: triggerTokens, strings } = this.#triggers(state.stopGenerationTriggers);
    const stopTokens = new Set<number>(triggerTokens);
    for (const id of [this.#model.tokens.eos, this.#model.tokens.eot]) if (id !== null) stopTokens.add(Number(id));
    return { tokens, stopTokens: new EogSet(stopTokens, this.#model), stopStrings: strings };
  }

  /** The wrapper's stop triggers as ids and texts (see stop-triggers.ts), cached per distinct trigger list. */
  #triggers(triggers: readonly LlamaText[]): SplitStopTriggers {
    const key = JSON.stringify(triggers.map((t) => t.toJSON()));
    const cached = this.#triggerCache.get(key);
    if (cached) return cached;
    const result = splitStopTriggers(triggers, this.#model, this.#llamaCpp);
    this.#triggerCache.set(key, result);
    return result;
  }

  decode(tokens: readonly number[]): string {
    return this.#model.detokenize(tokens as never, false);
  }

  async dispose(): Promise<void> {
    // Dispose the Llama instance too: a worker terminated while node-llama-cpp's binding is still live aborts the
    // whole process now and then ("terminate called after throwing an instance of 'Napi::Error'", measured 2-3
    // in 8 runs); after llama.dispose() it did not happen in 10 runs.
    await this.#model.dispose();
    await this.#llama.dispose();
  }
}

/** Stop set that also answers for every end-of-generation token the vocabulary marks (EOS, EOT, <|im_end|>…). */
class EogSet extends Set<number> {
  readonly #model: LlamaModel;

  constructor(ids: Iterable<number>, model: LlamaModel) {
    super(ids);
    this.#model = model;
  }

  override has(id: number): boolean {
    return super.has(id) || this.#model.isEogToken(id as never);
  }
}
