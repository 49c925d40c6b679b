import { join } from "node:path";
import { EventEmitter } from "eventemitter3";
import pino, { type Logger } from "pino";
import type { Agent, AgentInfo } from "../actor/agent.js";
import { BehaviourRegistry } from "../actor/behaviour-registry.js";
import { systemClock, type Clock } from "../clock.js";
import { detectEngine } from "../engines/create-engine.js";
import type { ChatMessage, ModelInfo } from "../engines/engine.js";
import { AgentRuntimeError, isAgentRuntimeError } from "../errors.js";
import type { EmitEvent, RuntimeEvents, TurnResult } from "../events.js";
import { DirectoryStore } from "../store/directory-store.js";
import { PrefixCache } from "../store/prefix-cache.js";
import type { ListOptions, StateStore } from "../store/state-store.js";
import { Supervisor } from "../supervisor/supervisor.js";
import { EngineHost, workerEngineFactory } from "../worker/engine-host.js";
import { Turn } from "../actor/turn.js";
import { AgentDirectory, type AgentPage } from "./agent-directory.js";
import { ClusterNode, type ClusterStatus } from "./cluster-node.js";
import { EventStream, type EventStreamOptions } from "./event-stream.js";
import { memoryReport, type MemoryReport } from "./memory.js";
import {
  checkConversation,
  checkSendOptions,
  checkSpawn,
  checkHistoryOptions,
  checkText,
  type HistoryOptions,
  type HistoryPage,
  resolveOptions,
  validateSignal,
  type AgentRuntimeOptions,
  type ResolvedOptions,
  type SendOptions,
  type SpawnOptions,
} from "./options.js";

interface RuntimeParts {
  options: ResolvedOptions;
  store: StateStore;
  log: Logger;
  clock: Clock;
  host: EngineHost;
  prefixes: PrefixCache | undefined;
  behaviours: BehaviourRegistry;
  defaultBehaviour: string;
  cluster: ClusterNode | undefined;
}

/** A turn as one node forwards it to another (checked again on arrival). */
interface ForwardedTurn {
  id: string;
  text?: string;
  messages?: ChatMessage[];
  maxTokens?: number;
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value);

/**
 * The agent runtime: the public lifecycle of agents (spawn, send, get, list, remove, close) over their
 * registry. Each agent is an actor with its own mailbox; the supervisor keeps at most `maxAgents` of
 * them resident in the engine, which the engine host runs (a generation worker thread) and restarts.
 */
export class AgentRuntime {
  readonly #options: ResolvedOptions;
  readonly #store: StateStore;
  readonly #clock: Clock;
  readonly #host: EngineHost;
  readonly #supervisor: Supervisor;
  readonly #behaviours: BehaviourRegistry;
  readonly #defaultBehaviour: string;
  readonly #events = new EventEmitter<RuntimeEvents>();
  readonly #emit: EmitEvent = (event, ...args) => void (this.#events as unknown as EventEmitter).emit(event, ...args);
  readonly #directory: AgentDirectory;
  readonly #cluster: ClusterNode | undefined;
  readonly #prefixes: PrefixCache | undefined;
  #turnCounter = 0;
  #closed: Promise<void> | undefined;
  #destroyed = false;

