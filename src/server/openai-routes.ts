import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ChatMessage, StopReason } from "../engines/engine.js";
import type { TurnResult } from "../events.js";
import type { AgentRuntime } from "../runtime/runtime.js";
import { HttpError, openAiErrorJson, sendError, toErrorBody } from "./errors.js";
import { disconnectSignal, openTurnStream, type SseOptions } from "./sse.js";

/** The header that addresses an agent when `model` is not `agent:<id>`. */
export const AGENT_HEADER = "x-agent-id";
const MODEL_PREFIX = "agent:";

interface ChatCompletionRequest {
  agentId: string;
  model: string;
  messages: ChatMessage[];
  stream: boolean;
  includeUsage: boolean;
  maxTokens: number | undefined;
}

/** A message's text: a string, or an array of `{ type: "text", text }` parts joined. */
function contentText(content: unknown, index: number): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((part: unknown) => {
        const { type, text } = (part ?? {}) as { type?: unknown; text?: unknown };
        if (type !== "text" || typeof text !== "string") {
          throw new HttpError("ERR_INVALID_ARGUMENT", `messages[${index}].content: only text parts are supported`, `messages[${index}].content`);
        }
        return text;
      })
      .join("");
  }
  throw new HttpError("ERR_INVALID_ARGUMENT", `messages[${index}].content must be a string or text parts`, `messages[${index}].content`);
}

/**
 * Reads an OpenAI chat request against the agent it addresses. Leading `system`/`developer` messages
 * must equal the agent's system prompt (an agent's identity is fixed at spawn; see docs/http.md) and
 * are then dropped; the rest is the conversation the agent continues.
 */
function parseRequest(request: FastifyRequest, runtime: AgentRuntime): ChatCompletionRequest {
  const body = request.body as Record<string, unknown> | undefined;
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new HttpError("ERR_INVALID_ARGUMENT", "The body must be a JSON object");
  const model = typeof body.model === "string" ? body.model : "";
  const header = request.headers[AGENT_HEADER];
  const fromHeader = typeof header === "string" && header.length > 0 ? header : undefined;
  const fromModel = model.startsWith(MODEL_PREFIX) ? model.slice(MODEL_PREFIX.length) : undefined;
  if (fromHeader !== undefined && fromModel !== undefined && fromHeader !== fromModel) {
    throw new HttpError("ERR_INVALID_ARGUMENT", `model names agent ${fromModel} but ${AGENT_HEADER} names ${fromHeader}`, "model");
  }
  const agentId = fromHeader ?? fromModel;
  if (agentId === undefined) {
    throw new HttpError("ERR_INVALID_ARGUMENT", `Address an agent with model "agent:<id>" or the ${AGENT_HEADER} header`, "model");
  }
  const agent = runtime.get(agentId);
  if (!Array.isArray(body.messages) || body.messages.length === 0) throw new HttpError("ERR_INVALID_ARGUMENT", "messages must be a non-empty array", "messages");
  if (body.n !== undefined && body.n !== null && body.n !== 1) throw new HttpError("ERR_INVALID_ARGUMENT", "n must be 1", "n");
  const messages: ChatMessage[] = [];
  let system: string | undefined;
  body.messages.forEach((raw: unknown, index: number) => {
    const { role, content } = (raw ?? {}) as { role?: unknown; content?: unknown };
    const text = contentText(content, index);
    if (role === "system" || role === "developer") {
      if (messages.length > 0) throw new HttpError("ERR_INVALID_ARGUMENT", `messages[${index}]: system messages may only come first`, `messages[${index}].role`);
      system = system === undefined ? text : `${system}\n\n${text}`;
    } else if (role === "user" || role === "assistant") {
      messages.push({ role, content: text });
    } else {
      throw new HttpError("ERR_INVALID_ARGUMENT", `messages[${index}].role ${JSON.stringify(role)} is not supported (system, user, assistant)`, `messages[${index}].role`);
    }
  });
  if (system !== undefined && system !== agent.systemPrompt) {
    throw new HttpError("ERR_SYSTEM_PROMPT_MISMATCH", `The system message differs from the system prompt of agent ${agent.id}; omit it or send it unchanged`, "messages");
  }
  const maxTokens = body.max_completion_tokens ?? body.max_tokens;
  if (maxTokens !== undefined && maxTokens !== null && typeof maxTokens !== "number") {
    throw new HttpError("ERR_INVALID_ARGUMENT", "max_tokens must be a number", "max_tokens");
  }
  const streamOptions = body.stream_options as { include_usage?: unknown } | undefined;
  return {
    agentId: agent.id,
    model,
    messages,
    stream: body.stream === true,
    includeUsage: streamOptions?.include_usage === true,
    maxTokens: typeof maxTokens === "number" ? maxTokens : undefined,
  };
}

