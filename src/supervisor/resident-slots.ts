import { AgentRuntimeError } from "../errors.js";

/** What the supervisor needs to know about an agent. */
export interface Supervised {
  readonly id: string;
  /** > 0 while a turn (or spawn, or rehydration) uses the agent: it must not be passivated. */
  readonly pins: number;
  /** Clock time of the agent's last use; the smallest idle one is passivated first. */
  readonly lastUsed: number;
}

export interface ResidentSlotsOptions<A extends Supervised> {
  /** Most agents resident (holding a KV sequence) at once. */
  maxAgents: number;
  /**
   * Most bytes the residents may be charged together (their KV caches, as the caller counts them with
   * {@link ResidentSlots.charge}). Default: no limit, only `maxAgents`.
   */
  budgetBytes?: number | undefined;
  /** Saves `agent` to the store and frees its sequence; rejects (agent stays resident) on failure. */
  passivate(agent: A): Promise<void>;
}

/**
 * The supervisor's bookkeeping: at most `maxAgents` resident slots, and with `budgetBytes` at most that many
 * bytes charged to residents. Admitting one more passivates the least recently used *idle* resident until
 * both fit; when every resident is busy, admission waits until one goes idle. Pure and generic (no engine,
 * no store), so LRU order is unit-tested without threads.
 */
export class ResidentSlots<A extends Supervised> {
  readonly maxAgents: number;
  /** Infinity without a budget. */
  readonly budgetBytes: number;
  readonly #options: ResidentSlotsOptions<A>;
  readonly #residents = new Set<A>();
  /** Bytes charged to each resident. */
  readonly #bytes = new Map<A, number>();
  readonly #evicting = new Map<A, Promise<void>>();
  #waiters: Array<() => void> = [];

  constructor(options: ResidentSlotsOptions<A>) {
    if (!Number.isInteger(options.maxAgents) || options.maxAgents < 1) {
      throw new RangeError(`maxAgents must be an integer ≥ 1, got ${options.maxAgents}`);
    }
    const budget = options.budgetBytes;
    if (budget !== undefined && (!Number.isSafeInteger(budget) || budget < 1)) {
      throw new RangeError(`budgetBytes must be a positive integer, got ${String(budget)}`);
    }
    this.maxAgents = options.maxAgents;
    this.budgetBytes = budget ?? Infinity;
    this.#options = options;
  }

  /** Bytes charged to the residents (those on their way out included, until they are out). */
  get usedBytes(): number {
    let total = 0;
    for (const bytes of this.#bytes.values()) total += bytes;
    return total;
  }

  /** Sets the bytes charged to a resident (no-op for others); call {@link fit} after a growth. */
  charge(agent: A, bytes: number): void {
    if (this.#residents.has(agent)) this.#bytes.set(agent, bytes);
  }

  /** The bytes charged to `agent`; 0 when it is not resident. */
  charged(agent: A): number {
    return this.#bytes.get(agent) ?? 0;
  }

  /** ERR_KV_BUDGET for an agent whose cache alone takes `bytes`, over the budget. */
  oversize(agent: A, bytes: number): AgentRuntimeError {
    return new AgentRuntimeError(
      "ERR_KV_BUDGET",
      `The KV cache of ${agent.id} needs ${bytes} bytes; kvBudgetBytes is ${this.budgetBytes}: it cannot be resident`,
      { details: { id: agent.id, bytes, budgetBytes: this.budgetBytes } },
    );
  }

  get residents(): readonly A[] {
    return [...this.#residents];
  }

  isResident(agent: A): boolean {
    return this.#residents.has(agent) && !this.#evicting.has(agent);
  }

  /** The agent the next admission would passivate: least recently used among idle residents. */
  chooseVictim(): A | undefined {
    let victim: A | undefined;
    for (const agent of this.#residents) {
      if (agent.pins > 0 || this.#evicting.has(agent)) continue;
      if (!victim || agent.lastUsed < victim.lastUsed) victim = agent;
    }
    return victim;
  }

  /**
   * Reserves a resident slot for `agent` (which the caller has pinned), charged `bytes` (its expected cache).
   * Resolves `true` when the agent was not resident (the caller must now load it) and `false` when it already
   * was. Rejects with ERR_KV_BUDGET when `bytes` alone exceed the budget.
   */
  async admit(agent: A, signal?: AbortSignal, bytes = 0): Promise<boolean> {
    while (true) {
      signal?.throwIfAborted();
      const eviction = this.#evicting.get(agent);
      if (eviction) {
        // Being saved right now: let that finish, then load it back.
        await eviction.catch(() => {});
        continue;
      }
      if (this.#residents.has(agent)) return false;
      if (bytes > this.budgetBytes) throw this.oversize(agent, bytes);
      if (this.#residents.size < this.maxAgents && this.usedBytes + bytes <= this.budgetBytes) {
        this.#residents.add(agent);
        this.#bytes.set(agent, bytes);
        return true;
      }
      const victim = this.chooseVictim();
      if (victim) {
        await this.#evict(victim);
        continue;
      }
      await this.#changed(signal);
    }
  }

  /**
   * Passivates least recently used idle residents until the bytes charged to those staying fit the budget
   * (after a resident grew); stops early when no idle resident is left, or when a passivation fails.
   */
  async fit(): Promise<void> {
    while (this.#stayingBytes() > this.budgetBytes) {
      const victim = this.chooseVictim();
      if (!victim) return;
      try {
        await this.#evict(victim);
      } catch {
        return; // the passivation failure is the caller's to log; the victim stays resident
      }
    }
  }

  /** Bytes charged to residents not being passivated right now. */
  #stayingBytes(): number {
    let total = 0;
    for (const [agent, bytes] of this.#bytes) if (!this.#evicting.has(agent)) total += bytes;
    return total;
  }

  async #evict(victim: A): Promise<void> {
    const eviction = this.#options.passivate(victim).then(() => {
      this.#residents.delete(victim);
      this.#bytes.delete(victim);
    });
    this.#evicting.set(victim, eviction);
    try {
      await eviction;
    } finally {
      this.#evicting.delete(victim);
      this.notify();
    }
  }

  /** Passivates a specific resident now (used by close); no-op when it is not resident. */
  async evict(agent: A): Promise<void> {
    const running = this.#evicting.get(agent);
    if (running) return running;
    if (this.#residents.has(agent)) await this.#evict(agent);
  }

  /** Resolves once no passivation of `agent` is running; pin it first so that none starts after. */
  async settled(agent: A): Promise<void> {
    for (let eviction = this.#evicting.get(agent); eviction; eviction = this.#evicting.get(agent)) {
      await eviction.catch(() => {});
    }
  }

  /** Forgets `agent` as resident without saving it (removal, or its sequence was lost). */
  release(agent: A): void {
    this.#bytes.delete(agent);
    if (this.#residents.delete(agent)) this.notify();
  }

  /** Forgets every resident (the worker crashed and took their caches with it). */
  releaseAll(): A[] {
    const released = [...this.#residents];
    this.#residents.clear();
    this.#bytes.clear();
    this.notify();
    return released;
  }

  /** Wakes admissions waiting for an idle agent; call when an agent's pins drop. */
  notify(): void {
    for (const wake of this.#waiters.splice(0)) wake();
  }

  #changed(signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.#waiters = this.#waiters.filter((waiter) => waiter !== wake);
        reject(signal!.reason);
      };
      const wake = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(wake);
    });
  }
}