  private constructor(init: RuntimeParts) {
    ({ options: this.#options, store: this.#store, clock: this.#clock, host: this.#host, behaviours: this.#behaviours } = init);
    this.#defaultBehaviour = init.defaultBehaviour;
    this.#cluster = init.cluster;
    this.#prefixes = init.prefixes;
    this.#supervisor = new Supervisor({
      ...init,
      // Under kvBudgetBytes, llama.cpp may hold fewer sequences than maxAgents (it reserves each one's whole context).
      maxAgents: Math.min(init.options.maxAgents, init.host.info.sequences),
      kvBudgetBytes: Number.isFinite(init.options.kvBudgetBytes) ? init.options.kvBudgetBytes : undefined,
      hostCacheBytes: init.options.hostCacheBytes,
      emit: this.#emit,
    });
    this.#directory = new AgentDirectory({ ...init, ...init.options, supervisor: this.#supervisor, emit: this.#emit });
    this.#events.on("agent:passivated", ({ id }) => this.#directory.retireIfIdle(id));
    this.#host.on("crashed", (error) => this.#emit("agent:error", { error }));
    this.#host.on("restarted", (event) => this.#emit("worker:restarted", event));
    // A commit refused because another node took the agent over: this copy is stale, drop it.
    if (this.#cluster) this.#events.on("agent:error", ({ id, error }) => id && error.code === "ERR_LEASE_LOST" && this.#cluster!.leaseLost(id));
  }

  /** Starts the generation worker, loads the model and reads every stored agent. */
  static async create(options: AgentRuntimeOptions): Promise<AgentRuntime> {
    options.signal?.throwIfAborted();
    const resolved = resolveOptions(options);
    if (!options.store && !options.stateDir && !options.cluster?.cacheDir) throw new TypeError("stateDir (or store) is required");
    if (!options.model && !options.engineFactory) throw new TypeError("model is required");
    const behaviours = new BehaviourRegistry(options.behaviours);
    const defaultBehaviour = behaviours.lookup(options.behaviour ?? "conversation").name;
    const log = options.logger ?? pino({ level: "silent" });
    const clock = options.clock ?? systemClock;
    if (options.cluster && options.store) throw new TypeError("cluster and store cannot both be given: a cluster node's store is the cluster's");
    const cluster = options.cluster ? await ClusterNode.connect(options.cluster, { log, clock, stateDir: options.stateDir }) : undefined;
    const store = cluster?.store ?? options.store ?? new DirectoryStore(options.stateDir!);
    const factory =
      options.engineFactory ??
      workerEngineFactory(
        {
          engine: options.engine ?? (await detectEngine(options.model!)),
          model: options.model!,
          contextSize: resolved.contextSize,
          sequences: resolved.maxAgents,
          ...(Number.isFinite(resolved.kvBudgetBytes) ? { kvBudgetBytes: resolved.kvBudgetBytes } : {}),
          threads: resolved.threads,
          ...(options.batchSize ? { batchSize: options.batchSize } : {}),
          ...(options.batching === false ? { batching: false } : {}),
          ...(options.modelCacheDir ? { modelCacheDir: options.modelCacheDir } : {}),
          ...(resolved.kvType !== "f16" ? { kvType: resolved.kvType } : {}),
        },
        log.child({ component: "worker" }),
        options.signal,
      );
    // The store is claimed before the model loads: a second writer fails at once (ERR_STATE_LOCKED).
    await store.open().catch(async (error: unknown) => {
      await cluster?.dispose();
      throw error;
    });
    const host = await EngineHost.start(factory, { clock, log }).catch(async (error: unknown) => {
      await store.dispose();
      await cluster?.dispose();
      throw error;
    });
    const prefixDir = options.prefixCacheDir ?? (options.stateDir ? join(options.stateDir, "prefixes") : undefined);
    const prefixes = options.sharedPrefixes === false || !prefixDir ? undefined : new PrefixCache(prefixDir, options.sharedPrefixMinTokens ?? 32);
    // Nothing is read here: the store is the directory, and an agent is read when it is needed.
    const runtime = new AgentRuntime({ options: resolved, store, log, clock, host, prefixes, behaviours, defaultBehaviour, cluster });
    if (cluster) {
      await runtime.#startCluster(cluster).catch(async (error: unknown) => {
        await runtime.destroy();
        throw error;
      });
    }
    return runtime;
  }

  /** Answers requests other nodes forward here (see cluster-node.ts). */
  async #startCluster(cluster: ClusterNode): Promise<void> {
    const fingerprint = this.#host.info.fingerprint;
    await cluster.start(
      {
        turn: (request, sink, signal) => {
          const { id, text, messages, maxTokens } = isRecord(request) ? (request as unknown as ForwardedTurn) : ({} as ForwardedTurn);
          const options = { signal, ...(maxTokens !== undefined ? { maxTokens } : {}) };
          const check = () =>
            messages !== undefined
              ? checkConversation(messages, this.#options.maxMessageChars)
              : { text: checkText(text, this.#options.maxMessageChars), earlier: undefined };
          const turn = this.#post(id, options, check, false);
          void turn.accepted.then(
            () => sink.accepted(),
            () => {},
          );
          void (async () => {
            for await (const chunk of turn) sink.token(chunk);
          })().catch(() => {});
          return turn.result;
        },
        call: (method, params, signal) => this.#answer(method, isRecord(params) ? params : {}, signal),
        describe: () => ({
          maxAgents: this.#supervisor.maxAgents,
          resident: this.#supervisor.residents.length,
          prefixes: this.#prefixes?.recentKeys(fingerprint, 32) ?? [],
        }),
        handOver: (id) => this.#handOver(id),
        evict: (id) => this.#directory.evict(id, this.#cluster!.notOwner(id)),
      },
      this.#events,
    );
  }

  /** A unary request another node forwarded here. */
  async #answer(method: string, params: Record<string, unknown>, signal: AbortSignal): Promise<unknown> {
    const id = params.id as string;
    switch (method) {
      case "spawn":
        return this.#spawnHere(params.spec as SpawnOptions, signal, false);
      case "get":
        return this.#routed(id, false, signal, () => this.#directory.info(id));
      case "history":
        return this.#routed(id, false, signal, () => this.#historyHere(id, params.options as HistoryOptions));
      case "passivate":
        return this.#routed(id, false, signal, () => this.#passivateHere(id)).then(() => ({}));
      case "remove":
        return this.#routed(id, false, signal, () => this.#removeHere(id)).then(() => ({}));
      default:
        throw new TypeError(`Unknown cluster request ${JSON.stringify(method)}`);
    }
  }

  /**
   * Runs `local` where agent `id` is owned: here without a cluster, else through the cluster's routing
   * (forwarded as the unary request `method` when another node owns it).
   */
  #routed<T>(
    id: string,
    forward: boolean,
    signal: AbortSignal | undefined,
    local: () => Promise<T>,
    method?: string,
    params?: Record<string, unknown>,
  ): Promise<T> {
    const cluster = this.#cluster;
    if (!cluster) return local();
    return cluster.run(id, { forward, signal }, local, (node) => cluster.forwardCall(node, method!, { id, ...params }, signal) as Promise<T>);
  }

  /** Drain (cluster): passivates agent `id` here and drops it from memory, its new messages waiting. */
  async #handOver(id: string): Promise<void> {
    const agent = this.#directory.peek(id);
    if (!agent) return;
    // No new message enters (the cluster's handover gate); the queued ones finish first, so the
    // passivation always finds room in the mailbox.
    await agent.mailbox.drain();
    await agent.mailbox.post(() => this.#supervisor.passivate(agent));
    await this.#directory.evict(id, this.#cluster!.notOwner(id));
  }

  /** This node in the cluster: members, their capacity and agents; undefined without a cluster. */
  async clusterStatus(): Promise<ClusterStatus | undefined> {
    this.#assertOpen();
    return this.#cluster?.status();
  }

  /** This node's name in the cluster, or undefined without one. */
  get node(): string | undefined {
    return this.#cluster?.node;
  }

  /**
   * Cluster: hands every agent this node owns over to the others (passivated into the shared store,
   * leases released) and takes no new ones; this node keeps answering by forwarding. Without a cluster
   * it passivates every resident agent.
   */
  async drain(): Promise<void> {
    this.#assertOpen();
    if (this.#cluster) await this.#cluster.drain();
    else await Promise.all(this.#supervisor.residents.map((agent) => agent.mailbox.post(() => this.#supervisor.passivate(agent))));
  }

  /** The loaded model: engine, name, fingerprint, sizes. */
  get model(): ModelInfo {
    return this.#host.info;
  }

  /** Most agents resident at once: `maxAgents`, or fewer where `kvBudgetBytes` capped llama.cpp's sequences. */
  get maxAgents(): number {
    return this.#supervisor.maxAgents;
  }

  /** Names of the registered behaviours (what `spawn({ behaviour })` accepts). */
  get behaviours(): string[] {
    return this.#behaviours.names();
  }

  /** Registers `listener` for `event`; returns the function that unsubscribes it. */
  subscribe<E extends keyof RuntimeEvents>(event: E, listener: (...args: RuntimeEvents[E]) => void): () => void {
    this.#events.on(event, listener as never);
    return () => this.#events.off(event, listener as never);
  }

  /**
   * Runtime events as an async iterable, filtered by agent and type, with a bounded buffer: a consumer
   * that falls `bufferSize` events behind gets a final `stream:dropped` event instead of slowing the runtime.
   */
  events(options: EventStreamOptions = {}): EventStream {
    this.#assertOpen();
    if (!this.#cluster) return new EventStream(this.#events, options, this.#clock);
    // Every node's events (each with the `node` it happened on), relayed over NATS.
    const { emitter, close } = this.#cluster.openEvents();
    try {
      const stream = new EventStream(emitter, options, this.#clock);
      void stream.ended.then(close);
      return stream;
    } catch (error) {
      close();
      throw error;
    }
  }

  #assertOpen(): void {
    if (this.#closed || this.#destroyed) throw new AgentRuntimeError("ERR_RUNTIME_CLOSED");
  }

  /** Creates an agent, persists it, and evaluates its system prompt once. */
  async spawn(spec: SpawnOptions, options: { signal?: AbortSignal } = {}): Promise<AgentInfo> {
    this.#assertOpen();
    const signal = validateSignal(options?.signal);
    signal?.throwIfAborted();
    return this.#spawnHere(spec, signal, true);
  }

  /** Spawn, placed on a node of the cluster (`forward`) or here. */
  async #spawnHere(spec: SpawnOptions, signal: AbortSignal | undefined, forward: boolean): Promise<AgentInfo> {
    const checked = checkSpawn(spec, this.#options.maxMessageChars);
    const cluster = this.#cluster;
    if (!cluster) return this.#spawnLocal(checked, signal);
    const prefix = this.#prefixes && PrefixCache.key(this.#host.info.fingerprint, checked.systemPrompt);
    return cluster.run(
      checked.id,
      { forward, signal, prefix, create: true },
      () => this.#spawnLocal(checked, signal),
      (node) => cluster.forwardCall(node, "spawn", { spec: { ...spec, signal: undefined } }, signal) as Promise<AgentInfo>,
    );
  }

  async #spawnLocal(checked: ReturnType<typeof checkSpawn>, signal: AbortSignal | undefined): Promise<AgentInfo> {
    const { id, role, systemPrompt, sampling, behaviour, contextPolicy } = checked;
    const resolvedBehaviour = this.#behaviours.lookup(behaviour ?? this.#defaultBehaviour);
    const now = this.#clock.now();
    const agent = this.#directory.create({
      id,
      role,
      systemPrompt,
      sampling,
      behaviour: resolvedBehaviour,
      history: [],
      createdAt: now,
      lastUsed: now,
      contextPolicy,
    });
    // Claimed before the first await inside, so a concurrent spawn of the same id fails with ERR_AGENT_EXISTS.
    await this.#directory.claim(agent);
    try {
      // The record is written from the mailbox, so a remove() of this agent waits for it instead of racing it.
      await agent.mailbox.post(async () => {
        await this.#store.write(agent.toRecord(now));
        await this.#supervisor.withResident(agent, signal, async () => {});
      });
    } catch (error) {
      // Unless a remove() already took it over, undo the spawn (and never touch a later agent of this id).
      if (this.#directory.holds(agent)) await this.#directory.forget(agent).catch(() => {});
      throw error;
    } finally {
      this.#directory.release(agent);
    }
    agent.log.debug({ role }, "spawned");
    this.#emit("agent:spawned", { id, role, ...agent.lastLoad });
    return agent.info();
  }

  /**
   * Sends `text` to agent `id`. Iterate the returned {@link Turn} for tokens, or await `turn.result`.
   * A turn is *acknowledged* when `result` resolves (and `agent:turn-end` fires): its history is then
   * durable in the store and survives a crash. A rejected turn leaves the history unchanged.
   */
  send(id: string, text: string, options: SendOptions = {}): Turn {
    return this.#post(id, options, () => ({ text: checkText(text, this.#options.maxMessageChars), earlier: undefined }));
  }

  /**
   * Sends a whole conversation, as stateless (OpenAI-style) clients do: `messages` are user and assistant
   * messages ending with the new user message. Inside the agent's mailbox, when the earlier messages
   * differ from the agent's history they replace it (the engine then rewinds the cache to the common
   * token prefix instead of starting over); when they are equal this is `send`. The new history is
   * persisted with the turn; a rejected turn leaves the old history in place.
   */
  sendConversation(id: string, messages: readonly ChatMessage[], options: SendOptions = {}): Turn {
    return this.#post(id, options, () => checkConversation(messages, this.#options.maxMessageChars));
  }

  /** Sends `text` and resolves with the whole reply. */
  ask(id: string, text: string, options: SendOptions = {}): Promise<TurnResult> {
    return this.send(id, text, options).result;
  }

  /** The turn path shared by send and sendConversation: checks, then the agent's mailbox, then residency. */
  #post(id: string, options: SendOptions, check: () => { text: string; earlier: ChatMessage[] | undefined }, forward = true): Turn {
    const turnId = ++this.#turnCounter;
    return new Turn(async (push, accept) => {
      this.#assertOpen();
      const { signal, maxTokens } = checkSendOptions(options, this.#options.maxTokens);
      const { text, earlier } = check();
      const cluster = this.#cluster;
      if (!cluster) return this.#turnHere(id, { text, earlier, turnId, maxTokens, signal, push, accept });
      return cluster.run(
        id,
        { forward, signal },
        () =>
          this.#turnHere(id, { text, earlier, turnId, maxTokens, signal, push, accept }).catch((error: unknown) => {
            // Another node took the agent over (this one was paused or cut off): this copy is stale.
            if (isAgentRuntimeError(error, "ERR_LEASE_LOST")) cluster.leaseLost(id);
            throw error;
          }),
        (node) => {
          // Another node owns it: a copy still in memory here (this node was paused past its lease) is stale.
          if (this.#directory.peek(id)) cluster.leaseLost(id);
          const request: ForwardedTurn = { id, maxTokens, ...(earlier ? { messages: [...earlier, { role: "user", content: text }] } : { text }) };
          return cluster.forwardTurn(node, request, { onAccepted: accept, onToken: push, signal }) as Promise<TurnResult>;
        },
      );
    });
  }

  /** A turn of agent `id` run here: its mailbox, then residency, then the engine. */
  #turnHere(
    id: string,
    turn: {
      text: string;
      earlier: ChatMessage[] | undefined;
      turnId: number;
      maxTokens: number;
      signal: AbortSignal | undefined;
      push: (text: string) => void;
      accept: () => void;
    },
  ): Promise<TurnResult> {
    const { text, earlier, turnId, maxTokens, signal, push, accept } = turn;
    const queuedAt = this.#clock.now();
    const context = { store: this.#store, clock: this.#clock, emit: this.#emit, node: this.#cluster?.node };
    const request = { text, turnId, maxTokens, signal, queuedAt, push };
    return this.#directory.use(id, (agent) => {
      // Checked with no await before the post: a handover (drain) begun meanwhile sends it elsewhere.
      if (this.#cluster && !this.#cluster.admits(id)) throw this.#cluster.notOwner(id);
      return agent.mailbox.post(
        () =>
          this.#supervisor.withResident(agent, signal, async () => {
            const engine = await this.#host.engine();
            const turn = () => agent.turn({ ...context, engine }, request);
            const same =
              !earlier ||
              (earlier.length === agent.history.length &&
                earlier.every((m, i) => m.role === agent.history[i]!.role && m.content === agent.history[i]!.content));
            return same ? turn() : agent.withHistory(earlier, turn);
          }),
        { signal, details: { id }, onQueued: accept },
      );
    });
  }

  /** Passivates agent `id` now (after its queued messages). */
  async passivate(id: string): Promise<void> {
    this.#assertOpen();
    await this.#routed(id, true, undefined, () => this.#passivateHere(id), "passivate");
  }

  async #passivateHere(id: string): Promise<void> {
    await this.#directory.use(id, (agent) => agent.mailbox.post(() => this.#supervisor.passivate(agent)));
  }

  /** A snapshot of agent `id` (its record is read when it is not in memory; in a cluster, from its owner). */
  async get(id: string): Promise<AgentInfo> {
    this.#assertOpen();
    return this.#routed(id, true, undefined, () => this.#directory.info(id), "get");
  }

  /**
   * A page of agent `id`'s history, oldest first: messages `[start, end)` where `end` is `before`
   * (default: the newest) and the page holds at most `limit` (default 50) messages.
   */
  async history(id: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    this.#assertOpen();
    checkHistoryOptions(options);
    return this.#routed(id, true, undefined, () => this.#historyHere(id, options), "history", { options });
  }

  async #historyHere(id: string, options: HistoryOptions | undefined): Promise<HistoryPage> {
    const { before, limit } = checkHistoryOptions(options ?? {});
    return this.#directory.use(id, (agent) => {
      const end = Math.min(before ?? agent.history.length, agent.history.length);
      const start = Math.max(0, end - limit);
      return { id, messages: agent.history.slice(start, end), start, total: agent.history.length };
    });
  }

  /** A page of agents in id order, `limit` (default 100, at most 1000) after `after`, filtered by id `prefix`. */
  async list(options: ListOptions = {}): Promise<AgentPage> {
    this.#assertOpen();
    return this.#directory.list(options);
  }

  /**
   * Deletes the agent, its cache and its stored state. Waits for its running message (and a passivation
   * in progress) to finish; until it resolves, the id cannot be spawned again.
   */
  async remove(id: string): Promise<void> {
    this.#assertOpen();
    await this.#routed(id, true, undefined, () => this.#removeHere(id), "remove");
  }

  async #removeHere(id: string): Promise<void> {
    await this.#directory.use(id, (agent) => this.#directory.forget(agent));
    this.#emit("agent:removed", { id });
  }

  /**
   * Model bytes, per-agent cache tokens and bytes (memory and disk), and totals. Lists the agents in
   * memory, or the agents named in `agents` (read from the store when not in memory: a passivated agent
   * holds no memory). `totals.storedAgents` counts every agent in the store.
   */
  async memory(options: { agents?: readonly string[] } = {}): Promise<MemoryReport> {
    this.#assertOpen();
    const engine = await this.#host.engine();
    // Named agents that do not exist (or were removed meanwhile) are left out.
    const named = options.agents && (await Promise.all(options.agents.map((id) => this.#directory.use(id, (agent) => agent).catch(() => undefined))));
    const agents = named ? named.filter((agent): agent is Agent => agent !== undefined) : this.#directory.active;
    const resident = new Set(this.#supervisor.residents.filter((agent) => agent.status.state === "resident").map((a) => a.id));
    const stats = await engine.stats([...resident]);
    const disk = await Promise.all(agents.map((agent) => this.#store.bytesOnDisk(agent.id)));
    const budget = { budgetBytes: this.#supervisor.kvBudgetBytes, usedBytes: this.#supervisor.kvUsedBytes };
    return memoryReport(engine.info, agents, resident, stats, disk, await this.#store.count(), budget);
  }

  /** Finishes queued messages, passivates every resident agent, stops the worker. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      await this.#directory.settled();
      await Promise.all(this.#directory.active.map((agent) => agent.mailbox.drain()));
      await Promise.allSettled(this.#directory.removals);
      // A cluster node hands its agents over (their caches uploaded, leases released) before it leaves.
      await this.#cluster?.drain();
      await this.#supervisor.passivateAll();
      await this.#host.dispose();
      await this.#store.dispose();
      await this.#cluster?.dispose();
    })();
    return this.#closed;
  }

  /** Stops now: rejects queued messages and stops the worker without saving caches. Idempotent. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    const error = new AgentRuntimeError("ERR_RUNTIME_CLOSED");
    for (const agent of this.#directory.active) agent.mailbox.rejectPending(error);
    await this.#supervisor.dispose();
    await this.#host.dispose();
    await this.#store.dispose();
    await this.#cluster?.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
