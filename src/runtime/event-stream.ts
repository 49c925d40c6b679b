import type { EventEmitter } from "eventemitter3";
import { validateAgentId } from "../agent-id.js";
import type { Clock } from "../clock.js";
import type { RuntimeEventName, RuntimeEvents } from "../events.js";

/** Every runtime event name; typed as a record so a new event in {@link RuntimeEvents} must be listed. */
const EVENT_NAMES: Record<RuntimeEventName, true> = {
  "agent:spawned": true,
  "agent:turn-start": true,
  "agent:token": true,
  "agent:turn-end": true,
  "agent:passivated": true,
  "agent:rehydrated": true,
  "agent:removed": true,
  "agent:error": true,
  "worker:restarted": true,
};

export const RUNTIME_EVENT_NAMES = Object.keys(EVENT_NAMES) as readonly RuntimeEventName[];

/** One runtime event as a value: `{ type: "agent:passivated", data: { id, tokens, bytes, ms } }`. */
export type RuntimeEvent = { [E in RuntimeEventName]: { type: E; data: RuntimeEvents[E][0] } }[RuntimeEventName];

/** The last event of a stream whose consumer fell `bufferSize` events behind; the stream then ends. */
export interface StreamDroppedEvent {
  type: "stream:dropped";
  data: { reason: "overflow"; bufferSize: number };
}

/** What an {@link EventStream} yields: the event, its position in this stream and when it happened. */
export type StreamEvent = (RuntimeEvent | StreamDroppedEvent) & {
  /** 1, 2, 3, … within this stream. */
  seq: number;
  /** Clock time (ms) the runtime emitted it. */
  at: number;
};

export interface EventStreamOptions {
  /**
   * Only events of these agents: exact ids, or a prefix ending in `/*` (`support/*` matches
   * `support/42`). Events that name no agent (`worker:restarted`) are then left out. Default: all.
   */
  agents?: readonly string[];
  /** Only these event types. Default: all of {@link RUNTIME_EVENT_NAMES}. */
  types?: readonly RuntimeEventName[];
  /** Events held for a consumer that has not read them yet; one more drops the stream. Default 1024. */
  bufferSize?: number;
  /** Aborting ends the subscription; a waiting `next()` rejects with `signal.reason`. */
  signal?: AbortSignal;
}

export const DEFAULT_EVENT_BUFFER = 1024;

/** Compiles `agents` into a predicate over an event's agent id. */
function agentFilter(agents: readonly string[] | undefined): ((id: string | undefined) => boolean) | undefined {
  if (agents === undefined) return undefined;
  if (!Array.isArray(agents)) throw new TypeError("agents must be an array of agent ids");
  const exact = new Set<string>();
  const prefixes: string[] = [];
  for (const pattern of agents) {
    if (typeof pattern === "string" && pattern.endsWith("/*")) {
      prefixes.push(`${validateAgentId(pattern.slice(0, -2))}/`);
    } else {
      exact.add(validateAgentId(pattern));
    }
  }
  return (id) => id !== undefined && (exact.has(id) || prefixes.some((prefix) => id.startsWith(prefix)));
}

function eventTypes(types: readonly RuntimeEventName[] | undefined): readonly RuntimeEventName[] {
  if (types === undefined) return RUNTIME_EVENT_NAMES;
  if (!Array.isArray(types)) throw new TypeError("types must be an array of event names");
  const unknown = types.filter((type) => !(EVENT_NAMES as Record<string, true | undefined>)[type]);
  if (unknown.length > 0) {
    throw new TypeError(`types has unknown event name(s): ${unknown.join(", ")}; known: ${RUNTIME_EVENT_NAMES.join(", ")}`);
  }
  return [...new Set(types)];
}

/**
 * A subscription to runtime events as an async iterable, for one consumer. Emitting never waits for
 * the consumer: events queue in a bounded buffer, and a consumer that lets it fill is dropped (it
 * receives what was buffered, then one `stream:dropped` event, then the end) so a slow reader can never
 * slow the runtime or grow its memory.
 */
