/**
 * Node membership, as Orleans' silo table: each node holds one record `m.<node>` in the members bucket
 * — its incarnation (a random id per process) and an expiry — and renews it by compare-and-set every
 * `renewEveryMs`. Agents are owned by a (node, incarnation) pair (see `leases.ts`), so keeping every
 * agent of a node alive costs this one write per interval, however many agents it owns.
 *
 * A node knows locally whether its membership still holds: the last renewal it *sent* before the reply
 * plus the TTL (`validUntil`). Others judge it by the record's `expiresAt` against their own clock with
 * `maxClockSkewMs` of margin. Neither is trusted for safety: every commit is fenced by the agent's
 * epoch (see `nats-store.ts`), so a wrong guess costs a retry, never a lost or doubled turn.
 */
import { randomBytes } from "node:crypto";
import type { KV } from "@nats-io/kv";
import type { Cas } from "./cas.js";
import { systemClock, type Clock } from "../clock.js";
import { AgentRuntimeError } from "../errors.js";
import { keys, validateNodeName } from "./keys.js";
import { isWrongLastSequence, retryTransient } from "./nats-errors.js";

export interface MembershipOptions {
  /** This node's name (`[a-z0-9_-]`, 1–64): the key of its membership record. Required. */
  node: string;
  /** How long a renewal keeps the membership alive, in ms. Default 10 000. */
  ttlMs?: number | undefined;
  /** How often it is renewed, in ms. Default a third of `ttlMs` (two renewals may fail before it lapses). */
  renewEveryMs?: number | undefined;
  /** Margin, in ms, before another node's expired membership is believed expired. Default 1 000. */
  maxClockSkewMs?: number | undefined;
  /** Time source for expiry maths and the renewal timer. Default the system clock. */
  clock?: Clock | undefined;
  /** Called once when the membership is lost for good (another process replaced our record). */
  onLost?: ((reason: string) => void) | undefined;
  /**
   * What this node tells the others at every renewal (capacity, draining, prefixes it holds: see
   * placement.ts). Riding on the renewal, it costs no write of its own.
   */
  describe?: (() => NodeInfo) | undefined;
}

/** A node's advertisement, carried by its membership record. */
export interface NodeInfo {
  /** Agents it may keep resident (its `maxAgents`). */
  maxAgents: number;
  /** Agents resident now. */
  resident: number;
  /** Agents whose lease it holds (resident or passivated). */
  owned: number;
  /** True while it drains: it takes no agents. */
  draining: boolean;
  /** Keys of shared system-prompt states it holds (most recent first, bounded). */
  prefixes: string[];
  /** Free KV memory in bytes, when the node has a budget. */
  kvFreeBytes?: number | undefined;
  /** True while it has event streams open (others then relay token events to it: see cluster-events.ts). */
  listening?: boolean | undefined;
}

/** The membership record as stored (JSON). */
export interface MemberRecord {
  format: "agentrt-member";
  node: string;
  incarnation: string;
  /** Wall-clock ms (the writer's clock) after which the record no longer vouches for the node. */
  expiresAt: number;
  startedAt: number;
  /** The node's advertisement as of this renewal (absent from records written without `describe`). */
  info?: NodeInfo | undefined;
}

/** Who owns an agent: a node and the incarnation of it that took the lease. */
export interface NodeIncarnation {
  node: string;
  incarnation: string;
}

/** The record, or undefined when the value is absent or not a membership record (hostile or foreign). */
export function parseMember(value: Uint8Array | undefined): MemberRecord | undefined {
  if (!value || value.length === 0 || value.length > 4096) return undefined;
  try {
    const record = JSON.parse(Buffer.from(value).toString("utf8")) as MemberRecord;
    const valid =
      record?.format === "agentrt-member" &&
      typeof record.node === "string" &&
      typeof record.incarnation === "string" &&
      Number.isFinite(record.expiresAt) &&
      Number.isFinite(record.startedAt) &&
      (record.info === undefined || validInfo(record.info));
    return valid ? record : undefined;
  } catch {
    return undefined;
  }
}

function validInfo(info: NodeInfo): boolean {
  const count = (value: unknown) => typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
  return (
    typeof info === "object" &&
    info !== null &&
    count(info.maxAgents) &&
    count(info.resident) &&
    count(info.owned) &&
    typeof info.draining === "boolean" &&
    Array.isArray(info.prefixes) &&
    info.prefixes.length <= 64 &&
    info.prefixes.every((key) => typeof key === "string" && /^[0-9a-f]{1,64}$/.test(key)) &&
    (info.kvFreeBytes === undefined || count(info.kvFreeBytes)) &&
    (info.listening === undefined || typeof info.listening === "boolean")
  );
}

