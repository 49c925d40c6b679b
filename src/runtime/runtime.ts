import { join } from "node:path";
import { EventEmitter } from "eventemitter3";
import pino, { type Logger } from "pino";
import { conversation } from "../actor/behaviours/conversation.js";
import { detectEngine } from "../engines/create-engine.js";
import type { ChatMessage, GenerateOutput, HostedEngine, ModelInfo } from "../engines/engine.js";
import { validateSampling } from "../engines/sampling.js";
import { AgentRuntimeError, isAgentRuntimeError } from "../errors.js";
import { DirectoryStore } from "../store/directory-store.js";
import { checkKvDescriptor } from "../store/kv-descriptor.js";
import type { StagedKv, StateStore } from "../store/state-store.js";
import { Supervisor } from "../supervisor/supervisor.js";
import { RemoteEngine } from "../worker/remote-engine.js";
import { Agent, type AgentInfo } from "../actor/agent.js";
import { validateAgentId } from "../agent-id.js";
import { systemClock, type Clock } from "../clock.js";
import type { RuntimeEvents, TurnResult, TurnTimings } from "../events.js";
import { EventStream, type EventStreamOptions } from "./event-stream.js";
import {
  resolveOptions,
  validateBehaviour,

  validateSendOptions,
  validateSignal,
  type AgentRuntimeOptions,
  type ResolvedOptions,
  type SendOptions,
  type SpawnOptions,
} from "./options.js";
import { Turn } from "../actor/turn.js";
import { PrefixCache } from "../store/prefix-cache.js";
import { memoryReport, type MemoryReport } from "./memory.js";

const never = new AbortController().signal;

/** A failed save as ERR_STATE_WRITE_FAILED, keeping the errno (custom stores and engines throw plain errors). */
function writeFailure(error: unknown, message: string, id: string): AgentRuntimeError {
  if (isAgentRuntimeError(error, "ERR_STATE_WRITE_FAILED")) return error;
  const errno = (error as NodeJS.ErrnoException | undefined)?.code;
  return new AgentRuntimeError("ERR_STATE_WRITE_FAILED", `${message}: ${(error as Error | undefined)?.message ?? String(error)}`, {
    cause: error,
    details: { id, ...(typeof errno === "string" ? { errno } : {}) },
  });
}

/**
 * The agent runtime: agents as actors with mailboxes, one generation worker that owns the model, a
 * supervisor that keeps at most `maxAgents` resident and passivates the rest to the store.
 */
export class AgentRuntime extends EventEmitter<RuntimeEvents> {
  readonly #options: ResolvedOptions;
  readonly #store: StateStore;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #startEngine: () => Promise<HostedEngine>;
  readonly #defaultBehaviour;
  readonly #agents = new Map<string, Agent>();
  /** Ids whose removal is still deleting files: the id cannot be spawned again until it is done. */
  readonly #removing = new Map<string, Promise<void>>();
  readonly #supervisor: Supervisor<Agent>;
  readonly #prefixes: PrefixCache | undefined;
  #engine: Promise<HostedEngine>;
  #info: ModelInfo;
  #turnCounter = 0;
  #closed: Promise<void> | undefined;
  #destroyed = false;

