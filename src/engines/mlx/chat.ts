/**
 * What the engine needs from a tokenizer + chat format, whatever their source: node-llama-cpp for GGUF files
 * (so prompts are rendered exactly as the llama.cpp engine renders them) or tokenizer.json + a Jinja chat
 * template for mlx-community folders.
 */
import type { ChatMessage } from "../engine.js";

export interface RenderedPrompt {
  tokens: number[];
  /** Token ids that end the reply (end-of-generation tokens and single-token stop triggers). */
  stopTokens: ReadonlySet<number>;
  /** Texts that end the reply when they appear in the decoded output (they are not part of the reply). */
  stopStrings: readonly string[];
}

export interface ChatFrontend {
  /** The chat format's name for ModelInfo.chatFormat ("generic" when the model has no template). */
  readonly formatName: string;
  readonly vocabSize: number;
  /**
   * Renders the conversation. When the last message is the user's, the assistant's turn is opened so the model
   * answers it (the llama.cpp engine appends an empty model response; Jinja templates get add_generation_prompt).
   */
  render(messages: readonly ChatMessage[]): RenderedPrompt;
  /** Text of generated token ids (special tokens omitted). */
  decode(tokens: readonly number[]): string;
  dispose(): Promise<void>;
}
