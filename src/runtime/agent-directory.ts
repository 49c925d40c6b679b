import type { Logger } from "pino";
import { Agent, type AgentInit } from "../actor/agent.js";
import type { BehaviourRegistry } from "../actor/behaviour-registry.js";
import { validateAgentId } from "../agent-id.js";
import type { Clock } from "../clock.js";
import { AgentRuntimeError, isAgentRuntimeError } from "../errors.js";
import type { EmitEvent } from "../events.js";
import type { ContextPolicy, StateStore } from "../store/state-store.js";
import { storedContextPolicy } from "../actor/context-window.js";
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

/**
 * The runtime's registry of agents by address: who exists, claiming an id at spawn (so concurrent
 * spawns of one id conflict), and forgetting one at removal (until its files are gone, the id stays
 * taken). Agents come from the store on restore with their behaviour resolved by name.
 */
export class AgentDirectory {
  readonly #options: AgentDirectoryOptions;
  readonly #agents = new Map<string, Agent>();
  /** Ids whose removal is still deleting files: the id cannot be spawned again until it is done. */
  readonly #removing = new Map<string, Promise<void>>();

  constructor(options: AgentDirectoryOptions) {
    this.#options = options;
  }

  get agents(): Agent[] {
    return [...this.#agents.values()];
  }

  /** Removals still deleting files. */
  get removals(): Promise<void>[] {
    return [...this.#removing.values()];
  }

  /** Reads every stored agent. One that cannot be used is kept as `failed` (its files untouched). */
  async restore(): Promise<void> {
    const { store, behaviours, log, clock, emit } = this.#options;
    const ids: string[] = [];
    for (let page = await store.list({ limit: 1000 }); ; page = await store.list({ after: page.next, limit: 1000 })) {
      ids.push(...page.ids);
      if (page.next === undefined) break;
    }
    for (const id of ids) {
      try {
        const record = await store.read(id);
        if (!record) continue;
        const behaviour = behaviours.resolve(record.behaviour ?? "conversation");
        const contextPolicy = storedContextPolicy(record.contextPolicy);
        this.#agents.set(id, this.create({ ...record, behaviour, lastUsed: record.updatedAt, contextPolicy }));
      } catch (error) {
        const failure = isAgentRuntimeError(error) ? error : new AgentRuntimeError("ERR_STATE_CORRUPT", `Agent ${id} could not be read`, { cause: error });
        log.child({ agent: id }).warn({ err: failure }, "agent record unusable; agent marked failed");
        const now = clock.now();
        const unusable = { id, role: "", systemPrompt: "", sampling: {}, history: [], createdAt: now, lastUsed: now, failure };
        this.#agents.set(id, this.create({ ...unusable, behaviour: behaviours.resolve("conversation") }));
        emit("agent:error", { id, error: failure });
      }
    }
  }

  /** A new Agent object with the runtime's mailbox capacity, context settings and a child logger. */
  create(init: Omit<AgentInit, "mailboxCapacity" | "log" | "slideTo">): Agent {
    const { mailboxCapacity, slideTo, contextPolicy, log } = this.#options;
    return new Agent({ ...init, contextPolicy: init.contextPolicy ?? contextPolicy, slideTo, mailboxCapacity, log: log.child({ agent: init.id }) });
  }

  require(id: string): Agent {
    const agent = this.#agents.get(validateAgentId(id));
    if (!agent) throw new AgentRuntimeError("ERR_AGENT_NOT_FOUND", `No agent with id ${JSON.stringify(id)}`, { details: { id } });
    return agent;
  }

  /** Takes `agent.id` for a new agent, synchronously; ERR_AGENT_EXISTS or ERR_TOO_MANY_AGENTS otherwise. */
  claim(agent: Agent): void {
    const { id } = agent;
    if (this.#agents.has(id) || this.#removing.has(id)) {
      const why = this.#removing.has(id) ? " (its removal is in progress)" : "";
      throw new AgentRuntimeError("ERR_AGENT_EXISTS", `Agent ${id} already exists${why}`, { details: { id } });
    }
    if (this.#agents.size >= this.#options.maxStoredAgents) {
      throw new AgentRuntimeError("ERR_TOO_MANY_AGENTS", `The store holds ${this.#agents.size} agents, the limit`, {
        details: { limit: this.#options.maxStoredAgents },
      });
    }
    this.#agents.set(id, agent);
  }

  /** Whether `agent` still holds its id (a remove() may have taken it over). */
  holds(agent: Agent): boolean {
    return this.#agents.get(agent.id) === agent;
  }

  /** Takes `agent` out: queued work rejected, running work and passivation awaited, files deleted. */
  forget(agent: Agent): Promise<void> {
    const { store, supervisor } = this.#options;
    agent.markRemoved();
    this.#agents.delete(agent.id);
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
