/**
 * A `StateStore` shared by every node of a cluster, on NATS JetStream (buckets: see `buckets.ts`).
 *
 * - **State**: an agent is its head (`head.ts`) plus the data keys it names: the record as of the last
 *   compaction (checksummed, in chunks under the payload limit) and one journal entry per turn since.
 *   A turn writes its entry, then compare-and-sets the head: two replicated writes whatever the
 *   history's length; the record is rewritten (generation + 1) once the journal outgrows it.
 * - **Fencing**: data keys carry the epoch of the owner that wrote them, so owners never write each
 *   other's keys, and a change exists only once the head names it. The head is compare-and-set at the
 *   revision this node last wrote: a node that lost its lease cannot commit (ERR_LEASE_LOST), and the
 *   entry it may have written is never read (nothing names it) and swept by a later compaction.
 * - **Saved caches**: local file first, upload behind, head updated after (`kv-files.ts`).
 *
 * Single writer per agent: `open()` registers this process as a node (`membership.ts`); `write()` of a
 * new agent takes its lease, an existing agent's lease is taken with `acquire(id)` (free, released, or
 * its owner's membership expired), and every mutation of an agent this node does not hold fails with
 * ERR_NOT_OWNER (never held) or ERR_LEASE_LOST (held, then lost). Reads need no lease.
 */
import { kvChecksum } from "../store/kv-descriptor.js";
import { KeyedQueue } from "../store/keyed-queue.js";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Clock } from "../clock.js";
import { AgentRuntimeError } from "../errors.js";
import type {
  AgentRecord,
  HistoryOptions,
  HistoryPage,
  KvDescriptor,
  ListOptions,
  StagedKv,
  StateStore,
  StoredAgentPage,
  TurnAppend,
} from "../store/state-store.js";
import { openClusterBuckets, type BucketOptions, type ClusterBuckets } from "./buckets.js";
import { AgentData, checkMessages, corrupt, MissingKey, sealEntry } from "./agent-data.js";
import { appendRun, journalLength, type Head } from "./head.js";
import { agentToken, keys, tokenToAgent } from "./keys.js";
import { KvFiles } from "./kv-files.js";
import { AgentLeases, readHead, type HeadAt } from "./leases.js";
import { retryTransient } from "./nats-errors.js";
import { Membership, type MemberRecord, type MembershipOptions, type NodeIncarnation } from "./membership.js";

const DEFAULT_LIST_LIMIT = 100;
const MAX_LIST_LIMIT = 1000;

export interface NatsStoreOptions extends BucketOptions {
  /** A connection to the cluster (the caller's: the store never closes it). Required. */
  connection: NatsConnection;
  /** This node's name (`[a-z0-9_-]`, 1–64), unique among live nodes. Required. */
  node: string;
  /** Local folder for saved KV caches: the first copy, and a cache of other nodes' uploads. Required. */
  cacheDir: string;
  /** Membership timing: TTL (default 10 s), renewal interval (default TTL/3), clock skew margin (default 1 s). */
  lease?: Pick<MembershipOptions, "ttlMs" | "renewEveryMs" | "maxClockSkewMs"> | undefined;
  /** Time source for membership expiry. Default the system clock. */
  clock?: Clock | undefined;
  /**
   * When the journal is folded into a new record: once it holds at least `minBytes` (default 64 KiB) and
   * `ratio` (default 1) times the record's size, or `maxEntries` entries (default 256: reads stay short).
   */
  compaction?: { minBytes?: number; ratio?: number; maxEntries?: number } | undefined;
  /** fsync local KV files. Default true. */
  fsync?: boolean | undefined;
  /**
   * Called once if this node's membership is lost for good (another process replaced its record): every
   * lease is gone and every later commit fails ERR_LEASE_LOST; the node should drop its agents and rejoin.
   */
  onMembershipLost?: ((reason: string) => void) | undefined;
  /** This node's advertisement, sent with every membership renewal (see membership.ts `describe`). */
  describe?: MembershipOptions["describe"];
  /** Called when a saved cache could not be uploaded (the agent keeps its local copy; others rebuild from history). */
  onUploadError?: ((event: { id: string; error: unknown }) => void) | undefined;
}

