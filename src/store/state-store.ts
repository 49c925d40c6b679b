import type { ChatMessage, EngineName, SamplingOptions } from "../engines/engine.js";
import type { ChecksumAlgorithm } from "./checksum.js";

/**
 * Version of the agent record layout. 2: the record is the state as of its last compaction and a journal
 * holds the turns since. Format-1 records (history only in the record) are still read; an older agentrt
 * refuses a format-2 record as foreign instead of silently ignoring its journal.
 */
export const RECORD_FORMAT_VERSION = 2;

/** What an agent does when its conversation outgrows the context (see docs/context.md). */
export type ContextPolicy = "error" | "slide" | "shift";

/** Where an agent's rendered window of its history starts, and the note kept about what went before. */
export interface AgentWindow {
  windowStart: number;
  memoryNote?: string | undefined;
}

/** Describes a saved KV cache file and what it may be loaded into. */
export interface KvDescriptor {
  /** File name inside the agent's folder. */
  file: string;
  bytes: number;
  /** Checksum of the file, checked before the engine sees it (XXH3-64 for files written since 0.1). */
  checksum?: KvChecksum | undefined;
  /** sha256 of the file: descriptors written before `checksum` existed carry this instead (still read). */
  sha256?: string | undefined;
  /** Tokens held by the saved cache. */
  tokens: number;
  /** Fingerprint of the model + engine + KV format that wrote it. */
  fingerprint: string;
  engine: EngineName;
  /** Number of history messages the cache covered when it was saved. */
  historyLength: number;
}

/** A state file's checksum and the algorithm that made it (corruption detection, see checksum.ts). */
export interface KvChecksum {
  algorithm: ChecksumAlgorithm;
  /** Lowercase hex digest. */
  value: string;
}

/** Everything persisted about one agent: identity, behaviour settings, conversation and its KV cache. */
export interface AgentRecord {
  formatVersion: typeof RECORD_FORMAT_VERSION;
  id: string;
  role: string;
  systemPrompt: string;
  sampling: SamplingOptions;
  /** User and assistant messages, oldest first (the system prompt is kept apart). */
  history: ChatMessage[];
  createdAt: number;
  updatedAt: number;
  kv?: KvDescriptor | undefined;
  /** Name of the agent's behaviour; absent in records written before behaviours were stored ("conversation"). */
  behaviour?: string | undefined;
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

/** One page of stored agent ids. */
export interface StoredAgentPage {
  /** Ids in lexicographic order. */
  ids: string[];
  /** Present when more ids match: pass it as `after` to get the next page. */
  next?: string | undefined;
}

export interface ListOptions {
  /** Only ids starting with this (`"support/"`). Default: all. */
  prefix?: string | undefined;
  /** Only ids after this one (exclusive): the previous page's `next`. */
  after?: string | undefined;
  /** Ids per page, 1–1000. Default 100. */
  limit?: number | undefined;
}

export interface HistoryOptions {
  /** Index one past the last message wanted. Default: the history's length (the newest messages). */
  before?: number | undefined;
  /** Messages per page, 1–1000. Default 100. */
  limit?: number | undefined;
}

/** A page of an agent's history, oldest first: messages `[start, start + messages.length)` of `total`. */
export interface HistoryPage {
  messages: ChatMessage[];
  start: number;
  total: number;
}

/** One acknowledged turn's additions to the history. */
export interface TurnAppend {
  messages: ChatMessage[];
  /** The record's `updatedAt` after this turn. */
  updatedAt: number;
  /** The agent's context window after this turn, when the turn moved it (a slide, a new memory note). */
  window?: AgentWindow | undefined;
}

/** A KV file being written: the engine writes `path`, then `commit` makes it durable and checksummed. */
export interface StagedKv {
  readonly path: string;
  commit(): Promise<{ file: string; bytes: number; checksum: KvChecksum }>;
  discard(): Promise<void>;
}

/**
 * Where agents live when they are not in memory. A directory today; an object store or a cluster
 * tomorrow — which is why KV files are staged and opened through local paths the store hands out.
 *
 * The store is the directory of agents: nothing requires a caller to hold every agent (or every id) in
 * memory. Listing never reads records; a record is read when an agent is needed.
 *
 * **Single writer.** Every operation assumes that at most one process writes an agent at a time. Who
 * enforces that is the implementation's to say, in its `open()`: {@link DirectoryStore} takes an
 * exclusive OS-released lock on its directory; a clustered store would hold a lease per agent (and fence
 * writes with it). A caller that writes must call `open()` first and `dispose()` when done.
 *
 * **Durability.** Every mutation is durable when its promise resolves (fsynced, or the equivalent), and
 * all or nothing: a crash during it leaves the state before or after, never a mix.
 */
export interface StateStore {
  /** Human-readable location (a path or URL) for logs. */
  readonly location: string;
  /**
   * Claims the store for this process as its single writer. Idempotent. Throws ERR_STATE_LOCKED naming the
   * holder when another process (or another open store object) holds it.
   */
  open(): Promise<void>;
  /** A page of stored agent ids in lexicographic order; never reads a record. RangeError for a bad limit. */
  list(options?: ListOptions): Promise<StoredAgentPage>;
  /** Number of stored agents (for `maxStoredAgents`); never reads a record. */
  count(): Promise<number>;
  /** Whether a record exists for `id` (damaged or not). */
  has(id: string): Promise<boolean>;
  /**
   * The agent's whole record with every acknowledged change applied, or undefined when none exists.
   * Throws ERR_STATE_CORRUPT / ERR_STATE_FOREIGN.
   */
  read(id: string): Promise<AgentRecord | undefined>;
  /** Replaces the agent's record (spawn, a rewritten conversation); supersedes every earlier append. */
  write(record: AgentRecord): Promise<void>;
  /**
   * Appends one acknowledged turn's messages to the stored history; durable when it resolves. The bytes
   * it writes do not grow with the history's length (amortised over compactions). ERR_AGENT_NOT_FOUND
   * when no record exists.
   */
  appendTurn(id: string, turn: TurnAppend): Promise<void>;
  /**
   * Commits a new saved cache (or none) without rewriting the history; durable when it resolves. Saved
   * cache files the committed state no longer names are deleted after.
   */
  setKv(id: string, kv: KvDescriptor | undefined, updatedAt: number): Promise<void>;
  /** Messages `[max(0, end - limit), end)` of the history, `end = before ?? total`; RangeError for bad options. */
  history(id: string, options?: HistoryOptions): Promise<HistoryPage>;
  /** Reserves a local path for a new KV file of `id`; `extension` (".bin", ".safetensors") names its format. */
  stageKv(id: string, extension?: string): Promise<StagedKv>;
  /** A local path to the verified KV file; throws ERR_STATE_CORRUPT when missing or its checksum differs. */
  openKv(id: string, kv: KvDescriptor): Promise<string>;
  /** Deletes everything stored for the agent. */
  remove(id: string): Promise<void>;
  /** Bytes the agent occupies in the store. */
  bytesOnDisk(id: string): Promise<number>;
  /** Releases what `open()` claimed. Idempotent. */
  dispose(): Promise<void>;
}
