// The public surface of agentrt, by name.
export { AgentRuntime } from "./runtime/runtime.js";
export type { AgentRuntimeOptions, SpawnOptions, SendOptions } from "./runtime/options.js";
export { Turn } from "./actor/turn.js";
export type { AgentInfo, AgentStatus } from "./actor/agent.js";
export type { RuntimeEvents, RuntimeEventName, TurnResult, TurnTimings } from "./events.js";
export { EventStream, RUNTIME_EVENT_NAMES } from "./runtime/event-stream.js";
export type { EventStreamOptions, RuntimeEvent, StreamEvent, StreamDroppedEvent } from "./runtime/event-stream.js";
export type { MemoryReport, AgentMemory } from "./runtime/memory.js";
export type { Clock } from "./clock.js";
export { validateAgentId } from "./agent-id.js";
export { AgentRuntimeError, ERROR_CODES, isAgentRuntimeError } from "./errors.js";
export type { ErrorCode } from "./errors.js";
export type { ChatMessage, EngineName, SamplingOptions, ModelInfo, StopReason } from "./engines/engine.js";
export type { StateStore, AgentRecord, KvDescriptor, StagedKv } from "./store/state-store.js";
export { DirectoryStore } from "./store/directory-store.js";
export type { AgentBehaviour, AgentView } from "./actor/behaviour.js";
export { conversation } from "./actor/behaviours/conversation.js";
