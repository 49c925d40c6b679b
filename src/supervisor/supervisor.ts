import type { Agent } from "../actor/agent.js";
import type { Clock } from "../clock.js";
import { AgentRuntimeError, isAgentRuntimeError } from "../errors.js";
import type { EmitEvent } from "../events.js";
import { kvReservedBytes } from "../engines/engine.js";
import { checkKvDescriptor } from "../store/kv-descriptor.js";
import type { PrefixCache } from "../store/prefix-cache.js";
import type { StagedKv, StateStore } from "../store/state-store.js";
import { writeFailure } from "../store/write-failure.js";
import type { EngineHost } from "../worker/engine-host.js";
import { HostTier, type HostTierStats } from "./host-tier.js";
import { ResidentSlots } from "./resident-slots.js";

const never = new AbortController().signal;

export interface SupervisorOptions {
  maxAgents: number;
  host: EngineHost;
  store: StateStore;
  prefixes: PrefixCache | undefined;
  clock: Clock;
  emit: EmitEvent;
  /** Most KV bytes resident agents may hold together (see AgentRuntimeOptions.kvBudgetBytes). Default: no budget. */
  kvBudgetBytes?: number | undefined;
  /** Bytes of passivated agents' KV states that may wait for their commit to the store (host tier). 0: none. */
  hostCacheBytes?: number | undefined;
}

/**
 * Keeps at most `maxAgents` agents resident (holding a KV sequence in the engine), and with `kvBudgetBytes` at
 * most that many bytes of their KV caches, each charged what the engine reserves for its tokens (the whole
 * context on llama.cpp, 256-token steps on MLX; see kvReservedBytes): admits an agent by
 * passivating the least recently used idle one (KV state, then the record that names it), and loads
 * the admitted agent from its saved state, or from its history when the state is missing or unusable.
 * When the worker crashes every resident's cache is gone: they become passivated, to be rebuilt.
 *
 * With `hostCacheBytes`, passivation returns once the engine has saved the state to a staged file (the
 * page cache) and the {@link HostTier} commits it in the background; until then the agent's durable
 * state is its history (see host-tier.ts).
 */
export class Supervisor {
  readonly #slots: ResidentSlots<Agent>;
  readonly #host: EngineHost;
  readonly #store: StateStore;
  readonly #prefixes: PrefixCache | undefined;
  readonly #clock: Clock;
  readonly #emit: EmitEvent;
  readonly #tier: HostTier | undefined;
  /** Passivated agents whose saved state is not yet committed to the store. */
  readonly #unwritten = new Map<string, Agent>();