  private constructor(init: {
    options: ResolvedOptions;
    store: StateStore;
    log: Logger;
    clock: Clock;
    startEngine: () => Promise<HostedEngine>;
    engine: HostedEngine;
    behaviour: AgentRuntimeOptions["behaviour"];
    prefixes: PrefixCache | undefined;
  }) {
    super();
    this.#options = init.options;
    this.#store = init.store;
    this.#log = init.log;
    this.#clock = init.clock;
    this.#startEngine = init.startEngine;
    this.#defaultBehaviour = init.behaviour ?? conversation;
    this.#prefixes = init.prefixes;
    this.#engine = Promise.resolve(init.engine);
    this.#info = init.engine.info;
    this.#watch(init.engine);
    this.#supervisor = new Supervisor<Agent>({
      maxAgents: init.options.maxAgents,
      passivate: (agent) => this.#passivate(agent),
    });
  }

  /** Starts the generation worker, loads the model and reads every stored agent. */
  static async create(options: AgentRuntimeOptions): Promise<AgentRuntime> {
    options.signal?.throwIfAborted();
    const resolved = resolveOptions(options);
    if (!options.store && !options.stateDir) throw new TypeError("stateDir (or store) is required");
    if (!options.model && !options.engineFactory) throw new TypeError("model is required");
    const store = options.store ?? new DirectoryStore(options.stateDir!);
    const log = options.logger ?? pino({ level: "silent" });
    const clock = options.clock ?? systemClock;
    const workerLog = log.child({ component: "worker" });
    const startEngine =
      options.engineFactory ??
      (async () => {
        const engine = options.engine ?? (await detectEngine(options.model!));
        return RemoteEngine.start(
          {
            engine,
            model: options.model!,
            contextSize: resolved.contextSize,
            sequences: resolved.maxAgents,
            threads: resolved.threads,
            ...(options.batchSize ? { batchSize: options.batchSize } : {}),
            ...(options.batching === false ? { batching: false } : {}),
            ...(options.modelCacheDir ? { modelCacheDir: options.modelCacheDir } : {}),
          },
          (record) => workerLog[record.level](record.data ?? {}, record.msg),
          options.signal,
        );
      });
    const engine = await startEngine();
    const prefixDir = options.prefixCacheDir ?? (options.stateDir ? join(options.stateDir, "prefixes") : undefined);
    const prefixes = options.sharedPrefixes === false || !prefixDir ? undefined : new PrefixCache(prefixDir, options.sharedPrefixMinTokens ?? 32);
    const runtime = new AgentRuntime({ options: resolved, store, log, clock, startEngine, engine, behaviour: options.behaviour, prefixes });
    try {
      await runtime.#restore();
    } catch (error) {
      await engine.dispose();
      throw error;
    }
    return runtime;
  }

  /** The loaded model: engine, name, fingerprint, sizes. */
  get model(): ModelInfo {
    return this.#info;
  }

  get maxAgents(): number {
    return this.#options.maxAgents;
  }

  /** Registers `listener` for `event`; returns the function that unsubscribes it. */
  subscribe<E extends keyof RuntimeEvents>(event: E, listener: (...args: RuntimeEvents[E]) => void): () => void {
    this.on(event, listener as never);
    return () => this.off(event, listener as never);
  }

  /**
   * Runtime events as an async iterable, filtered by agent and type, with a bounded buffer: a consumer
   * that falls `bufferSize` events behind gets a final `stream:dropped` event instead of slowing the runtime.
   */
  events(options: EventStreamOptions = {}): EventStream {
    this.#assertOpen();
    return new EventStream(this, options, this.#clock);
  }

  async #restore(): Promise<void> {
    const ids: string[] = [];
    for (let page = await this.#store.list({ limit: 1000 }); ; page = await this.#store.list({ after: page.next, limit: 1000 })) {
      ids.push(...page.ids);
      if (page.next === undefined) break;
    }
    for (const id of ids) {
      const now = this.#clock.now();
      const common = { behaviour: this.#defaultBehaviour, mailboxCapacity: this.#options.mailboxCapacity, log: this.#log.child({ agent: id }) };
      try {
        const record = await this.#store.read(id);
        if (!record) continue;
        this.#agents.set(
          id,
          new Agent({
            ...common,
            id,
            role: record.role,
            systemPrompt: record.systemPrompt,
            sampling: record.sampling,
            history: record.history,
            status: { state: "passivated" },
            kv: record.kv,
            createdAt: record.createdAt,
            lastUsed: record.updatedAt,
          }),
        );
      } catch (error) {
        const failure = isAgentRuntimeError(error)
          ? error
          : new AgentRuntimeError("ERR_STATE_CORRUPT", `Agent ${id} could not be read`, { cause: error });
        common.log.warn({ err: failure }, "agent record unreadable; agent marked failed");
        this.#agents.set(
          id,
          new Agent({ ...common, id, role: "", systemPrompt: "", sampling: {}, history: [], status: { state: "failed", error: failure }, createdAt: now, lastUsed: now }),
        );
        this.emit("agent:error", { id, error: failure });
      }
    }
  }

  #assertOpen(): void {
    if (this.#closed || this.#destroyed) throw new AgentRuntimeError("ERR_RUNTIME_CLOSED");
  }

  #require(id: string): Agent {
    const agent = this.#agents.get(validateAgentId(id));
    if (!agent) throw new AgentRuntimeError("ERR_AGENT_NOT_FOUND", `No agent with id ${JSON.stringify(id)}`, { details: { id } });
    return agent;
  }

  /** Creates an agent, persists it, and evaluates its system prompt once. */
  async spawn(spec: SpawnOptions, options: { signal?: AbortSignal } = {}): Promise<AgentInfo> {
    this.#assertOpen();
    validateSignal(options?.signal)?.throwIfAborted();
    if (typeof spec !== "object" || spec === null) throw new TypeError("spawn options must be an object");
    const id = validateAgentId(spec.id);
    if (typeof spec.systemPrompt !== "string") throw new TypeError("systemPrompt must be a string");
    if (spec.systemPrompt.length > this.#options.maxMessageChars) {
      throw new AgentRuntimeError("ERR_MESSAGE_TOO_LARGE", `systemPrompt exceeds ${this.#options.maxMessageChars} characters`);
    }
    if (spec.role !== undefined && typeof spec.role !== "string") throw new TypeError("role must be a string");
    if (spec.role !== undefined && spec.role.length > this.#options.maxMessageChars) {
      throw new AgentRuntimeError("ERR_MESSAGE_TOO_LARGE", `role exceeds ${this.#options.maxMessageChars} characters`);
    }
    const behaviour = validateBehaviour(spec.behaviour) ?? this.#defaultBehaviour;
    const sampling = validateSampling(spec.sampling);
    if (this.#agents.has(id) || this.#removing.has(id)) {
      throw new AgentRuntimeError("ERR_AGENT_EXISTS", `Agent ${id} already exists${this.#removing.has(id) ? " (its removal is in progress)" : ""}`, {
        details: { id },
      });
    }
    if (this.#agents.size >= this.#options.maxStoredAgents) {
      throw new AgentRuntimeError("ERR_TOO_MANY_AGENTS", `The store holds ${this.#agents.size} agents, the limit`, {
        details: { limit: this.#options.maxStoredAgents },
      });
    }
    const now = this.#clock.now();
    const agent = new Agent({
      id,
      role: spec.role ?? "assistant",
      systemPrompt: spec.systemPrompt,
      sampling,
      behaviour,
      history: [],
      status: { state: "passivated" },
      createdAt: now,
      lastUsed: now,
      mailboxCapacity: this.#options.mailboxCapacity,
      log: this.#log.child({ agent: id }),
    });
    // Claimed synchronously, so a concurrent spawn of the same id fails with ERR_AGENT_EXISTS.
    this.#agents.set(id, agent);
    try {
      // The record is written from the mailbox, so a remove() of this agent waits for it instead of racing it.
      await agent.mailbox.post(async () => {
        await this.#store.write(agent.toRecord(now));
        await this.#withResident(agent, options.signal, async () => {});
      });
    } catch (error) {
      // Unless a remove() already took it over, undo the spawn (and never touch a later agent of this id).
      if (this.#agents.get(id) === agent) await this.#forget(agent).catch(() => {});
      throw error;
    }
    agent.log.debug({ role: agent.role }, "spawned");
    this.emit("agent:spawned", { id, role: agent.role, ...agent.lastLoad });
    return agent.info();
  }

  /**
   * Sends `text` to agent `id`. Iterate the returned {@link Turn} for tokens, or await `turn.result`.
   * A turn is *acknowledged* when `result` resolves (and `agent:turn-end` fires): its history is then
   * durable in the store and survives a crash. A rejected turn leaves the history unchanged.
   */
  send(id: string, text: string, options: SendOptions = {}): Turn {
    const turnId = ++this.#turnCounter;
    return new Turn(async (push) => {
      this.#assertOpen();
      const signal = validateSendOptions(options);
      signal?.throwIfAborted();
      if (typeof text !== "string") throw new AgentRuntimeError("ERR_INVALID_MESSAGE", "The message must be a string");
      if (text.trim().length === 0) throw new AgentRuntimeError("ERR_INVALID_MESSAGE", "The message is empty");
      if (text.length > this.#options.maxMessageChars) {
        throw new AgentRuntimeError("ERR_MESSAGE_TOO_LARGE", `The message has ${text.length} characters; the limit is ${this.#options.maxMessageChars}`, {
          details: { length: text.length, limit: this.#options.maxMessageChars },
        });
      }
      const maxTokens = options.maxTokens ?? this.#options.maxTokens;
      if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new RangeError(`maxTokens must be a positive integer, got ${maxTokens}`);
      const agent = this.#require(id);
      const queuedAt = this.#clock.now();
      return agent.mailbox.post(
        () => this.#withResident(agent, signal, () => this.#turn(agent, text, turnId, maxTokens, signal, push, queuedAt)),
        { id },
      );
    });
  }

  /**
   * Sends a whole conversation, as stateless (OpenAI-style) clients do: `messages` are user and assistant
   * messages ending with the new user message. Inside the agent's mailbox, when the earlier messages
   * differ from the agent's history they replace it (the engine then rewinds the cache to the common
   * token prefix instead of starting over); when they are equal this is `send`. The new history is
   * persisted with the turn; a rejected turn leaves the old history in place.
   */
  sendConversation(id: string, messages: readonly ChatMessage[], options: SendOptions = {}): Turn {
    const turnId = ++this.#turnCounter;
    return new Turn(async (push) => {
      this.#assertOpen();
      const signal = validateSendOptions(options);
      signal?.throwIfAborted();
      if (!Array.isArray(messages) || messages.length === 0) {
        throw new AgentRuntimeError("ERR_INVALID_MESSAGE", "The conversation must be a non-empty array of messages");
      }
      const limit = this.#options.maxMessageChars;
      messages.forEach((message, index) => {
        const last = index === messages.length - 1;
        if (typeof message !== "object" || message === null || typeof message.content !== "string") {
          throw new AgentRuntimeError("ERR_INVALID_MESSAGE", `Message ${index} must have text content`);
        }
        if (last ? message.role !== "user" : message.role !== "user" && message.role !== "assistant") {
          throw new AgentRuntimeError("ERR_INVALID_MESSAGE", last
            ? "The last message must be a user message"
            : `Message ${index} has role ${JSON.stringify(message.role)}; earlier messages must be user or assistant`);
        }
        if (message.content.length > limit) {
          throw new AgentRuntimeError("ERR_MESSAGE_TOO_LARGE", `Message ${index} has ${message.content.length} characters; the limit is ${limit}`, {
            details: { index, length: message.content.length, limit },
          });
        }
      });
      const text = messages.at(-1)!.content;
      if (text.trim().length === 0) throw new AgentRuntimeError("ERR_INVALID_MESSAGE", "The message is empty");
      const earlier = messages.slice(0, -1).map(({ role, content }) => ({ role, content }));
      const maxTokens = options.maxTokens ?? this.#options.maxTokens;
      if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new RangeError(`maxTokens must be a positive integer, got ${maxTokens}`);
      const agent = this.#require(id);
      const queuedAt = this.#clock.now();
      return agent.mailbox.post(
        () =>
          this.#withResident(agent, signal, async () => {
            const kept = agent.history;
            const same = kept.length === earlier.length && kept.every((m, i) => m.role === earlier[i]!.role && m.content === earlier[i]!.content);
            if (same) return this.#turn(agent, text, turnId, maxTokens, signal, push, queuedAt);
            agent.history = earlier;
            try {
              return await this.#turn(agent, text, turnId, maxTokens, signal, push, queuedAt);
            } catch (error) {
              agent.history = kept;
              throw error;
            }
          }),
        { id },
      );
    });
  }

  /** Sends `text` and resolves with the whole reply. */
  ask(id: string, text: string, options: SendOptions = {}): Promise<TurnResult> {
    return this.send(id, text, options).result;
  }

  /** Runs `work` with the agent pinned and resident (passivating another agent if needed). */
  async #withResident<T>(agent: Agent, signal: AbortSignal | undefined, work: () => Promise<T>): Promise<T> {
    if (agent.removed) throw new AgentRuntimeError("ERR_AGENT_REMOVED", undefined, { details: { id: agent.id } });
    if (agent.status.state === "failed") throw agent.status.error;
    signal?.throwIfAborted();
    agent.pins++;
    try {
      if (await this.#supervisor.admit(agent, signal)) {
        try {
          await this.#load(agent, signal);
        } catch (error) {
          await this.#unload(agent);
          throw error;
        }
      }
      return await work();
    } finally {
      agent.pins--;
      agent.lastUsed = this.#clock.now();
      this.#supervisor.notify();
    }
  }

  /** Frees an admitted agent's sequence without saving it (a failed load, a broken cache). */
  async #unload(agent: Agent): Promise<void> {
    const engine = await this.#engine.catch(() => undefined);
    // Closed before the slot is released: the next admission may open a sequence at once.
    await engine?.closeSequence(agent.id).catch(() => {});
    this.#supervisor.release(agent);
    agent.status = { state: "passivated" };
  }

  /** Gives an admitted agent its cache: from its state file when valid, else by re-evaluating its history. */
  async #load(agent: Agent, signal: AbortSignal | undefined): Promise<void> {
    const engine = await this.#engine;
    const started = this.#clock.now();
    const wasStored = agent.kv !== undefined || agent.history.length > 0;
    agent.status = { state: "rehydrating" };
    await engine.openSequence(agent.id);
    let source: "state" | "history" = "history";
    let tokens = 0;
    if (agent.kv) {
      try {
        checkKvDescriptor(agent.id, agent.kv, engine.info);
        const path = await this.#store.openKv(agent.id, agent.kv);
        tokens = (await engine.loadState(agent.id, path)).tokens;
        source = "state";
      } catch (error) {
        if (isAgentRuntimeError(error, "ERR_WORKER_CRASHED")) throw error;
        const reason = isAgentRuntimeError(error)
          ? error
          : new AgentRuntimeError("ERR_STATE_CORRUPT", `The engine refused the saved cache of ${agent.id}`, { cause: error });
        agent.log.warn({ err: reason }, "saved cache refused; rebuilding from history");
        this.emit("agent:error", { id: agent.id, error: reason });
        agent.kv = undefined;
        // A failed load may leave partial cells behind: start from an empty sequence.
        await engine.closeSequence(agent.id);
        await engine.openSequence(agent.id);
      }
    }
    if (source === "history") {
      // Agents sharing a system prompt start from its saved state rather than evaluating it again.
      const shared = (await this.#prefixes?.load(engine, agent.id, agent.systemPrompt)) ?? 0;
      const counts = await engine.prefill(agent.id, this.#fullHistory(agent), signal ?? never);
      tokens = counts.cacheTokens;
      agent.lastLoad = { sharedPrefixTokens: shared, evaluatedTokens: counts.evaluatedTokens };
      if (shared === 0 && agent.history.length === 0) await this.#prefixes?.remember(engine, agent.id, agent.systemPrompt, tokens);
    }
    agent.status = { state: "resident" };
    if (wasStored) {
      const ms = this.#clock.now() - started;
      agent.log.debug({ tokens, ms, source }, "rehydrated");
      this.emit("agent:rehydrated", { id: agent.id, tokens, ms, source });
    }
  }

  #fullHistory(agent: Agent): ChatMessage[] {
    return [{ role: "system", content: agent.systemPrompt }, ...agent.history];
  }

  async #turn(
    agent: Agent,
    text: string,
    turnId: number,
    maxTokens: number,
    signal: AbortSignal | undefined,
    push: (text: string) => void,
    queuedAt: number,
  ): Promise<TurnResult> {
    const engine = await this.#engine;
    const started = this.#clock.now();
    this.emit("agent:turn-start", { id: agent.id, turnId, text });
    let output: GenerateOutput;
    try {
      output = await engine.generate(agent.id, {
        messages: agent.behaviour.prompt(agent, text),
        maxTokens,
        sampling: agent.sampling,
        signal: signal ?? never,
        onText: (chunk) => {
          if (chunk.length === 0) return;
          push(chunk);
          this.emit("agent:token", { id: agent.id, turnId, text: chunk });
        },
      });
    } catch (error) {
      // Refusals (context full, abort, crash) leave the cache usable or already gone; anything else may
      // have left the sequence broken (a saved cache that loads but cannot be evaluated, measured):
      // drop it and its saved copy, so that the next turn rebuilds it from the history.
      if (signal?.aborted || (isAgentRuntimeError(error) && error.code !== "ERR_ENGINE_FAILED")) throw error;
      const failure = new AgentRuntimeError("ERR_ENGINE_FAILED", `The engine failed on a turn of ${agent.id}: ${(error as Error)?.message}`, {
        cause: error,
        details: { id: agent.id },
      });
      agent.log.error({ err: failure }, "engine failed mid-turn; the cache is dropped and rebuilt from history next turn");
      this.emit("agent:error", { id: agent.id, error: failure });
      agent.kv = undefined;
      await this.#unload(agent);
      throw failure;
    }
    if (output.stopReason === "aborted") throw signal?.reason ?? new AgentRuntimeError("ERR_ABORTED");
    const previous = agent.history;
    agent.history = [...previous, ...agent.behaviour.record(agent, text, output.text)];
    try {
      await this.#store.write(agent.toRecord(this.#clock.now()));
    } catch (error) {
      // Not durable, so not acknowledged: the history stays as it was (the cache is rewound next turn).
      agent.history = previous;
      throw writeFailure(error, `Saving the turn of ${agent.id} failed`, agent.id);
    }
    const finished = this.#clock.now();
    const timings: TurnTimings = {
      promptTokens: output.promptTokens,
      reusedTokens: output.reusedTokens,
      evaluatedTokens: output.evaluatedTokens,
      generatedTokens: output.generatedTokens,
      cacheTokens: output.cacheTokens,
      ttftMs: output.ttftMs,
      queueMs: started - queuedAt,
      tokensPerSecond: output.generatedTokens > 1 && output.decodeMs > 0 ? ((output.generatedTokens - 1) * 1000) / output.decodeMs : 0,
      totalMs: finished - started,
      stopReason: output.stopReason,
    };
    agent.lastTurn = timings;
    const result: TurnResult = { id: agent.id, turnId, reply: output.text, timings };
    agent.log.debug({ turnId, ...timings }, "turn end");
    this.emit("agent:turn-end", result);
    return result;
  }

  /** Saves an agent's cache, history and metadata to the store and frees its sequence. */
  async #passivate(agent: Agent): Promise<void> {
    const engine = await this.#engine;
    const started = this.#clock.now();
    agent.status = { state: "passivating" };
    const previousKv = agent.kv;
    let staged: StagedKv | undefined;
    try {
      staged = await this.#store.stageKv(agent.id, engine.info.stateFileExtension);
      const saved = await engine.saveState(agent.id, staged.path);
      const committed = await staged.commit();
      // On a full disk llama.cpp can lose its last buffered block without an error: check what landed.
      if (committed.bytes !== saved.bytes) {
        throw new AgentRuntimeError("ERR_STATE_WRITE_FAILED", `The saved cache of ${agent.id} has ${committed.bytes} bytes; the engine wrote ${saved.bytes}`, {
          details: { id: agent.id, bytes: committed.bytes, expected: saved.bytes },
        });
      }
      agent.kv = {
        ...committed,
        tokens: saved.tokens,
        fingerprint: engine.info.fingerprint,
        engine: engine.info.engine,
        historyLength: agent.history.length,
      };
      await this.#store.write(agent.toRecord(this.#clock.now()));
    } catch (error) {
      await staged?.discard();
      agent.kv = previousKv;
      // A worker crash already released every resident: this agent's cache died with the worker.
      const crashed = isAgentRuntimeError(error, "ERR_WORKER_CRASHED");
      agent.status = crashed ? { state: "passivated" } : { state: "resident" };
      const failure = crashed ? error : writeFailure(error, `Passivating ${agent.id} failed`, agent.id);
      agent.log.error({ err: failure }, crashed ? "worker crashed during passivation" : "passivation failed; agent stays resident");
      this.emit("agent:error", { id: agent.id, error: failure });
      throw failure;
    }
    await engine.closeSequence(agent.id);
    agent.status = { state: "passivated" };
    const ms = this.#clock.now() - started;
    agent.log.debug({ tokens: agent.kv.tokens, bytes: agent.kv.bytes, ms }, "passivated");
    this.emit("agent:passivated", { id: agent.id, tokens: agent.kv.tokens, bytes: agent.kv.bytes, ms });
  }

  /** Passivates agent `id` now (after its queued messages). */
  async passivate(id: string): Promise<void> {
    this.#assertOpen();
    const agent = this.#require(id);
    await agent.mailbox.post(() => this.#supervisor.evict(agent));
  }

  get(id: string): AgentInfo {
    return this.#require(id).info();
  }

  list(): AgentInfo[] {
    return [...this.#agents.values()].map((agent) => agent.info());
  }

  /**
   * Deletes the agent, its cache and its stored state. Waits for its running message (and a passivation
   * in progress) to finish; until it resolves, the id cannot be spawned again.
   */
  async remove(id: string): Promise<void> {
    this.#assertOpen();
    const agent = this.#require(id);
    await this.#forget(agent);
    this.emit("agent:removed", { id: agent.id });
  }

  /** Takes `agent` out of the runtime: queued work rejected, running work and passivation awaited, files deleted. */
  #forget(agent: Agent): Promise<void> {
    agent.removed = true;
    this.#agents.delete(agent.id);
    const forgetting = (async () => {
      agent.mailbox.rejectPending(new AgentRuntimeError("ERR_AGENT_REMOVED", undefined, { details: { id: agent.id } }));
      await agent.mailbox.drain();
      // Pinned for good: no passivation starts now, and one already saving it is awaited. Otherwise
      // its record write would land after the files are deleted and bring the agent back on restart.
      agent.pins++;
      await this.#supervisor.settled(agent);
      await this.#unload(agent);
      await this.#store.remove(agent.id).catch((error: unknown) => {
        throw writeFailure(error, `Could not delete the stored state of ${agent.id}`, agent.id);
      });
    })();
    this.#removing.set(agent.id, forgetting);
    void forgetting.catch(() => {}).finally(() => this.#removing.delete(agent.id));
    return forgetting;
  }

  /** Model bytes, per-agent cache tokens and bytes (memory and disk), and totals. */
  async memory(): Promise<MemoryReport> {
    const engine = await this.#engine;
    const agents = [...this.#agents.values()];
    const resident = new Set(this.#supervisor.residents.filter((agent) => agent.status.state === "resident").map((a) => a.id));
    const stats = await engine.stats([...resident]);
    const disk = await Promise.all(agents.map((agent) => this.#store.bytesOnDisk(agent.id)));
    return memoryReport(engine.info, agents, resident, stats, disk);
  }

  /** Fault injection for tests: crash the generation worker as a native fault would. */
  async crashWorkerForTesting(): Promise<void> {
    await (await this.#engine).crash();
  }

  #watch(engine: HostedEngine): void {
    engine.onCrash((error) => {
      if (this.#closed || this.#destroyed) return;
      const started = this.#clock.now();
      this.#log.error({ err: error }, "generation worker crashed; restarting");
      for (const agent of this.#supervisor.releaseAll()) agent.status = { state: "passivated" };
      const failure = new AgentRuntimeError("ERR_WORKER_CRASHED", error.message, { cause: error });
      this.emit("agent:error", { error: failure });
      this.#engine = this.#startEngine().then((fresh) => {
        this.#info = fresh.info;
        this.#watch(fresh);
        const ms = this.#clock.now() - started;
        this.emit("worker:restarted", { reason: error.message, ms });
        return fresh;
      });
      this.#engine.catch((restartError: unknown) => this.#log.error({ err: restartError }, "worker restart failed"));
    });
  }

  /** Finishes queued messages, passivates every resident agent, stops the worker. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      await Promise.all([...this.#agents.values()].map((agent) => agent.mailbox.drain()));
      await Promise.allSettled(this.#removing.values());
      for (const agent of this.#supervisor.residents) {
        await this.#supervisor.evict(agent).catch(() => {});
      }
      const engine = await this.#engine.catch(() => undefined);
      await engine?.dispose();
    })();
    return this.#closed;
  }

  /** Stops now: rejects queued messages and stops the worker without saving caches. Idempotent. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    const error = new AgentRuntimeError("ERR_RUNTIME_CLOSED");
    for (const agent of this.#agents.values()) agent.mailbox.rejectPending(error);
    const engine = await this.#engine.catch(() => undefined);
    await engine?.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
