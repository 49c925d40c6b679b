import type { ChatMessage } from "../engines/engine.js";

/** What a behaviour sees of an agent: its identity and the conversation so far. */
export interface AgentView {
  readonly id: string;
  readonly role: string;
  readonly systemPrompt: string;
  readonly history: readonly ChatMessage[];
}

/**
 * How messages become prompts and what a finished turn adds to the persisted history. The runtime owns
 * mailboxes, residency and persistence; a behaviour only decides content.
 */
export interface AgentBehaviour {
  readonly name: string;
  /** The full conversation the engine should see for a new user message. */
  prompt(agent: AgentView, text: string): ChatMessage[];
  /** The messages to append to the history once the reply is complete. */
  record(agent: AgentView, text: string, reply: string): ChatMessage[];
}
