import type { ContextPolicy } from "../actor/context-window.js";
import type { ChatMessage, EngineName, SamplingOptions } from "../engines/engine.js";

/** Version of the agent record layout; a record of another version is refused as foreign. */
export const RECORD_FORMAT_VERSION = 1;

/** Describes a saved KV cache file and what it may be loaded into. */
export interface KvDescriptor {
  /** File name inside the agent's folder. */
  file: string;
  bytes: number;
  /** sha256 of the file, checked before the engine sees it. */
  sha256: string;
  /** Tokens held by the saved cache. */
  tokens: number;
  /** Fingerprint of the model + engine + KV format that wrote it. */
  fingerprint: string;
  engine: EngineName;
  /** Number of history messages the cache covered when it was saved. */
  historyLength: number;
}

/** Everything persisted about one agent: identity, behaviour settings, conversation and its KV cache. */
export interface AgentRecord {
  formatVersion: typeof RECORD_FORMAT_VERSION;
  id: string;
  role: string;
  /** Name of the agent's behaviour in the runtime's registry; absent in older records ("conversation"). */
  behaviour?: string | undefined;
  systemPrompt: string;
  sampling: SamplingOptions;
  /** User and assistant messages, oldest first (the system prompt is kept apart). */
  history: ChatMessage[];
  createdAt: number;
  updatedAt: number;
  kv?: KvDescriptor | undefined;
  /** The agent's context policy; absent in older records (the runtime's `contextPolicy` applies). */
  contextPolicy?: ContextPolicy | undefined;
  /**
   * Index in `history` of the first message the agent renders (its window; see docs/context.md). Absent:
   * 0. Rehydration from history evaluates the window, so the rebuilt cache is the one it had.
   */
  windowStart?: number | undefined;
  /** The behaviour's note about the messages before the window (the summarizing behaviour's memory). */
  memoryNote?: string | undefined;
}

/** A KV file being written: the engine writes `path`, then `commit` makes it durable and checksummed. */
export interface StagedKv {
  readonly path: string;
  commit(): Promise<{ file: string; bytes: number; sha256: string }>;
  discard(): Promise<void>;
}

/**
 * Where agents live when they are not in memory. A directory today; an object store tomorrow —
 * which is why KV files are staged and opened through local paths the store hands out.
 */
export interface StateStore {
  /** Human-readable location (a path or URL) for logs. */
  readonly location: string;
  /** Ids of every stored agent. */
  list(): Promise<string[]>;
  /** The agent's record, or undefined when none exists. Throws ERR_STATE_CORRUPT / ERR_STATE_FOREIGN. */
  read(id: string): Promise<AgentRecord | undefined>;
  /** Replaces the agent's record atomically (all or nothing, durable when it resolves). */
  write(record: AgentRecord): Promise<void>;
  /** Reserves a local path for a new KV file of `id`; `extension` (".bin", ".safetensors") names its format. */
  stageKv(id: string, extension?: string): Promise<StagedKv>;
  /** A local path to the verified KV file; throws ERR_STATE_CORRUPT when missing or its checksum differs. */
  openKv(id: string, kv: KvDescriptor): Promise<string>;
  /** Deletes everything stored for the agent. */
  remove(id: string): Promise<void>;
  /** Bytes the agent occupies in the store. */
  bytesOnDisk(id: string): Promise<number>;
}
