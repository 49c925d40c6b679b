/** The serving side of the node protocol (see rpc-wire.ts): a node's handlers on its own subjects. */
import { createInbox, type Msg, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { AgentRuntimeError, ERROR_CODES } from "../errors.js";
import { validateNodeName } from "./keys.js";
import {
  DEFAULT_MAX_PAYLOAD,
  ID,
  isObject,
  MAX_METHOD_CHARS,
  positive,
  rpcSubjects,
  type RpcHandlers,
  type TurnSink,
  type WireError,
} from "./rpc-wire.js";

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