/**
 * Writes a new incarnation's record by CAS at `revision`. A conflict means another process registered
 * the name first (ERR_STATE_LOCKED). A write whose reply was lost (a timeout while streams elect their
 * leaders) is read back: it landed when the record is ours; otherwise it is tried again, a few times.
 */
async function register(members: KV, cas: Cas, key: string, record: MemberRecord, revision: number): Promise<number> {
  const locked = (cause: unknown) =>
    new AgentRuntimeError("ERR_STATE_LOCKED", `Another process registered node ${record.node} at the same time`, {
      cause,
      details: { node: record.node },
    });
  for (let attempt = 1; ; attempt++) {
    try {
      return await cas.put(key, encode(record), revision);
    } catch (error) {
      if (isWrongLastSequence(error) || attempt >= 4) {
        const now = await members.get(key).catch(() => null);
        const seen = now?.operation === "PUT" ? parseMember(now.value) : undefined;
        if (now && seen?.incarnation === record.incarnation) return now.revision;
        throw isWrongLastSequence(error) ? locked(error) : error;
      }
      const now = await members.get(key).catch(() => null);
      const seen = now?.operation === "PUT" ? parseMember(now.value) : undefined;
      if (now && seen?.incarnation === record.incarnation) return now.revision;
      if (now && now.revision !== revision) throw locked(error);
    }
  }
}

function encode(record: MemberRecord): Uint8Array {
  return Buffer.from(JSON.stringify(record));
}

export class Membership {
  readonly node: string;
  readonly incarnation: string;
  readonly ttlMs: number;
  readonly renewEveryMs: number;
  readonly maxClockSkewMs: number;
  readonly #members: KV;
  readonly #cas: Cas;
  readonly #clock: Clock;
  readonly #onLost: MembershipOptions["onLost"];
  readonly #describe: MembershipOptions["describe"];
  readonly #startedAt: number;
  #revision: number;
  #validUntil: number;
  #timer: unknown;
  #lost: string | undefined;
  #closed = false;
  #halted = false;
  #renewing: Promise<void> | undefined;
  #renewals = 0;
  #lapses = 0;

  private constructor(
    members: KV,
    cas: Cas,
    options: Required<Omit<MembershipOptions, "onLost" | "describe">> & Pick<MembershipOptions, "onLost" | "describe">,
    revision: number,
    startedAt: number,
    incarnation: string,
  ) {
    this.node = options.node;
    this.incarnation = incarnation;
    this.ttlMs = options.ttlMs;
    this.renewEveryMs = options.renewEveryMs;
    this.maxClockSkewMs = options.maxClockSkewMs;
    this.#members = members;
    this.#cas = cas;
    this.#clock = options.clock;
    this.#onLost = options.onLost;
    this.#describe = options.describe;
    this.#startedAt = startedAt;
    this.#revision = revision;
    this.#validUntil = startedAt + options.ttlMs;
  }

