/**
 * Per-agent leases, kept in the agent's head (`head.ts`): `{ owner: { node, incarnation }, epoch }`.
 * A lease needs no renewal of its own — it lives as long as its owner's membership (`membership.ts`) —
 * so a node owning 10 000 agents still writes one heartbeat per interval.
 *
 * - **Take**: the head is read at revision r; when it has no owner, or its owner's membership is absent,
 *   of another incarnation or expired, the head is compare-and-set at r with `owner = us, epoch = r + 1`.
 *   Epochs therefore only grow (each is above the revision its predecessor was written at).
 * - **Commit** (every mutation of the agent): compare-and-set of the head at the revision this node last
 *   wrote. It fails once anyone else has written the head — a new owner's take is such a write — and the
 *   head then read back names another owner or epoch: ERR_LEASE_LOST, and the lease is dropped here.
 * - **Local check** before any work: this node's membership still valid (no I/O).
 */
import type { KV } from "@nats-io/kv";
import { AgentRuntimeError } from "../errors.js";
import type { Cas } from "./cas.js";
import { decodeHead, encodeHead, newOp, sameOwner, type Head } from "./head.js";
import { agentToken, keys } from "./keys.js";
import type { Membership } from "./membership.js";
import { isWrongLastSequence, retryTransient } from "./nats-errors.js";

interface Held {
  head: Head;
  revision: number;
  /** A commit's outcome is unknown (no reply): the head is read back before the next one. */
  uncertain: boolean;
  /** The membership's lapse count when the lease was last confirmed (see `Membership.lapses`). */
  lapses: number;
}

/** A committed head and the revision it was written at. */
export interface HeadAt {
  head: Head;
  revision: number;
}

function writeFailed(id: string, error: unknown): AgentRuntimeError {
  if (error instanceof AgentRuntimeError) return error;
  return new AgentRuntimeError("ERR_STATE_WRITE_FAILED", `Could not commit the head of ${id}: ${(error as Error).message}`, {
    cause: error,
    details: { id },
  });
}

/** The committed head of `id` as stored, or undefined when there is no agent. */
export async function readHead(heads: KV, id: string): Promise<HeadAt | undefined> {
  const key = keys.head(agentToken(id));
  const entry = await retryTransient(() => heads.get(key));
  if (!entry || entry.operation !== "PUT") return undefined;
  return { head: decodeHead(id, entry.value), revision: entry.revision };
}

export class AgentLeases {
  readonly #heads: KV;
  readonly #cas: Cas;
  readonly #membership: Membership;
  readonly #held = new Map<string, Held>();
  /** Agents whose lease this node lost (so that it says "lost" rather than "not yours"); bounded. */
  readonly #lost = new Set<string>();
  /** Takes and commits refused by fencing, for tests and metrics. */
  fenced = 0;

  constructor(heads: KV, cas: Cas, membership: Membership) {
    this.#heads = heads;
    this.#cas = cas;
    this.#membership = membership;
  }

  get membership(): Membership {
    return this.#membership;
  }

  /** Number of agents this node holds a lease on. */
  get size(): number {
    return this.#held.size;
  }

