import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ChatMessage, StopReason } from "../engines/engine.js";
import type { TurnResult } from "../events.js";
import type { AgentRuntime } from "../runtime/runtime.js";
import { HttpError, openAiErrorJson, toErrorBody } from "./errors.js";
import { AGENT_HEADER, REQUEST_SCHEMAS, type ChatCompletionBody } from "./schemas.js";
import { disconnectSignal, openTurnStream, type SseOptions } from "./sse.js";

const MODEL_PREFIX = "agent:";

interface ChatCompletionRequest {
  agentId: string;
  model: string;
  messages: ChatMessage[];
  stream: boolean;
  includeUsage: boolean;
  maxTokens: number | undefined;
}

/**
 * Reads an OpenAI chat request (its shape already checked by its schema in REQUEST_SCHEMAS) against the
 * agent it addresses. Leading `system`/`developer` messages must equal the agent's system prompt (an
 * agent's identity is fixed at spawn; see docs/http.md) and are then dropped; the rest is the
 * conversation the agent continues.
 */
async function parseRequest(
  request: FastifyRequest<{ Body: ChatCompletionBody; Headers: { [AGENT_HEADER]?: string } }>,
  runtime: AgentRuntime,
): Promise<ChatCompletionRequest> {
  const { body } = request;
  const model = body.model ?? "";
  const header = request.headers[AGENT_HEADER];
  const fromHeader = header !== undefined && header.length > 0 ? header : undefined;
  const fromModel = model.startsWith(MODEL_PREFIX) ? model.slice(MODEL_PREFIX.length) : undefined;
  if (fromHeader !== undefined && fromModel !== undefined && fromHeader !== fromModel) {
    throw new HttpError("ERR_INVALID_ARGUMENT", `model names agent ${fromModel} but ${AGENT_HEADER} names ${fromHeader}`, "model");
  }
  const agentId = fromHeader ?? fromModel;
  if (agentId === undefined) {
    throw new HttpError("ERR_INVALID_ARGUMENT", `Address an agent with model "agent:<id>" or the ${AGENT_HEADER} header`, "model");
  }
  const agent = await runtime.get(agentId);
  const messages: ChatMessage[] = [];
  let system: string | undefined;
  body.messages.forEach(({ role, content }, index) => {
    const text = typeof content === "string" ? content : content.map((part) => part.text).join("");
    if (role === "system" || role === "developer") {
      if (messages.length > 0)
        throw new HttpError("ERR_INVALID_ARGUMENT", `messages[${index}]: system messages may only come first`, `messages[${index}].role`);
      system = system === undefined ? text : `${system}\n\n${text}`;
    } else {
      messages.push({ role, content: text });
    }
  });
  if (system !== undefined && system !== agent.systemPrompt) {
    throw new HttpError(
      "ERR_SYSTEM_PROMPT_MISMATCH",
      `The system message differs from the system prompt of agent ${agent.id}; omit it or send it unchanged`,
      "messages",
    );
  }
  const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? undefined;
  return {
    agentId: agent.id,
    model,
    messages,
    stream: body.stream === true,
    includeUsage: body.stream_options?.include_usage === true,
    maxTokens,
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
const MODELS_LIMIT = 1000;

export function registerOpenAiRoutes(app: FastifyInstance, runtime: AgentRuntime, options: { sse: SseOptions }): void {
  // OpenAI's list has no paging: the first MODELS_LIMIT agents (GET /agents pages through all of them).
  app.get("/v1/models", async () => ({
    object: "list",
    data: (await runtime.list({ limit: MODELS_LIMIT })).agents.map((agent) => ({
      id: `${MODEL_PREFIX}${agent.id}`,
      object: "model",
      created: Math.floor(agent.createdAt / 1000),
      owned_by: "agentrt",
    })),
  }));

  app.post<{ Body: ChatCompletionBody; Headers: { [AGENT_HEADER]?: string } }>(
    "/v1/chat/completions",
    { schema: REQUEST_SCHEMAS["POST /v1/chat/completions"] },
    async (request, reply) => {
      const parsed = await parseRequest(request, runtime);
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
          {
            index: 0,
            message: { role: "assistant", content: result.reply, refusal: null },
            logprobs: null,
            finish_reason: finishReason(result.timings.stopReason),
          },
        ],
        usage: usage(result),
      };
    },
  );
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
  const stream = await openTurnStream(request, reply, turn.accepted, controller, sse);
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
      stream.send({
        data: { id: meta.id, object: "chat.completion.chunk", created: meta.created, model: parsed.model, choices: [], usage: usage(result) },
      });
    }
    stream.send({ data: "[DONE]" });
  } catch (error) {
    if (!stream.closed) stream.send({ data: openAiErrorJson(toErrorBody(error)) });
  } finally {
    stream.dispose();
  }
}