/** What this store object wrote since it was created (for benchmarks and tests). */
export interface NatsStoreStats {
  appends: number;
  compactions: number;
  recordWrites: number;
  headCommits: number;
  dataPuts: number;
}

interface Pending {
  kv: KvDescriptor;
  updatedAt: number;
}

/** Whether two descriptors name the same saved file. */
function sameFile(a: KvDescriptor | undefined, b: KvDescriptor | null | undefined): boolean {
  return a !== undefined && b !== undefined && b !== null && a.file === b.file && a.sha256 === b.sha256;
}

function writeFailed(id: string, what: string, error: unknown): AgentRuntimeError {
  if (error instanceof AgentRuntimeError) return error;
  return new AgentRuntimeError("ERR_STATE_WRITE_FAILED", `Could not ${what} of ${id}: ${(error as Error).message}`, {
    cause: error,
    details: { id },
  });
}

function checkLimit(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > MAX_LIST_LIMIT) {
    throw new RangeError(`${name} must be an integer from 1 to ${MAX_LIST_LIMIT}, got ${String(value)}`);
  }
  return value;
}

export class NatsStore implements StateStore {
  readonly location: string;
  readonly #buckets: ClusterBuckets;
  readonly #options: NatsStoreOptions;
  readonly #files: KvFiles;
  readonly #data: AgentData;
  readonly #minBytes: number;
  readonly #ratio: number;
  readonly #maxEntries: number;
  readonly #queues = new KeyedQueue();
  readonly #pending = new Map<string, Pending>();
  readonly #uploads = new Set<Promise<void>>();
  #leases: AgentLeases | undefined;
  #opening: Promise<void> | undefined;
  #disposed = false;
  readonly #stats = { appends: 0, compactions: 0, headCommits: 0 };

