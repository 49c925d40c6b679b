import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { SamplingOptions } from "../engines/engine.js";
import type { AgentInfo } from "../actor/agent.js";
import type { AgentMemory } from "../runtime/memory.js";
import type { AgentRuntime } from "../runtime/runtime.js";
import { agentrtErrorJson, HttpError, sendError, toErrorBody } from "./errors.js";
import { disconnectSignal, openTurnStream, wantsEventStream, type SseOptions } from "./sse.js";

/** Actions addressed as `POST /agents/<id>/<action>`; agent ids may contain `/`, so the action is the last segment. */
const ACTIONS = ["messages", "passivate"] as const;
type Action = (typeof ACTIONS)[number];

function body(request: FastifyRequest): Record<string, unknown> {
  const value = request.body ?? {};
  if (typeof value !== "object" || Array.isArray(value)) throw new HttpError("ERR_INVALID_ARGUMENT", "The body must be a JSON object");
  return value as Record<string, unknown>;
}

/** `support/42/messages` → `{ id: "support/42", action: "messages" }`. */
function splitAction(path: string): { id: string; action: Action } {
  const slash = path.lastIndexOf("/");
  const action = path.slice(slash + 1);
  if (slash <= 0 || !(ACTIONS as readonly string[]).includes(action)) {
    throw new HttpError("ERR_ROUTE_NOT_FOUND", `POST /agents/<id>/<action> takes an action of ${ACTIONS.join(", ")}`);
  }
  return { id: path.slice(0, slash), action: action as Action };
}

export interface AgentRoutesOptions {
  sse: SseOptions;
}

/** Agents by address: create, list, inspect, delete, message (JSON or SSE), passivate; plus `/memory`. */
export function registerAgentRoutes(app: FastifyInstance, runtime: AgentRuntime, options: AgentRoutesOptions): void {
  const withMemory = async (agents: AgentInfo[]): Promise<Array<AgentInfo & { memory: AgentMemory | undefined }>> => {
    const report = await runtime.memory();
    const rows = new Map(report.agents.map((row) => [row.id, row]));
    return agents.map((agent) => ({ ...agent, memory: rows.get(agent.id) }));
  };

  app.get("/memory", async () => runtime.memory());

  app.get("/agents", async () => ({ agents: await withMemory(runtime.list()) }));

  app.post("/agents", async (request, reply) => {
    const { id, role, systemPrompt, sampling } = body(request);
    const info = await runtime.spawn(
      { id: id as string, systemPrompt: systemPrompt as string, ...(role !== undefined ? { role: role as string } : {}), ...(sampling !== undefined ? { sampling: sampling as SamplingOptions } : {}) },
      { signal: disconnectSignal(reply) },
    );
    return reply.code(201).header("location", `/agents/${info.id}`).send(info);
  });

  app.get("/agents/*", async (request) => {
    const id = (request.params as { "*": string })["*"];
    const [agent] = await withMemory([runtime.get(id)]);
    return agent;
  });

  app.delete("/agents/*", async (request, reply) => {
    await runtime.remove((request.params as { "*": string })["*"]);
    return reply.code(204).send();
  });

  app.post("/agents/*", async (request, reply) => {
    const { id, action } = splitAction((request.params as { "*": string })["*"]);
    if (action === "passivate") {
      await runtime.passivate(id);
      return runtime.get(id);
    }
    const { text, maxTokens } = body(request);
    if (maxTokens !== undefined && typeof maxTokens !== "number") throw new HttpError("ERR_INVALID_ARGUMENT", "maxTokens must be a number", "maxTokens");
    if (wantsEventStream(request.headers.accept)) return streamReply(request, reply, runtime, id, text as string, maxTokens, options.sse);
    const result = await runtime.send(id, text as string, { signal: disconnectSignal(reply), ...(maxTokens !== undefined ? { maxTokens } : {}) }).result;
    return result;
  });
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
  const stream = await openTurnStream(request, reply, turn.result, controller, sse);
  if (!stream) return;
  try {
    for await (const chunk of turn) {
      if (chunk.length > 0 && !stream.send({ event: "token", data: { text: chunk } })) await stream.drained();
    }
    stream.send({ event: "done", data: await turn.result });
  } catch (error) {
    if (!stream.closed) stream.send({ event: "error", data: agentrtErrorJson(toErrorBody(error)) });
  } finally {
    stream.end();
  }
}
