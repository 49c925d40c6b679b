import { AgentRuntimeError } from "./errors.js";

/** Longest accepted agent id. */
export const MAX_AGENT_ID_LENGTH = 128;

const SEGMENT = /^[a-z0-9][a-z0-9_.-]{0,63}$/;

/**
 * Agent ids are location-free addresses like `tech` or `support/42`: lowercase ASCII segments joined by
 * `/`. Lowercase only, so two ids never collide on a case-insensitive filesystem or object store; each
 * segment starts with a letter or digit, so `.`/`..` and hidden names cannot occur.
 */
export function validateAgentId(id: unknown): string {
  if (typeof id !== "string") {
    throw new AgentRuntimeError("ERR_INVALID_AGENT_ID", `Agent id must be a string, got ${typeof id}`);
  }
  const reject = (why: string): never => {
    throw new AgentRuntimeError("ERR_INVALID_AGENT_ID", `Invalid agent id ${JSON.stringify(id.slice(0, 80))}: ${why}`, {
      details: { id: id.slice(0, MAX_AGENT_ID_LENGTH) },
    });
  };
  if (id.length === 0) reject("it is empty");
  if (id.length > MAX_AGENT_ID_LENGTH) reject(`it is longer than ${MAX_AGENT_ID_LENGTH} characters`);
  const segments = id.split("/");
  if (segments.length > 8) reject("it has more than 8 segments");
  for (const segment of segments) {
    if (!SEGMENT.test(segment)) {
      reject("each '/'-separated segment must be 1-64 of [a-z0-9_.-] and start with a letter or digit");
    }
  }
  return id;
}

/** The id as one file or object name: `support/42` → `support%2F42` (reversible). */
export function agentIdToKey(id: string): string {
  return encodeURIComponent(id);
}

export function keyToAgentId(key: string): string {
  return decodeURIComponent(key);
}
