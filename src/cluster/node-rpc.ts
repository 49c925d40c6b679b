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
import { randomUUID } from "node:crypto";
import { createInbox, type Msg, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { AgentRuntimeError, ERROR_CODES, type ErrorCode } from "../errors.js";
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

const ID = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_METHOD_CHARS = 128;
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value);

// ----------------------------------------------------------------------------------------------------
// Server

export interface RpcServerOptions {
  /** This node's name: the server takes the requests sent to it (one subscriber per subject, no queue group). */
  node: string;
  /** Subject prefix. Default `"agentrt"`. */
  prefix?: string;
  handlers: RpcHandlers;
  /** pino-style logger for hostile input and handler failures. Default: silent. */
  log?: Pick<Logger, "warn" | "error" | "debug">;
  /** While a handler runs, the caller hears from the server at least this often, in ms. Default 1000 (keep it well below the clients' `stallMs`). */
  keepaliveMs?: number;
  /** Largest request accepted, in bytes; larger ones are answered `ERR_INVALID_REQUEST`. Default: the connection's max payload. */
  maxRequestBytes?: number;
  /** How long `dispose()` waits for handlers in flight, in ms. Default 30 000. */
  disposeTimeoutMs?: number;
}

interface InFlight {
  readonly id: string;
  readonly reply: string;
  readonly controller: AbortController;
  seq: number;
  accepted: boolean;
  settled: boolean;
  /** Tokens waiting for the end of this turn of the event loop. */
  tokens: string;
  flushing: boolean;
  sentSinceTick: boolean;
}

const SILENT: Pick<Logger, "warn" | "error" | "debug"> = { warn: () => {}, error: () => {}, debug: () => {} };

export class RpcServer {
  readonly node: string;
  readonly #nc: NatsConnection;
  readonly #handlers: RpcHandlers;
  readonly #log: Pick<Logger, "warn" | "error" | "debug">;
  readonly #keepaliveMs: number;
  readonly #maxRequestBytes: number | undefined;
  readonly #disposeTimeoutMs: number;
  readonly #inFlight = new Map<string, InFlight>();
  /** Where NATS tells us that a caller's inbox is gone: our stream messages carry `<probe>.<id>` as reply subject. */
  readonly #probe: string;
  #requestSubs: Subscription[] = [];
  #otherSubs: Subscription[] = [];
  #ticker: NodeJS.Timeout | undefined;
  #idle: Array<() => void> = [];
  #disposed: Promise<void> | undefined;

