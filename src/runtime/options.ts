import { availableParallelism } from "node:os";
import { validateAgentId } from "../agent-id.js";
import { validateSampling } from "../engines/sampling.js";
import { AgentRuntimeError } from "../errors.js";
import type { Logger } from "pino";
import type { AgentBehaviour } from "../actor/behaviour.js";
import { checkContextPolicy, checkSlideTo, DEFAULT_CONTEXT_POLICY, type ContextPolicy } from "../actor/context-window.js";
import { KV_TYPES, type ChatMessage, type EngineName, type HostedEngine, type KvType, type SamplingOptions } from "../engines/engine.js";
import type { StateStore } from "../store/state-store.js";
import type { Clock } from "../clock.js";
import type { ClusterOptions } from "./cluster-node.js";

export interface AgentRuntimeOptions {
  /** A GGUF path, an `hf:` URI, or an mlx-community folder. Required unless `engineFactory` is given. */
  model?: string;
  /** Engine to run the model on. Default: chosen from the model (GGUF → "llama.cpp", folder → "mlx"). */
  engine?: EngineName;
  /** Folder for agent state. Required unless `store` is given. */
  stateDir?: string;
  /** A custom state store (an object store, say). Default: a {@link DirectoryStore} on `stateDir`. */
  store?: StateStore;
  /**
   * Join a cluster of nodes on NATS JetStream (docs/cluster.md): agents live in the cluster's store, any
   * node answers for any agent, one node owns each. Without it nothing changes: state lives in `stateDir`.
   */
  cluster?: ClusterOptions;
  /** Most agents resident in memory at once; more are passivated to the store. Default 3. */
  maxAgents?: number;
  /**
   * Bytes of passivated agents' KV states kept in host RAM (`/dev/shm`, else the OS temp folder), least
   * recently passivated dropped first. Passivation then returns once the engine has saved the state to
   * RAM, and the state is written to the store in the background; rehydration loads it from RAM when it
   * is still there. Acknowledged turns are as durable as without it (the history is written before every
   * acknowledgement); a crash before a background write completes costs that agent a rebuild from its
   * history (or from its previous state file). Default 0: states go straight to the store.
   */
  hostCacheBytes?: number;
  /**
   * Most bytes of KV cache resident agents may hold together, besides `maxAgents`. Each resident is charged what the
   * engine reserves for it: on MLX, whose caches grow in 256-token steps, its tokens rounded up to a step, so agents
   * are admitted while their caches fit and least recently used idle ones are passivated to make room (after a turn
   * too, when one grew); on llama.cpp, which reserves every sequence's whole context when the model loads, the
   * budget can only lower the number of sequences, to min(maxAgents, floor(kvBudgetBytes / (contextSize ×
   * kvBytesPerToken))), decided at start (a RangeError when not even one fits). An agent whose cache alone needs more
   * fails with ERR_KV_BUDGET. Default: no budget.
   */
  kvBudgetBytes?: number;
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
  /**
   * KV cache type, in memory and in state files: `"q8_0"` stores keys and values in 8 bits (about half the
   * bytes of `"f16"`; llama.cpp only, on models whose attention head dimension is a multiple of 32; a state
   * file of the other type is never loaded, its agent is rebuilt from history). Default `"f16"`.
   */
  kvType?: KvType;
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
  /** Default behaviour of spawned agents: a registered name or a behaviour. Default: `"conversation"`. */
  behaviour?: string | AgentBehaviour;
  /**
   * Behaviours to register besides the built-in ones, so agents can be spawned with them by name and
   * restored agents get theirs back (a record names its behaviour; an unregistered name fails that agent
   * with ERR_BEHAVIOUR_NOT_FOUND until it is registered).
   */
  behaviours?: readonly AgentBehaviour[];
  /**
   * What agents do when their conversation outgrows the context (docs/context.md): `"error"` refuses
   * the turn with ERR_CONTEXT_FULL; `"slide"` drops the oldest whole turns (never the system prompt)
   * from what the agent renders, down to `slideTo` of the context, and re-evaluates the kept window
   * exactly; `"shift"` drops the same turns but has the engine move the kept ones in its cache instead
   * of re-evaluating them (faster, approximate). The store keeps the whole history in every case.
   * An agent keeps the policy it was spawned with. Default `"slide"`.
   */
  contextPolicy?: ContextPolicy;
  /**
   * Fraction of the context a slide (or shift) shrinks the prompt to, in (0, 1): lower slides less often
   * but keeps less. Default 0.5.
   */
  slideTo?: number;
  /** pino logger; silent by default. */
  logger?: Logger;
  /** Time source (tests inject a fake one). */
  clock?: Clock;
  /** Starts the engine. Default: the model in a generation worker thread; `agentrt/testing` has a fake engine and a crashable worker. */
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
  /** Behaviour for this agent: a registered name (e.g. `"conversation"`) or a behaviour. Default: the runtime's. */
  behaviour?: string | AgentBehaviour;
  /** This agent's context policy (`"error"`, `"slide"`, `"shift"`), saved with it. Default: the runtime's `contextPolicy`. */
  contextPolicy?: ContextPolicy;
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
  hostCacheBytes: number;
  /** Infinity without a budget. */
  kvBudgetBytes: number;
  maxStoredAgents: number;
  contextSize: number;
  threads: number;
  maxTokens: number;
  mailboxCapacity: number;
  maxMessageChars: number;
  contextPolicy: ContextPolicy;
  slideTo: number;
  kvType: KvType;
}