export class EventStream implements AsyncIterableIterator<StreamEvent> {
  readonly bufferSize: number;
  readonly #clock: Clock;
  readonly #matches: ((id: string | undefined) => boolean) | undefined;
  readonly #unsubscribe: Array<() => void> = [];
  readonly #signal: AbortSignal | undefined;
  #buffer: StreamEvent[] = [];
  #head = 0;
  #seq = 0;
  /** No more events will be buffered (closed, dropped or aborted). */
  #ended = false;
  #dropped = false;
  #error: unknown;
  #waiting: Array<() => void> = [];
  #resolveEnded!: () => void;
  /** Resolves once no more events will be buffered: closed, aborted, or dropped (read the rest with `next`). */
  readonly ended: Promise<void> = new Promise((resolve) => (this.#resolveEnded = resolve));

  /** @internal Use `runtime.events(options)`. */
  constructor(source: EventEmitter<RuntimeEvents>, options: EventStreamOptions, clock: Clock) {
    options.signal?.throwIfAborted();
    const bufferSize = options.bufferSize ?? DEFAULT_EVENT_BUFFER;
    if (!Number.isInteger(bufferSize) || bufferSize < 1) {
      throw new RangeError(`bufferSize must be a positive integer, got ${String(bufferSize)}`);
    }
    this.bufferSize = bufferSize;
    this.#clock = clock;
    this.#matches = agentFilter(options.agents);
    for (const type of eventTypes(options.types)) {
      const listener = (data: { id?: string | undefined }) => this.#push({ type, data } as RuntimeEvent, data.id);
      source.on(type, listener as never);
      this.#unsubscribe.push(() => source.off(type, listener as never));
    }
    this.#signal = options.signal;
    this.#signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  /** Whether this stream was dropped for falling behind. */
  get dropped(): boolean {
    return this.#dropped;
  }

  /** Events buffered and not yet read. */
  get pending(): number {
    return this.#buffer.length - this.#head;
  }

  #onAbort = (): void => {
    this.#error = this.#signal?.reason;
    this.#buffer = [];
    this.#head = 0;
    this.#end();
  };

  #push(event: RuntimeEvent, id: string | undefined): void {
    if (this.#ended) return;
    if (this.#matches && !this.#matches(id)) return;
    if (this.pending >= this.bufferSize) {
      this.#dropped = true;
      this.#enqueue({ type: "stream:dropped", data: { reason: "overflow", bufferSize: this.bufferSize } });
      this.#end();
      return;
    }
    this.#enqueue(event);
  }

  #enqueue(event: RuntimeEvent | StreamDroppedEvent): void {
    this.#buffer.push({ ...event, seq: ++this.#seq, at: this.#clock.now() } as StreamEvent);
    this.#wake();
  }

  #wake(): void {
    for (const wake of this.#waiting.splice(0)) wake();
  }

  #end(): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const unsubscribe of this.#unsubscribe.splice(0)) unsubscribe();
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#resolveEnded();
    this.#wake();
  }

  async next(): Promise<IteratorResult<StreamEvent, undefined>> {
    while (true) {
      if (this.#error !== undefined) throw this.#error;
      if (this.#head < this.#buffer.length) {
        const event = this.#buffer[this.#head++]!;
        // Compact now and then, so reading stays O(1) without the array growing forever.
        if (this.#head >= 1024 && this.#head * 2 >= this.#buffer.length) {
          this.#buffer = this.#buffer.slice(this.#head);
          this.#head = 0;
        }
        return { value: event, done: false };
      }
      if (this.#ended) return { value: undefined, done: true };
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    }
  }

  /** Ends the subscription now; buffered events are discarded. Idempotent. */
  close(): void {
    this.#buffer = [];
    this.#head = 0;
    this.#end();
  }

  async return(): Promise<IteratorResult<StreamEvent, undefined>> {
    this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