  /**
   * Registers this process as `node` with a new incarnation and starts renewing. ERR_STATE_LOCKED when
   * a live incarnation of the same node name holds the record (two processes must not share a name).
   */
  static async join(members: KV, cas: Cas, options: MembershipOptions): Promise<Membership> {
    const node = validateNodeName(options.node);
    const ttlMs = options.ttlMs ?? 10_000;
    if (!Number.isInteger(ttlMs) || ttlMs < 100) throw new RangeError(`ttlMs must be an integer ≥ 100, got ${ttlMs}`);
    const renewEveryMs = options.renewEveryMs ?? Math.floor(ttlMs / 3);
    if (!Number.isInteger(renewEveryMs) || renewEveryMs < 10 || renewEveryMs >= ttlMs) {
      throw new RangeError(`renewEveryMs must be an integer from 10 to ttlMs - 1, got ${renewEveryMs}`);
    }
    const maxClockSkewMs = options.maxClockSkewMs ?? 1000;
    if (!(maxClockSkewMs >= 0)) throw new RangeError(`maxClockSkewMs must be ≥ 0, got ${maxClockSkewMs}`);
    const clock = options.clock ?? systemClock;
    const incarnation = randomBytes(8).toString("hex");
    const key = keys.member(node);
    const startedAt = clock.now();
    const info = options.describe?.();
    const record: MemberRecord = { format: "agentrt-member", node, incarnation, expiresAt: startedAt + ttlMs, startedAt, ...(info ? { info } : {}) };
    // Nodes starting together meet streams still electing leaders: a read is safe to try again.
    const current = await retryTransient(() => members.get(key), { withinMs: 20_000 });
    let revision: number;
    if (!current || current.operation !== "PUT") {
      revision = await register(members, cas, key, record, current?.revision ?? 0);
    } else {
      const previous = parseMember(current.value);
      if (previous && previous.expiresAt + maxClockSkewMs > startedAt) {
        throw new AgentRuntimeError(
          "ERR_STATE_LOCKED",
          `Node name ${node} is held by incarnation ${previous.incarnation} until ${new Date(previous.expiresAt).toISOString()}`,
          {
            details: { node, incarnation: previous.incarnation, expiresAt: previous.expiresAt },
          },
        );
      }
      // An expired (or unreadable) record of an earlier process under this name: replaced by CAS, which
      // invalidates every lease that incarnation held, since leases name the incarnation.
      revision = await register(members, cas, key, record, current.revision);
    }
    const membership = new Membership(
      members,
      cas,
      { node, ttlMs, renewEveryMs, maxClockSkewMs, clock, onLost: options.onLost, describe: options.describe },
      revision,
      startedAt,
      incarnation,
    );
    membership.#schedule();
    return membership;
  }

  /**
   * How many times this node's membership ran out and was renewed after (a pause, a partition). A lease
   * confirmed before the last lapse may have been taken meanwhile: it is read back before use.
   */
  get lapses(): number {
    return this.#lapses;
  }

  /** Renewals sent so far (`bench:cluster`: heartbeat traffic must not grow with the agents owned). */
  get renewals(): number {
    return this.#renewals;
  }

  get self(): NodeIncarnation {
    return { node: this.node, incarnation: this.incarnation };
  }

  /** Local time until which this node may act as the owner of its agents (last renewal sent + TTL). */
  get validUntil(): number {
    return this.#validUntil;
  }

  /** Why the membership was lost for good, or undefined while it holds (or might again). */
  get lost(): string | undefined {
    return this.#lost;
  }

  /** Whether this node may act as an owner now: a local check, no I/O. */
  isValid(): boolean {
    return this.#lost === undefined && !this.#closed && this.#clock.now() < this.#validUntil;
  }

  /** Throws ERR_LEASE_LOST unless {@link isValid}. */
  check(id?: string): void {
    if (this.isValid()) return;
    const why = this.#lost ?? (this.#closed ? "the node left the cluster" : "its membership was not renewed in time");
    throw new AgentRuntimeError("ERR_LEASE_LOST", `This node (${this.node}) no longer holds its leases${id ? ` (agent ${id})` : ""}: ${why}`, {
      details: { node: this.node, incarnation: this.incarnation, ...(id ? { id } : {}) },
    });
  }

  #schedule(): void {
    if (this.#closed || this.#halted || this.#lost) return;
    this.#timer = this.#clock.setTimeout(() => {
      void this.renew().finally(() => this.#schedule());
    }, this.renewEveryMs);
    (this.#timer as { unref?: () => void })?.unref?.();
  }

  /** One renewal by compare-and-set. A failed one is retried at the next tick; a replaced record is lost for good. */
  renew(): Promise<void> {
    this.#renewing ??= this.#renew().finally(() => (this.#renewing = undefined));
    return this.#renewing;
  }

  /** Renews now with the current advertisement: after a renewal in flight (which may carry an older one). */
  async announce(): Promise<void> {
    await this.#renewing?.catch(() => {});
    await this.renew();
  }

