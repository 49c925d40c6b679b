import type { ServerResponse } from "node:http";
import type { FastifyReply, FastifyRequest } from "fastify";
import { systemClock, type Clock } from "../clock.js";
import { sendError } from "./errors.js";

export interface SseOptions {
  /** A `: ping` comment this often keeps proxies from closing an idle stream. Default 15 000 ms. */
  heartbeatMs?: number;
  /** Times the heartbeat and the linger of a dropped stream. Default: the system clock. */
  clock?: Clock;
}

/** A system timer must not keep the process alive for a stream's sake; other clocks' handles pass through. */
function unref(handle: unknown): unknown {
  (handle as { unref?: () => void } | null)?.unref?.();
  return handle;
}

/** Whether the client asked for a Server-Sent Events answer. */
export function wantsEventStream(accept: string | undefined): boolean {
  return accept !== undefined && accept.toLowerCase().includes("text/event-stream");
}

/**
 * One Server-Sent Events response. Takes the response over from fastify (`reply.hijack()`), frames
 * events (`id:`, `event:`, `data:` lines and a blank line), and turns a client disconnect into `signal`.
 */
export class SseStream {
  readonly #raw: ServerResponse;
  readonly #controller = new AbortController();
  readonly #clock: Clock;
  readonly #heartbeatMs: number;
  #heartbeat: unknown;
  #lingerTimer: unknown;

  private constructor(raw: ServerResponse, heartbeatMs: number, clock: Clock) {
    this.#raw = raw;
    this.#clock = clock;
    this.#heartbeatMs = heartbeatMs;
    raw.on("close", () => {
      this.#stopTimers();
      if (!raw.writableFinished) this.#controller.abort(new DisconnectedError());
    });
    this.#beat();
  }

  /** One `: ping` after `heartbeatMs`, then the next (a Clock has timeouts, not intervals). */
  #beat(): void {
    this.#heartbeat = unref(
      this.#clock.setTimeout(() => {
        this.#heartbeat = undefined;
        if (this.closed) return;
        this.comment("ping");
        this.#beat();
      }, this.#heartbeatMs),
    );
  }

  #stopTimers(): void {
    if (this.#heartbeat !== undefined) this.#clock.clearTimeout(this.#heartbeat);
    if (this.#lingerTimer !== undefined) this.#clock.clearTimeout(this.#lingerTimer);
    this.#heartbeat = this.#lingerTimer = undefined;
  }

  /** Sends the 200 headers now, so clients see the stream open before the first event. */
  static open(reply: FastifyReply, options: SseOptions = {}, headers: Record<string, string> = {}): SseStream {
    reply.hijack();
    const raw = reply.raw;
    raw.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      connection: "keep-alive",
      // Tells nginx-style proxies not to buffer the stream.
      "x-accel-buffering": "no",
      ...headers,
    });
    raw.flushHeaders();
    return new SseStream(raw, options.heartbeatMs ?? 15_000, options.clock ?? systemClock);
  }

  /** Aborted when the client goes away before the stream ends. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  get closed(): boolean {
    return this.#raw.writableEnded || this.#raw.destroyed;
  }

  /** Bytes written and not yet taken by the socket. */
  get backlog(): number {
    return this.#raw.writableLength;
  }

  /** Writes one event; false when the socket is backed up (wait for {@link drained}). */
  send(event: { event?: string; id?: string | number; data: unknown }): boolean {
    if (this.closed) return false;
    const data = typeof event.data === "string" ? event.data : JSON.stringify(event.data);
    let frame = "";
    if (event.id !== undefined) frame += `id: ${event.id}\n`;
    if (event.event !== undefined) frame += `event: ${event.event}\n`;
    // A newline inside data would end the field: each line becomes its own `data:` line.
    for (const line of data.split("\n")) frame += `data: ${line}\n`;
    return this.#raw.write(`${frame}\n`);
  }

  comment(text: string): void {
    if (!this.closed) this.#raw.write(`: ${text}\n\n`);
  }

  /** Resolves when the socket can take more, or the client is gone. */
  drained(): Promise<void> {
    if (this.closed || this.#raw.writableLength === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.#raw.off("drain", done);
        this.#raw.off("close", done);
        resolve();
      };
      this.#raw.on("drain", done);
      this.#raw.on("close", done);
    });
  }

  /**
   * Ends the stream. With `lingerMs`, a client that does not read the rest in that time is cut off
   * (a dropped subscriber must not hold its socket and buffers forever).
   */
  end(lingerMs?: number): void {
    if (this.#heartbeat !== undefined) this.#clock.clearTimeout(this.#heartbeat);
    this.#heartbeat = undefined;
    if (this.closed) return;
    this.#raw.end();
    if (lingerMs !== undefined) {
      this.#lingerTimer = unref(this.#clock.setTimeout(() => this.#raw.destroy(), lingerMs));
    }
  }

  /** Ends the stream if it is still open and stops its timers now (no linger); idempotent. */
  dispose(): void {
    this.end();
    this.#stopTimers();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
}

/** The abort reason when the HTTP client disconnects. */
export class DisconnectedError extends Error {
  override readonly name = "AbortError";
  constructor() {
    super("The client disconnected");
  }
}

/** Aborted when the client of a non-streaming request disconnects before the answer is sent. */
export function disconnectSignal(reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  reply.raw.on("close", () => {
    if (!reply.raw.writableFinished) controller.abort(new DisconnectedError());
  });
  return controller.signal;
}

/**
 * Waits until the turn is in the agent's mailbox (`Turn.accepted`) and returns the error if it was
 * refused before that (a full mailbox, an unknown agent, a bad message): such a refusal still gets a
 * JSON answer with its status, since no stream has been opened yet.
 */
export async function refusedAtOnce(accepted: Promise<unknown>): Promise<unknown> {
  return accepted.then(
    () => undefined,
    (error: unknown) => error,
  );
}

/**
 * Opens the event stream of a turn, or answers its immediate refusal as a JSON error and returns
 * undefined. Once open, the client going away aborts `controller` (and so the generation in the worker).
 */
export async function openTurnStream(
  request: FastifyRequest,
  reply: FastifyReply,
  accepted: Promise<unknown>,
  controller: AbortController,
  sse: SseOptions,
): Promise<SseStream | undefined> {
  const refusal = await refusedAtOnce(accepted);
  if (refusal !== undefined) {
    sendError(request, reply, refusal);
    return undefined;
  }
  const stream = SseStream.open(reply, sse);
  stream.signal.addEventListener("abort", () => controller.abort(stream.signal.reason), { once: true });
  return stream;
}
