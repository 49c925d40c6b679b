import { MAX_AGENT_ID_LENGTH } from "../agent-id.js";
import type { SamplingOptions } from "../engines/engine.js";

/*
 * JSON Schemas of every request the HTTP front takes. Fastify checks bodies, query strings, params and
 * headers against them before a handler runs, and they are the API's reference (docs/http.md).
 *
 * `x-error-code` names the code a failure at or below that field answers with (default
 * ERR_INVALID_ARGUMENT; see validation.ts), so a schema refusal has the code the runtime's own check
 * would give. Limits the runtime owns and may be configured (maxMessageChars, the id grammar) stay the
 * runtime's to check; the schemas only describe them.
 */

/** A JSON Schema, as fastify takes it. */
export type JsonSchema = Readonly<Record<string, unknown>>;

const agentId = {
  type: "string",
  description: `An agent's address: lowercase [a-z0-9_.-] segments joined by "/", at most ${MAX_AGENT_ID_LENGTH} characters (e.g. "support/42")`,
  "x-error-code": "ERR_INVALID_AGENT_ID",
} as const;

/** `/agents/:id…` (the router gets the id as one segment; see `foldAgentId`). */
const agentParams = {
  type: "object",
  required: ["id"],
  properties: { id: agentId },
} as const;

export interface AgentParams {
  id: string;
}

