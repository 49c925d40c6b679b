import Fastify, { type FastifyBaseLogger, type FastifyInstance } from "fastify";
import type { Logger } from "pino";
import type { Clock } from "../clock.js";
import type { EventStream } from "../runtime/event-stream.js";
import type { AgentRuntime } from "../runtime/runtime.js";
import { foldAgentId, registerAgentRoutes } from "./agent-routes.js";
import { registerAuth } from "./auth.js";
import { registerClusterRoutes } from "./cluster-routes.js";
import { registerDashboard } from "./dashboard.js";
import { HttpError, sendError } from "./errors.js";
import { registerEventsRoute } from "./events-route.js";
import { registerMetrics } from "./metrics.js";
import { registerOpenAiRoutes } from "./openai-routes.js";
import { AJV_OPTIONS, checkErrorCodes, schemaErrorFormatter } from "./validation.js";

export interface ServerOptions {
  /** Bearer token every request must carry (except `/healthz` and the dashboard's files). Default: none, auth off. */
  token?: string;
  /** Largest request body in bytes; larger ones get 413 ERR_BODY_TOO_LARGE. Default 1 MiB. */
  bodyLimit?: number;
  /** Events buffered per `/events` subscriber when it asks for no `buffer`. Default 1024. */
  eventBufferSize?: number;
  /** Largest `buffer` an `/events` subscriber may ask for. Default 65 536. */
  maxEventBufferSize?: number;
  /** Time a dropped `/events` subscriber gets to read its final events before its socket is closed. Default 10 000 ms. */
  droppedLingerMs?: number;
  /** Interval of `: ping` comments on open event streams. Default 15 000 ms. */
  heartbeatMs?: number;
  /** Serve the dashboard at `/`. Default true. */
  dashboard?: boolean;
  /** Export Node process metrics on `/metrics` too. Default true. */
  processMetrics?: boolean;
  /** pino logger for requests and errors. Default: silent. */
  logger?: Logger;
  /** Times event-stream heartbeats and the linger of dropped subscribers (tests pass a manual one). Default: the system clock. */
  clock?: Clock;
}

/**
 * The HTTP front of a runtime, as a fastify instance that is ready but not listening: call
 * `listen({ port, host: "127.0.0.1" })`, or add routes first. Closing the server ends open event
 * streams and stops its metrics; the runtime stays open (the caller owns it).
 */
export async function createServer(runtime: AgentRuntime, options: ServerOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    bodyLimit: options.bodyLimit ?? 1024 * 1024,
    // pino's Logger type is stricter than the FastifyBaseLogger fastify is typed with (same object).
    ...(options.logger ? { loggerInstance: options.logger as FastifyBaseLogger } : { logger: false }),
    // Fastify closes idle keep-alive sockets on close; open event streams are ended in preClose.
    forceCloseConnections: "idle",
    ajv: AJV_OPTIONS,
    rewriteUrl: (request) => foldAgentId(request.method, request.url ?? "/"),
    // An agent id is one route param (see foldAgentId); any length reaches the runtime, which judges it
    // (ERR_INVALID_AGENT_ID). Node's 16 KiB header limit bounds the URL already.
    routerOptions: { maxParamLength: 16 * 1024 },
    // A malformed URL (`%ZZ`) is answered in agentrt's error shape too.
    frameworkErrors: (error, request, reply) => void sendError(request, reply, error),
  });
  const sse = { heartbeatMs: options.heartbeatMs ?? 15_000, ...(options.clock ? { clock: options.clock } : {}) };
  const streams = new Set<EventStream>();

  // Every route's schema failures answer with agentrt's codes (set here, before any route is added).
  app.addHook("onRoute", (route) => {
    if (route.schema === undefined) return;
    checkErrorCodes(route.schema, `${String(route.method)} ${route.url}`);
    route.schemaErrorFormatter ??= schemaErrorFormatter(route.schema);
  });
  app.setErrorHandler((error, request, reply) => sendError(request, reply, error));
  app.setNotFoundHandler((request, reply) =>
    sendError(request, reply, new HttpError("ERR_ROUTE_NOT_FOUND", `No endpoint ${request.method} ${request.url.split("?", 1)[0]}`)),
  );
  registerAuth(app, options.token);

  app.get("/healthz", async () => ({ status: "ok", model: runtime.model.name, engine: runtime.model.engine }));
  registerAgentRoutes(app, runtime, { sse });
  registerEventsRoute(
    app,
    runtime,
    {
      sse,
      defaultBufferSize: options.eventBufferSize ?? 1024,
      maxBufferSize: options.maxEventBufferSize ?? 65_536,
      lingerMs: options.droppedLingerMs ?? 10_000,
    },
    streams,
  );
  registerOpenAiRoutes(app, runtime, { sse });
  registerClusterRoutes(app, runtime);
  const stopMetrics = registerMetrics(app, runtime, { processMetrics: options.processMetrics ?? true });
  if (options.dashboard ?? true) await registerDashboard(app);

  app.addHook("preClose", async () => {
    for (const stream of streams) stream.close();
  });
  app.addHook("onClose", async () => stopMetrics());
  await app.ready();
  return app;
}
