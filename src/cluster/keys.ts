/**
 * KV key names. Agent ids (`support/42`, `a.b/c`) are lowercase `[a-z0-9_.-]` segments joined by `/`;
 * KV keys allow `[-/_=.a-zA-Z0-9]` with `.` separating subject tokens. An id becomes one token by
 * writing its dots as `=` (which no id contains), so the mapping is reversible and a key's filter
 * (`j.<agent>.>`) never matches another agent.
 */
import { validateAgentId } from "../agent-id.js";
import { AgentRuntimeError } from "../errors.js";

const KEY = /^[-/_=.a-zA-Z0-9]+$/;
const TOKEN = /^[-/_=a-zA-Z0-9]+$/;
const NODE_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;

/** The agent id as one KV subject token (`a.b/c` → `a=b/c`); validates the id first. */
export function agentToken(id: string): string {
  const token = validateAgentId(id).replaceAll(".", "=");
  // Unreachable for a valid id; kept so that a change to the id rules cannot produce a wrong key silently.
  if (!TOKEN.test(token)) throw new AgentRuntimeError("ERR_INVALID_AGENT_ID", `Agent id ${JSON.stringify(id)} has no KV key`, { details: { id } });
  return token;
}

/** The agent id of a token, or undefined when the token is not one an id could produce (hostile keys). */
export function tokenToAgent(token: string): string | undefined {
  if (!TOKEN.test(token)) return undefined;
  const id = token.replaceAll("=", ".");
  try {
    return validateAgentId(id);
  } catch {
    return undefined;
  }
}

/** Checks a node name (membership key, lease owner): lowercase `[a-z0-9_-]`, 1–64, starting with a letter or digit. */
export function validateNodeName(name: unknown): string {
  if (typeof name !== "string" || !NODE_NAME.test(name)) {
    throw new TypeError(`node must be 1-64 of [a-z0-9_-] starting with a letter or digit, got ${JSON.stringify(name)}`);
  }
  return name;
}

/** Checks a bucket prefix: it names KV buckets and an object store (`[a-zA-Z0-9_-]`). */
export function validatePrefix(prefix: unknown): string {
  if (typeof prefix !== "string" || !/^[a-zA-Z0-9_-]{1,32}$/.test(prefix)) {
    throw new TypeError(`prefix must be 1-32 of [a-zA-Z0-9_-], got ${JSON.stringify(prefix)}`);
  }
  return prefix;
}

export const keys = {
  /** The agent's head in the heads bucket: owner, epoch and the pointers to its committed state. */
  head: (token: string) => `h.${token}`,
  /**
   * Chunk `i` of the record as of generation `gen`, written under `epoch`; `nonce` is random per write,
   * so that two nodes racing to create the same new agent (same epoch, nothing owned yet) never write
   * the same key.
   */
  record: (token: string, gen: number, epoch: number, nonce: string, i: number) => `r.${token}.${gen}.${epoch}.${nonce}.${i}`,
  /** Journal entry `seq` extending generation `gen`, written under `epoch`. */
  entry: (token: string, gen: number, seq: number, epoch: number) => `j.${token}.${gen}.${seq}.${epoch}`,
  /** Every data key of an agent (record chunks and journal entries), for sweeping. */
  dataFilters: (token: string) => [`r.${token}.>`, `j.${token}.>`],
  /** A node's membership record. */
  member: (node: string) => `m.${node}`,
  /**
   * The object holding a saved KV cache file, uploaded under `epoch` with a random `nonce`: every upload
   * has a name of its own, so deleting a superseded or refused one never deletes another.
   */
  object: (token: string, epoch: number, nonce: string, file: string) => `${token}/${epoch}/${nonce}-${file}`,
} as const;

/** The generation and epoch a data key was written under, or undefined when it is not a data key. */
export function dataKeyEpoch(key: string): { kind: "r" | "j"; gen: number; epoch: number } | undefined {
  if (!KEY.test(key)) return undefined;
  const parts = key.split(".");
  if (!((parts[0] === "r" && parts.length === 6) || (parts[0] === "j" && parts.length === 5))) return undefined;
  const gen = Number(parts[2]);
  const epoch = Number(parts[0] === "r" ? parts[3] : parts[4]);
  if (!Number.isSafeInteger(gen) || !Number.isSafeInteger(epoch)) return undefined;
  return { kind: parts[0], gen, epoch };
}
