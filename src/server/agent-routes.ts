import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { AgentInfo } from "../actor/agent.js";
import type { AgentMemory } from "../runtime/memory.js";
import type { AgentRuntime } from "../runtime/runtime.js";
import { agentrtErrorJson, toErrorBody } from "./errors.js";
import { REQUEST_SCHEMAS, type AgentParams, type HistoryQuery, type ListQuery, type MessageBody, type SpawnBody } from "./schemas.js";
import { numericQuery } from "./validation.js";
import { disconnectSignal, openTurnStream, wantsEventStream, type SseOptions } from "./sse.js";

/** Actions addressed as `POST /agents/<id>/<action>` and `GET /agents/<id>/<action>`. */
const ACTIONS: Record<string, readonly string[]> = { POST: ["messages", "passivate"], GET: ["history"] };

/**
 * Agent ids contain `/`, so the router would see `support/42` as two segments: this rewrites the URL
 * (fastify's `rewriteUrl`) so the id is one segment, `/agents/support%2F42`, and the routes below can
 * say `/agents/:id`. `DELETE` takes the whole rest of the path as the id; `POST` the rest minus its
 * last segment, the action (an agent named `x/messages` is `POST /agents/x/messages/messages`); `GET`
 * too when the last segment is `history` (agent `x/history` itself is `GET /agents/x%2Fhistory`).
 * Anything else is left as it is (and is a 404 if no route takes it).
 */
export function foldAgentId(method: string | undefined, url: string): string {
  const prefix = "/agents/";
  if (!url.startsWith(prefix)) return url;
  const queryAt = url.indexOf("?");
  const path = queryAt < 0 ? url : url.slice(0, queryAt);
  const query = queryAt < 0 ? "" : url.slice(queryAt);
  let id = path.slice(prefix.length);
  let action = "";
  const slash = id.lastIndexOf("/");
  if (slash > 0 && ACTIONS[method ?? ""]?.includes(id.slice(slash + 1))) {
    action = id.slice(slash);
    id = id.slice(0, slash);
  } else if (method === "POST") {
    return url;
  }
  return id.includes("/") ? `${prefix}${id.replaceAll("/", "%2F")}${action}${query}` : url;
}

export interface AgentRoutesOptions {
  sse: SseOptions;
}

/** Agents by address: create, list, inspect, delete, message (JSON or SSE), passivate; plus `/memory`. */
export function registerAgentRoutes(app: FastifyInstance, runtime: AgentRuntime, options: AgentRoutesOptions): void {
  const withMemory = async (agents: AgentInfo[]): Promise<Array<AgentInfo & { memory: AgentMemory | undefined }>> => {
    const report = await runtime.memory({ agents: agents.map((agent) => agent.id) });
    const rows = new Map(report.agents.map((row) => [row.id, row]));
    return agents.map((agent) => ({ ...agent, memory: rows.get(agent.id) }));
  };

  app.get("/memory", async () => runtime.memory());

  app.get<{ Querystring: ListQuery }>(
    "/agents",
    { schema: REQUEST_SCHEMAS["GET /agents"], preValidation: numericQuery("limit") },
    async (request) => {
      const page = await runtime.list(request.query);
      return { agents: await withMemory(page.agents), ...(page.next !== undefined ? { next: page.next } : {}) };
    },
  );

  app.post<{ Body: SpawnBody }>("/agents", { schema: REQUEST_SCHEMAS["POST /agents"] }, async (request, reply) => {
    const { id, systemPrompt, role, sampling, behaviour } = request.body;
    const info = await runtime.spawn(
      {
        id,
        systemPrompt,
        ...(role !== undefined ? { role } : {}),
        ...(sampling !== undefined ? { sampling } : {}),
        // A name, resolved by the runtime's behaviour registry (ERR_BEHAVIOUR_NOT_FOUND when unknown).
        ...(behaviour !== undefined ? { behaviour } : {}),
      },
      { signal: disconnectSignal(reply) },
    );
    return reply.code(201).header("location", `/agents/${info.id}`).send(info);
  });

  app.get<{ Params: AgentParams }>("/agents/:id", { schema: REQUEST_SCHEMAS["GET /agents/:id"] }, async (request) => {
    const [agent] = await withMemory([await runtime.get(request.params.id)]);
    return agent;
  });

  app.get<{ Params: AgentParams; Querystring: HistoryQuery }>(
    "/agents/:id/history",
    { schema: REQUEST_SCHEMAS["GET /agents/:id/history"], preValidation: numericQuery("before", "limit") },
    async (request) => runtime.history(request.params.id, request.query),
  );

  app.delete<{ Params: AgentParams }>("/agents/:id", { schema: REQUEST_SCHEMAS["DELETE /agents/:id"] }, async (request, reply) => {
    await runtime.remove(request.params.id);
    return reply.code(204).send();
  });

  app.post<{ Params: AgentParams }>("/agents/:id/passivate", { schema: REQUEST_SCHEMAS["POST /agents/:id/passivate"] }, async (request) => {
    await runtime.passivate(request.params.id);
    return runtime.get(request.params.id);
  });

  app.post<{ Params: AgentParams; Body: MessageBody }>(
    "/agents/:id/messages",
    { schema: REQUEST_SCHEMAS["POST /agents/:id/messages"] },
    async (request, reply) => {
      const { id } = request.params;
      const { text, maxTokens } = request.body;
      if (wantsEventStream(request.headers.accept)) return streamReply(request, reply, runtime, id, text, maxTokens, options.sse);
      return runtime.send(id, text, { signal: disconnectSignal(reply), ...(maxTokens !== undefined ? { maxTokens } : {}) }).result;
    },
  );
}

/**
 * Answers a message as Server-Sent Events: `token` events with `{ text }`, then one `done` event with
 * the turn's result, or one `error` event. A refusal that comes at once is a plain JSON error with its
 * status instead, since nothing has been streamed yet. A disconnect aborts the turn.
 */
async function streamReply(
  request: FastifyRequest,
  reply: FastifyReply,
  runtime: AgentRuntime,
  id: string,
  text: string,
  maxTokens: number | undefined,
  sse: SseOptions,
): Promise<void> {
  const controller = new AbortController();
  const turn = runtime.send(id, text, { signal: controller.signal, ...(maxTokens !== undefined ? { maxTokens } : {}) });
  const stream = await openTurnStream(request, reply, turn.accepted, controller, sse);
  if (!stream) return;
  try {
    for await (const chunk of turn) {
      if (chunk.length > 0 && !stream.send({ event: "token", data: { text: chunk } })) await stream.drained();
    }
    stream.send({ event: "done", data: await turn.result });
  } catch (error) {
    if (!stream.closed) stream.send({ event: "error", data: agentrtErrorJson(toErrorBody(error)) });
  } finally {
    stream.dispose();
  }
}
