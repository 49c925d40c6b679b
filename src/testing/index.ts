// `agentrt/testing`: helpers for testing code built on agentrt without a model, fault injection, and the MLX engine's test probe.
export { FakeEngine } from "./fake-engine.js";
export type { FakeEngineOptions } from "./fake-engine.js";
export { crashableWorker } from "./crashable-worker-factory.js";
export type { CrashableWorker } from "./crashable-worker-factory.js";
export { FakeClock } from "./fake-clock.js";
export { MlxProbe } from "./mlx-probe.js";
export type { MlxProbeOptions } from "./mlx-probe.js";
export { NatsCluster } from "./nats-cluster.js";
export type { NatsClusterOptions } from "./nats-cluster.js";