/** Mirrors `validateSampling` (src/engines/sampling.ts), which checks again and names unknown keys. */
const sampling = {
  type: "object",
  description: "Sampling for every turn of this agent. Default greedy ({ temperature: 0 })",
  properties: {
    temperature: { type: "number", minimum: 0, maximum: 10, description: "Default 0 (greedy)" },
    topK: { type: "integer", minimum: 0 },
    topP: { type: "number", exclusiveMinimum: 0, maximum: 1 },
    seed: { type: "integer", minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
  },
} as const;

/** `POST /agents` */
const spawnBody = {
  type: "object",
  required: ["id", "systemPrompt"],
  properties: {
    id: agentId,
    systemPrompt: {
      type: "string",
      description: "Fixed for the agent's life; at most maxMessageChars characters (a runtime option, default 32 768)",
    },
    role: { type: "string", description: 'A free-form role name. Default "assistant"' },
    behaviour: {
      type: "string",
      description:
        "A behaviour name from the runtime's registry, e.g. \"conversation\"; an unknown one is ERR_BEHAVIOUR_NOT_FOUND. Default: the runtime's behaviour",
    },
    sampling,
  },
} as const;

export interface SpawnBody {
  id: string;
  systemPrompt: string;
  role?: string;
  behaviour?: string;
  sampling?: SamplingOptions;
}

/** `POST /agents/<id>/messages` */
const messageBody = {
  type: "object",
  required: ["text"],
  properties: {
    text: {
      type: "string",
      description: "The message: not blank, at most maxMessageChars characters (a runtime option, default 32 768)",
      "x-error-code": "ERR_INVALID_MESSAGE",
    },
    maxTokens: { type: "integer", minimum: 1, description: "Reply length limit in tokens. Default: the runtime's maxTokens" },
  },
} as const;

export interface MessageBody {
  text: string;
  maxTokens?: number;
}

/** `GET /agents`: a page of agents in id order. */
const listQuery = {
  type: "object",
  properties: {
    prefix: { type: "string", description: 'Only ids starting with this, e.g. "support/"' },
    after: { type: "string", description: "Only ids after this one: the previous page's `next`" },
    limit: { type: "integer", minimum: 1, maximum: 1000, description: "Agents per page. Default 100" },
  },
} as const;

export interface ListQuery {
  prefix?: string;
  after?: string;
  limit?: number;
}

/** `GET /agents/<id>/history`; the numbers arrive as text and are made numbers first (see `numericQuery`). */
const historyQuery = {
  type: "object",
  properties: {
    before: { type: "integer", minimum: 0, description: "Index just past the page's last message. Default: the newest" },
    limit: { type: "integer", minimum: 1, maximum: 1000, description: "Messages per page. Default 50" },
  },
} as const;

export interface HistoryQuery {
  before?: number;
  limit?: number;
}

/** A query parameter given once, repeated, or comma-separated: `?agent=a&agent=b,c`. */
function stringList(description: string) {
  return { anyOf: [{ type: "string" }, { type: "array", items: { type: "string" } }], description } as const;
}

/** `GET /events`; `buffer` arrives as text and is made a number first (see `numericQuery`). */
export function eventsQuery(options: { defaultBufferSize: number; maxBufferSize: number }) {
  return {
    type: "object",
    properties: {
      agent: stringList('Exact ids or "prefix/*"; events that name no agent are left out when given'),
      type: stringList(
        "Event names (agent:spawned, agent:turn-start, agent:token, agent:turn-end, agent:passivated, agent:rehydrated, agent:removed, agent:error, worker:restarted)",
      ),
      buffer: {
        type: "integer",
        minimum: 1,
        maximum: options.maxBufferSize,
        description: `Events held for this subscriber before it is dropped. Default ${options.defaultBufferSize}`,
      },
    },
  } as const;
}

export interface EventsQuery {
  agent?: string | string[];
  type?: string | string[];
  buffer?: number;
}

/** One `{ type: "text", text }` part of an OpenAI message; images and other parts are refused. */
const textPart = {
  type: "object",
  required: ["type"],
  properties: { type: { const: "text" }, text: { type: "string" } },
  // `text` is required of text parts only, so an image part is refused for its type, not for lacking text.
  if: { properties: { type: { const: "text" } } },
  then: { required: ["text"] },
} as const;

const chatMessage = {
  type: "object",
  required: ["role", "content"],
  properties: {
    role: { enum: ["system", "developer", "user", "assistant"] },
    content: { anyOf: [{ type: "string" }, { type: "array", items: textPart }], description: "Text, or text parts (joined)" },
  },
} as const;

/** `POST /v1/chat/completions`: the fields agentrt reads. Others (temperature, top_p, seed…) are accepted and ignored. */
const chatCompletionBody = {
  type: "object",
  required: ["messages"],
  properties: {
    model: { type: "string", description: '"agent:<id>", or any name when the X-Agent-Id header names the agent' },
    messages: { type: "array", minItems: 1, items: chatMessage },
    stream: { type: ["boolean", "null"] },
    stream_options: { type: ["object", "null"], properties: { include_usage: { type: ["boolean", "null"] } } },
    max_tokens: { type: ["integer", "null"], minimum: 1 },
    max_completion_tokens: { type: ["integer", "null"], minimum: 1, description: "Wins over max_tokens" },
    n: { enum: [1, null] },
  },
} as const;

export interface ChatCompletionBody {
  model?: string;
  messages: Array<{ role: "system" | "developer" | "user" | "assistant"; content: string | Array<{ type: "text"; text: string }> }>;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean | null } | null;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  n?: 1 | null;
}

/** The header that addresses an agent when `model` is not `agent:<id>`. */
export const AGENT_HEADER = "x-agent-id";

const chatCompletionHeaders = {
  type: "object",
  properties: { [AGENT_HEADER]: { type: "string", description: "The agent's id, when model is not agent:<id>" } },
} as const;

/**
 * Every request schema by route: the routes take theirs from here (`/events` builds its own from the
 * server's buffer options; this one has the defaults). For clients, docs and generators.
 */
export const REQUEST_SCHEMAS = {
  "GET /agents": { querystring: listQuery },
  "POST /agents": { body: spawnBody },
  "GET /agents/:id": { params: agentParams },
  "GET /agents/:id/history": { params: agentParams, querystring: historyQuery },
  "DELETE /agents/:id": { params: agentParams },
  "POST /agents/:id/messages": { params: agentParams, body: messageBody },
  "POST /agents/:id/passivate": { params: agentParams },
  "GET /events": { querystring: eventsQuery({ defaultBufferSize: 1024, maxBufferSize: 65_536 }) },
  "POST /v1/chat/completions": { body: chatCompletionBody, headers: chatCompletionHeaders },
} as const satisfies Record<string, Record<string, JsonSchema>>;
