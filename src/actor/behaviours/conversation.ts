import type { ChatMessage } from "../../engines/engine.js";
import { defaultContext, type AgentBehaviour, type AgentView } from "../behaviour.js";

/**
 * The default behaviour: a persistent chat. The prompt is the system prompt, every earlier turn and
 * the new message, so the cached prefix grows turn by turn and only the new message is evaluated.
 */
export const conversation: AgentBehaviour = {
  name: "conversation",
  context: defaultContext,
  prompt(agent: AgentView, text: string): ChatMessage[] {
    return [...defaultContext(agent), { role: "user", content: text }];
  },
  record(_agent: AgentView, text: string, reply: string): ChatMessage[] {
    return [
      { role: "user", content: text },
      { role: "assistant", content: reply },
    ];
  },
};