export function resolveOptions(options: AgentRuntimeOptions): ResolvedOptions {
  return {
    maxAgents: positiveInteger("maxAgents", options.maxAgents, DEFAULTS.maxAgents),
    hostCacheBytes: options.hostCacheBytes === 0 ? 0 : positiveInteger("hostCacheBytes", options.hostCacheBytes, 0),
    kvBudgetBytes: positiveInteger("kvBudgetBytes", options.kvBudgetBytes, Infinity),
    maxStoredAgents: options.maxStoredAgents === undefined ? Infinity : positiveInteger("maxStoredAgents", options.maxStoredAgents, 0),
    contextSize: positiveInteger("contextSize", options.contextSize, DEFAULTS.contextSize),
    threads: positiveInteger("threads", options.threads, DEFAULTS.threads()),
    maxTokens: positiveInteger("maxTokens", options.maxTokens, DEFAULTS.maxTokens),
    mailboxCapacity: positiveInteger("mailboxCapacity", options.mailboxCapacity, DEFAULTS.mailboxCapacity),
    maxMessageChars: positiveInteger("maxMessageChars", options.maxMessageChars, DEFAULTS.maxMessageChars),
    contextPolicy: checkContextPolicy(options.contextPolicy) ?? DEFAULT_CONTEXT_POLICY,
    slideTo: checkSlideTo(options.slideTo),
    kvType: checkKvType(options.kvType),
  };
}