  private constructor(buckets: ClusterBuckets, options: NatsStoreOptions) {
    this.#buckets = buckets;
    this.#options = options;
    this.location = `nats://${options.connection.getServer()}/${options.prefix ?? "agentrt"}`;
    this.#files = new KvFiles(options.cacheDir, buckets.objects, { fsync: options.fsync });
    // Chunks stay well under the server's payload limit (1 MiB by default), headers and envelope included.
    const maxPayload = options.connection.info?.max_payload ?? 1024 * 1024;
    this.#data = new AgentData(buckets.data, {
      chunkBytes: Math.max(16 * 1024, Math.min(512 * 1024, maxPayload - 16 * 1024)),
      location: this.location,
    });
    this.#minBytes = options.compaction?.minBytes ?? 64 * 1024;
    this.#ratio = options.compaction?.ratio ?? 1;
    this.#maxEntries = options.compaction?.maxEntries ?? 256;
    if (!(this.#minBytes >= 0)) throw new RangeError("compaction.minBytes must be a number ≥ 0");
    if (!(this.#ratio > 0)) throw new RangeError("compaction.ratio must be a number > 0");
    if (!Number.isInteger(this.#maxEntries) || this.#maxEntries < 1) throw new RangeError("compaction.maxEntries must be an integer ≥ 1");
  }

  /** A store on the cluster's buckets (created when missing). Call `open()` before writing. */
  static async create(options: NatsStoreOptions): Promise<NatsStore> {
    if (typeof options !== "object" || options === null || !options.connection) throw new TypeError("connection is required");
    if (typeof options.cacheDir !== "string" || options.cacheDir === "") throw new TypeError("cacheDir must be a folder path");
    return new NatsStore(await openClusterBuckets(options.connection, options), options);
  }

  get stats(): Readonly<NatsStoreStats & { uploads: number; downloads: number; localHits: number; fenced: number; renewals: number }> {
    const files = this.#files.stats;
    return {
      ...this.#stats,
      recordWrites: this.#data.stats.recordWrites,
      dataPuts: this.#data.stats.puts,
      uploads: files.uploads,
      downloads: files.downloads,
      localHits: files.localHits,
      fenced: this.#leases?.fenced ?? 0,
      renewals: this.#leases?.membership.renewals ?? 0,
    };
  }

  /** This node's membership (after `open()`). */
  get membership(): Membership | undefined {
    return this.#leases?.membership;
  }

  /** The buckets (for tools and tests that inspect or damage them). */
  get buckets(): ClusterBuckets {
    return this.#buckets;
  }

  /**
   * Joins the cluster as `node` (one membership record, renewed in the background). Single-writer is per
   * agent here: see the class comment. ERR_STATE_LOCKED when a live process uses the same node name.
   */
  async open(): Promise<void> {
    if (this.#disposed) throw new AgentRuntimeError("ERR_LEASE_LOST", "This store was disposed");
    this.#opening ??= (async () => {
      const membership = await Membership.join(this.#buckets.members, this.#buckets.membersCas, {
        node: this.#options.node,
        ...this.#options.lease,
        clock: this.#options.clock,
        onLost: this.#options.onMembershipLost,
        describe: this.#options.describe,
      });
      this.#leases = new AgentLeases(this.#buckets.heads, this.#buckets.headsCas, membership);
    })().catch((error: unknown) => {
      this.#opening = undefined;
      throw error;
    });
    await this.#opening;
  }

  /** Waits for background uploads, then leaves the cluster (others may take this node's agents at once). Idempotent. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    await this.settled();
    await this.#leases?.membership.leave();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  /** Resolves once every upload started so far has finished (committed, superseded or failed). */
  async settled(): Promise<void> {
    while (this.#uploads.size > 0) await Promise.allSettled([...this.#uploads]);
  }

  #requireLeases(id: string): AgentLeases {
    if (!this.#leases || this.#disposed) {
      throw new AgentRuntimeError("ERR_NOT_OWNER", `This store holds no leases (open() it first) and may not write ${id}`, { details: { id } });
    }
    return this.#leases;
  }

  /** Takes the lease of an existing agent: free, released, or its owner's membership expired. See {@link AgentLeases.acquire}. */
  async acquire(id: string): Promise<void> {
    agentToken(id);
    const leases = this.#requireLeases(id);
    await this.#exclusive(id, async () => {
      await leases.acquire(id);
    });
  }

  /** Gives up the lease of `id` after pending uploads, so another node may take it at once. */
  async release(id: string): Promise<void> {
    agentToken(id);
    await this.settled();
    await this.#exclusive(id, () => this.#requireLeases(id).release(id));
  }

  /** The epoch of this node's lease on `id`, or undefined when it holds none (local, no I/O). */
  heldEpoch(id: string): number | undefined {
    return this.holds(id) ? this.#leases?.heldHead(id)?.epoch : undefined;
  }

  /** Whether this node holds the lease of `id` (local check). */
  holds(id: string): boolean {
    return this.#leases?.holds(id) ?? false;
  }

  /** How many agents' leases this node holds (local, no I/O). */
  get heldCount(): number {
    return this.#leases?.size ?? 0;
  }

  /** Ids whose lease this node holds (local, no I/O). */
  heldIds(): string[] {
    return this.#leases?.heldIds() ?? [];
  }

  /**
   * Who owns `id` as seen from here: the head's owner and whether its membership is alive (this node's
   * own lease counts as alive while its membership is valid). Undefined when there is no agent.
   */
  async lookup(id: string): Promise<{ owner: NodeIncarnation | null; alive: boolean; epoch: number } | undefined> {
    agentToken(id);
    const at = await this.#headsReader().read(id);
    if (!at) return undefined;
    const owner = at.head.owner;
    const alive = owner !== null && this.#leases !== undefined && (await this.#leases.membership.isAlive(owner));
    return { owner, alive, epoch: at.head.epoch };
  }

  /** The live members with their advertisements (see membership.ts); [] before `open()`. */
  async members(): Promise<MemberRecord[]> {
    return (await this.#leases?.membership.members()) ?? [];
  }

  /** Renews the membership now, so that a changed advertisement (draining) is seen at once. */
  async announce(): Promise<void> {
    await this.#leases?.membership.announce();
  }

  /** The owner recorded in the agent's head (node and epoch), or undefined when there is no agent. */
  async owner(id: string): Promise<{ node: string | undefined; epoch: number } | undefined> {
    const at = await this.#headsReader().read(id);
    return at && { node: at.head.owner?.node, epoch: at.head.epoch };
  }

  #headsReader(): { read: (id: string) => Promise<HeadAt | undefined> } {
    return this.#leases ?? { read: (id) => readHead(this.#buckets.heads, id) };
  }

  /** The head this node holds for `id`; ERR_AGENT_NOT_FOUND when there is no agent, else ERR_NOT_OWNER / ERR_LEASE_LOST. */
  async #held(id: string): Promise<Head> {
    const leases = this.#requireLeases(id);
    try {
      return await leases.current(id);
    } catch (error) {
      if (error instanceof AgentRuntimeError && error.code === "ERR_NOT_OWNER" && !(await this.has(id))) {
        throw new AgentRuntimeError("ERR_AGENT_NOT_FOUND", `No stored agent with id ${JSON.stringify(id)}`, { details: { id } });
      }
      throw error;
    }
  }

  #exclusive<T>(id: string, work: () => Promise<T>): Promise<T> {
    return this.#queues.run(id, work);
  }

  // ---- reading -------------------------------------------------------------------------------------

  async list(options: ListOptions = {}): Promise<StoredAgentPage> {
    if (typeof options !== "object" || options === null) throw new TypeError("list options must be an object");
    const { prefix, after } = options;
    if (prefix !== undefined && typeof prefix !== "string") throw new TypeError("prefix must be a string");
    if (after !== undefined && typeof after !== "string") throw new TypeError("after must be a string");
    const limit = checkLimit("limit", options.limit, DEFAULT_LIST_LIMIT);
    const ids = (await this.#allIds()).filter((id) => (prefix === undefined || id.startsWith(prefix)) && (after === undefined || id > after));
    const page = ids.slice(0, limit);
    return ids.length > limit ? { ids: page, next: page[page.length - 1] } : { ids: page };
  }

  async count(): Promise<number> {
    return (await this.#allIds()).length;
  }

  /** Every agent id with a head, sorted; keys that no valid id could produce (hostile input) are skipped. */
  async #allIds(): Promise<string[]> {
    const ids: string[] = [];
    for await (const key of await this.#buckets.heads.keys("h.*")) {
      const id = tokenToAgent(key.slice(2));
      if (id !== undefined) ids.push(id);
    }
    return ids.sort();
  }

  async has(id: string): Promise<boolean> {
    const key = keys.head(agentToken(id));
    const entry = await retryTransient(() => this.#buckets.heads.get(key));
    return entry?.operation === "PUT";
  }

  async read(id: string): Promise<AgentRecord | undefined> {
    agentToken(id);
    const loaded = await this.#load(id);
    if (!loaded) return undefined;
    // The same node's newer saved cache (uploading still) is the better one for it to use.
    const pending = this.#pending.get(id);
    if (pending && this.#leases?.holds(id)) {
      loaded.record.kv = pending.kv;
      loaded.record.updatedAt = Math.max(loaded.record.updatedAt, pending.updatedAt);
    }
    return loaded.record;
  }

  async history(id: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    if (typeof options !== "object" || options === null) throw new TypeError("history options must be an object");
    const limit = checkLimit("limit", options.limit, DEFAULT_LIST_LIMIT);
    if (options.before !== undefined && (!Number.isInteger(options.before) || options.before < 0)) {
      throw new RangeError(`before must be an integer ≥ 0, got ${String(options.before)}`);
    }
    const record = await this.read(id);
    if (!record) throw new AgentRuntimeError("ERR_AGENT_NOT_FOUND", `No agent with id ${JSON.stringify(id)}`, { details: { id } });
    const total = record.history.length;
    const end = Math.min(options.before ?? total, total);
    const start = Math.max(0, end - limit);
    return { messages: record.history.slice(start, end), start, total };
  }

  /** The committed state: the head, then what it names. A key gone under the reader means a compaction: read again. */
  async #load(id: string): Promise<{ record: AgentRecord; head: Head } | undefined> {
    for (let attempt = 1; ; attempt++) {
      const at = await this.#headsReader().read(id);
      if (!at) return undefined;
      try {
        return { record: await this.#data.materialize(id, at.head), head: at.head };
      } catch (error) {
        if (!(error instanceof MissingKey)) throw error;
        const now = await this.#headsReader().read(id);
        if (attempt >= 3 || now?.revision === at.revision) throw corrupt(id, `${error.message} is missing`, error);
      }
    }
  }

  // ---- writing -------------------------------------------------------------------------------------

  async write(record: AgentRecord): Promise<void> {
    if (typeof record !== "object" || record === null) throw new TypeError("record must be an object");
    agentToken(record.id);
    const id = record.id;
    this.#requireLeases(id);
    return this.#exclusive(id, () => this.#writeLocked(record));
  }

  async #writeLocked(record: AgentRecord): Promise<void> {
    const id = record.id;
    const leases = this.#requireLeases(id);
    let previous: Head | undefined;
    try {
      if (leases.holds(id)) {
        previous = await leases.current(id);
        const next = await this.#data.putRecord(record, previous.gen + 1, previous.epoch);
        // The record replaces the saved cache too: the committed one is kept when the record names it or
        // the one uploading now (which the upload will commit), else none until an upload names one.
        const keep = record.kv !== undefined && (sameFile(record.kv, previous.kv) || sameFile(record.kv, this.#pending.get(id)?.kv));
        await leases.commit(id, (head) => ({
          ...head,
          gen: head.gen + 1,
          record: next,
          journal: [],
          journalBytes: 0,
          kv: keep ? head.kv : null,
          kvObject: keep ? head.kvObject : null,
          updatedAt: record.updatedAt,
        }));
      } else {
        leases.membership.check(id);
        // A new agent: the record is written first (its keys are ours alone: epoch above the tombstone),
        // then the head that names it is created. A lost race leaves unnamed keys, swept by the winner.
        // An existing agent is replaced only by its owner, never taken over by a write: a node that lost
        // the lease would otherwise overwrite the new owner's acknowledged turns with its stale copy.
        if (await this.has(id)) leases.check(id); // throws ERR_NOT_OWNER or ERR_LEASE_LOST
        const tombstone = await this.#buckets.heads.get(keys.head(agentToken(id)));
        const written = await this.#data.putRecord(record, 1, (tombstone?.revision ?? 0) + 1);
        const created = await leases.create(id, ({ owner, epoch }) => ({
          id,
          owner,
          epoch,
          gen: 1,
          record: written,
          journal: [],
          journalBytes: 0,
          kv: null,
          kvObject: null,
          updatedAt: record.updatedAt,
          op: "",
        }));
        if (!created) leases.check(id); // lost the race to create it: throws ERR_NOT_OWNER
      }
      this.#stats.headCommits++;
    } catch (error) {
      throw writeFailed(id, "write the record", error);
    }
    const head = leases.heldHead(id)!;
    if (previous) {
      await this.#dropNamed(id, previous, head);
      if (previous.kvObject && !head.kvObject) await this.#files.deleteObject(previous.kvObject);
    }
    // An upload of a cache the new record does not name is superseded: it will not commit.
    if (!sameFile(record.kv, this.#pending.get(id)?.kv)) this.#pending.delete(id);
    // A saved cache the record names, neither committed nor uploading: committed once it is uploaded.
    if (record.kv && !sameFile(record.kv, head.kv) && !sameFile(record.kv, this.#pending.get(id)?.kv))
      this.#startUpload(id, record.kv, record.updatedAt);
  }

  async appendTurn(id: string, turn: TurnAppend): Promise<void> {
    agentToken(id);
    if (typeof turn !== "object" || turn === null) throw new TypeError("turn must be an object");
    checkMessages(turn.messages);
    if (!Number.isFinite(turn.updatedAt)) throw new TypeError("turn.updatedAt must be a finite number");
    const { messages, updatedAt } = turn;
    const leases = this.#requireLeases(id);
    return this.#exclusive(id, async () => {
      const head = await this.#held(id); // ERR_NOT_OWNER / ERR_LEASE_LOST before any write
      const seq = journalLength(head) + 1;
      const value = sealEntry({ id, gen: head.gen, seq, epoch: head.epoch, at: updatedAt, messages });
      if (value.length > this.#data.chunkBytes) {
        // One turn larger than a chunk: folded into a new record (chunked) rather than a journal entry.
        const loaded = await this.#data.materialize(id, head);
        loaded.history.push(...messages);
        loaded.updatedAt = updatedAt;
        await this.#writeLocked({ ...loaded, kv: this.#latestKv(id, head) });
        this.#stats.appends++;
        return;
      }
      try {
        await this.#data.put(keys.entry(agentToken(id), head.gen, seq, head.epoch), value);
        await leases.commit(id, (current) => ({
          ...current,
          journal: appendRun(current.journal, current.epoch),
          journalBytes: current.journalBytes + value.length,
          updatedAt,
        }));
      } catch (error) {
        throw writeFailed(id, "append a turn", error);
      }
      this.#stats.appends++;
      this.#stats.headCommits++;
      const after = leases.heldHead(id)!;
      if (journalLength(after) >= this.#maxEntries || after.journalBytes >= Math.max(this.#minBytes, this.#ratio * after.record.bytes)) {
        // The turn is committed whatever happens here; a failed compaction is retried at the next turn.
        await this.#compact(id).catch(() => {});
      }
    });
  }

  /** The newest saved cache: the one uploading, else the committed one. A rewrite that keeps it cancels nothing. */
  #latestKv(id: string, head: Head): KvDescriptor | undefined {
    return this.#pending.get(id)?.kv ?? head.kv ?? undefined;
  }

  async #compact(id: string): Promise<void> {
    const leases = this.#requireLeases(id);
    const head = await leases.current(id);
    const record = await this.#data.materialize(id, head);
    await this.#writeLocked({ ...record, kv: this.#latestKv(id, head) });
    this.#stats.compactions++;
  }

  /** Purges what `before` named and `after` no longer does (an older generation), and unnamed keys up to our epoch. */
  async #dropNamed(id: string, before: Head, after: Head): Promise<void> {
    const token = agentToken(id);
    const named = new Set(this.#data.namedKeys(token, after));
    await this.#data.purge(
      id,
      this.#data.namedKeys(token, before).filter((key) => !named.has(key)),
      named,
      after.epoch,
    );
  }

  /**
   * Commits a new saved cache, or none. A new cache is durable on this node when this resolves (its file
   * was fsynced at `commit()`), and this node reads and opens it from then on; the head names it — and
   * other nodes see it — once its upload to the object store is complete (`settled()` waits for that).
   * Until then others use the previous cache or rebuild from the history. `undefined` commits at once.
   */
  async setKv(id: string, kv: KvDescriptor | undefined, updatedAt: number): Promise<void> {
    agentToken(id);
    if (kv !== undefined && (typeof kv !== "object" || kv === null || typeof kv.file !== "string")) {
      throw new TypeError("kv must be a KV descriptor or undefined");
    }
    if (!Number.isFinite(updatedAt)) throw new TypeError("updatedAt must be a finite number");
    const leases = this.#requireLeases(id);
    return this.#exclusive(id, async () => {
      const head = await this.#held(id);
      if (kv !== undefined && !sameFile(kv, head.kv)) {
        // Durable here already (the staged file was fsynced at commit); shared once uploaded.
        this.#startUpload(id, kv, updatedAt);
        return;
      }
      this.#pending.delete(id);
      try {
        await leases.commit(id, (current) => ({
          ...current,
          kv: kv ?? null,
          kvObject: kv ? current.kvObject : null,
          updatedAt: Math.max(current.updatedAt, updatedAt),
        }));
      } catch (error) {
        throw writeFailed(id, "commit the saved cache", error);
      }
      this.#stats.headCommits++;
      if (!kv && head.kvObject) await this.#files.deleteObject(head.kvObject);
      await this.#files.sweepLocal(id, new Set(kv ? [kv.file] : []));
    });
  }

  /** Uploads the saved cache behind the caller, then names it in the head (unless superseded or the lease is gone). */
  #startUpload(id: string, kv: KvDescriptor, updatedAt: number): void {
    const pending: Pending = { kv, updatedAt };
    this.#pending.set(id, pending);
    const leases = this.#requireLeases(id);
    const name = this.#files.objectName(id, kv, leases.check(id).epoch);
    const job = (async () => {
      await this.#files.upload(id, kv, name);
      const committed = await this.#exclusive(id, async () => {
        if (this.#pending.get(id) !== pending) return false;
        const before = await leases.current(id);
        await leases.commit(id, (head) => ({ ...head, kv, kvObject: name, updatedAt: Math.max(head.updatedAt, updatedAt) }));
        this.#stats.headCommits++;
        this.#pending.delete(id);
        if (before.kvObject) await this.#files.deleteObject(before.kvObject);
        await this.#files.sweepLocal(id, new Set([kv.file]));
        return true;
      });
      // Superseded: nothing names this upload (and its name is its own, so deleting it touches nothing else).
      if (!committed) await this.#files.deleteObject(name);
    })().catch(async (error: unknown) => {
      if (this.#pending.get(id) === pending) this.#pending.delete(id);
      await this.#files.deleteObject(name);
      this.#options.onUploadError?.({ id, error });
    });
    this.#uploads.add(job);
    void job.finally(() => this.#uploads.delete(job));
  }

  async remove(id: string): Promise<void> {
    agentToken(id);
    const leases = this.#requireLeases(id);
    return this.#exclusive(id, async () => {
      await this.#held(id);
      let head: Head;
      try {
        head = await leases.remove(id);
      } catch (error) {
        throw writeFailed(id, "remove the agent", error);
      }
      this.#pending.delete(id);
      await this.#data.purge(id, this.#data.namedKeys(agentToken(id), head), new Set(), head.epoch);
      if (head.kvObject) await this.#files.deleteObject(head.kvObject);
      await this.#files.removeLocal(id);
    });
  }

  // ---- saved caches --------------------------------------------------------------------------------

  async stageKv(id: string, extension = ".bin"): Promise<StagedKv> {
    agentToken(id);
    return this.#files.stage(id, extension);
  }

  async openKv(id: string, kv: KvDescriptor): Promise<string> {
    agentToken(id);
    return this.#files.open(id, kv, async () => {
      const at = await this.#headsReader().read(id);
      const named = at?.head.kv;
      const same = named && named.file === kv.file && JSON.stringify(kvChecksum(named)) === JSON.stringify(kvChecksum(kv));
      return same ? (at.head.kvObject ?? undefined) : undefined;
    });
  }

  async bytesOnDisk(id: string): Promise<number> {
    const at = await this.#headsReader()
      .read(id)
      .catch(() => undefined);
    if (!at) return 0;
    return at.head.record.bytes + at.head.journalBytes + (at.head.kv?.bytes ?? 0);
  }
}