function finishReason(stopReason: StopReason): "stop" | "length" {
  return stopReason === "maxTokens" || stopReason === "contextFull" ? "length" : "stop";
}

/** Token counts in OpenAI's shape; `cached_tokens` is the prompt the agent's KV cache already held. */
function usage(result: TurnResult) {
  const { promptTokens, reusedTokens, generatedTokens } = result.timings;
  return {
    prompt_tokens: promptTokens,
    completion_tokens: generatedTokens,
    total_tokens: promptTokens + generatedTokens,
    prompt_tokens_details: { cached_tokens: reusedTokens },
  };
}

/**
 * `POST /v1/chat/completions` and `GET /v1/models`. The agent is `model: "agent:<id>"` or the
 * X-Agent-Id header. Sampling is the agent's own (set at spawn): request `temperature`, `top_p` and
 * the like are ignored.
 */
export function registerOpenAiRoutes(app: FastifyInstance, runtime: AgentRuntime, options: { sse: SseOptions }): void {
  app.get("/v1/models", async () => ({
    object: "list",
    data: runtime.list().map((agent) => ({
      id: `${MODEL_PREFIX}${agent.id}`,
      object: "model",
      created: Math.floor(agent.createdAt / 1000),
      owned_by: "agentrt",
    })),
  }));

  app.post("/v1/chat/completions", async (request, reply) => {
    const parsed = parseRequest(request, runtime);
    const id = `chatcmpl-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    if (parsed.stream) return streamCompletion(request, reply, runtime, parsed, { id, created }, options.sse);
    const result = await runtime.sendConversation(parsed.agentId, parsed.messages, {
      signal: disconnectSignal(reply),
      ...(parsed.maxTokens !== undefined ? { maxTokens: parsed.maxTokens } : {}),
    }).result;
    return {
      id,
      object: "chat.completion",
      created,
      model: parsed.model,
      choices: [
        { index: 0, message: { role: "assistant", content: result.reply, refusal: null }, logprobs: null, finish_reason: finishReason(result.timings.stopReason) },
      ],
      usage: usage(result),
    };
  });
}

/** OpenAI's streaming: `data: <chat.completion.chunk>` lines, then `data: [DONE]`. */
async function streamCompletion(
  request: FastifyRequest,
  reply: FastifyReply,
  runtime: AgentRuntime,
  parsed: ChatCompletionRequest,
  meta: { id: string; created: number },
  sse: SseOptions,
): Promise<void> {
  const controller = new AbortController();
  const turn = runtime.sendConversation(parsed.agentId, parsed.messages, {
    signal: controller.signal,
    ...(parsed.maxTokens !== undefined ? { maxTokens: parsed.maxTokens } : {}),
  });
  const stream = await openTurnStream(request, reply, turn.result, controller, sse);
  if (!stream) return;
  const chunk = (delta: Record<string, unknown>, finish: string | null, extra: Record<string, unknown> = {}) => ({
    id: meta.id,
    object: "chat.completion.chunk",
    created: meta.created,
    model: parsed.model,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    ...extra,
  });
  try {
    stream.send({ data: chunk({ role: "assistant", content: "" }, null) });
    for await (const text of turn) {
      if (text.length > 0 && !stream.send({ data: chunk({ content: text }, null) })) await stream.drained();
    }
    const result = await turn.result;
    stream.send({ data: chunk({}, finishReason(result.timings.stopReason)) });
    if (parsed.includeUsage) {
      stream.send({ data: { id: meta.id, object: "chat.completion.chunk", created: meta.created, model: parsed.model, choices: [], usage: usage(result) } });
    }
    stream.send({ data: "[DONE]" });
  } catch (error) {
    if (!stream.closed) stream.send({ data: openAiErrorJson(toErrorBody(error)) });
  } finally {
    stream.end();
  }
}
