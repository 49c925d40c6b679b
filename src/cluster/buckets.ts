/**
 * The JetStream buckets a cluster keeps its state in, created on first use by whichever node comes first
 * (same configuration from every node, so creation is idempotent):
 *
 *   <prefix>-members   KV   membership records `m.<node>`; TTL only as garbage collection of dead nodes
 *   <prefix>-heads     KV   one head per agent `h.<agent>`: owner, epoch, pointers to the committed state
 *   <prefix>-data      KV   record chunks `r.<agent>.<gen>.<epoch>.<i>`, journal entries `j.<agent>.<gen>.<seq>.<epoch>`
 *   <prefix>-kv        object store: saved KV cache files `<agent>/kv-<sha>.<ext>`
 *
 * Every one file-backed with `replicas` replicas (3 in a 3-server cluster: an acknowledged write is on a
 * majority), direct gets off so that reads go through the stream leader and never see a lagging replica.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { Kvm, type KV, type KvOptions } from "@nats-io/kv";
import { Objm, StorageType, type ObjectStore } from "@nats-io/obj";
import { Cas } from "./cas.js";
import { validatePrefix } from "./keys.js";

export interface ClusterBuckets {
  members: KV;
  heads: KV;
  data: KV;
  objects: ObjectStore;
  /** Compare-and-set on the members and heads buckets that holds when writers race (see `cas.ts`). */
  membersCas: Cas;
  headsCas: Cas;
}

export interface BucketOptions {
  /** Bucket name prefix. Default "agentrt". */
  prefix?: string | undefined;
  /** Replicas of every bucket: 1, 3 or 5. Default 3. */
  replicas?: number | undefined;
  /** How long a membership record outlives its last renewal before the server deletes it, in ms. Default 1 hour. */
  membersTtlMs?: number | undefined;
  /** JetStream request timeout in ms. Default 5 000. */
  timeoutMs?: number | undefined;
}

export async function openClusterBuckets(nc: NatsConnection, options: BucketOptions = {}): Promise<ClusterBuckets> {
  const prefix = validatePrefix(options.prefix ?? "agentrt");
  const replicas = options.replicas ?? 3;
  if (![1, 3, 5].includes(replicas)) throw new RangeError(`replicas must be 1, 3 or 5, got ${replicas}`);
  const timeout = options.timeoutMs ?? 5000;
  const kvm = new Kvm(nc);
  const base: Partial<KvOptions> = { replicas, history: 1, storage: StorageType.File, allow_direct: false, timeout };
  // Nodes starting together all create: an identical request succeeds or finds the stream there; one
  // that times out while the meta group is busy placing streams is tried again.
  const retried = async <T>(create: () => Promise<T>): Promise<T> => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await create();
      } catch (error) {
        if (attempt >= 4) throw error;
        await new Promise((resolve) => setTimeout(resolve, 200 * (attempt + 1)));
      }
    }
  };
  const open = (name: string, extra: Partial<KvOptions> = {}): Promise<KV> => retried(() => kvm.create(`${prefix}-${name}`, { ...base, ...extra }));
  // Created together: each is a replicated stream whose raft group elects its own leader.
  const [members, heads, data, objects] = await Promise.all([
    open("members", { ttl: options.membersTtlMs ?? 3_600_000 }),
    open("heads"),
    open("data"),
    retried(() => new Objm(nc).create(`${prefix}-kv`, { replicas, storage: StorageType.File })),
  ]);
  const js = jetstream(nc, { timeout });
  return { members, heads, data, objects, membersCas: new Cas(js, `${prefix}-members`, timeout), headsCas: new Cas(js, `${prefix}-heads`, timeout) };
}