  async #renew(): Promise<void> {
    if (this.#closed || this.#lost) return;
    const sentAt = this.#clock.now();
    const record: MemberRecord = {
      format: "agentrt-member",
      node: this.node,
      incarnation: this.incarnation,
      expiresAt: sentAt + this.ttlMs,
      startedAt: this.#startedAt,
    };
    const info = this.#describe?.();
    if (info) record.info = info;
    this.#renewals++;
    try {
      this.#revision = await this.#cas.put(keys.member(this.node), encode(record), this.#revision);
      // Renewed after it had run out (paused, cut off): others may have taken agents meanwhile.
      if (sentAt >= this.#validUntil) this.#lapses++;
      // Counted from when it was sent: the record may have been visible since then, never before.
      this.#validUntil = Math.max(this.#validUntil, sentAt + this.ttlMs);
    } catch (error) {
      if (isWrongLastSequence(error)) {
        let now: Awaited<ReturnType<KV["get"]>>;
        try {
          now = await this.#members.get(keys.member(this.node));
        } catch {
          return; // Unknown (the cluster is failing over): never a reason to give up; the next tick looks again.
        }
        const seen = now?.operation === "PUT" ? parseMember(now.value) : undefined;
        // An earlier renewal whose reply was lost landed after all: the record is still ours. It vouches
        // for us only as long as the older of the two expiries says.
        if (now && seen && seen.incarnation === this.incarnation && seen.node === this.node) {
          this.#revision = now.revision;
          this.#validUntil = Math.max(this.#validUntil, Math.min(sentAt + this.ttlMs, seen.expiresAt));
          return;
        }
        this.#lose(
          `its membership record was replaced${seen ? ` by incarnation ${seen.incarnation}` : now ? " by a value that is not ours" : " (deleted)"}`,
        );
      }
      // Anything else (a server failing over, a timeout): the next tick tries again; validUntil runs down.
    }
  }

  #lose(reason: string): void {
    if (this.#lost) return;
    this.#lost = reason;
    this.#clock.clearTimeout(this.#timer);
    this.#onLost?.(reason);
  }

  /**
   * Whether `owner` is a live member as seen from here: its record exists, names the same incarnation
   * and has not expired by this node's clock (minus the skew margin). A record that is not a
   * membership record vouches for no one.
   */
  async isAlive(owner: NodeIncarnation): Promise<boolean> {
    if (owner.node === this.node && owner.incarnation === this.incarnation) return this.isValid();
    const entry = await this.#members.get(keys.member(owner.node));
    if (!entry || entry.operation !== "PUT") return false;
    const record = parseMember(entry.value);
    if (!record || record.node !== owner.node || record.incarnation !== owner.incarnation) return false;
    return record.expiresAt + this.maxClockSkewMs > this.#clock.now();
  }

  /**
   * The live members as seen from here (records present, not expired by this clock minus the skew
   * margin), this node included with its current advertisement. One read per member: O(nodes).
   */
  async members(): Promise<MemberRecord[]> {
    // A key written while the listing runs can be listed twice (the listing is a consumer): once is enough.
    const records = new Map<string, MemberRecord>();
    for await (const key of await this.#members.keys("m.*")) {
      if (records.has(key)) continue;
      const entry = await this.#members.get(key).catch(() => null);
      const record = entry?.operation === "PUT" ? parseMember(entry.value) : undefined;
      if (record) records.set(key, record);
    }
    return this.liveAmong(records);
  }

  /**
   * Of `records` (membership records by key, however obtained: read or watched), the live ones by this
   * node's clock less the skew margin — this node's own replaced by its current record and
   * advertisement while its membership is valid — sorted by node name.
   */
  liveAmong(records: ReadonlyMap<string, MemberRecord>): MemberRecord[] {
    const now = this.#clock.now();
    const live = [...records].filter(
      ([key, record]) => key !== keys.member(this.node) && keys.member(record.node) === key && record.expiresAt + this.maxClockSkewMs > now,
    );
    const list = live.map(([, record]) => record);
    if (this.isValid()) {
      const info = this.#describe?.();
      list.push({
        format: "agentrt-member",
        node: this.node,
        incarnation: this.incarnation,
        expiresAt: this.#validUntil,
        startedAt: this.#startedAt,
        ...(info ? { info } : {}),
      });
    }
    return list.sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));
  }

  /** Stops renewing and deletes the record (by CAS), so that other nodes may take this node's agents at once. Idempotent. */
  async leave(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#clock.clearTimeout(this.#timer);
    await this.#renewing?.catch(() => {});
    if (this.#lost) return;
    await this.#cas.delete(keys.member(this.node), this.#revision).catch(() => {});
  }

  /**
   * Stops renewing without deleting the record or telling this node: others take over once it expires,
   * while this node, until its own clock says so, still believes it holds its leases (a paused process).
   * For tests of fencing; a real node stops with `leave()`.
   */
  halt(): void {
    this.#halted = true;
    this.#clock.clearTimeout(this.#timer);
  }
}