  private constructor(nc: NatsConnection, options: RpcServerOptions) {
    this.#nc = nc;
    this.node = validateNodeName(options.node);
    this.#handlers = options.handlers;
    this.#log = options.log ?? SILENT;
    this.#keepaliveMs = positive("keepaliveMs", options.keepaliveMs ?? 1000);
    this.#maxRequestBytes = options.maxRequestBytes === undefined ? undefined : positive("maxRequestBytes", options.maxRequestBytes);
    this.#disposeTimeoutMs = positive("disposeTimeoutMs", options.disposeTimeoutMs ?? 30_000);
    this.#probe = createInbox();
    const subjects = rpcSubjects(options.prefix ?? "agentrt", this.node);
    const guard = (name: string, fn: (msg: Msg) => void) => (error: Error | null, msg: Msg) => {
      if (error) return void this.#log.warn({ err: error, subject: name }, "rpc subscription failed");
      // A throw here would unwind into the NATS client's parser: nothing may escape.
      try {
        fn(msg);
      } catch (thrown) {
        this.#log.error({ err: thrown, subject: msg.subject }, "rpc message handling failed");
      }
    };
    this.#requestSubs = [
      nc.subscribe(subjects.turn, { callback: guard(subjects.turn, (msg) => this.#onRequest("turn", msg)) }),
      nc.subscribe(subjects.call, { callback: guard(subjects.call, (msg) => this.#onRequest("call", msg)) }),
    ];
    this.#otherSubs = [
      nc.subscribe(subjects.abort, { callback: guard(subjects.abort, (msg) => this.#onAbort(msg)) }),
      nc.subscribe(`${this.#probe}.*`, { callback: guard(this.#probe, (msg) => this.#onProbe(msg)) }),
    ];
  }

  /** Subscribes as `node` and resolves once the NATS server has the subscriptions. */
  static async start(nc: NatsConnection, options: RpcServerOptions): Promise<RpcServer> {
    const server = new RpcServer(nc, options);
    await nc.flush();
    return server;
  }

  /** Requests whose handler has not settled yet. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  #onRequest(kind: "turn" | "call", msg: Msg): void {
    const reply = msg.reply;
    // A wildcard reply subject would spray our answer over other subscribers (other callers' inboxes).
    if (!reply || reply.includes("*") || reply.includes(">")) {
      this.#log.warn({ subject: msg.subject, reply, bytes: msg.data.length }, "rpc request without a usable reply subject dropped");
      return;
    }
    const limit = this.#maxRequestBytes ?? this.#nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
    let body: Record<string, unknown>;
    try {
      if (msg.data.length > limit)
        throw invalid(`The request is ${msg.data.length} bytes, over the limit of ${limit}`, { bytes: msg.data.length, limit });
      body = parseRequest(kind, msg);
    } catch (error) {
      this.#log.warn({ err: error, subject: msg.subject }, "invalid rpc request");
      this.#publish(reply, undefined, JSON.stringify({ t: "error", s: 0, error: toWire(error, this.#log) }));
      return;
    }
    const id = body.id as string;
    if (this.#inFlight.has(id)) {
      this.#publish(
        reply,
        undefined,
        JSON.stringify({ t: "error", s: 0, error: toWire(invalid(`Request id ${id} is already in flight`, { id }), this.#log) }),
      );
      return;
    }
    const entry: InFlight = {
      id,
      reply,
      controller: new AbortController(),
      seq: 0,
      accepted: false,
      settled: false,
      tokens: "",
      flushing: false,
      sentSinceTick: false,
    };
    this.#inFlight.set(id, entry);
    this.#ticker ??= setInterval(() => this.#tick(), Math.max(1, Math.floor(this.#keepaliveMs / 2)));
    let work: Promise<unknown>;
    try {
      work =
        kind === "turn"
          ? this.#handlers.turn(body.request, this.#sink(entry), entry.controller.signal)
          : this.#handlers.call(body.method as string, body.params, entry.controller.signal);
    } catch (error) {
      work = Promise.reject(error);
    }
    Promise.resolve(work)
      .then(
        (result) => this.#finish(entry, result, undefined),
        (error: unknown) => this.#finish(entry, undefined, error),
      )
      .catch((error: unknown) => this.#log.error({ err: error, id }, "rpc reply failed"));
  }

  #sink(entry: InFlight): TurnSink {
    return {
      accepted: () => {
        if (entry.settled || entry.accepted) return;
        entry.accepted = true;
        this.#send(entry, "accepted");
      },
      token: (text: string) => {
        if (entry.settled || typeof text !== "string" || text === "") return;
        // A token means the turn was taken, whether or not the handler said so.
        if (!entry.accepted) {
          entry.accepted = true;
          this.#send(entry, "accepted");
        }
        entry.tokens += text;
        if (!entry.flushing) {
          entry.flushing = true;
          setImmediate(() => this.#flush(entry));
        }
      },
    };
  }

  #flush(entry: InFlight): void {
    entry.flushing = false;
    if (entry.tokens === "") return;
    const text = entry.tokens;
    entry.tokens = "";
    this.#sendTokens(entry, text);
  }

  #sendTokens(entry: InFlight, text: string): void {
    // Not worth sending to a caller that aborted; the handler's final message still goes out.
    if (entry.controller.signal.aborted) return;
    const data = `{"t":"token","s":${entry.seq},"text":${JSON.stringify(text)}}`;
    if (this.#fits(data)) {
      entry.seq++;
      entry.sentSinceTick = true;
      this.#publish(entry.reply, `${this.#probe}.${entry.id}`, data);
      return;
    }
    // Over the connection's max payload (a huge batch): halves, in order, never splitting a surrogate pair.
    let half = Math.floor(text.length / 2);
    if (/[\uD800-\uDBFF]/.test(text[half - 1] ?? "")) half++;
    this.#sendTokens(entry, text.slice(0, half));
    this.#sendTokens(entry, text.slice(half));
  }

  #send(entry: InFlight, t: "accepted" | "alive"): void {
    entry.sentSinceTick = true;
    this.#publish(entry.reply, `${this.#probe}.${entry.id}`, `{"t":"${t}","s":${entry.seq++}}`);
  }

  #finish(entry: InFlight, result: unknown, error: unknown): void {
    entry.settled = true;
    this.#flush(entry);
    this.#inFlight.delete(entry.id);
    let data: string | undefined;
    if (error === undefined) {
      try {
        data = JSON.stringify({ t: "done", s: entry.seq, result });
      } catch (cause) {
        error = new AgentRuntimeError("ERR_NODE_FAILED", "The handler's result is not JSON-serialisable", { cause });
      }
      if (data !== undefined && !this.#fits(data)) {
        error = new AgentRuntimeError("ERR_NODE_FAILED", "The handler's result is larger than the connection's max payload", {
          details: { bytes: Buffer.byteLength(data), maxPayload: this.#maxPayload() },
        });
        data = undefined;
      }
    }
    if (error !== undefined) {
      if (!(error instanceof AgentRuntimeError)) this.#log.error({ err: error, id: entry.id }, "rpc handler failed");
      data = JSON.stringify({ t: "error", s: entry.seq, error: toWire(error, this.#log) });
    }
    this.#publish(entry.reply, undefined, data!);
    if (this.#inFlight.size === 0) {
      clearInterval(this.#ticker);
      this.#ticker = undefined;
      for (const resolve of this.#idle.splice(0)) resolve();
    }
  }

  /** Every keepaliveMs / 2: an `alive` to each caller that heard nothing since the last tick. */
  #tick(): void {
    for (const entry of this.#inFlight.values()) {
      if (!entry.sentSinceTick && !entry.controller.signal.aborted) this.#send(entry, "alive");
      entry.sentSinceTick = false;
    }
  }

  #onAbort(msg: Msg): void {
    let id: unknown;
    try {
      id = (JSON.parse(msg.string()) as { id?: unknown } | null)?.id;
    } catch {
      // fall through: logged below
    }
    if (typeof id !== "string" || !ID.test(id)) {
      this.#log.warn({ subject: msg.subject, bytes: msg.data.length }, "invalid rpc abort dropped");
      return;
    }
    this.#inFlight.get(id)?.controller.abort(new AgentRuntimeError("ERR_ABORTED", "The caller aborted the request", { details: { id } }));
  }

  /** NATS's "no responders" for one of our stream messages: the caller's inbox is gone. */
  #onProbe(msg: Msg): void {
    if (msg.headers?.code !== 503) return;
    const id = msg.subject.slice(this.#probe.length + 1);
    this.#inFlight.get(id)?.controller.abort(new AgentRuntimeError("ERR_ABORTED", "The caller went away", { details: { id } }));
  }

  #maxPayload(): number {
    return this.#nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
  }

  #fits(data: string): boolean {
    // Bytes ≤ 3 × UTF-16 units: the exact count only when it could matter.
    const max = this.#maxPayload() - 512;
    return data.length * 3 <= max || Buffer.byteLength(data) <= max;
  }

  #publish(subject: string, reply: string | undefined, data: string): void {
    try {
      this.#nc.publish(subject, data, reply === undefined ? undefined : { reply });
    } catch (error) {
      // A closed connection, or a subject NATS refuses (hostile reply subject): the caller cannot hear us.
      this.#log.warn({ err: error, subject }, "rpc reply not sent");
    }
  }

  /**
   * Stops taking requests (the subscriptions drain: requests already delivered are still handled; later
   * ones get "no responders"), then waits for the handlers in flight to finish streaming, at most
   * `disposeTimeoutMs` (aborting none). Idempotent.
   */
  dispose(): Promise<void> {
    this.#disposed ??= (async () => {
      await Promise.all(this.#requestSubs.map((sub) => sub.drain().catch(() => {})));
      if (this.#inFlight.size > 0) {
        let timer: NodeJS.Timeout | undefined;
        const idle = new Promise<boolean>((resolve) => this.#idle.push(() => resolve(true)));
        const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), this.#disposeTimeoutMs)));
        if (!(await Promise.race([idle, late]))) {
          this.#log.warn({ inFlight: this.#inFlight.size, node: this.node }, "rpc handlers still running after disposeTimeoutMs");
        }
        clearTimeout(timer);
      }
      // Aborts and gone-caller notices are listened to until the last handler is done.
      await Promise.all(this.#otherSubs.map((sub) => sub.drain().catch(() => {})));
      if (this.#inFlight.size === 0) clearInterval(this.#ticker);
    })();
    return this.#disposed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

function positive(name: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number, got ${value}`);
  return value;
}

function invalid(message: string, details?: Record<string, unknown>): AgentRuntimeError {
  return new AgentRuntimeError("ERR_INVALID_REQUEST", message, details ? { details } : {});
}

function parseRequest(kind: "turn" | "call", msg: Msg): Record<string, unknown> {
  let body: unknown;
  try {
    body = JSON.parse(msg.string());
  } catch {
    throw invalid("The request is not JSON");
  }
  if (!isObject(body)) throw invalid("The request is not a JSON object");
  if (typeof body.id !== "string" || !ID.test(body.id)) throw invalid("The request has no valid id (1-64 of [A-Za-z0-9_-])");
  if (kind === "call" && (typeof body.method !== "string" || body.method.length === 0 || body.method.length > MAX_METHOD_CHARS)) {
    throw invalid(`The call has no method name (1-${MAX_METHOD_CHARS} characters)`, { id: body.id });
  }
  return body;
}

/**
 * An error as data: agentrt's codes as they are; bad arguments (TypeError/RangeError, named after the
 * option as everywhere in agentrt) as ERR_INVALID_REQUEST, as the HTTP front answers them 400; aborts
 * as ERR_ABORTED; anything else ERR_NODE_FAILED with its name only (its message and stack stay in
 * this node's log, as the HTTP front keeps 500s' messages to itself).
 */
function toWire(error: unknown, log: Pick<Logger, "error">): WireError {
  if (error instanceof AgentRuntimeError) {
    try {
      JSON.stringify(error.details);
      return { code: error.code, message: error.message, details: error.details };
    } catch (cause) {
      log.error({ err: cause }, "rpc error details are not JSON-serialisable; sent without them");
      return { code: error.code, message: error.message };
    }
  }
  if (error instanceof TypeError || error instanceof RangeError)
    return { code: "ERR_INVALID_REQUEST", message: error.message, details: { name: error.name } };
  if (error instanceof Error && (error.name === "AbortError" || error.name === "TimeoutError"))
    return { code: "ERR_ABORTED", message: error.message };
  return { code: "ERR_NODE_FAILED", message: ERROR_CODES.ERR_NODE_FAILED, details: { name: error instanceof Error ? error.name : typeof error } };
}

// ----------------------------------------------------------------------------------------------------
// Client

export interface RpcClientOptions {
  /** Subject prefix. Default `"agentrt"`. */
  prefix?: string;
  /** No message from the server for this long after sending (or since its last one) = the server is gone, in ms. Default 5000. */
  stallMs?: number;
  /** Default `timeoutMs` of `call()`, in ms. Default: none (a dead server is still noticed after `stallMs`). */
  callTimeoutMs?: number;
}

export interface RpcTurnOptions {
  /** Called once, when the server's handler said the turn was queued. */
  onAccepted?: () => void;
  /** Called with each batch of tokens, in order. A throw fails the turn (and aborts it on the server). */
  onToken?: (text: string) => void;
  signal?: AbortSignal;
}

export interface RpcCallOptions {
  signal?: AbortSignal;
  /** Aborts the call (here and on the server) after this long, as `AbortSignal.timeout` does: rejects with its `TimeoutError`. Default: the client's `callTimeoutMs`. */
  timeoutMs?: number;
}

interface Pending {
  readonly id: string;
  readonly node: string;
  readonly kind: "turn" | "call";
  seq: number;
  acknowledged: boolean;
  delivered: boolean;
  timer: NodeJS.Timeout | undefined;
  onAccepted: (() => void) | undefined;
  onToken: ((text: string) => void) | undefined;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  cleanup: () => void;
}

export class RpcClient {
  readonly #nc: NatsConnection;
  readonly #prefix: string;
  readonly #stallMs: number;
  readonly #callTimeoutMs: number | undefined;
  /** One wildcard subscription for every request's replies, multiplexed by the id in the subject. */
  readonly #inbox: string;
  readonly #sub: Subscription;
  readonly #pending = new Map<string, Pending>();
  #closed = false;

  constructor(nc: NatsConnection, options: RpcClientOptions = {}) {
    this.#nc = nc;
    this.#prefix = validatePrefix(options.prefix ?? "agentrt");
    this.#stallMs = positive("stallMs", options.stallMs ?? 5000);
    this.#callTimeoutMs = options.callTimeoutMs === undefined ? undefined : positive("callTimeoutMs", options.callTimeoutMs);
    this.#inbox = createInbox();
    this.#sub = nc.subscribe(`${this.#inbox}.*`, {
      callback: (error, msg) => {
        if (error) return;
        try {
          this.#onReply(msg);
        } catch {
          // #onReply settles its request on any failure; nothing may unwind into the NATS client.
        }
      },
    });
    void this.#sub.closed.then(() => {
      for (const pending of [...this.#pending.values()]) this.#fail(pending, this.#unavailable(pending, "connection-closed"), false);
    });
  }

  /** Requests waiting for their answer. */
  get pending(): number {
    return this.#pending.size;
  }

  /** Sends a turn to `node`; resolves with its result after the tokens (see the module comment for failures). */
  async turn(node: string, request: unknown, options: RpcTurnOptions = {}): Promise<unknown> {
    return this.#request("turn", node, (id) => JSON.stringify({ id, request }), options.signal, options);
  }

  /** Calls `method` on `node`. */
  async call(node: string, method: string, params: unknown, options: RpcCallOptions = {}): Promise<unknown> {
    if (typeof method !== "string" || method.length === 0 || method.length > MAX_METHOD_CHARS) {
      throw new TypeError(`method must be a string of 1-${MAX_METHOD_CHARS} characters, got ${JSON.stringify(method)}`);
    }
    const timeoutMs = options.timeoutMs ?? this.#callTimeoutMs;
    let signal = options.signal;
    if (timeoutMs !== undefined) {
      const timeout = AbortSignal.timeout(positive("timeoutMs", timeoutMs));
      signal = signal ? AbortSignal.any([signal, timeout]) : timeout;
    }
    return this.#request("call", node, (id) => JSON.stringify({ id, method, params }), signal, {});
  }

  #request(
    kind: "turn" | "call",
    node: string,
    encode: (id: string) => string,
    signal: AbortSignal | undefined,
    callbacks: Pick<RpcTurnOptions, "onAccepted" | "onToken">,
  ): Promise<unknown> {
    const subject = kind === "turn" ? rpcSubjects(this.#prefix, node).turn : rpcSubjects(this.#prefix, node).call;
    if (this.#closed) throw new AgentRuntimeError("ERR_RUNTIME_CLOSED", "The RPC client is closed");
    signal?.throwIfAborted();
    const id = randomUUID();
    const data = encode(id);
    return new Promise((resolve, reject) => {
      const onAbort = (): void => this.#fail(pending, signal!.reason, true);
      const pending: Pending = {
        id,
        node,
        kind,
        seq: 0,
        acknowledged: false,
        delivered: false,
        timer: undefined,
        onAccepted: callbacks.onAccepted,
        onToken: callbacks.onToken,
        resolve,
        reject,
        cleanup: () => {
          clearTimeout(pending.timer);
          signal?.removeEventListener("abort", onAbort);
        },
      };
      pending.timer = setTimeout(() => this.#fail(pending, this.#unavailable(pending, "stalled"), true), this.#stallMs);
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#pending.set(id, pending);
      try {
        this.#nc.publish(subject, data, { reply: `${this.#inbox}.${id}` });
      } catch (cause) {
        const bytes = Buffer.byteLength(data);
        const max = this.#nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
        this.#fail(
          pending,
          bytes > max
            ? new AgentRuntimeError("ERR_INVALID_REQUEST", `The request is ${bytes} bytes, over the connection's max payload of ${max}`, {
                cause,
                details: { node, bytes, limit: max },
              })
            : this.#unavailable(pending, "publish-failed", cause),
          false,
        );
      }
    });
  }

  #onReply(msg: Msg): void {
    const pending = this.#pending.get(msg.subject.slice(this.#inbox.length + 1));
    if (!pending) return; // late: the request was settled (aborted, stalled)
    try {
      const headers = msg.headers;
      if (headers?.code === 503 && msg.data.length === 0) {
        this.#fail(pending, this.#unavailable(pending, "no-responders"), false);
        return;
      }
      if (headers?.hasError) throw protocol(pending, `a NATS status ${headers.code} ${headers.description}`);
      let reply: unknown;
      try {
        reply = JSON.parse(msg.string());
      } catch {
        throw protocol(pending, "a message that is not JSON");
      }
      if (!isObject(reply) || typeof reply.s !== "number") throw protocol(pending, "a message without its number");
      if (reply.s !== pending.seq) {
        if (Number.isSafeInteger(reply.s) && reply.s > pending.seq) {
          // Core NATS lost one (a reconnect): the stream is incomplete.
          pending.delivered = true;
          this.#fail(pending, this.#unavailable(pending, "lost-messages"), true);
          return;
        }
        throw protocol(pending, `message ${String(reply.s)} where ${pending.seq} was expected`);
      }
      pending.seq++;
      pending.delivered = true;
      pending.timer?.refresh();
      switch (reply.t) {
        case "accepted":
          if (pending.kind === "turn" && !pending.acknowledged) {
            pending.acknowledged = true;
            pending.onAccepted?.();
          }
          return;
        case "token":
          if (typeof reply.text !== "string") throw protocol(pending, "a token without text");
          pending.onToken?.(reply.text);
          return;
        case "alive":
          return;
        case "done":
          this.#settle(pending);
          pending.resolve(reply.result);
          return;
        case "error": {
          const error = fromWire(pending, reply.error);
          this.#settle(pending);
          pending.reject(error);
          return;
        }
        default:
          throw protocol(pending, `a message of unknown type ${JSON.stringify(reply.t)}`);
      }
    } catch (error) {
      // A protocol error, or the caller's own onToken/onAccepted threw: the request ends here and on the server.
      this.#fail(pending, error, true);
    }
  }

  #unavailable(pending: Pending, reason: "no-responders" | "stalled" | "lost-messages" | "connection-closed" | "publish-failed", cause?: unknown) {
    const accepted = reason !== "no-responders" && reason !== "publish-failed";
    const message =
      reason === "no-responders"
        ? `No node ${pending.node} is serving requests`
        : reason === "stalled"
          ? `Node ${pending.node} sent nothing for ${this.#stallMs} ms`
          : reason === "lost-messages"
            ? `Replies from node ${pending.node} were lost`
            : `The connection to NATS is closed`;
    const details: Record<string, unknown> = { node: pending.node, accepted, delivered: pending.delivered, reason };
    if (pending.kind === "turn") details.acknowledged = pending.acknowledged;
    return new AgentRuntimeError("ERR_NODE_UNAVAILABLE", message, cause === undefined ? { details } : { details, cause });
  }

  #settle(pending: Pending): boolean {
    if (this.#pending.get(pending.id) !== pending) return false;
    this.#pending.delete(pending.id);
    pending.cleanup();
    return true;
  }

  /** Rejects `pending` (once); `tellServer` publishes its abort, so that the handler stops too. */
  #fail(pending: Pending, error: unknown, tellServer: boolean): void {
    if (!this.#settle(pending)) return;
    if (tellServer) {
      try {
        this.#nc.publish(rpcSubjects(this.#prefix, pending.node).abort, JSON.stringify({ id: pending.id }));
      } catch {
        // The connection is gone: the server hears "no responders" on its next message and aborts by itself.
      }
    }
    pending.reject(error);
  }

  /** Aborts every pending request (`ERR_RUNTIME_CLOSED`, also sent to the servers) and unsubscribes. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const pending of [...this.#pending.values()])
      this.#fail(pending, new AgentRuntimeError("ERR_RUNTIME_CLOSED", "The RPC client was closed"), true);
    await this.#sub.drain().catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function protocol(pending: Pending, what: string): AgentRuntimeError {
  return new AgentRuntimeError("ERR_NODE_PROTOCOL", `Node ${pending.node} answered ${what}`, { details: { node: pending.node } });
}

/** The server's error, rebuilt with its code; `details.node` names the node that answered. */
function fromWire(pending: Pending, error: unknown): AgentRuntimeError {
  if (!isObject(error) || typeof error.code !== "string" || typeof error.message !== "string")
    throw protocol(pending, "an error without code or message");
  const details = { ...(isObject(error.details) ? error.details : {}), node: pending.node };
  if (Object.hasOwn(ERROR_CODES, error.code)) return new AgentRuntimeError(error.code as ErrorCode, error.message, { details });
  // A code this version does not know (a newer node): kept in the details.
  return new AgentRuntimeError("ERR_NODE_FAILED", error.message, { details: { ...details, code: error.code } });
}
