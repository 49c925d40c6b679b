import type { ChatHistoryItem } from "node-llama-cpp";
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

/** Length of the longest common prefix of two token lists. */
export function commonPrefixLength(a: readonly number[], b: readonly number[]): number {
  const limit = Math.min(a.length, b.length);
  let index = 0;
  while (index < limit && a[index] === b[index]) index++;
  return index;
}
