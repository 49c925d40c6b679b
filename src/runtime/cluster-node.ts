/**
 * This runtime as one node of a cluster (docs/cluster.md): its store is the shared `NatsStore`, and every
 * request for an agent goes to the node that holds the agent's lease.
 *
 * - **Routing**: a request is run here when this node holds the lease; when another live node holds it
 *   the request is forwarded over NATS (`rpc-client.ts`, `rpc-server.ts`): tokens stream back, errors keep their codes, the
 *   caller's abort reaches the owner. An unowned agent (new, released, or its owner's membership
 *   expired) is placed (`placement.ts`): here (the lease is taken) or on the chosen node.
 * - **Waiting out a failover**: while an owner is unreachable (dead, paused) and its lease not yet
 *   expired, a request that was certainly not handled is retried until `routeTimeoutMs`, then fails
 *   ERR_NODE_UNAVAILABLE (retryable). One the owner had accepted is never retried here: it may have
 *   committed, and a retry would append it twice.
 * - **Handover** (drain, close): an agent's new messages wait while its queued ones finish; it is
 *   passivated into the store, its cache uploaded, its lease released; then the waiting messages are
 *   routed again, to its next owner. No message fails.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { connect } from "@nats-io/transport-node";
import type { Logger } from "pino";
import type { Clock } from "../clock.js";
import { AgentRuntimeError, isAgentRuntimeError } from "../errors.js";
import { MemberView } from "../cluster/member-view.js";
import type { MemberRecord, NodeInfo } from "../cluster/membership.js";
import { NatsStore, type NatsStoreOptions } from "../cluster/nats-store.js";
import { RpcClient } from "../cluster/rpc-client.js";
import { RpcServer } from "../cluster/rpc-server.js";
import type { RpcHandlers } from "../cluster/rpc-wire.js";
import { choosePlacement } from "../cluster/placement.js";
import type { EventEmitter } from "eventemitter3";
import type { RuntimeEvents } from "../events.js";
import { ClusterEvents } from "./cluster-events.js";

export interface ClusterOptions {
  /** NATS servers: `nats://host:port` URLs, as an array or comma-separated. Required unless `connection` is given. */
  servers?: string | string[] | undefined;
  /** A connection of the caller's (then `servers` is ignored and the runtime never closes it). */
  connection?: NatsConnection | undefined;
  /** This node's name (`[a-z0-9_-]`, 1–64), unique among live nodes. Required. */
  node: string;
  /** Prefix of the cluster's buckets and subjects (one agent space per prefix). Default "agentrt". */
  prefix?: string | undefined;
  /** Local folder for saved KV caches (this node's copies and downloads). Default `<stateDir>/cluster-cache`. */
  cacheDir?: string | undefined;
  /** Replicas of every bucket: 1, 3 or 5. Default 3 (a 3-server cluster: acknowledged = on a majority). */
  replicas?: number | undefined;
  /** Membership timing: TTL (default 10 s), renewal interval (default TTL/3), clock skew margin (default 1 s). */
  lease?: NatsStoreOptions["lease"];
  /**
   * How long a request may wait for its agent's owner to become reachable (a failover: the dead owner's
   * lease must expire first) before it fails ERR_NODE_UNAVAILABLE. Default TTL + renewal interval + skew + 5 s.
   */
  routeTimeoutMs?: number | undefined;
  /** Silence from an owner, mid-request, after which it is taken for gone. Default 5 000 ms. */
  stallMs?: number | undefined;
}

/** An owner that went silent on a request, at the epoch it held then. */
interface Suspect {
  node: string;
  epoch: number;
}

/** The suspect still holds the agent: wait (its lease expires, or it answers the next request). */
class StillSuspect extends Error {}

/** What this node is doing with one request. */
type Route = { local: true } | { local: false; node: string };

const LOCAL: Route = { local: true };
/** Remembered owners (a forwarded request costs no lookup); bounded. */
const MAX_ROUTES = 10_000;

/** Errors after which a request is routed again: it was certainly not run (or not begun) where it went. */
function reroutable(error: unknown): boolean {
  if (!isAgentRuntimeError(error)) return false;
  if (error.code === "ERR_NOT_OWNER" || error.code === "ERR_NODE_DRAINING") return true;
  return error.code === "ERR_NODE_UNAVAILABLE" && error.details?.accepted === false;
}

/**
 * A request the owner went silent on before accepting it (paused, cut off): it may still sit in the
 * owner's socket and run when the owner wakes. It may be sent again only to an owner that took the
 * agent over since (a new epoch: the old owner's commit is then fenced), never to the same one.
 */
