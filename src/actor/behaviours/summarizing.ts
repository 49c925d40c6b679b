import type { ChatMessage } from "../../engines/engine.js";
import type { AgentBehaviour, AgentModel, AgentView } from "../behaviour.js";
import { conversation } from "./conversation.js";

/** How the memory note is introduced in the system message. */
export const MEMORY_HEADING = "Memory of the earlier conversation:";

/** The system message with the memory note after the system prompt (one system message: templates want one). */
function systemMessage(agent: AgentView): ChatMessage {
  const content = agent.memoryNote ? `${agent.systemPrompt}\n\n${MEMORY_HEADING} ${agent.memoryNote}` : agent.systemPrompt;
  return { role: "system", content };
}

function context(agent: AgentView): ChatMessage[] {
  return [systemMessage(agent), ...agent.history];
}

/** Tokens a note may take: an eighth of the context, between 8 and 64. */
export function noteTokens(contextSize: number): number {
  return Math.max(8, Math.min(64, Math.floor(contextSize / 8)));
}

function transcript(messages: readonly ChatMessage[]): string {
  return messages.map((m) => `${m.role === "user" ? "User" : "Assistant"}: ${m.content}`).join("\n");
}

/** The request that folds `leaving` into the note: the agent's own system message, then the instruction. */
function foldPrompt(agent: AgentView, leaving: readonly ChatMessage[]): ChatMessage[] {
  const earlier = agent.memoryNote ? `Your memory so far: ${agent.memoryNote}\n\n` : "";
  return [
    systemMessage(agent),
    {
      role: "user",
      content: `${earlier}These turns are leaving your context:\n${transcript(leaving)}\n\nWrite your memory of the conversation so far in one or two short sentences.`,
    },
  ];
}

/**
 * A conversation that remembers what slid out of its context: when turns leave the window, the agent's
 * own model folds them (and the previous note) into a short memory note, kept after the system prompt.
 * The fold runs on the agent's sequence before the turn; the note is persisted with the agent.
 */
export const summarizing: AgentBehaviour = {
  name: "summarizing",
  context,
  prompt(agent: AgentView, text: string): ChatMessage[] {
    return [...context(agent), { role: "user", content: text }];
  },
  record: conversation.record,
  async fold(agent: AgentView, leaving: readonly ChatMessage[], model: AgentModel): Promise<string | undefined> {
    const budget = noteTokens(model.contextSize);
    // The request must leave room for the note: the oldest leaving turns go first, unfolded, if not.
    let from = 0;
    let prompt = foldPrompt(agent, leaving);
    while ((await model.countTokens(prompt)) + budget >= model.contextSize) {
      if (from >= leaving.length) return undefined;
      from += 2;
      prompt = foldPrompt(agent, leaving.slice(from));
    }
    const note = (await model.complete(prompt, budget)).replace(/\s+/g, " ").trim();
    return note.length > 0 ? note : undefined;
  },
};
