/**
 * Every node's membership record as it changes, for decisions that cannot wait for reads (placement,
 * whether anyone wants token events): a watch of the members bucket delivers each renewal of each node
 * as it is written (the client re-creates its consumer when a server fails over). Should the watch end,
 * the records are read instead, at most every 500 ms.
 */
import type { KV } from "@nats-io/kv";
import type { Logger } from "pino";
import { parseMember, type Membership, type MemberRecord } from "./membership.js";

const READ_EVERY_MS = 500;

export class MemberView {
  readonly #membership: Membership;
  readonly #records = new Map<string, MemberRecord>();
  #watch: { stop(): void } | undefined;
  #read: { at: number; list: Promise<MemberRecord[]> } | undefined;

  private constructor(membership: Membership) {
    this.#membership = membership;
  }

  /** Starts watching `members` (the members bucket) as seen by `membership` (this node's). */
  static async start(members: KV, membership: Membership, log: Pick<Logger, "warn">): Promise<MemberView> {
    const view = new MemberView(membership);
    const watch = await members.watch({ key: "m.*" });
    view.#watch = watch;
    void (async () => {
      for await (const entry of watch) {
        const record = entry.operation === "PUT" ? parseMember(entry.value) : undefined;
        if (record) view.#records.set(entry.key, record);
        else view.#records.delete(entry.key);
      }
    })()
      .catch((error: unknown) => log.warn({ err: error }, "members watch ended; the members bucket is read instead"))
      .finally(() => (view.#watch = undefined));
    return view;
  }

  /** The live members, this node included with its current advertisement (see `Membership.liveAmong`). */
  list(): Promise<MemberRecord[]> {
    if (this.#watch) return Promise.resolve(this.#membership.liveAmong(this.#records));
    const now = Date.now();
    if (!this.#read || now - this.#read.at > READ_EVERY_MS) {
      const list = this.#membership.members();
      this.#read = { at: now, list };
      list.catch(() => (this.#read = undefined));
    }
    return this.#read.list;
  }

  /** Whether any other node advertised an open event stream at its last renewal (no I/O). */
  othersListening(): boolean {
    for (const record of this.#records.values()) if (record.info?.listening === true) return true;
    return false;
  }

  stop(): void {
    this.#watch?.stop();
    this.#watch = undefined;
  }
}
