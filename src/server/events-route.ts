import type { FastifyInstance } from "fastify";
import type { RuntimeEventName } from "../events.js";
import type { EventStream, StreamEvent } from "../runtime/event-stream.js";
import type { AgentRuntime } from "../runtime/runtime.js";
import { eventsQuery, type EventsQuery } from "./schemas.js";
import { SseStream, type SseOptions } from "./sse.js";
import { numericQuery } from "./validation.js";

export interface EventsRouteOptions {
  sse: SseOptions;
  /** Buffer per subscriber when the request names none. */
  defaultBufferSize: number;
  /** Largest `buffer` a subscriber may ask for. */
  maxBufferSize: number;
  /** How long a dropped subscriber may take to read its final events before its socket is closed. */
  lingerMs: number;
}

/** `?agent=a&agent=b,c` → `["a", "b", "c"]`. */
function list(value: string | string[] | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  const values = Array.isArray(value) ? value : [value];
  return values
    .flatMap((item) => item.split(","))
    .map((item) => item.trim())
    .filter((item) => item.length > 0);
}

/** Event payloads as JSON: errors become `{ code, message }` (an Error serializes to `{}`). */
export function eventJson(event: StreamEvent): unknown {
  if (event.type === "agent:error") {
    const { error, ...rest } = event.data;
    return { ...rest, error: { code: error.code, message: error.message }, at: event.at };
  }
  return { ...event.data, at: event.at };
}

/**
 * `GET /events`: runtime events as Server-Sent Events (`id:` the stream's sequence number, `event:` the
 * type, `data:` JSON). Filters: `agent` (ids or `prefix/*`) and `type`, repeated or comma-separated;
 * `buffer` sets the subscriber's bound. A subscriber that falls that far behind receives
 * `event: stream:dropped` and the stream ends; the runtime never waits for it.
 */
export function registerEventsRoute(app: FastifyInstance, runtime: AgentRuntime, options: EventsRouteOptions, open: Set<EventStream>): void {
  const schema = { querystring: eventsQuery(options) };
  app.get<{ Querystring: EventsQuery }>("/events", { schema, preValidation: numericQuery("buffer") }, async (request, reply) => {
    const { buffer = options.defaultBufferSize } = request.query;
    const agents = list(request.query.agent);
    const types = list(request.query.type) as RuntimeEventName[] | undefined;
    // Validates the filters before the 200 goes out, so a bad filter is a 400.
    const events = runtime.events({ bufferSize: buffer, ...(agents ? { agents } : {}), ...(types ? { types } : {}) });
    const stream = SseStream.open(reply, options.sse);
    open.add(events);
    stream.signal.addEventListener("abort", () => events.close(), { once: true });
    stream.comment("agentrt events");
    let ended = false;
    void events.ended.then(() => (ended = true));
    try {
      for await (const event of events) {
        if (!stream.send({ id: event.seq, event: event.type, data: eventJson(event) }) && !ended) {
          // Backed up: stop reading; the runtime keeps emitting into the bounded buffer meanwhile.
          await Promise.race([stream.drained(), events.ended]);
        }
      }
    } finally {
      open.delete(events);
      stream.end(events.dropped ? options.lingerMs : undefined);
    }
  });
}
