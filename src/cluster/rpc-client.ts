/** The calling side of the node protocol (see rpc-wire.ts): requests to any node, one inbox for all. */
import { randomUUID } from "node:crypto";
import { createInbox, type Msg, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { AgentRuntimeError, ERROR_CODES, type ErrorCode } from "../errors.js";
import { validatePrefix } from "./keys.js";
import { DEFAULT_MAX_PAYLOAD, isObject, MAX_METHOD_CHARS, positive, rpcSubjects } from "./rpc-wire.js";

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