  /** Ids of the agents this node holds a lease on (as far as it knows: a commit may still find one lost). */
  heldIds(): string[] {
    return [...this.#held.keys()];
  }

  /** Whether this node holds `id` for sure: confirmed since its membership last lapsed (local, no I/O). */
  holds(id: string): boolean {
    const held = this.#held.get(id);
    return held !== undefined && held.lapses === this.#membership.lapses && this.#membership.isValid();
  }

  /** The head this node last committed for `id`, when it holds the lease. */
  heldHead(id: string): Head | undefined {
    return this.#held.get(id)?.head;
  }

  /** The committed head of `id` as stored, or undefined when there is no agent. */
  read(id: string): Promise<HeadAt | undefined> {
    return readHead(this.#heads, id);
  }

  /** The revision of the head's delete marker (or 0): a new head's epoch starts above it. */
  async #tombstone(id: string): Promise<number | "exists"> {
    const key = keys.head(agentToken(id));
    const entry = await retryTransient(() => this.#heads.get(key));
    if (!entry) return 0;
    return entry.operation === "PUT" ? "exists" : entry.revision;
  }

  #notOwner(id: string, head: Head): AgentRuntimeError {
    return new AgentRuntimeError("ERR_NOT_OWNER", `Agent ${id} is owned by node ${head.owner?.node ?? "?"} (epoch ${head.epoch})`, {
      details: { id, owner: head.owner?.node, epoch: head.epoch },
    });
  }

  #leaseLost(id: string, why: string, cause?: unknown): AgentRuntimeError {
    this.#held.delete(id);
    this.#lost.add(id);
    if (this.#lost.size > 10_000) this.#lost.delete(this.#lost.values().next().value!);
    this.fenced++;
    return new AgentRuntimeError("ERR_LEASE_LOST", `This node lost the lease of ${id}: ${why}`, {
      cause,
      details: { id, node: this.#membership.node },
    });
  }

  /** Throws the coded reason this node may not commit `id` (ERR_NOT_OWNER, ERR_LEASE_LOST); no I/O. */
  check(id: string): Head {
    return this.#lease(id).head;
  }

  /**
   * The head as committed, for a mutation to build on: {@link check}, and after a commit whose outcome
   * is unknown, the head read back first. A mutation writes its data keys from this head's position, so
   * it must never be a head that a landed commit has moved past (it would overwrite a committed entry).
   */
  async current(id: string): Promise<Head> {
    const held = this.#lease(id);
    if (held.uncertain) await this.#resync(id, held);
    return held.head;
  }

  /** The lease of `id`, or the coded reason this node may not commit it. */
  #lease(id: string): Held {
    const held = this.#held.get(id);
    if (!held) {
      if (this.#lost.has(id)) throw new AgentRuntimeError("ERR_LEASE_LOST", `This node lost the lease of ${id}`, { details: { id } });
      throw new AgentRuntimeError("ERR_NOT_OWNER", `This node holds no lease on ${id}: acquire it first`, { details: { id } });
    }
    this.#membership.check(id);
    // The membership lapsed since this lease was confirmed (a pause, a partition): someone may have
    // taken the agent meanwhile. Read the head back before building on it.
    if (held.lapses !== this.#membership.lapses) held.uncertain = true;
    return held;
  }

  /**
   * Takes the lease of an existing agent (or confirms it is ours). ERR_AGENT_NOT_FOUND when there is no
   * agent, ERR_NOT_OWNER when a live node owns it, ERR_STATE_CORRUPT / ERR_STATE_FOREIGN for a head that
   * is not a readable agentrt head. Resolves the head as committed with our epoch.
   */
  async acquire(id: string): Promise<Head> {
    this.#membership.check(id);
    const me = this.#membership.self;
    for (let attempt = 0; attempt < 5; attempt++) {
      const current = await this.read(id);
      if (!current) throw new AgentRuntimeError("ERR_AGENT_NOT_FOUND", `No stored agent with id ${JSON.stringify(id)}`, { details: { id } });
      const { head, revision } = current;
      if (head.owner?.node === me.node && head.owner.incarnation === me.incarnation) {
        this.#held.set(id, { head, revision, uncertain: false, lapses: this.#membership.lapses });
        this.#lost.delete(id);
        return head;
      }
      if (head.owner && (await this.#membership.isAlive(head.owner))) throw this.#notOwner(id, head);
      const next: Head = { ...head, owner: me, epoch: revision + 1, op: newOp() };
      try {
        const written = await this.#cas.put(keys.head(agentToken(id)), encodeHead(next), revision);
        this.#held.set(id, { head: next, revision: written, uncertain: false, lapses: this.#membership.lapses });
        this.#lost.delete(id);
        return next;
      } catch (error) {
        if (!isWrongLastSequence(error)) {
          // No reply: read back whether the take landed (our op in the head).
          const after = await this.read(id);
          if (after?.head.op === next.op) {
            this.#held.set(id, { head: after.head, revision: after.revision, uncertain: false, lapses: this.#membership.lapses });
            this.#lost.delete(id);
            return after.head;
          }
          if (attempt === 4) throw writeFailed(id, error);
        }
        // Someone else wrote the head in between: look again.
      }
    }
    const last = await this.read(id);
    throw last
      ? this.#notOwner(id, last.head)
      : new AgentRuntimeError("ERR_AGENT_NOT_FOUND", `No stored agent with id ${JSON.stringify(id)}`, { details: { id } });
  }

  /**
   * Creates the head of a new agent with this node as owner. Resolves undefined when a head exists
   * already (the caller then acquires it). The epoch starts above a removed agent's delete marker.
   */
  async create(id: string, make: (owner: Pick<Head, "owner" | "epoch">) => Head): Promise<Head | undefined> {
    this.#membership.check(id);
    const tombstone = await this.#tombstone(id);
    if (tombstone === "exists") return undefined;
    const next: Head = { ...make({ owner: this.#membership.self, epoch: tombstone + 1 }), op: newOp() };
    const key = keys.head(agentToken(id));
    try {
      const revision = await this.#cas.put(key, encodeHead(next), tombstone);
      this.#held.set(id, { head: next, revision, uncertain: false, lapses: this.#membership.lapses });
      this.#lost.delete(id);
      return next;
    } catch (error) {
      const after = await this.read(id).catch(() => undefined);
      if (after?.head.op === next.op) {
        this.#held.set(id, { head: after.head, revision: after.revision, uncertain: false, lapses: this.#membership.lapses });
        return after.head;
      }
      if (isWrongLastSequence(error) || after) return undefined;
      throw writeFailed(id, error);
    }
  }

  /**
   * Commits `mutate(head)` by compare-and-set on the revision this node last wrote. ERR_LEASE_LOST when
   * another owner (or anything else) wrote the head since; ERR_STATE_WRITE_FAILED when the outcome could
   * not be learned (the next commit reads the head back first).
   */
  async commit(id: string, mutate: (head: Head) => Head): Promise<Head> {
    const held = this.#lease(id);
    if (held.uncertain) await this.#resync(id, held);
    const next: Head = { ...mutate(held.head), op: newOp() };
    try {
      held.revision = await this.#cas.put(keys.head(agentToken(id)), encodeHead(next), held.revision);
      held.head = next;
      return next;
    } catch (error) {
      held.uncertain = true;
      await this.#resync(id, held, error);
      if (held.head.op === next.op) return held.head; // it landed; only the reply was lost
      throw writeFailed(id, error);
    }
  }

  /**
   * Deletes the head by compare-and-set (removal of the agent); the delete marker keeps the revision
   * that the next head's epoch starts above. Resolves the head that was removed.
   */
  async remove(id: string): Promise<Head> {
    const held = this.#lease(id);
    if (held.uncertain) await this.#resync(id, held);
    const key = keys.head(agentToken(id));
    try {
      await this.#cas.delete(key, held.revision);
    } catch (error) {
      held.uncertain = true;
      const entry = await this.#heads.get(key).catch(() => undefined);
      // Gone, and no one else's head since: our delete landed.
      if (!(entry && entry.operation !== "PUT" && entry.revision > held.revision)) {
        await this.#resync(id, held, error);
        throw writeFailed(id, error);
      }
    }
    this.#held.delete(id);
    return held.head;
  }

  /** Gives the lease up (owner = none), so another node may take it at once. */
  async release(id: string): Promise<void> {
    if (!this.#held.has(id)) return;
    await this.commit(id, (head) => ({ ...head, owner: null }));
    this.#held.delete(id);
  }

  /** Forgets every lease without writing (a crash, as others see it). */
  forgetAll(): void {
    this.#held.clear();
  }

  /** Reads the head back after a failed or unknown commit: still ours, or ERR_LEASE_LOST. */
  async #resync(id: string, held: Held, cause?: unknown): Promise<void> {
    let current: HeadAt | undefined;
    try {
      current = await this.read(id);
    } catch (error) {
      if (error instanceof AgentRuntimeError && (error.code === "ERR_STATE_CORRUPT" || error.code === "ERR_STATE_FOREIGN")) {
        throw this.#leaseLost(id, "its head was replaced by a value that is not ours", error);
      }
      throw writeFailed(id, cause ?? error);
    }
    if (!current) throw this.#leaseLost(id, "the agent was removed", cause);
    if (!sameOwner(current.head, held.head)) {
      throw this.#leaseLost(
        id,
        `node ${current.head.owner?.node ?? "(none)"} holds it at epoch ${current.head.epoch}, ours was ${held.head.epoch}`,
        cause,
      );
    }
    held.head = current.head;
    held.revision = current.revision;
    held.uncertain = false;
    held.lapses = this.#membership.lapses;
  }
}
