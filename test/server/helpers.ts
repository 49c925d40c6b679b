import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { FastifyInstance } from "fastify";
import { AgentRuntime, type AgentRuntimeOptions } from "../../src/index.js";
import { createServer, type ServerOptions } from "../../src/server/index.js";
import { FakeEngine, type FakeEngineOptions } from "../../src/testing/index.js";

export const MODEL = resolve(dirname(fileURLToPath(import.meta.url)), "../../../shared/models/aidreams260K.gguf");

export interface Served {
  runtime: AgentRuntime;
  app: FastifyInstance;
  /** `http://127.0.0.1:<ephemeral port>` */
  url: string;
  stateDir: string;
  engine: FakeEngine | undefined;
  close(): Promise<void>;
}

async function serve(runtimeOptions: Omit<AgentRuntimeOptions, "stateDir">, serverOptions: ServerOptions, engine?: FakeEngine): Promise<Served> {
  const stateDir = await mkdtemp(join(tmpdir(), "agentrt-server-"));
  const runtime = await AgentRuntime.create({ ...runtimeOptions, stateDir });
  const app = await createServer(runtime, { processMetrics: false, ...serverOptions });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const address = app.server.address();
  if (typeof address !== "object" || address === null) throw new Error("server has no address");
  return {
    runtime,
    app,
    url: `http://127.0.0.1:${address.port}`,
    stateDir,
    engine,
    async close() {
      // fetch may hold a fresh keep-alive socket that never sent a request; the server would wait for it.
      const closing = app.close();
      app.server.closeAllConnections();
      await closing;
      await runtime.close();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

/** A server over a runtime on the fake engine: no model, no threads. */
export async function serveFake(
  options: { runtime?: Partial<AgentRuntimeOptions>; server?: ServerOptions; engine?: FakeEngineOptions } = {},
): Promise<Served> {
  const maxAgents = options.runtime?.maxAgents ?? 3;
  const engine = new FakeEngine({ sequences: maxAgents, ...options.engine });
  return serve({ maxAgents, ...options.runtime, engineFactory: async () => engine }, options.server ?? {}, engine);
}

/** A server over a runtime on the real tiny model, in a real generation worker. */
export async function serveReal(options: { runtime?: Partial<AgentRuntimeOptions>; server?: ServerOptions } = {}): Promise<Served> {
  return serve({ model: MODEL, maxAgents: 3, contextSize: 512, threads: 1, maxTokens: 16, ...options.runtime }, options.server ?? {});
}

export async function json(url: string, init: RequestInit & { json?: unknown } = {}): Promise<{ status: number; body: any; headers: Headers }> {
  const { json: payload, ...rest } = init;
  const response = await fetch(url, {
    ...rest,
    ...(payload !== undefined ? { body: JSON.stringify(payload), method: rest.method ?? "POST" } : {}),
    headers: { ...(payload !== undefined ? { "content-type": "application/json" } : {}), ...(rest.headers as Record<string, string> | undefined) },
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : undefined, headers: response.headers };
}

export interface SseFrame {
  id?: string;
  event?: string;
  data: string;
}

/**
 * Parses raw `text/event-stream` bytes as the spec frames them: events end at a blank line, `:` lines
 * are comments, several `data:` lines join with "\n". Throws on a field line it does not know.
 */
export function parseSse(raw: string): { frames: SseFrame[]; comments: string[]; rest: string } {
  const frames: SseFrame[] = [];
  const comments: string[] = [];
  const blocks = raw.split("\n\n");
  const rest = blocks.pop()!;
  for (const block of blocks) {
    const frame: SseFrame = { data: "" };
    const data: string[] = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) {
        comments.push(line.slice(1).trim());
        continue;
      }
      const match = /^(id|event|data|retry): ?(.*)$/.exec(line);
      if (!match) throw new Error(`not an SSE field line: ${JSON.stringify(line)}`);
      if (match[1] === "data") data.push(match[2]!);
      else if (match[1] === "id") frame.id = match[2]!;
      else if (match[1] === "event") frame.event = match[2]!;
    }
    if (data.length === 0) continue;
    frame.data = data.join("\n");
    frames.push(frame);
  }
  return { frames, comments, rest };
}

/** Reads a streamed response's raw bytes until `until(frames)` is true or the body ends. */
export async function readSse(response: Response, until?: (frames: SseFrame[]) => boolean): Promise<{ raw: string; frames: SseFrame[] }> {
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let raw = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    raw += decoder.decode(value, { stream: true });
    if (until && until(parseSse(raw).frames)) {
      await reader.cancel();
      break;
    }
  }
  return { raw, frames: parseSse(raw).frames };
}

/** Resolves when `check()` is true, polling every 10 ms; fails after `ms` with `what`. */
export async function eventually(check: () => boolean | Promise<boolean>, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Open TCP connections to the server (a disconnect is seen once this drops). */
export function connections(app: FastifyInstance): Promise<number> {
  return new Promise((resolve, reject) => app.server.getConnections((error, count) => (error ? reject(error) : resolve(count))));
}

/** Resolves when the server's response to the next request whose URL ends with `suffix` closes. */
export function responseClosed(app: FastifyInstance, suffix: string): Promise<void> {
  return new Promise((resolve) => {
    const onRequest = (request: { url?: string }, response: { once(event: "close", listener: () => void): void }) => {
      if (!request.url?.endsWith(suffix)) return;
      app.server.off("request", onRequest);
      response.once("close", () => setImmediate(resolve));
    };
    app.server.on("request", onRequest);
  });
}