  constructor(options: SupervisorOptions) {
    this.#host = options.host;
    this.#store = options.store;
    this.#prefixes = options.prefixes;
    this.#clock = options.clock;
    this.#emit = options.emit;
    if (options.hostCacheBytes) {
      this.#tier = new HostTier({
        maxBytes: options.hostCacheBytes,
        store: options.store,
        now: () => this.#clock.now(),
        onDurable: (id, kv) => {
          const agent = this.#unwritten.get(id);
          this.#unwritten.delete(id);
          if (agent && !agent.removed) agent.kv = kv;
        },
        onWriteFailed: (id, error) => {
          const agent = this.#unwritten.get(id);
          this.#unwritten.delete(id);
          if (!agent || agent.removed) return;
          // Not an agent failure: its history is durable, and the next load rebuilds the cache from it.
          const failure = writeFailure(error, `Committing the saved cache of ${id} failed`, id);
          agent.log.warn({ err: failure }, "background commit of the saved cache failed; it will be rebuilt from history");
          this.#emit("agent:error", { id, error: failure });
        },
      });
    }
    this.#slots = new ResidentSlots<Agent>({
      maxAgents: options.maxAgents,
      budgetBytes: options.kvBudgetBytes,
      passivate: (agent) => this.#passivate(agent),
    });
    this.#host.on("crashed", () => {
      for (const agent of this.#slots.releaseAll()) agent.lostCache();
    });
  }

  get maxAgents(): number {
    return this.#slots.maxAgents;
  }

  /** The KV budget in bytes; Infinity without one. */
  get kvBudgetBytes(): number {
    return this.#slots.budgetBytes;
  }

  /** KV bytes charged to resident agents: what the engine reserves for their caches (see kvReservedBytes). */
  get kvUsedBytes(): number {
    return this.#slots.usedBytes;
  }

  /** Agents holding a slot (resident, or on their way in or out). */
  get residents(): readonly Agent[] {
    return this.#slots.residents;
  }

  /** Runs `work` with the agent pinned and resident (passivating another agent if needed). */
  async withResident<T>(agent: Agent, signal: AbortSignal | undefined, work: () => Promise<T>): Promise<T> {
    if (agent.removed) throw agent.removedError();
    if (agent.status.state === "failed") throw agent.status.error;
    signal?.throwIfAborted();
    agent.pins++;
    const budgeted = this.#slots.budgetBytes !== Infinity;
    try {
      if (await this.#slots.admit(agent, signal, budgeted ? this.#expectedBytes(agent) : 0)) {
        try {
          const tokens = await this.#load(agent, signal);
          if (budgeted) await this.#chargeLoaded(agent, tokens);
        } catch (error) {
          await this.unload(agent);
          throw error;
        }
      }
      const turn = agent.lastTurn;
      try {
        const result = await work();
        // A turn grew the cache: charge it what the engine now reserves (it never shrinks while resident).
        if (budgeted && agent.lastTurn !== turn && agent.lastTurn) {
          const bytes = kvReservedBytes(this.#host.info, agent.lastTurn.cacheTokens);
          this.#slots.charge(agent, Math.max(bytes, this.#slots.charged(agent)));
        }
        return result;
      } catch (error) {
        // The engine failed mid-turn: the sequence may be broken. Drop it and its saved copy, so the
        // next message rebuilds the cache from the history.
        if (isAgentRuntimeError(error, "ERR_ENGINE_FAILED")) {
          await this.#forgetSavedCache(agent);
          await this.unload(agent);
        }
        throw error;
      }
    } finally {
      agent.pins--;
      agent.lastUsed = this.#clock.now();
      this.#slots.notify();
      // Back within the budget (a turn may have grown past it) before the caller hears back.
      if (budgeted) await this.#slots.fit();
    }
  }

  /**
   * What an agent's cache should take once loaded, without asking the engine: its saved cache's tokens, else
   * its last turn's, else one allocation step (a new agent, or one whose cache is rebuilt from history).
   */
  #expectedBytes(agent: Agent): number {
    return kvReservedBytes(this.#host.info, agent.kv?.tokens ?? agent.lastTurn?.cacheTokens ?? 0);
  }

  /** Charges a loaded agent its real cache; ERR_KV_BUDGET when it alone is over the budget, else others make room. */
  async #chargeLoaded(agent: Agent, tokens: number): Promise<void> {
    const bytes = kvReservedBytes(this.#host.info, tokens);
    if (bytes > this.#slots.budgetBytes) throw this.#slots.oversize(agent, bytes);
    this.#slots.charge(agent, bytes);
    await this.#slots.fit();
  }

  /** Passivates `agent` now if it is resident (the caller runs this inside the agent's mailbox). */
  passivate(agent: Agent): Promise<void> {
    return this.#slots.evict(agent);
  }

  /**
   * Passivates every resident (close), then commits every state still waiting. Failures leave that
   * agent resident and are logged by #passivate.
   */
  async passivateAll(): Promise<void> {
    for (const agent of this.#slots.residents) await this.#slots.evict(agent).catch(() => {});
    await this.#tier?.flush();
    await this.dispose();
  }

  /** Stops background commits (the running one is awaited) and deletes uncommitted files. Idempotent. */
  async dispose(): Promise<void> {
    await this.#tier?.dispose();
  }

  /** The host tier's figures; undefined without `hostCacheBytes`. */
  get hostTier(): Readonly<HostTierStats> | undefined {
    return this.#tier?.stats;
  }

  /**
   * Resolves once no passivation of `agent` is running, nor a background write of its state; pin it
   * first so that none starts after.
   */
  async settled(agent: Agent): Promise<void> {
    await this.#slots.settled(agent);
    await this.#tier?.settled(agent.id);
  }

  /** Frees an admitted agent's sequence without saving it (a failed load, a broken cache, removal). */
  async unload(agent: Agent): Promise<void> {
    const engine = await this.#host.engine().catch(() => undefined);
    // Closed before the slot is released: the next admission may open a sequence at once.
    await engine?.closeSequence(agent.id).catch(() => {});
    this.#slots.release(agent);
    agent.lostCache();
    // Its staged state may be what broke (or the agent is going): the next load uses the store or the history.
    this.#tier?.forget(agent.id);
    this.#unwritten.delete(agent.id);
  }

  /**
   * Drops the agent's saved cache, in memory and in the store (the agent leaves memory when idle and is
   * read back from the store: a refused cache must not be tried again). Best effort: a failed commit
   * leaves a descriptor the next load refuses again.
   */
  async #forgetSavedCache(agent: Agent): Promise<void> {
    if (!agent.kv) return;
    agent.kv = undefined;
    await this.#store
      .setKv(agent.id, undefined, this.#clock.now())
      .catch((error: unknown) => agent.log.warn({ err: error }, "could not drop the saved cache"));
  }

  /** Gives an admitted agent its cache: from its state file when valid, else by re-evaluating its context. */
  async #load(agent: Agent, signal: AbortSignal | undefined): Promise<number> {
    const engine = await this.#host.engine();
    const started = this.#clock.now();
    const pending = await this.#tier?.take(agent.id, engine.info.fingerprint);
    const wasStored = agent.kv !== undefined || agent.history.length > 0 || pending !== undefined;
    agent.moveTo("rehydrating");
    await engine.openSequence(agent.id);
    let source: "state" | "history" = "history";
    let tokens = 0;
    if (pending) {
      try {
        tokens = (await engine.loadState(agent.id, pending)).tokens;
        source = "state";
        // Its commit is skipped: no write of the agent's files runs while it is resident.
        this.#tier!.loaded(agent.id);
        this.#unwritten.delete(agent.id);
      } catch (error) {
        if (isAgentRuntimeError(error, "ERR_WORKER_CRASHED")) throw error;
        agent.log.warn({ err: error }, "staged cache refused; trying the store");
        this.#tier!.forget(agent.id);
        await engine.closeSequence(agent.id);
        await engine.openSequence(agent.id);
      }
    }
    if (agent.kv && source === "history") {
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
        this.#emit("agent:error", { id: agent.id, error: reason });
        await this.#forgetSavedCache(agent);
        // A failed load may leave partial cells behind: start from an empty sequence.
        await engine.closeSequence(agent.id);
        await engine.openSequence(agent.id);
      }
    }
    if (source === "history") {
      // Agents sharing a system prompt start from its saved state rather than evaluating it again.
      const shared = (await this.#prefixes?.load(engine, agent.id, agent.systemPrompt)) ?? 0;
      const counts = await engine.prefill(agent.id, agent.context(), signal ?? never);
      tokens = counts.cacheTokens;
      agent.lastLoad = { sharedPrefixTokens: shared, evaluatedTokens: counts.evaluatedTokens };
      if (shared === 0 && agent.history.length === 0) await this.#prefixes?.remember(engine, agent.id, agent.systemPrompt, tokens);
    }
    agent.moveTo("resident");
    if (wasStored) {
      const ms = this.#clock.now() - started;
      agent.log.debug({ tokens, ms, source }, "rehydrated");
      this.#emit("agent:rehydrated", { id: agent.id, tokens, ms, source });
    }
    return tokens;
  }

  /**
   * A passivation refused because another node owns the agent now (cluster): its cache here is stale and
   * worth nothing, so its sequence is freed without a save and the eviction succeeds (the slot goes to
   * the agent being admitted); the `agent:error` event lets the runtime drop the stale copy.
   */
  async #dropLostLease(agent: Agent, error: AgentRuntimeError): Promise<void> {
    const engine = await this.#host.engine().catch(() => undefined);
    await engine?.closeSequence(agent.id).catch(() => {});
    agent.lostCache();
    agent.log.warn({ err: error }, "lease lost: the agent's cache here is dropped without a save");
    this.#emit("agent:error", { id: agent.id, error });
  }

  /** Saves an agent's cache, then the record naming it, and frees its sequence. */
  async #passivate(agent: Agent): Promise<void> {
    return this.#tier ? this.#passivateDeferred(agent, this.#tier) : this.#passivateToStore(agent);
  }

  async #passivateToStore(agent: Agent): Promise<void> {
    const engine = await this.#host.engine();
    const started = this.#clock.now();
    agent.moveTo("passivating");
    const previousKv = agent.kv;
    let staged: StagedKv | undefined;
    try {
      staged = await this.#store.stageKv(agent.id, engine.info.stateFileExtension);
      const saved = await engine.saveState(agent.id, staged.path);
      const committed = await staged.commit();
      // On a full disk llama.cpp can lose its last buffered block without an error: check what landed.
      if (committed.bytes !== saved.bytes) {
        throw new AgentRuntimeError(
          "ERR_STATE_WRITE_FAILED",
          `The saved cache of ${agent.id} has ${committed.bytes} bytes; the engine wrote ${saved.bytes}`,
          {
            details: { id: agent.id, bytes: committed.bytes, expected: saved.bytes },
          },
        );
      }
      agent.kv = {
        ...committed,
        tokens: saved.tokens,
        fingerprint: engine.info.fingerprint,
        engine: engine.info.engine,
        historyLength: agent.history.length,
      };
      await this.#store.setKv(agent.id, agent.kv, this.#clock.now());
    } catch (error) {
      await staged?.discard();
      agent.kv = previousKv;
      if (isAgentRuntimeError(error, "ERR_LEASE_LOST")) return this.#dropLostLease(agent, error);
      // A worker crash already released every resident: this agent's cache died with the worker.
      const crashed = isAgentRuntimeError(error, "ERR_WORKER_CRASHED");
      if (crashed) agent.lostCache();
      else agent.moveTo("resident");
      const failure = crashed ? error : writeFailure(error, `Passivating ${agent.id} failed`, agent.id);
      agent.log.error({ err: failure }, crashed ? "worker crashed during passivation" : "passivation failed; agent stays resident");
      this.#emit("agent:error", { id: agent.id, error: failure });
      throw failure;
    }
    await engine.closeSequence(agent.id);
    agent.moveTo("passivated");
    const ms = this.#clock.now() - started;
    agent.log.debug({ tokens: agent.kv.tokens, bytes: agent.kv.bytes, ms }, "passivated");
    this.#emit("agent:passivated", { id: agent.id, tokens: agent.kv.tokens, bytes: agent.kv.bytes, ms });
  }

  /**
   * Saves an agent's cache into a staged file and frees its sequence; the commit (fsync, checksum,
   * rename, record pointer) runs in the background (see host-tier.ts).
   */
  async #passivateDeferred(agent: Agent, tier: HostTier): Promise<void> {
    const engine = await this.#host.engine();
    const started = this.#clock.now();
    agent.moveTo("passivating");
    let staged: StagedKv | undefined;
    let bytes: number;
    let tokens: number;
    try {
      staged = await this.#store.stageKv(agent.id, engine.info.stateFileExtension);
      ({ bytes, tokens } = await engine.saveState(agent.id, staged.path));
      const { fingerprint, engine: engineName } = engine.info;
      this.#unwritten.set(agent.id, agent);
      await tier.add({ id: agent.id, staged, bytes, tokens, fingerprint, engine: engineName, historyLength: agent.history.length });
    } catch (error) {
      this.#unwritten.delete(agent.id);
      await staged?.discard();
      if (isAgentRuntimeError(error, "ERR_LEASE_LOST")) return this.#dropLostLease(agent, error);
      const crashed = isAgentRuntimeError(error, "ERR_WORKER_CRASHED");
      if (crashed) agent.lostCache();
      else agent.moveTo("resident");
      const failure = crashed ? error : writeFailure(error, `Passivating ${agent.id} failed`, agent.id);
      agent.log.error({ err: failure }, crashed ? "worker crashed during passivation" : "passivation failed; agent stays resident");
      this.#emit("agent:error", { id: agent.id, error: failure });
      throw failure;
    }
    await engine.closeSequence(agent.id);
    agent.moveTo("passivated");
    // Within hostCacheBytes before the slot is given to another agent (waits for commits if it must).
    await tier.fit();
    const ms = this.#clock.now() - started;
    agent.log.debug({ tokens, bytes, ms, deferred: true }, "passivated");
    this.#emit("agent:passivated", { id: agent.id, tokens, bytes, ms });
  }
}
