import type { ChatMessage } from "../engines/engine.js";

/**
 * What a behaviour sees of an agent: its identity and its *window*, the part of the conversation that
 * fits its context (the whole history until a context policy slides it; the store keeps all of it).
 */
export interface AgentView {
  readonly id: string;
  readonly role: string;
  readonly systemPrompt: string;
  /** The messages in the window, oldest first: what `prompt` and `context` should render. */
  readonly history: readonly ChatMessage[];
  /** The note the behaviour's `fold` kept about the turns that left the window; undefined when none. */
  readonly memoryNote?: string | undefined;
}

/** The agent's own model, as a behaviour's `fold` may use it. */
export interface AgentModel {
  /** Tokens per agent sequence. */
  readonly contextSize: number;
  /** Tokens the rendered prompt for `messages` occupies (see the engine's `countTokens`). */
  countTokens(messages: ChatMessage[]): Promise<number>;
  /**
   * A greedy reply to `messages`, at most `maxTokens` long, generated on the agent's own sequence (its
   * cache is rewound; the turn that follows re-evaluates the window).
   */
  complete(messages: ChatMessage[], maxTokens: number): Promise<string>;
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
  /**
   * Called when a slide takes `leaving` (whole turns, oldest first) out of the window, before the turn
   * is generated; `agent` still shows the old window and note. Returns the new memory note, which the
   * agent keeps (persisted) and shows as `memoryNote`; undefined keeps the current one. Without `fold`, the
   * turns simply leave the window. Not called under the `"error"` policy.
   */
  fold?(agent: AgentView, leaving: readonly ChatMessage[], model: AgentModel): Promise<string | undefined>;
}

/** The system prompt followed by the history: the default {@link AgentBehaviour.context}. */
export function defaultContext(agent: AgentView): ChatMessage[] {
  return [{ role: "system", content: agent.systemPrompt }, ...agent.history];
}

/** The conversation a behaviour's cache holds for `agent`. */
export function contextOf(behaviour: AgentBehaviour, agent: AgentView): ChatMessage[] {
  return behaviour.context ? behaviour.context(agent) : defaultContext(agent);
}
