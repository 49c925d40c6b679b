import type { Logger } from "pino";
import { Agent, type AgentInfo, type AgentInit } from "../actor/agent.js";
import type { BehaviourRegistry } from "../actor/behaviour-registry.js";
import { storedContextPolicy } from "../actor/context-window.js";
import { validateAgentId } from "../agent-id.js";
import type { Clock } from "../clock.js";
import { AgentRuntimeError, isAgentRuntimeError } from "../errors.js";
import type { EmitEvent } from "../events.js";
import type { AgentRecord, ContextPolicy, ListOptions, StateStore } from "../store/state-store.js";
import { writeFailure } from "../store/write-failure.js";
import type { Supervisor } from "../supervisor/supervisor.js";

export interface AgentDirectoryOptions {
  store: StateStore;
  supervisor: Supervisor;
  behaviours: BehaviourRegistry;
  log: Logger;
  clock: Clock;
  emit: EmitEvent;
  mailboxCapacity: number;
  maxStoredAgents: number;
  /** Policy of agents whose spawn or record names none. */
  contextPolicy: ContextPolicy;
  slideTo: number;
}

/** A page of agents, as `list` returns it. */
export interface AgentPage {
  agents: AgentInfo[];
  /** Present when more agents match: pass it as `after` for the next page. */
  next?: string | undefined;
}

/**
 * The runtime's directory of agents by address. The store is the directory: an agent is in memory
 * only while something uses it (a message, a `get`), while it is resident, or while its removal runs;
 * an idle passivated agent is dropped from memory and read back from the store when it is needed
 * again (a virtual actor, as in Orleans). Starting over a store of any size reads nothing.
 *
 * Every use goes through {@link use}, which counts users so that an agent is never dropped while a
 * caller holds it: one id never has two Agent objects.
 */
export class AgentDirectory {
  readonly #options: AgentDirectoryOptions;
  /** Agents in memory, by id. */
  readonly #active = new Map<string, Agent>();
  /** Reads of stored agents in flight (concurrent uses of one id share one read). */
  readonly #loading = new Map<string, Promise<Agent>>();
  /** Spawns checking that their id is free in the store. */
  readonly #claims = new Map<string, Promise<unknown>>();
  /** Ids whose removal is still deleting files: the id cannot be spawned again until it is done. */
  readonly #removing = new Map<string, Promise<void>>();
  readonly #users = new WeakMap<Agent, number>();
  /** Uses in flight (a message on its way into a mailbox, or running). */
  readonly #uses = new Set<Promise<unknown>>();

  constructor(options: AgentDirectoryOptions) {
    this.#options = options;
  }

