import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import pino from "pino";
import type { EngineName } from "../engines/engine.js";
import { AgentRuntime } from "../runtime/runtime.js";
import { createServer } from "./app.js";

const USAGE = `usage: agentrt serve [options]

  --model <path|hf:uri|folder>  model (default $AGENTRT_MODEL or ../shared/models/aidreams260K.gguf)
  --engine llama.cpp|mlx        engine (default: from the model)
  --state-dir <dir>             agent state folder (default ./.state)
  --host <addr>                 address to listen on (default 127.0.0.1)
  --port <n>                    port (default 8080; 0 picks a free one)
  --max-agents <n>              agents resident in memory at once (default 3)
  --max-stored-agents <n>       agents kept on disk at most (default unlimited)
  --context-size <n>            tokens per agent (default 1024)
  --threads <n>                 engine threads (default 2)
  --max-tokens <n>              default reply length limit (default 256)
  --mailbox <n>                 messages waiting per agent (default 64)
  --max-message-chars <n>       longest message (default 32768)
  --body-limit <bytes>          largest request body (default 1048576)
  --token <token>               require "Authorization: Bearer <token>" (default $AGENTRT_TOKEN; off when unset)
  -v, --verbose                 request and debug logs on stderr
`;

/** The package root: the nearest folder above this file with a package.json (src/ via tsx, or dist/). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(resolve(dir, "package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return dir;
}

function integer(name: string, value: string | undefined, min = 1): number | undefined {
  if (value === undefined) return undefined;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < min) throw new RangeError(`--${name} must be an integer ≥ ${min}, got ${value}`);
  return parsed;
}

/**
 * `agentrt serve`: loads the model, opens the runtime on the state folder and serves it over HTTP until
 * SIGINT/SIGTERM, then stops taking requests, lets running turns finish and passivates every agent.
 * Resolves when the server has stopped.
 */
export async function serveCommand(argv: string[]): Promise<void> {
  await (await startServe(argv)).closed;
}

/** {@link serveCommand}'s work, resolving once listening; aborting `options.signal` stops it like SIGTERM. */
export async function startServe(argv: string[], options: { signal?: AbortSignal } = {}): Promise<{ url: string; closed: Promise<void> }> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: "string" },
      engine: { type: "string" },
      "state-dir": { type: "string" },
      host: { type: "string" },
      port: { type: "string" },
      "max-agents": { type: "string" },
      "max-stored-agents": { type: "string" },
      "context-size": { type: "string" },
      threads: { type: "string" },
      "max-tokens": { type: "string" },
      mailbox: { type: "string" },
      "max-message-chars": { type: "string" },
      "body-limit": { type: "string" },
      token: { type: "string" },
      verbose: { type: "boolean", short: "v" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return { url: "", closed: Promise.resolve() };
  }
  const engine = values.engine;
  if (engine !== undefined && engine !== "llama.cpp" && engine !== "mlx") throw new RangeError(`--engine must be "llama.cpp" or "mlx", got ${engine}`);
  const model = values.model ?? process.env.AGENTRT_MODEL ?? resolve(packageRoot(), "../shared/models/aidreams260K.gguf");
  const stateDir = resolve(values["state-dir"] ?? ".state");
  const host = values.host ?? "127.0.0.1";
  const port = integer("port", values.port, 0) ?? 8080;
  const token = values.token ?? process.env.AGENTRT_TOKEN;
  const log = pino({ level: values.verbose ? "debug" : "warn" }, pino.destination(2));
  const optional = (name: string, value: number | undefined) => (value === undefined ? {} : { [name]: value });

  const runtime = await AgentRuntime.create({
    model,
    ...(engine ? { engine: engine as EngineName } : {}),
    stateDir,
    maxAgents: integer("max-agents", values["max-agents"]) ?? 3,
    contextSize: integer("context-size", values["context-size"]) ?? 1024,
    threads: integer("threads", values.threads) ?? 2,
    ...optional("maxStoredAgents", integer("max-stored-agents", values["max-stored-agents"])),
    ...optional("maxTokens", integer("max-tokens", values["max-tokens"])),
    ...optional("mailboxCapacity", integer("mailbox", values.mailbox)),
    ...optional("maxMessageChars", integer("max-message-chars", values["max-message-chars"])),
    logger: log,
  });
  let app;
  try {
    app = await createServer(runtime, {
      ...(token ? { token } : {}),
      ...optional("bodyLimit", integer("body-limit", values["body-limit"])),
      ...(values.verbose ? { logger: log } : {}),
    });
    await app.listen({ host, port });
  } catch (error) {
    await runtime.close();
    throw error;
  }
  const address = app.server.address();
  const url = typeof address === "object" && address !== null ? `http://${address.family === "IPv6" ? `[${address.address}]` : address.address}:${address.port}` : String(address);
  const info = runtime.model;
  process.stdout.write(
    `agentrt serving ${runtime.list().length} agent(s) at ${url}\n` +
      `  model: ${info.name} (${info.engine}, ${info.contextSize} tokens/agent, ${info.threads} threads)\n` +
      `  state: ${stateDir}\n  auth:  ${token ? "bearer token required" : "off"}\n` +
      `  dashboard ${url}/ · OpenAI base URL ${url}/v1 · metrics ${url}/metrics\n`,
  );

  const server = app;
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      process.stdout.write("agentrt: stopping (finishing running turns, saving agents)…\n");
      await server.close();
      await runtime.close();
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
    })());
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  options.signal?.addEventListener("abort", () => void stop(), { once: true });
  const closed = new Promise<void>((resolve) => server.server.once("close", resolve)).then(() => stopping);
  return { url, closed };
}
