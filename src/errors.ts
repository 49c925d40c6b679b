/**
 * Every error agentrt raises on purpose is an {@link AgentRuntimeError} with a stable `code`.
 * Codes are part of the public API: match on `err.code`, never on messages.
 */

/** code → default message. The README's error table is checked against this registry by a test. */
export const ERROR_CODES = {
  ERR_AGENT_NOT_FOUND: "No agent has this id",
  ERR_AGENT_EXISTS: "An agent with this id already exists",
  ERR_INVALID_AGENT_ID: "Invalid agent id",
  ERR_MAILBOX_FULL: "The agent's mailbox is full",
  ERR_MESSAGE_TOO_LARGE: "The message is larger than the configured limit",
  ERR_INVALID_MESSAGE: "The message is empty or not text",
  ERR_CONTEXT_FULL: "The conversation no longer fits in the model's context",
  ERR_STATE_CORRUPT: "A state file failed its integrity check",
  ERR_STATE_FOREIGN: "A state file was written for another model, engine or format version",
  ERR_STATE_WRITE_FAILED: "Writing agent state to the store failed",
  ERR_WORKER_CRASHED: "The generation worker exited unexpectedly",
  ERR_WORKER_PROTOCOL: "The generation worker speaks another protocol version",
  ERR_ENGINE_FAILED: "The inference engine failed",
  ERR_ENGINE_UNAVAILABLE: "The requested inference engine cannot be loaded on this machine",
  ERR_MODEL_NOT_FOUND: "The model could not be found or downloaded",
  ERR_MODEL_INVALID: "The model file is not usable by this engine",
  ERR_RUNTIME_CLOSED: "The runtime has been closed",
  ERR_AGENT_REMOVED: "The agent was removed while the message waited",
  ERR_TOO_MANY_AGENTS: "The store already holds the maximum number of agents",
  ERR_ABORTED: "The operation was aborted",
  ERR_BEHAVIOUR_NOT_FOUND: "No behaviour is registered under this name",
  ERR_NO_FREE_SEQUENCE: "Every KV sequence of the engine is taken",
  ERR_SEQUENCE_NOT_OPEN: "No KV sequence is open for this agent",
  ERR_ENGINE_CLOSED: "The engine is not loaded or has been disposed",
  ERR_STATE_LOCKED: "Another process holds the state directory",
  ERR_LEASE_LOST: "This node no longer holds the agent's lease; another node may own it now",
  ERR_NOT_OWNER: "Another live node owns this agent",
  ERR_NODE_UNAVAILABLE: "The cluster node that should answer did not",
  ERR_NODE_FAILED: "The cluster node failed to handle the request",
  ERR_NODE_PROTOCOL: "A cluster node answered with something that is not the node protocol",
  ERR_INVALID_REQUEST: "A request between cluster nodes is malformed or too large",
  ERR_NODE_DRAINING: "This cluster node is draining and takes no agents",
  ERR_KV_BUDGET: "The agent's KV cache alone exceeds the runtime's kvBudgetBytes",
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface AgentRuntimeErrorOptions {
  cause?: unknown;
  /** Extra structured facts (agent id, file path, sizes) for logs and HTTP error bodies. */
  details?: Record<string, unknown>;
}

export class AgentRuntimeError extends Error {
  override readonly name: string = "AgentRuntimeError";
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string = ERROR_CODES[code], options: AgentRuntimeErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details;
  }
}

/** Plain-data form used to carry errors across the worker boundary (structured clone drops class identity). */
export interface SerializedError {
  name: string;
  code?: string;
  message: string;
  stack?: string;
  details?: Record<string, unknown>;
}

export function serializeError(error: unknown): SerializedError {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return {
      name: error.name,
      message: error.message,
      ...(typeof code === "string" ? { code } : {}),
      ...(error.stack ? { stack: error.stack } : {}),
      ...(error instanceof AgentRuntimeError && error.details ? { details: error.details } : {}),
    };
  }
  return { name: "Error", message: String(error) };
}

/** Rebuilds an error from {@link serializeError}'s output; agentrt codes come back as {@link AgentRuntimeError}. */
export function deserializeError(data: SerializedError): Error {
  if (data.code !== undefined && data.code in ERROR_CODES) {
    const error = new AgentRuntimeError(data.code as ErrorCode, data.message, data.details ? { details: data.details } : {});
    if (data.stack) error.stack = data.stack;
    return error;
  }
  const error = new Error(data.message);
  error.name = data.name;
  if (data.stack) error.stack = data.stack;
  return error;
}

export function isAgentRuntimeError(error: unknown, code?: ErrorCode): error is AgentRuntimeError {
  return error instanceof AgentRuntimeError && (code === undefined || error.code === code);
}