  /** Agents in memory now (resident, busy, or recently used). */
  get active(): Agent[] {
    return [...this.#active.values()];
  }

  /** Removals still deleting files. */
  get removals(): Promise<void>[] {
    return [...this.#removing.values()];
  }

  /** A new Agent object with the runtime's mailbox capacity, context settings and a child logger. */
  create(init: Omit<AgentInit, "mailboxCapacity" | "log" | "slideTo">): Agent {
    const { mailboxCapacity, slideTo, contextPolicy, log } = this.#options;
    return new Agent({ ...init, contextPolicy: init.contextPolicy ?? contextPolicy, slideTo, mailboxCapacity, log: log.child({ agent: init.id }) });
  }

  /**
   * Runs `work` with agent `id` in memory (read from the store if needed; ERR_AGENT_NOT_FOUND when
   * none exists). The agent is not dropped from memory before `work` settles.
   */
  use<T>(id: string, work: (agent: Agent) => Promise<T> | T): Promise<T> {
    const using = (async () => {
      const agent = await this.#acquire(validateAgentId(id));
      try {
        // Removed (or evicted) while this caller waited for it: as if it had never been found here.
        if (agent.removed) throw agent.goneError ?? notFound(id);
        return await work(agent);
      } finally {
        this.#users.set(agent, (this.#users.get(agent) ?? 1) - 1);
        this.retireIfIdle(agent.id);
      }
    })();
    this.#uses.add(using);
    void using.catch(() => {}).finally(() => this.#uses.delete(using));
    return using;
  }

  /** Resolves once every use begun so far has settled (close waits for the messages already sent). */
  async settled(): Promise<void> {
    while (this.#uses.size > 0) await Promise.allSettled([...this.#uses]);
  }

  /** Drops agent `id` from memory if nothing holds it and it is not resident. Its state is in the store. */
  retireIfIdle(id: string): void {
    const agent = this.#active.get(id);
    if (!agent || agent.removed || (this.#users.get(agent) ?? 0) > 0 || agent.pins > 0) return;
    if (agent.mailbox.busy || agent.mailbox.pending > 0) return;
    const state = agent.status.state;
    if (state === "passivated" || state === "failed") this.#active.delete(id);
  }

  /** The agent, in memory and counted as used; the caller must release it (see `use`). */
  async #acquire(id: string): Promise<Agent> {
    for (;;) {
      const active = this.#active.get(id);
      if (active) {
        // Counted before this function returns: nothing can drop the agent in between.
        this.#users.set(active, (this.#users.get(active) ?? 0) + 1);
        return active;
      }
      const claim = this.#claims.get(id);
      if (claim) {
        await claim.catch(() => {});
        continue;
      }
      if (this.#removing.has(id)) throw notFound(id);
      let loading = this.#loading.get(id);
      if (!loading) {
        loading = this.#load(id);
        this.#loading.set(id, loading);
        void loading.catch(() => {}).finally(() => this.#loading.delete(id));
      }
      await loading;
    }
  }

  /** Reads a stored agent into memory. One that cannot be used is kept as `failed` (its files untouched). */
  async #load(id: string): Promise<Agent> {
    const { store, log, emit } = this.#options;
    let agent: Agent;
    try {
      const record = await store.read(id);
      if (!record) throw notFound(id);
      agent = this.#fromRecord(record);
    } catch (error) {
      if (isAgentRuntimeError(error, "ERR_AGENT_NOT_FOUND")) throw error;
      const failure = isAgentRuntimeError(error)
        ? error
        : new AgentRuntimeError("ERR_STATE_CORRUPT", `Agent ${id} could not be read`, { cause: error });
      log.child({ agent: id }).warn({ err: failure }, "agent record unusable; agent marked failed");
      agent = this.#unusable(id, failure);
      emit("agent:error", { id, error: failure });
    }
    // A spawn or another load may not have put one in meanwhile: reads of one id are shared, spawns wait.
    if (!this.#active.has(id) && !this.#removing.has(id)) this.#active.set(id, agent);
    return agent;
  }

  #fromRecord(record: AgentRecord): Agent {
    const behaviour = this.#options.behaviours.resolve(record.behaviour ?? "conversation");
    return this.create({ ...record, behaviour, lastUsed: record.updatedAt, contextPolicy: storedContextPolicy(record.contextPolicy) });
  }

  #unusable(id: string, failure: AgentRuntimeError): Agent {
    const now = this.#options.clock.now();
    const behaviour = this.#options.behaviours.resolve("conversation");
    return this.create({ id, role: "", systemPrompt: "", sampling: {}, history: [], createdAt: now, lastUsed: now, failure, behaviour });
  }

  /** A snapshot of agent `id` without keeping it in memory (from memory when it is there). */
  async info(id: string): Promise<AgentInfo> {
    return this.use(id, (agent) => agent.info());
  }

  /** A page of agents in id order; agents not in memory are described from their records. */
  async list(options: ListOptions = {}): Promise<AgentPage> {
    const page = await this.#options.store.list(options);
    const agents = await Promise.all(
      page.ids.map(async (id) => {
        const active = this.#active.get(id);
        if (active) return active.info();
        try {
          const record = await this.#options.store.read(id);
          return record ? this.#fromRecord(record).info() : undefined;
        } catch (error) {
          const failure = isAgentRuntimeError(error)
            ? error
            : new AgentRuntimeError("ERR_STATE_CORRUPT", `Agent ${id} could not be read`, { cause: error });
          return this.#unusable(id, failure).info();
        }
      }),
    );
    return { agents: agents.filter((info): info is AgentInfo => info !== undefined), ...(page.next !== undefined ? { next: page.next } : {}) };
  }

  /**
   * Takes `agent.id` for a new agent: ERR_AGENT_EXISTS when it is in memory, being removed, being
   * claimed, or stored; ERR_TOO_MANY_AGENTS when the store is full. Concurrent claims of one id: one wins.
   */
  async claim(agent: Agent): Promise<void> {
    const { id } = agent;
    const exists = (why = "") => new AgentRuntimeError("ERR_AGENT_EXISTS", `Agent ${id} already exists${why}`, { details: { id } });
    if (this.#removing.has(id)) throw exists(" (its removal is in progress)");
    if (this.#active.has(id) || this.#claims.has(id) || this.#loading.has(id)) throw exists();
    const { store, maxStoredAgents } = this.#options;
    const check = (async () => {
      if (await store.has(id)) throw exists();
      if (Number.isFinite(maxStoredAgents)) {
        const count = await store.count();
        if (count >= maxStoredAgents) {
          throw new AgentRuntimeError("ERR_TOO_MANY_AGENTS", `The store holds ${count} agents, the limit`, { details: { limit: maxStoredAgents } });
        }
      }
    })();
    this.#claims.set(id, check);
    try {
      await check;
    } finally {
      this.#claims.delete(id);
    }
    this.#active.set(id, agent);
    this.#users.set(agent, 1);
  }

  /** Ends the use a successful `claim` began (the spawn is over). */
  release(agent: Agent): void {
    this.#users.set(agent, Math.max(0, (this.#users.get(agent) ?? 1) - 1));
    this.retireIfIdle(agent.id);
  }

  /** Whether `agent` still holds its id (a remove() may have taken it over). */
  holds(agent: Agent): boolean {
    return this.#active.get(agent.id) === agent;
  }

  /** The agent if it is in memory now (no read, not counted as a use). */
  peek(id: string): Agent | undefined {
    return this.#active.get(id);
  }

  /**
   * Drops agent `id` from memory without touching the store (cluster: another node owns it now, or is
   * about to). Its waiting messages fail with `error`, the running one finishes, its cache is freed
   * without a save; the next use reads it from the store again.
   */
  async evict(id: string, error: AgentRuntimeError): Promise<void> {
    const agent = this.#active.get(id);
    if (!agent || agent.removed) return;
    agent.markRemoved(error);
    this.#active.delete(id);
    await agent.mailbox.drain();
    agent.pins++;
    await this.#options.supervisor.settled(agent);
    await this.#options.supervisor.unload(agent);
  }

  /** Takes `agent` out: queued work rejected, running work and passivation awaited, files deleted. */
  forget(agent: Agent): Promise<void> {
    const { store, supervisor } = this.#options;
    agent.markRemoved();
    this.#active.delete(agent.id);
    const forgetting = (async () => {
      await agent.mailbox.drain();
      // Pinned for good: no passivation starts now, and one already saving it is awaited. Otherwise
      // its record write would land after the files are deleted and bring the agent back on restart.
      agent.pins++;
      await supervisor.settled(agent);
      await supervisor.unload(agent);
      await store.remove(agent.id).catch((error: unknown) => {
        throw writeFailure(error, `Could not delete the stored state of ${agent.id}`, agent.id);
      });
    })();
    this.#removing.set(agent.id, forgetting);
    void forgetting.catch(() => {}).finally(() => this.#removing.delete(agent.id));
    return forgetting;
  }
}

function notFound(id: string): AgentRuntimeError {
  return new AgentRuntimeError("ERR_AGENT_NOT_FOUND", `No agent with id ${JSON.stringify(id)}`, { details: { id } });
}
