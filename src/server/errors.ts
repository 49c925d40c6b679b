import type { FastifyError, FastifyReply, FastifyRequest } from "fastify";
import { ERROR_CODES, isAgentRuntimeError, type ErrorCode } from "../errors.js";

/**
 * Codes only the HTTP front raises (the runtime's own codes are in ERROR_CODES). Stable like those:
 * clients match on `error.code`.
 */
export const HTTP_ERROR_CODES = {
  ERR_INVALID_ARGUMENT: "A request field has the wrong type or is out of range",
  ERR_BODY_TOO_LARGE: "The request body is larger than the server's limit",
  ERR_INVALID_JSON: "The request body is not valid JSON",
  ERR_UNSUPPORTED_MEDIA_TYPE: "The request body must be application/json",
  ERR_UNAUTHORIZED: "A valid bearer token is required",
  ERR_ROUTE_NOT_FOUND: "No such endpoint",
  ERR_SYSTEM_PROMPT_MISMATCH: "The request's system message differs from the agent's system prompt",
  ERR_INTERNAL: "Internal server error",
} as const;

export type HttpErrorCode = keyof typeof HTTP_ERROR_CODES;

/** HTTP status of every runtime code; a Record, so a new code in ERROR_CODES fails to compile until mapped. */
export const STATUS_BY_CODE: Record<ErrorCode | HttpErrorCode, number> = {
  ERR_AGENT_NOT_FOUND: 404,
  ERR_AGENT_EXISTS: 409,
  ERR_INVALID_AGENT_ID: 400,
  ERR_MAILBOX_FULL: 429,
  ERR_MESSAGE_TOO_LARGE: 413,
  ERR_INVALID_MESSAGE: 400,
  ERR_CONTEXT_FULL: 422,
  ERR_STATE_CORRUPT: 500,
  ERR_STATE_FOREIGN: 500,
  ERR_STATE_WRITE_FAILED: 500,
  ERR_WORKER_CRASHED: 503,
  ERR_WORKER_PROTOCOL: 500,
  ERR_ENGINE_FAILED: 500,
  ERR_ENGINE_UNAVAILABLE: 503,
  ERR_MODEL_NOT_FOUND: 500,
  ERR_MODEL_INVALID: 500,
  ERR_RUNTIME_CLOSED: 503,
  ERR_AGENT_REMOVED: 410,
  // The store is full: nothing the client can fix by retrying soon.
  ERR_TOO_MANY_AGENTS: 507,
  // nginx's "client closed request": the client is usually gone and never reads it.
  ERR_ABORTED: 499,
  ERR_BEHAVIOUR_NOT_FOUND: 422,
  ERR_NO_FREE_SEQUENCE: 503,
  ERR_SEQUENCE_NOT_OPEN: 500,
  ERR_ENGINE_CLOSED: 503,
  ERR_STATE_LOCKED: 503,
  // The agent moved: retrying (on the node that owns it now) succeeds.
  ERR_LEASE_LOST: 503,
  // Misdirected Request: this node is not the one that serves the agent.
  ERR_NOT_OWNER: 421,
  // The owner did not answer (gone, paused, cut off): retryable, on it or on the node that takes its agents.
  ERR_NODE_UNAVAILABLE: 503,
  ERR_NODE_FAILED: 500,
  // Bad Gateway: the other node's answer was not one of the protocol's messages.
  ERR_NODE_PROTOCOL: 502,
  ERR_INVALID_REQUEST: 400,
  // Retryable: the node hands its agents over; another node takes the request.
  ERR_NODE_DRAINING: 503,
  // Like a store that is full: the agent cannot be served under this budget, retrying does not help.
  ERR_KV_BUDGET: 507,
  ERR_INVALID_ARGUMENT: 400,
  ERR_BODY_TOO_LARGE: 413,
  ERR_INVALID_JSON: 400,
  ERR_UNSUPPORTED_MEDIA_TYPE: 415,
  ERR_UNAUTHORIZED: 401,
  ERR_ROUTE_NOT_FOUND: 404,
  ERR_SYSTEM_PROMPT_MISMATCH: 400,
  ERR_INTERNAL: 500,
};

/**
 * An error raised by the HTTP front itself: its own codes, or a runtime code for input the front
 * refuses before the runtime sees it (a schema check, e.g. a missing `text` is ERR_INVALID_MESSAGE).
 */