function unanswered(error: unknown): boolean {
  return isAgentRuntimeError(error, "ERR_NODE_UNAVAILABLE") && error.details?.acknowledged === false && error.details?.accepted === true;
}

export interface ClusterNodeInit {
  log: Logger;
  clock: Clock;
  /** The runtime's state folder (default parent of the cache folder). */
  stateDir: string | undefined;
}

/** What the runtime runs for requests that other nodes forward here. */
export interface LocalHandlers {
  turn: RpcHandlers["turn"];
  call(method: string, params: unknown, signal: AbortSignal): Promise<unknown>;
  /** This node's advertisement (capacity, prefixes), sent with every membership renewal. */
  describe(): Omit<NodeInfo, "draining" | "owned">;
  /** Passivates agent `id` if it is in memory and drops it (it is handed over); resolves when done. */
  handOver(id: string): Promise<void>;
  /** Drops agent `id` from memory without saving (its lease is gone). */
  evict(id: string): Promise<void>;
}

export class ClusterNode {
  readonly node: string;
  readonly store: NatsStore;
  readonly #connection: NatsConnection;
  readonly #ownsConnection: boolean;
  readonly #options: ClusterOptions;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #routeTimeoutMs: number;
  readonly #routes = new Map<string, string>();
  /** Agents being handed over: their requests wait for it, then route again. */
  readonly #handovers = new Map<string, Promise<void>>();
  #handlers: LocalHandlers | undefined;
  #server: RpcServer | undefined;
  #client: RpcClient;
  #draining: Promise<void> | undefined;
  #drainRequested = false;
  #lost: string | undefined;
  #events: ClusterEvents | undefined;
  #view: MemberView | undefined;
  readonly stats = { forwarded: 0, served: 0, rerouted: 0, placed: 0, handedOver: 0, evicted: 0 };

  private constructor(options: ClusterOptions, connection: NatsConnection, ownsConnection: boolean, store: NatsStore, init: ClusterNodeInit) {
    this.node = options.node;
    this.store = store;
    this.#options = options;
    this.#connection = connection;
    this.#ownsConnection = ownsConnection;
    this.#log = init.log.child({ component: "cluster", node: options.node });
    this.#clock = init.clock;
    const ttl = options.lease?.ttlMs ?? 10_000;
    this.#routeTimeoutMs =
      options.routeTimeoutMs ?? ttl + (options.lease?.renewEveryMs ?? Math.floor(ttl / 3)) + (options.lease?.maxClockSkewMs ?? 1000) + 5000;
    this.#client = new RpcClient(connection, { prefix: options.prefix, stallMs: options.stallMs });
  }

  /** Connects to NATS and opens the shared store's buckets; `open()` (by the runtime) joins the cluster. */
  static async connect(options: ClusterOptions, init: ClusterNodeInit): Promise<ClusterNode> {
    if (typeof options !== "object" || options === null) throw new TypeError("cluster must be an object");
    if (typeof options.node !== "string") throw new TypeError("cluster.node is required: this node's name");
    if (options.routeTimeoutMs !== undefined && !(Number.isInteger(options.routeTimeoutMs) && options.routeTimeoutMs >= 0)) {
      throw new RangeError(`cluster.routeTimeoutMs must be an integer ≥ 0, got ${String(options.routeTimeoutMs)}`);
    }
    const cacheDir = options.cacheDir ?? (init.stateDir ? `${init.stateDir}/cluster-cache` : undefined);
    if (!cacheDir) throw new TypeError("cluster.cacheDir (or stateDir) is required: the local folder for saved caches");
    let connection = options.connection;
    const owns = !connection;
    if (!connection) {
      const servers = typeof options.servers === "string" ? options.servers.split(",").map((s) => s.trim()) : options.servers;
      if (!servers || servers.length === 0 || servers.some((s) => typeof s !== "string" || s === "")) {
        throw new TypeError("cluster.servers is required: NATS URLs such as nats://127.0.0.1:4222");
      }
      connection = await connect({
        servers,
        name: `agentrt-${options.node}`,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
        // A hung server keeps its sockets open: notice it in ~3 s rather than the default 2 minutes.
        pingInterval: 1000,
        maxPingOut: 2,
      }).catch((error: unknown) => {
        throw new AgentRuntimeError("ERR_NODE_UNAVAILABLE", `Could not connect to NATS at ${servers.join(", ")}: ${(error as Error).message}`, {
          cause: error,
          details: { servers, accepted: false },
        });
      });
    }
    let node: ClusterNode | undefined;
    try {
      const store = await NatsStore.create({
        connection,
        node: options.node,
        cacheDir,
        ...(options.prefix ? { prefix: options.prefix } : {}),
        ...(options.replicas ? { replicas: options.replicas } : {}),
        ...(options.lease ? { lease: options.lease } : {}),
        clock: init.clock,
        describe: () => node!.#describe(),
        onMembershipLost: (reason) => {
          if (node) node.#membershipLost(reason);
        },
        onUploadError: ({ id, error }) => {
          if (node) node.#log.warn({ agent: id, err: error }, "saved cache not uploaded; other nodes rebuild it from history");
        },
      });
      node = new ClusterNode(options, connection, owns, store, init);
      return node;
    } catch (error) {
      if (owns) await connection.close().catch(() => {});
      throw error;
    }
  }

