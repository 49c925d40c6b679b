import { hostname } from "node:os";
import { resolve } from "node:path";
import pino from "pino";
import { AgentRuntime } from "../index.js";
import { createServer } from "../server/index.js";
import { byteSize, integer, parseCommon } from "./args.js";

const USAGE = `usage: agentrt serve [options]

  --model <path|hf:uri|folder>  model (default $AGENTRT_MODEL, else stories260K.gguf: see agentrt --help)
  --engine llama.cpp|mlx        engine (default: from the model)
  --state-dir <dir>             agent state folder (default ./.state)
  --host <addr>                 address to listen on (default 127.0.0.1)
  --port <n>                    port (default 8080; 0 picks a free one)
  --max-agents <n>              agents resident in memory at once (default 3)
  --kv-budget <bytes>           KV cache memory of resident agents at most, e.g. 512MiB (default unlimited;
                                on llama.cpp it lowers --max-agents to the sequences that fit)
  --max-stored-agents <n>       agents kept on disk at most (default unlimited)
  --context-size <n>            tokens per agent (default 1024)
  --threads <n>                 engine threads (default: cores − 1, at least 1)
  --max-tokens <n>              default reply length limit (default 256)
  --mailbox <n>                 messages waiting per agent (default 64)
  --max-message-chars <n>       longest message (default 32768)
  --body-limit <bytes>          largest request body (default 1048576)
  --token <token>               require "Authorization: Bearer <token>" (default $AGENTRT_TOKEN; off when unset)

cluster (docs/cluster.md): every node runs its own model; all serve one agent space
  --cluster <urls>              join a cluster on NATS JetStream: nats://host:port[,nats://…]
  --node <name>                 this node's name, unique among live nodes (default: the host name)
  --cluster-prefix <name>       buckets and subjects of this cluster (default agentrt)
  --lease-ttl <ms>              membership lease: how long a silent node keeps its agents (default 10000)
  --replicas <n>                replicas of the cluster's buckets: 1, 3 or 5 (default 3)
  -v, --verbose                 request and debug logs on stderr
`;

/**
 * `agentrt serve`: loads the model, opens the runtime on the state folder and serves it over HTTP until
 * SIGINT/SIGTERM, then stops taking requests, lets running turns finish and passivates every agent.
 * Resolves when the server has stopped.
 */
export async function serveCommand(argv: string[]): Promise<void> {
  await (
    await startServe(argv)
  ).closed;
}

/** {@link serveCommand}'s work, resolving once listening; aborting `options.signal` stops it like SIGTERM. */
export async function startServe(argv: string[], options: { signal?: AbortSignal } = {}): Promise<{ url: string; closed: Promise<void> }> {
  const { common, values } = parseCommon(
    argv,
    { stateDir: ".state" },
    {
      host: { type: "string" },
      port: { type: "string" },
      "kv-budget": { type: "string" },
      "max-stored-agents": { type: "string" },
      "max-tokens": { type: "string" },
      mailbox: { type: "string" },
      "max-message-chars": { type: "string" },
      "body-limit": { type: "string" },
      token: { type: "string" },
      cluster: { type: "string" },
      node: { type: "string" },
      "cluster-prefix": { type: "string" },
      "lease-ttl": { type: "string" },
      replicas: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  );
  if (values.help) {
    process.stdout.write(USAGE);
    return { url: "", closed: Promise.resolve() };
  }
  const { model, engine } = common;
  const stateDir = resolve(common.stateDir);
  const host = (values.host as string | undefined) ?? "127.0.0.1";
  const port = integer("port", values.port, 0) ?? 8080;
  const token = (values.token as string | undefined) ?? process.env.AGENTRT_TOKEN;
  const log = pino({ level: common.verbose ? "debug" : "warn" }, pino.destination(2));
  const optional = (name: string, value: number | undefined) => (value === undefined ? {} : { [name]: value });

  const clusterUrls = values.cluster as string | undefined;
  const leaseTtl = integer("lease-ttl", values["lease-ttl"], 100);
  const cluster = clusterUrls
    ? {
        servers: clusterUrls,
        node:
          (values.node as string | undefined) ??
          hostname()
            .toLowerCase()
            .replace(/[^a-z0-9_-]/g, "-")
            .slice(0, 64),
        ...(values["cluster-prefix"] ? { prefix: values["cluster-prefix"] as string } : {}),
        ...(leaseTtl ? { lease: { ttlMs: leaseTtl } } : {}),
        ...optional("replicas", integer("replicas", values.replicas)),
      }
    : undefined;
  if (!cluster && (values.node || values["cluster-prefix"] || values["lease-ttl"] || values.replicas)) {
    throw new TypeError("--node, --cluster-prefix, --lease-ttl and --replicas need --cluster");
  }

  const runtime = await AgentRuntime.create({
    ...(cluster ? { cluster } : {}),
    model,
    ...(engine ? { engine } : {}),
    stateDir,
    maxAgents: common.maxAgents ?? 3,
    contextSize: common.contextSize ?? 1024,
    ...(common.threads ? { threads: common.threads } : {}),
    ...optional("kvBudgetBytes", byteSize("kv-budget", values["kv-budget"])),
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
      ...(common.verbose ? { logger: log } : {}),
    });
    await app.listen({ host, port });
  } catch (error) {
    await runtime.close();
    throw error;
  }
  const address = app.server.address();
  const url =
    typeof address === "object" && address !== null
      ? `http://${address.family === "IPv6" ? `[${address.address}]` : address.address}:${address.port}`
      : String(address);
  const info = runtime.model;
  const { storedAgents: stored, kvBudgetBytes } = (await runtime.memory()).totals;
  process.stdout.write(
    `agentrt serving ${stored} agent(s) at ${url}\n` +
      `  model: ${info.name} (${info.engine}, ${info.contextSize} tokens/agent, ${info.threads} threads)\n` +
      (kvBudgetBytes === null ? "" : `  kv budget: ${kvBudgetBytes} bytes (at most ${runtime.maxAgents} agents resident)\n`) +
      `  state: ${stateDir}\n  auth:  ${token ? "bearer token required" : "off"}\n` +
      (cluster ? `  cluster: node ${cluster.node} on ${cluster.servers} (GET ${url}/cluster)\n` : "") +
      `  dashboard ${url}/ · OpenAI base URL ${url}/v1 · metrics ${url}/metrics\n`,
  );

  const server = app;
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      process.stdout.write(
        cluster
          ? "agentrt: stopping (finishing running turns, handing agents over to the other nodes)…\n"
          : "agentrt: stopping (finishing running turns, saving agents)…\n",
      );
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
