import type { FastifyInstance } from "fastify";
import type { AgentRuntime } from "../runtime/runtime.js";

/**
 * `GET /cluster`: this node and every live member of its cluster — capacity, residents, agents owned,
 * draining — plus this node's routing counters; `{ enabled: false }` on a runtime without a cluster.
 * `POST /cluster/drain`: hands this node's agents over to the others (`agentrt drain` does the same
 * over NATS); resolves when done.
 */
export function registerClusterRoutes(app: FastifyInstance, runtime: AgentRuntime): void {
  app.get("/cluster", async () => {
    const status = await runtime.clusterStatus();
    return status ? { enabled: true, ...status } : { enabled: false, nodes: [] };
  });
  app.post("/cluster/drain", async () => {
    await runtime.drain();
    return { node: runtime.node ?? null, drained: true };
  });
}