function checkKvType(value: unknown): KvType {
  if (value === undefined) return "f16";
  if (!KV_TYPES.includes(value as KvType)) throw new RangeError(`kvType must be "f16" or "q8_0", got ${JSON.stringify(value)}`);
  return value as KvType;
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

/** Checks a message's text: a non-empty string within the size limit. */
export function checkText(text: unknown, limit: number, what = "The message"): string {
  if (typeof text !== "string") throw new AgentRuntimeError("ERR_INVALID_MESSAGE", `${what} must be a string`);
  if (text.trim().length === 0) throw new AgentRuntimeError("ERR_INVALID_MESSAGE", `${what} is empty`);
  if (text.length > limit) {
    throw new AgentRuntimeError("ERR_MESSAGE_TOO_LARGE", `${what} has ${text.length} characters; the limit is ${limit}`, {
      details: { length: text.length, limit },
    });
  }
  return text;
}

/** Checks send()'s options; returns the signal and the reply limit. */
export function checkSendOptions(options: unknown, defaultMaxTokens: number): { signal: AbortSignal | undefined; maxTokens: number } {
  const signal = validateSendOptions(options);
  signal?.throwIfAborted();
  const maxTokens = (options as SendOptions).maxTokens ?? defaultMaxTokens;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new RangeError(`maxTokens must be a positive integer, got ${maxTokens}`);
  return { signal, maxTokens };
}

/** Checks a stateless client's conversation: user/assistant messages ending with a user message. */
export function checkConversation(messages: unknown, limit: number): { earlier: ChatMessage[]; text: string } {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new AgentRuntimeError("ERR_INVALID_MESSAGE", "The conversation must be a non-empty array of messages");
  }
  messages.forEach((message: Partial<ChatMessage> | null, index) => {
    const last = index === messages.length - 1;
    if (typeof message !== "object" || message === null || typeof message.content !== "string") {
      throw new AgentRuntimeError("ERR_INVALID_MESSAGE", `Message ${index} must have text content`);
    }
    if (last ? message.role !== "user" : message.role !== "user" && message.role !== "assistant") {
      throw new AgentRuntimeError(
        "ERR_INVALID_MESSAGE",
        last
          ? "The last message must be a user message"
          : `Message ${index} has role ${JSON.stringify(message.role)}; earlier messages must be user or assistant`,
      );
    }
    if (message.content.length > limit) {
      throw new AgentRuntimeError("ERR_MESSAGE_TOO_LARGE", `Message ${index} has ${message.content.length} characters; the limit is ${limit}`, {
        details: { index, length: message.content.length, limit },
      });
    }
  });
  const text = checkText((messages.at(-1) as ChatMessage).content, limit);
  const earlier = (messages.slice(0, -1) as ChatMessage[]).map(({ role, content }) => ({ role, content }));
  return { earlier, text };
}

/** Checks spawn()'s options (the behaviour is resolved by the registry). */
export function checkSpawn(
  spec: unknown,
  limit: number,
): Omit<Required<SpawnOptions>, "behaviour" | "contextPolicy"> & Pick<SpawnOptions, "behaviour" | "contextPolicy"> {
  if (typeof spec !== "object" || spec === null) throw new TypeError("spawn options must be an object");
  const { id, role, systemPrompt, sampling, behaviour, contextPolicy } = spec as SpawnOptions;
  if (typeof systemPrompt !== "string") throw new TypeError("systemPrompt must be a string");
  if (systemPrompt.length > limit) throw new AgentRuntimeError("ERR_MESSAGE_TOO_LARGE", `systemPrompt exceeds ${limit} characters`);
  if (role !== undefined && typeof role !== "string") throw new TypeError("role must be a string");
  if (role !== undefined && role.length > limit) throw new AgentRuntimeError("ERR_MESSAGE_TOO_LARGE", `role exceeds ${limit} characters`);
  if (behaviour !== undefined && typeof behaviour !== "string" && (typeof behaviour !== "object" || behaviour === null)) {
    throw new TypeError("behaviour must be a registered name or a behaviour object");
  }
  return {
    id: validateAgentId(id),
    role: role ?? "assistant",
    systemPrompt,
    sampling: validateSampling(sampling),
    behaviour,
    contextPolicy: checkContextPolicy(contextPolicy),
  };
}

export interface HistoryOptions {
  /** Index (in the whole history) just past the page's last message. Default: the newest message. */
  before?: number;
  /** Most messages in the page, 1–1000. Default 50. */
  limit?: number;
}

export interface HistoryPage {
  id: string;
  /** User and assistant messages, oldest first. */
  messages: ChatMessage[];
  /** Index of `messages[0]` in the whole history; `start > 0` means older pages exist (pass `before: start`). */
  start: number;
  /** Messages in the whole history. */
  total: number;
}

/** Checks history()'s paging options. */
export function checkHistoryOptions(options: unknown): { before: number | undefined; limit: number } {
  if (typeof options !== "object" || options === null) throw new TypeError("history options must be an object");
  const { before, limit = 50 } = options as HistoryOptions;
  if (before !== undefined && (!Number.isSafeInteger(before) || before < 0))
    throw new RangeError(`before must be an integer ≥ 0, got ${String(before)}`);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new RangeError(`limit must be an integer in [1, 1000], got ${String(limit)}`);
  return { before, limit };
}
