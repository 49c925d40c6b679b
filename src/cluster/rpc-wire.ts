/**
 * Requests between cluster nodes over core NATS (no JetStream): a node serves its own subjects,
 * `<prefix>.rpc.<node>.turn` (streaming), `.call` (unary) and `.abort`, and any node sends to them.
 * The transport knows nothing of agents: requests, params and results are JSON values.
 *
 * A request is one message `{ id, request }` / `{ id, method, params }` whose reply subject is the
 * caller's inbox plus the request id; the server answers there with numbered messages (`s` counts from
 * 0 per request, so a lost one is noticed): `accepted`, `token` (the tokens produced within one turn of
 * the event loop, concatenated), `alive` (while the handler runs and nothing else was sent), then exactly
 * one `done` or `error`. The caller aborts by publishing `{ id }` on `.abort`.
 *
 * Failures, as the caller sees them (`ERR_NODE_UNAVAILABLE`, `details: { node, accepted, delivered, reason }`):
 * - `reason: "no-responders"`, `accepted: false`: no server was subscribed to the subject when the
 *   request arrived (NATS's 503 status). The request was certainly never handled: safe to send again.
 * - `reason: "stalled"`: nothing came from the server for `stallMs` (it sends at least one message
 *   every `keepaliveMs` while the handler runs). `accepted: true`, because it may have been handled;
 *   `delivered` says whether anything at all came back (true: the server did receive the request).
 *   For a turn, `details.acknowledged` says whether it had sent `accepted` (its mailbox took it).
 * - `reason: "lost-messages"`: a numbered reply is missing (core NATS is at-most-once, e.g. across a
 *   reconnect): the stream is incomplete, so the request fails rather than deliver a partial text.
 * - `reason: "connection-closed"` / `"publish-failed"`: this client's own connection is gone.
 */
import { validateNodeName, validatePrefix } from "./keys.js";

/** What a handler answers with, and what a caller gets back. */
export interface RpcHandlers {
  /**
   * A streaming request (a turn). Call `sink.accepted()` once it is queued (its mailbox took it),
   * `sink.token(text)` for each piece; resolve with a JSON-serialisable result; reject with an error
   * (an `AgentRuntimeError` keeps its code, message and details across the wire). `signal` aborts when
   * the caller aborted, or its inbox went away (its connection closed).
   */
  turn(request: unknown, sink: TurnSink, signal: AbortSignal): Promise<unknown>;
  /** A unary request: method name + params → JSON result. */
  call(method: string, params: unknown, signal: AbortSignal): Promise<unknown>;
}

export interface TurnSink {
  /** The request is queued; sent at once. Later calls, and calls after the handler settled, are ignored. */
  accepted(): void;
  /** A piece of the reply; pieces produced within one turn of the event loop travel as one message. */
  token(text: string): void;
}

/** The subjects node `node` serves. */
export function rpcSubjects(prefix: string, node: string): { turn: string; call: string; abort: string } {
  const base = `${validatePrefix(prefix)}.rpc.${validateNodeName(node)}`;
  return { turn: `${base}.turn`, call: `${base}.call`, abort: `${base}.abort` };
}

/** An error as it crosses the wire. */
export interface WireError {
  code: string;
  message: string;
  details?: Record<string, unknown> | undefined;
}

/** The server's messages to a caller's inbox. */
export type RpcReply =
  | { t: "accepted"; s: number }
  | { t: "token"; s: number; text: string }
  | { t: "alive"; s: number }
  | { t: "done"; s: number; result: unknown }
  | { t: "error"; s: number; error: WireError };

export const ID = /^[A-Za-z0-9_-]{1,64}$/;
export const MAX_METHOD_CHARS = 128;
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

export const isObject = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value);

// ----------------------------------------------------------------------------------------------------
// Server

export function positive(name: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number, got ${value}`);
  return value;
}
