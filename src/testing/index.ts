// `agentrt/testing`: helpers for testing code built on agentrt without a model.
export { FakeEngine } from "./fake-engine.js";
export type { FakeEngineOptions } from "./fake-engine.js";
export { crashableWorker } from "./crashable-worker-factory.js";
export type { CrashableWorker } from "./crashable-worker-factory.js";
export { FakeClock } from "./fake-clock.js";
