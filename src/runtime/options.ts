import { availableParallelism } from "node:os";
import type { Logger } from "pino";
import type { AgentBehaviour } from "../actor/behaviour.js";
import type { EngineName, SamplingOptions } from "../engines/engine.js";
import type { HostedEngine } from "../engines/engine.js";
import type { StateStore } from "../store/state-store.js";
import type { Clock } from "../clock.js";

export interface AgentRuntimeOptions {
  /** A GGUF path, an `hf:` URI, or an mlx-community folder. Required unless `engineFactory` is given. */
  model?: string;
  /** Engine to run the model on. Default: chosen from the model (GGUF → "llama.cpp", folder → "mlx"). */
  engine?: EngineName;
  /** Folder for agent state. Required unless `store` is given. */
  stateDir?: string;
  /** A custom state store (an object store, say). Default: a {@link DirectoryStore} on `stateDir`. */
  store?: StateStore;
  /** Most agents resident in memory at once; more are passivated to the store. Default 3. */
  maxAgents?: number;
  /** Most agents kept in the store (resident or not); spawning more fails. Default: unlimited. */
  maxStoredAgents?: number;
  /** Tokens per agent sequence (system prompt + history + reply). Default 2048. */
  contextSize?: number;
  /** Engine compute threads. Default: available parallelism − 1, at least 1 (see bench:threads). */
  threads?: number;
  /** Prompt evaluation batch size. Default min(512, contextSize). */
  batchSize?: number;
  /** Evaluate waiting turns of several agents together in one batch (llama.cpp). Default true. */
  batching?: boolean;
  /** Default reply length limit per turn, in tokens. Default 256. */
  maxTokens?: number;
  /** Messages that may wait in one agent's mailbox. Default 64. */
  mailboxCapacity?: number;
  /** Longest accepted message, in characters. Default 32 768. */
  maxMessageChars?: number;
  /** Where `hf:` models are downloaded. Default: node-llama-cpp's models folder. */
  modelCacheDir?: string;
  /** Agents spawned with the same system prompt start from its saved KV state. Default true. */
  sharedPrefixes?: boolean;
  /** System prompts shorter than this many tokens are evaluated rather than cached. Default 32. */
  sharedPrefixMinTokens?: number;
  /** Where shared prompt states are kept. Default `<stateDir>/prefixes`. */
  prefixCacheDir?: string;
  /** Default behaviour of spawned agents. Default: `conversation`. */
  behaviour?: AgentBehaviour;
  /** pino logger; silent by default. */
  logger?: Logger;
  /** Time source (tests inject a fake one). */
  clock?: Clock;
  /** Starts the engine in-process instead of in a worker thread (unit tests use a fake engine). */
  engineFactory?: () => Promise<HostedEngine>;
  signal?: AbortSignal;
}

export interface SpawnOptions {
  /** The agent's address: lowercase segments joined by `/`, e.g. `support/42`. */
  id: string;
  /** A free-form role name (technical, business, …). Default "assistant". */
  role?: string;
  systemPrompt: string;
  /** Sampling for every turn of this agent. Default greedy. */
  sampling?: SamplingOptions;
  /** Behaviour for this agent. Default: the runtime's. */
  behaviour?: AgentBehaviour;
}

export interface SendOptions {
  /** Reply length limit in tokens. Default: the runtime's `maxTokens`. */
  maxTokens?: number;
  signal?: AbortSignal;
}

export const DEFAULTS = {
  maxAgents: 3,
  contextSize: 2048,
  maxTokens: 256,
  mailboxCapacity: 64,
  maxMessageChars: 32_768,
  // One core is left to the main thread and the rest of the machine: ggml's threads spin-wait on each
  // other, so a contended core stalls every step (bench:threads: 1 thread beat 2 by 3-9x on 2 shared cores).
  threads: () => Math.max(1, availableParallelism() - 1),
} as const;

function positiveInteger(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

export interface ResolvedOptions {
  maxAgents: number;
  maxStoredAgents: number;
  contextSize: number;
  threads: number;
  maxTokens: number;
  mailboxCapacity: number;
  maxMessageChars: number;
}

export function resolveOptions(options: AgentRuntimeOptions): ResolvedOptions {
  return {
    maxAgents: positiveInteger("maxAgents", options.maxAgents, DEFAULTS.maxAgents),
    maxStoredAgents:
      options.maxStoredAgents === undefined ? Infinity : positiveInteger("maxStoredAgents", options.maxStoredAgents, 0),
    contextSize: positiveInteger("contextSize", options.contextSize, DEFAULTS.contextSize),
    threads: positiveInteger("threads", options.threads, DEFAULTS.threads()),
    maxTokens: positiveInteger("maxTokens", options.maxTokens, DEFAULTS.maxTokens),
    mailboxCapacity: positiveInteger("mailboxCapacity", options.mailboxCapacity, DEFAULTS.mailboxCapacity),
    maxMessageChars: positiveInteger("maxMessageChars", options.maxMessageChars, DEFAULTS.maxMessageChars),
  };
}


/** Checks send()'s options object and returns its signal. */
export function validateSendOptions(options: unknown): AbortSignal | undefined {
  if (typeof options !== "object" || options === null) throw new TypeError("send options must be an object");
  return validateSignal((options as SendOptions).signal);
}

/** Checks an optional `signal` option: an AbortSignal or nothing. */
export function validateSignal(signal: unknown): AbortSignal | undefined {
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new TypeError("signal must be an AbortSignal");
  return signal;
}

/** Checks a custom behaviour's shape at spawn, so a malformed one fails there rather than mid-turn. */
export function validateBehaviour(behaviour: unknown): AgentBehaviour | undefined {
  if (behaviour === undefined) return undefined;
  const b = behaviour as Partial<AgentBehaviour> | null;
  if (typeof b !== "object" || b === null || typeof b.name !== "string" || typeof b.prompt !== "function" || typeof b.record !== "function") {
    throw new TypeError("behaviour must be an object with a name and prompt() and record() functions");
  }
  return b as AgentBehaviour;
}
