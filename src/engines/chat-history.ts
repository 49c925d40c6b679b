import type {
  ChatHistoryItem,
  ChatWrapper,
  ChatWrapperGenerateContextStateOptions,
  ChatWrapperGeneratedContextState,
  LlamaText,
} from "node-llama-cpp";
import type { ChatMessage } from "./engine.js";

/**
 * Converts agentrt messages to node-llama-cpp's chat history. With `openResponse`, a trailing user
 * message gets an empty model response appended: the rendered text then ends where the reply begins.
 * Shared by both engines so they render byte-identical prompts from a GGUF's chat wrapper.
 */
export function toChatHistory(messages: readonly ChatMessage[], openResponse: boolean): ChatHistoryItem[] {
  const history: ChatHistoryItem[] = messages.map((message): ChatHistoryItem => {
    switch (message.role) {
      case "system":
        return { type: "system", text: message.content };
      case "user":
        return { type: "user", text: message.content };
      case "assistant":
        return { type: "model", response: [message.content] };
    }
  });
  if (openResponse && history.at(-1)?.type === "user") history.push({ type: "model", response: [] });
  return history;
}

/**
 * The prompt format for models without a chat template (base models that only continue text): the
 * conversation is one running text, as the model saw its training documents. It begins with BOS, then
 * every message's text in order (system prompt, user turn, reply, user turn, …) joined by one space
 * (see {@link completionSeparator}). The open reply adds nothing after the last user text, so the model
 * continues it; it ends at EOS, or at BOS, which base models emit where a new document would begin
 * (llama2.c's stories models do). Shared by both engines so they render byte-identical prompts;
 * node-llama-cpp is imported lazily.
 */
export async function completionChatWrapper(): Promise<ChatWrapper> {
  const { ChatWrapper, LlamaText, SpecialToken } = await import("node-llama-cpp");
  class CompletionChatWrapper extends ChatWrapper {
    override readonly wrapperName = COMPLETION_FORMAT;
    override generateContextState({ chatHistory }: ChatWrapperGenerateContextStateOptions): ChatWrapperGeneratedContextState {
      const pieces: LlamaText[] = [];
      let previous = "";
      for (const item of chatHistory) {
        const piece =
          item.type === "model"
            ? this.generateModelResponseText(item.response)
            : item.type === "system"
              ? LlamaText.fromJSON(item.text)
              : LlamaText(item.text);
        const text = piece.toString();
        if (text.length === 0) continue;
        const separator = completionSeparator(previous, text, item.type === "model");
        if (separator) pieces.push(LlamaText(separator));
        pieces.push(piece);
        previous += separator + text;
      }
      return {
        contextText: LlamaText([new SpecialToken("BOS"), ...pieces]),
        stopGenerationTriggers: [LlamaText(new SpecialToken("EOS")), LlamaText(new SpecialToken("BOS"))],
      };
    }
  }
  return new CompletionChatWrapper();
}

/**
 * What joins two texts in the completion format: nothing at whitespace, else one space, except before a
 * reply that attaches to the text it continues. A reply is what the model wrote right after that text,
 * but the engines' detokenizers drop its first token's leading space ("▁Sam" reads "Sam"); the space
 * is put back where English writes one: not before closing punctuation, nor before a quote that closes.
 */
export function completionSeparator(before: string, after: string, afterIsReply: boolean): string {
  if (before.length === 0 || /\s$/u.test(before) || /^\s/u.test(after)) return "";
  if (!afterIsReply) return " ";
  if (/^[,.;:!?)\]}'’”…]/u.test(after)) return "";
  const openQuote = (before.match(/"/gu)?.length ?? 0) % 2 === 1;
  return after.startsWith('"') && openQuote ? "" : " ";
}

/** The completion format's text of a conversation, after BOS (for tokenizers outside node-llama-cpp). */
export function completionText(messages: readonly ChatMessage[]): string {
  let text = "";
  for (const message of messages) {
    if (message.content.length === 0) continue;
    text += completionSeparator(text, message.content, message.role === "assistant") + message.content;
  }
  return text;
}

/** `ModelInfo.chatFormat` of models without a chat template: they get {@link completionChatWrapper}'s format. */
export const COMPLETION_FORMAT = "completion";

/** Length of the longest common prefix of two token lists. */
export function commonPrefixLength(a: readonly number[], b: readonly number[]): number {
  const limit = Math.min(a.length, b.length);
  let index = 0;
  while (index < limit && a[index] === b[index]) index++;
  return index;
}