  /** Starts answering requests forwarded by other nodes (after the store is open) and relaying `local` events. */
  async start(handlers: LocalHandlers, local: EventEmitter<RuntimeEvents>): Promise<void> {
    this.#handlers = handlers;
    this.#events = new ClusterEvents(this.#connection, { prefix: this.#options.prefix ?? "agentrt", node: this.node, log: this.#log, local });
    this.#view = await MemberView.start(this.store.buckets.members, this.store.membership!, this.#log);
    this.#events.anyoneListening = () => this.#events!.listening || this.#view!.othersListening();
    this.#server = await RpcServer.start(this.#connection, {
      node: this.node,
      ...(this.#options.prefix ? { prefix: this.#options.prefix } : {}),
      log: this.#log,
      handlers: {
        turn: (request, sink, signal) => {
          this.stats.served++;
          return handlers.turn(request, sink, signal);
        },
        call: (method, params, signal) => {
          this.stats.served++;
          if (method === "drain") return this.drain().then(() => ({ node: this.node, drained: true }));
          if (method === "status") return this.status();
          return handlers.call(method, params, signal);
        },
      },
    });
    await this.store.announce();
  }

  #describe(): NodeInfo {
    const local = this.#handlers?.describe() ?? { maxAgents: 0, resident: 0, prefixes: [] };
    return {
      ...local,
      owned: this.store.heldCount,
      draining: this.#drainRequested || this.#lost !== undefined,
      listening: this.#events?.listening ?? false,
    };
  }

  /**
   * Every node's events, for an event stream on this node: returns the emitter to listen to and the
   * function to call when the stream ends.
   */
  openEvents(): { emitter: EventEmitter<RuntimeEvents>; close: () => void } {
    const events = this.#events!;
    const first = !events.listening;
    const close = events.open();
    // Tell the others now (not at the next renewal) that token events are wanted here.
    if (first) void this.store.announce().catch(() => {});
    return { emitter: events.emitter, close };
  }

  #membershipLost(reason: string): void {
    this.#lost = reason;
    this.#log.error({ reason }, "cluster membership lost for good: this node forwards every request from now on; restart it to rejoin");
    for (const id of this.#routes.keys()) this.#routes.delete(id);
  }

  /** Whether this node may run requests of its own now (not draining, membership not lost). */
  get accepting(): boolean {
    return !this.#drainRequested && this.#lost === undefined;
  }

  get draining(): boolean {
    return this.#draining !== undefined;
  }

  /** Whether a message for `id` may enter its mailbox here now (held, not being handed over): checked synchronously before posting. */
  admits(id: string): boolean {
    return this.store.holds(id) && !this.#handovers.has(id);
  }

  notOwner(id: string): AgentRuntimeError {
    return new AgentRuntimeError("ERR_NOT_OWNER", `Node ${this.node} does not own agent ${id} (any more)`, { details: { id, node: this.node } });
  }

  /**
   * Runs a request for agent `id` where its owner is: `local()` here, or `remote(node)` on the owner.
   * `forward: false` (a request another node forwarded) never forwards again: it runs here, taking the
   * lease when the agent is free, or fails ERR_NOT_OWNER / ERR_NODE_DRAINING for the sender to route again.
   */
  async run<T>(
    id: string,
    options: { forward: boolean; signal?: AbortSignal | undefined; prefix?: string | undefined; create?: boolean },
    local: () => Promise<T>,
    remote: (node: string) => Promise<T>,
  ): Promise<T> {
    const deadline = this.#clock.now() + this.#routeTimeoutMs;
    /** The owner (and its epoch) that left a delivery of this request unanswered: see `unanswered`. */
    let suspect: Suspect | undefined;
    let firstFailure: unknown;
    for (let attempt = 0; ; attempt++) {
      options.signal?.throwIfAborted();
      let route: Route | undefined;
      try {
        route = await this.#route(id, { ...options, suspect });
        if (route.local) return await local();
        this.stats.forwarded++;
        return await remote(route.node);
      } catch (error) {
        if (route && !route.local) this.#routes.delete(id);
        if (!options.forward) throw error;
        if (!suspect && route && !route.local && unanswered(error)) {
          // Retried only once someone has taken the agent from that owner (see #route).
          const seen = await this.store.lookup(id).catch(() => undefined);
          if (seen?.owner?.node !== route.node) throw error;
          suspect = { node: route.node, epoch: seen.epoch };
          firstFailure = error;
        } else if (!(error instanceof StillSuspect) && !reroutable(error) && !(route === undefined && !isAgentRuntimeError(error))) throw error;
        // (The last: the cluster's state could not be read — a server failing over; nothing was sent.)
        const left = deadline - this.#clock.now();
        if (left <= 0) {
          // A request its owner may still run must not be reported as never handled.
          if (suspect) throw firstFailure;
          throw new AgentRuntimeError(
            "ERR_NODE_UNAVAILABLE",
            `No node could take agent ${id} within ${this.#routeTimeoutMs} ms: ${(error as Error).message}`,
            {
              cause: error,
              details: { id, accepted: false, last: (error as AgentRuntimeError).code ?? (error as Error).name },
            },
          );
        }
        this.stats.rerouted++;
        // Backing off: a dead owner's lease takes up to its TTL to expire; a racing take settles at once.
        await new Promise((resolve) => setTimeout(resolve, Math.min(left, Math.min(50 * 2 ** Math.min(attempt, 5), 1000))));
      }
    }
  }

  async #route(
    id: string,
    options: { forward: boolean; prefix?: string | undefined; create?: boolean; suspect?: Suspect | undefined },
  ): Promise<Route> {
    const handover = this.#handovers.get(id);
    if (handover) {
      await handover;
      if (!options.forward)
        throw new AgentRuntimeError("ERR_NODE_DRAINING", `Node ${this.node} handed agent ${id} over`, { details: { id, node: this.node } });
    }
    if (this.accepting && this.store.holds(id)) return LOCAL;
    if (options.create) {
      // A new agent: placed; the chosen node's spawn creates it (one create wins a race: ERR_AGENT_EXISTS).
      if (!options.forward) {
        if (!this.accepting) throw this.#drainingError(id);
        return LOCAL;
      }
      const target = await this.#place(id, options.prefix);
      return target === this.node ? LOCAL : { local: false, node: target };
    }
    const cached = options.forward && !options.suspect ? this.#routes.get(id) : undefined;
    if (cached !== undefined && cached !== this.node) return { local: false, node: cached };
    const seen = await this.store.lookup(id);
    if (!seen) throw new AgentRuntimeError("ERR_AGENT_NOT_FOUND", `No agent with id ${JSON.stringify(id)}`, { details: { id } });
    const { suspect } = options;
    if (suspect && seen.owner?.node === suspect.node && seen.epoch === suspect.epoch && seen.alive) throw new StillSuspect();
    const me = this.store.membership?.self;
    const mine = seen.owner !== null && me !== undefined && seen.owner.node === me.node && seen.owner.incarnation === me.incarnation;
    if (seen.owner && seen.alive && !mine) {
      if (!options.forward) throw new AgentRuntimeError("ERR_NOT_OWNER", undefined, { details: { id, owner: seen.owner.node, node: this.node } });
      this.#remember(id, seen.owner.node);
      return { local: false, node: seen.owner.node };
    }
    // Free (no owner, a dead one, or our own lease to confirm).
    if (!mine && options.forward) {
      const target = await this.#place(id, undefined);
      if (target !== this.node) return { local: false, node: target };
    }
    if (!this.accepting) throw this.#drainingError(id);
    await this.store.acquire(id);
    this.stats.placed++;
    // An object left in memory from an earlier lease is stale: the history may have moved on elsewhere.
    if (!mine) await this.#handlers?.evict(id);
    return LOCAL;
  }

  #drainingError(id: string): AgentRuntimeError {
    return new AgentRuntimeError("ERR_NODE_DRAINING", `Node ${this.node} is draining and takes no agents`, { details: { id, node: this.node } });
  }

  #remember(id: string, node: string): void {
    this.#routes.delete(id);
    this.#routes.set(id, node);
    if (this.#routes.size > MAX_ROUTES) this.#routes.delete(this.#routes.keys().next().value!);
  }

  /** The node a new or unowned agent goes to; waits out a moment with no candidate (every node draining). */
  async #place(id: string, prefix: string | undefined): Promise<string> {
    const members = await this.members();
    const target = choosePlacement({ id, prefix }, members);
    if (target === undefined) {
      throw new AgentRuntimeError("ERR_NODE_UNAVAILABLE", `No node can take agent ${id}: every node is draining or unreachable`, {
        details: { id, accepted: false },
      });
    }
    return target;
  }

  /** The live members with their advertisements (from the members watch: no read per decision). */
  members(): Promise<MemberRecord[]> {
    return this.#view?.list() ?? this.store.members();
  }

  /** Forwards a turn to `node`. */
  forwardTurn(
    node: string,
    request: unknown,
    sink: { onAccepted: () => void; onToken: (text: string) => void; signal?: AbortSignal | undefined },
  ): Promise<unknown> {
    return this.#client.turn(node, request, sink);
  }

  /** Forwards a unary request to `node`. */
  forwardCall(node: string, method: string, params: unknown, signal?: AbortSignal): Promise<unknown> {
    return this.#client.call(node, method, params, { ...(signal ? { signal } : {}) });
  }

  /** Asks node `node` to drain (the `agentrt drain` command). */
  async drainNode(node: string): Promise<unknown> {
    return this.#client.call(node, "drain", {}, { timeoutMs: 10 * 60_000 });
  }

  /** Called by the runtime when a commit of agent `id` found its lease lost: drops it from memory. */
  leaseLost(id: string): void {
    this.#routes.delete(id);
    this.stats.evicted++;
    void this.#handlers
      ?.evict(id)
      .catch((error: unknown) => this.#log.warn({ agent: id, err: error }, "could not drop an agent whose lease was lost"));
  }

  /**
   * Hands every agent this node owns over (passivated into the store, cache uploaded, lease released)
   * and takes no new ones; requests keep being answered, by forwarding. Idempotent.
   */
  drain(): Promise<void> {
    // Set before the body runs: its first renewal must already advertise the drain.
    this.#drainRequested = true;
    this.#draining ??= (async () => {
      this.#log.info("draining: handing every agent over");
      await this.store.announce().catch(() => {});
      const ids = this.store.heldIds();
      // A few at once: each is a passivation (engine) plus an upload and a release (NATS).
      let next = 0;
      const worker = async () => {
        while (next < ids.length) await this.#handOver(ids[next++]!);
      };
      await Promise.all(Array.from({ length: 4 }, worker));
      this.#log.info({ agents: ids.length }, "drained");
    })();
    return this.#draining;
  }

  async #handOver(id: string): Promise<void> {
    let done!: () => void;
    const handover = new Promise<void>((resolve) => (done = resolve));
    this.#handovers.set(id, handover);
    try {
      await this.#handlers?.handOver(id);
      await this.store.release(id);
      this.stats.handedOver++;
    } catch (error) {
      this.#log.warn({ agent: id, err: error }, "handover failed; the agent's lease expires with this node");
    } finally {
      this.#handovers.delete(id);
      this.#routes.delete(id);
      done();
    }
  }

  /** `GET /cluster`: this node, and every live member with its advertisement. */
  async status(): Promise<ClusterStatus> {
    const members = await this.store.members();
    return {
      node: this.node,
      draining: this.draining,
      nodes: members.map((member) => ({
        node: member.node,
        incarnation: member.incarnation,
        startedAt: member.startedAt,
        expiresAt: member.expiresAt,
        ...(member.info ?? {}),
      })),
      stats: { ...this.stats, ...this.store.stats },
    };
  }

  /** Stops answering forwarded requests (running ones finish) and leaves the cluster; closes our connection. */
  async dispose(): Promise<void> {
    this.#events?.dispose();
    this.#view?.stop();
    await this.#server?.dispose();
    await this.store.dispose();
    await this.#client.close();
    if (this.#ownsConnection) await this.#connection.close().catch(() => {});
  }
}

export interface ClusterStatus {
  node: string;
  draining: boolean;
  nodes: Array<{ node: string; incarnation: string; startedAt: number; expiresAt: number } & Partial<NodeInfo>>;
  stats: Record<string, number>;
}
