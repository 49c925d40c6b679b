/**
 * Runtime events of every node of a cluster, for `runtime.events()` (and so `/events`) on any node: each
 * node publishes its own events on core NATS (`<prefix>.events.<node>`), and a node with open event
 * streams subscribes to all of them. Each relayed event's data carries the `node` it happened on.
 *
 * Token events are the bulk (one per streamed piece): a node publishes them only while some node has
 * an event stream open, which nodes tell each other in their membership advertisements (`listening`),
 * refreshed at once when a node opens its first stream. The other events are always published (a few
 * per turn); core NATS drops what no one subscribes to, at the server.
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { EventEmitter } from "eventemitter3";
import type { Logger } from "pino";
import { deserializeError, serializeError, type SerializedError } from "../errors.js";
import type { RuntimeEventName, RuntimeEvents } from "../events.js";
import { RUNTIME_EVENT_NAMES } from "./event-stream.js";

interface WireEvent {
  node: string;
  type: RuntimeEventName;
  data: Record<string, unknown>;
}

export class ClusterEvents {
  /** Every node's events (this one's included, as relayed): what event streams listen to. */
  readonly emitter = new EventEmitter<RuntimeEvents>();
  readonly #nc: NatsConnection;
  readonly #subject: string;
  readonly #wildcard: string;
  readonly #node: string;
  readonly #log: Logger;
  readonly #unsubscribe: Array<() => void> = [];
  #subscription: Subscription | undefined;
  #streams = 0;
  /** Whether some node of the cluster has an event stream open (from the members' advertisements). */
  anyoneListening: () => boolean = () => true;

  constructor(nc: NatsConnection, options: { prefix: string; node: string; log: Logger; local: EventEmitter<RuntimeEvents> }) {
    this.#nc = nc;
    this.#node = options.node;
    this.#subject = `${options.prefix}.events.${options.node}`;
    this.#wildcard = `${options.prefix}.events.*`;
    this.#log = options.log;
    for (const type of RUNTIME_EVENT_NAMES) {
      const listener = (data: unknown) => this.#publish(type, data);
      options.local.on(type, listener as never);
      this.#unsubscribe.push(() => options.local.off(type, listener as never));
    }
  }

  /** Whether this node has event streams open (advertised to the others). */
  get listening(): boolean {
    return this.#streams > 0;
  }

  /** Counts an event stream opened on this node; returns the function that counts it closed. */
  open(): () => void {
    this.#streams++;
    this.#subscription ??= this.#nc.subscribe(this.#wildcard, {
      callback: (error, msg) => {
        if (!error) this.#receive(msg.data);
      },
    });
    let closed = false;
    return () => {
      if (closed) return;
      closed = true;
      if (--this.#streams === 0) {
        this.#subscription?.unsubscribe();
        this.#subscription = undefined;
      }
    };
  }

  #publish(type: RuntimeEventName, data: unknown): void {
    if (type === "agent:token" && !this.anyoneListening()) return;
    if (this.#nc.isClosed()) return;
    const wire: WireEvent = { node: this.#node, type, data: { ...(data as Record<string, unknown>) } };
    if (type === "agent:error") wire.data.error = serializeError(wire.data.error);
    try {
      this.#nc.publish(this.#subject, JSON.stringify(wire));
    } catch (error) {
      this.#log.debug({ err: error }, "event not relayed");
    }
  }

  #receive(bytes: Uint8Array): void {
    let wire: WireEvent;
    try {
      wire = JSON.parse(Buffer.from(bytes).toString("utf8")) as WireEvent;
    } catch {
      return; // Not ours: nothing to relay.
    }
    if (typeof wire !== "object" || wire === null || !RUNTIME_EVENT_NAMES.includes(wire.type) || typeof wire.data !== "object" || wire.data === null)
      return;
    const data: Record<string, unknown> = { ...wire.data, node: String(wire.node) };
    if (wire.type === "agent:error") data.error = deserializeError(data.error as SerializedError);
    (this.emitter as unknown as EventEmitter).emit(wire.type, data);
  }

  dispose(): void {
    for (const off of this.#unsubscribe.splice(0)) off();
    this.#subscription?.unsubscribe();
    this.#subscription = undefined;
    this.emitter.removeAllListeners();
  }
}
