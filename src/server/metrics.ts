import type { FastifyInstance } from "fastify";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { AgentRuntime } from "../runtime/runtime.js";

export interface MetricsOptions {
  /** Also export Node's process metrics (CPU, heap, event loop lag). Default true. */
  processMetrics?: boolean;
}

/**
 * Prometheus metrics of one runtime, in a registry of their own (two servers in one process never
 * collide). Counters and histograms follow runtime events; gauges are read from the runtime per scrape.
 * Returns the function that stops listening to the runtime.
 */
export function registerMetrics(app: FastifyInstance, runtime: AgentRuntime, options: MetricsOptions = {}): () => void {
  const registry = new Registry();
  // Every node of a cluster serves its own metrics; the label keeps them apart once scraped together.
  if (runtime.node !== undefined) registry.setDefaultLabels({ node: runtime.node });
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: "agentrt_process_" });
  const registers = [registry];

  const agents = new Gauge({
    name: "agentrt_agents",
    help: "Agents in memory by state (resident, passivating, rehydrating, passivated but still in use, failed)",
    labelNames: ["state"],
    registers,
  });
  const stored = new Gauge({ name: "agentrt_agents_stored", help: "Agents in the store, in memory or not", registers });
  const busy = new Gauge({ name: "agentrt_agents_busy", help: "Agents running a message now", registers });
  const queue = new Gauge({ name: "agentrt_queue_depth", help: "Messages waiting in agents' mailboxes (not counting running ones)", registers });
  const kvBytes = new Gauge({
    name: "agentrt_kv_bytes",
    help: "Bytes of agent state: KV caches in memory (resident agents), and saved caches plus records on disk",
    labelNames: ["where"],
    registers,
  });
  const kvBudget = new Gauge({
    name: "agentrt_kv_budget_bytes",
    help: "kvBudgetBytes (limit; absent without a budget) and the KV bytes charged against it (used: what the engine reserves for resident agents)",
    labelNames: ["what"],
    registers,
  });
  const cacheTokens = new Gauge({ name: "agentrt_kv_tokens", help: "Tokens held in resident agents' KV caches", registers });
  const modelBytes = new Gauge({ name: "agentrt_model_bytes", help: "Bytes of model weights", registers });
  const passivations = new Counter({ name: "agentrt_passivations_total", help: "Agents saved to disk and evicted from memory", registers });
  const rehydrations = new Counter({
    name: "agentrt_rehydrations_total",
    help: "Agents brought back into memory, by source of their cache",
    labelNames: ["source"],
    registers,
  });
  const evaluated = new Counter({ name: "agentrt_prompt_tokens_evaluated_total", help: "Prompt tokens the engine evaluated in turns", registers });
  const reused = new Counter({ name: "agentrt_prompt_tokens_reused_total", help: "Prompt tokens served from agents' KV caches in turns", registers });
  const generated = new Counter({ name: "agentrt_generated_tokens_total", help: "Tokens generated in replies", registers });
  const turns = new Counter({ name: "agentrt_turns_total", help: "Completed turns by stop reason", labelNames: ["stop_reason"], registers });
  const errors = new Counter({ name: "agentrt_errors_total", help: "agent:error events by code", labelNames: ["code"], registers });
  const restarts = new Counter({ name: "agentrt_worker_restarts_total", help: "Generation worker restarts after a crash", registers });
  const ttft = new Histogram({
    name: "agentrt_ttft_seconds",
    help: "Time to first token, from when the engine started the turn",
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers,
  });
  const speed = new Histogram({
    name: "agentrt_tokens_per_second",
    help: "Generation speed after the first token, per turn",
    buckets: [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
    registers,
  });
  const queueSeconds = new Histogram({
    name: "agentrt_queue_seconds",
    help: "Time a message waited in the mailbox and for a resident slot",
    buckets: [0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30],
    registers,
  });

  const clusterNodes = new Gauge({
    name: "agentrt_cluster_nodes",
    help: "Cluster: live member nodes as seen from this node (0 without a cluster)",
    registers,
  });
  const clusterOwned = new Gauge({ name: "agentrt_cluster_agents_owned", help: "Cluster: agents whose lease this node holds", registers });
  const clusterEvents = new Gauge({
    name: "agentrt_cluster_operations",
    help: "Cluster: operations of this node since it started (requests forwarded, served for others, rerouted; agents placed, handed over, evicted; commits fenced; membership renewals; cache uploads and downloads)",
    labelNames: ["kind"],
    registers,
  });

  const unsubscribe = [
    runtime.subscribe("agent:passivated", () => passivations.inc()),
    runtime.subscribe("agent:rehydrated", (event) => rehydrations.inc({ source: event.source })),
    runtime.subscribe("agent:error", (event) => errors.inc({ code: event.error.code })),
    runtime.subscribe("worker:restarted", () => restarts.inc()),
    runtime.subscribe("agent:turn-end", ({ timings }) => {
      evaluated.inc(timings.evaluatedTokens);
      reused.inc(timings.reusedTokens);
      generated.inc(timings.generatedTokens);
      turns.inc({ stop_reason: timings.stopReason });
      ttft.observe(timings.ttftMs / 1000);
      queueSeconds.observe(timings.queueMs / 1000);
      if (timings.tokensPerSecond > 0) speed.observe(timings.tokensPerSecond);
    }),
  ];

  app.get("/metrics", async (_request, reply) => {
    const memory = await runtime.memory();
    const list = memory.agents;
    agents.reset();
    for (const state of ["resident", "passivating", "passivated", "rehydrating", "failed"]) {
      agents.set({ state }, list.filter((agent) => agent.status === state).length);
    }
    stored.set(memory.totals.storedAgents);
    busy.set(list.filter((agent) => agent.busy).length);
    queue.set(list.reduce((total, agent) => total + agent.queued, 0));
    kvBytes.set({ where: "memory" }, memory.totals.cacheBytes);
    kvBytes.set({ where: "disk" }, memory.totals.diskBytes);
    if (memory.totals.kvBudgetBytes !== null) {
      kvBudget.set({ what: "limit" }, memory.totals.kvBudgetBytes);
      kvBudget.set({ what: "used" }, memory.totals.kvBudgetUsedBytes);
    }
    cacheTokens.set(memory.totals.cacheTokens);
    modelBytes.set(memory.model.bytes);
    const cluster = await runtime.clusterStatus();
    clusterNodes.set(cluster?.nodes.length ?? 0);
    if (cluster) {
      clusterOwned.set(cluster.nodes.find((node) => node.node === cluster.node)?.owned ?? 0);
      for (const [kind, value] of Object.entries(cluster.stats)) clusterEvents.set({ kind }, value);
    }
    return reply.type(registry.contentType).send(await registry.metrics());
  });

  return () => {
    for (const off of unsubscribe) off();
  };
}