export class HttpError extends Error {
  override readonly name = "HttpError";
  readonly code: ErrorCode | HttpErrorCode;
  /** The request field at fault (OpenAI's `param`), e.g. `messages[0].role`. */
  readonly param: string | undefined;

  constructor(code: ErrorCode | HttpErrorCode, message: string = { ...ERROR_CODES, ...HTTP_ERROR_CODES }[code], param?: string) {
    super(message);
    this.code = code;
    this.param = param;
  }
}

/** What every error becomes on the wire. */
export interface ErrorBody {
  status: number;
  code: ErrorCode | HttpErrorCode;
  message: string;
  details?: Record<string, unknown> | undefined;
  param?: string | undefined;
}

const FASTIFY_CODES: Record<string, HttpErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: "ERR_BODY_TOO_LARGE",
  FST_ERR_CTP_INVALID_MEDIA_TYPE: "ERR_UNSUPPORTED_MEDIA_TYPE",
  FST_ERR_CTP_EMPTY_JSON_BODY: "ERR_INVALID_JSON",
  FST_ERR_CTP_INVALID_JSON_BODY: "ERR_INVALID_JSON",
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: "ERR_INVALID_ARGUMENT",
  FST_ERR_BAD_URL: "ERR_INVALID_ARGUMENT",
  FST_ERR_MAX_PARAM_LENGTH: "ERR_INVALID_ARGUMENT",
};

/** Maps anything thrown in a handler to a status, a stable code and a message safe to show. */
export function toErrorBody(error: unknown): ErrorBody {
  if (isAgentRuntimeError(error)) {
    return { status: STATUS_BY_CODE[error.code], code: error.code, message: error.message, details: error.details };
  }
  if (error instanceof HttpError) {
    return { status: STATUS_BY_CODE[error.code], code: error.code, message: error.message, param: error.param };
  }
  // Before TypeError/RangeError: some of fastify's own errors extend them.
  const fastifyCode = (error as FastifyError | undefined)?.code;
  const mapped = fastifyCode ? FASTIFY_CODES[fastifyCode] : undefined;
  if (mapped) return { status: STATUS_BY_CODE[mapped], code: mapped, message: (error as Error).message };
  // Option validation in the runtime throws TypeError/RangeError naming the option.
  if (error instanceof TypeError || error instanceof RangeError) {
    return { status: 400, code: "ERR_INVALID_ARGUMENT", message: error.message };
  }
  if (error instanceof Error && error.name === "AbortError") {
    return { status: 499, code: "ERR_ABORTED", message: error.message };
  }
  if (error instanceof SyntaxError) return { status: 400, code: "ERR_INVALID_JSON", message: error.message };
  const status = (error as FastifyError | undefined)?.statusCode;
  if (typeof status === "number" && status >= 400 && status < 500) {
    return { status, code: "ERR_INVALID_ARGUMENT", message: (error as Error).message };
  }
  return { status: 500, code: "ERR_INTERNAL", message: HTTP_ERROR_CODES.ERR_INTERNAL };
}

/** agentrt's JSON error shape: `{ error: { code, message, details? } }`. */
export function agentrtErrorJson(body: ErrorBody): { error: { code: string; message: string; details?: Record<string, unknown> } } {
  return { error: { code: body.code, message: body.message, ...(body.details ? { details: body.details } : {}) } };
}

function openAiErrorType(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 404) return "not_found_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

/** OpenAI's error shape: `{ error: { message, type, param, code } }`, with agentrt's code as `code`. */
export function openAiErrorJson(body: ErrorBody): { error: { message: string; type: string; param: string | null; code: string } } {
  return { error: { message: body.message, type: openAiErrorType(body.status), param: body.param ?? null, code: body.code } };
}

/** Whether `request` is on the OpenAI-compatible surface, which answers errors in OpenAI's shape. */
export function isOpenAiRoute(request: FastifyRequest): boolean {
  return request.url.startsWith("/v1/");
}

/** Sends `error` as JSON in the shape the route's clients expect. */
export function sendError(request: FastifyRequest, reply: FastifyReply, error: unknown): FastifyReply {
  const body = toErrorBody(error);
  if (body.status >= 500) request.log.error({ err: error }, "request failed");
  if (body.status === 429 || body.status === 503) reply.header("retry-after", "1");
  return reply.code(body.status).send(isOpenAiRoute(request) ? openAiErrorJson(body) : agentrtErrorJson(body));
}
