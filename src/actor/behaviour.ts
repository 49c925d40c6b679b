import type { ChatMessage } from "../engines/engine.js";

/** What a behaviour sees of an agent: its identity and the conversation so far. */
export interface AgentView {
  readonly id: string;
  readonly role: string;
  readonly systemPrompt: string;
  readonly history: readonly ChatMessage[];
}

/**
 * How messages become prompts and what a finished turn adds to the persisted history. The agent owns
 * its mailbox, status and persistence; a behaviour only decides content. Behaviours are registered by
 * name: the name is saved with the agent, and a restored agent gets its behaviour back by it.
 */
export interface AgentBehaviour {
  /** Registry name, saved in the agent's record: lowercase letters, digits, `-` and `_`. */
  readonly name: string;
  /**
   * What the agent's KV cache holds between turns: the conversation that rehydration re-evaluates
   * when no saved cache can be used. Default: the system prompt and the history.
   */
  context?(agent: AgentView): ChatMessage[];
  /** The full conversation the engine should see for a new user message. */
  prompt(agent: AgentView, text: string): ChatMessage[];
  /** The messages to append to the history once the reply is complete. */
  record(agent: AgentView, text: string, reply: string): ChatMessage[];
}

/** The system prompt followed by the history: the default {@link AgentBehaviour.context}. */
export function defaultContext(agent: AgentView): ChatMessage[] {
  return [{ role: "system", content: agent.systemPrompt }, ...agent.history];
}

/** The conversation a behaviour's cache holds for `agent`. */
export function contextOf(behaviour: AgentBehaviour, agent: AgentView): ChatMessage[] {
  return behaviour.context ? behaviour.context(agent) : defaultContext(agent);
}
