/**
 * The host-memory tier of passivated agents' KV states: deferred durability. A passivation has the
 * engine save into the store's staging file (`stageKv`: a local file, in the OS page cache) and returns
 * at once: no fsync, no checksum pass, no rename, no journal append on the agent's way out. A background
 * writer then commits each state (fsync, checksum, rename, folder fsync: `commit()`) and the record's
 * pointer (`setKv`), one at a time, oldest first. Until that is durable the store still names the
 * agent's previous state file (or none), and the history — durable before every acknowledgement, as
 * always — is what a crash falls back to: the agent is rebuilt from it (or from its older state file,
 * whose cache is a prefix the next turn extends). A rehydration before the commit loads the staged file
 * itself, unverified but checked to be the very file the engine wrote (same inode, size, mtime and ctime:
 * any write or replacement changes them); after it, the store's file (this process committed it, so the
 * store does not hash it again).
 *
 * At most `maxBytes` of states wait for their commit; a passivation beyond that waits for the oldest.
 * Why the page cache rather than a RAM file system (`/dev/shm`): reading a 48 MB file from tmpfs ran at
 * 0.44× the speed of reading it from the page cache on the development machine, and a state staged in
 * the store's folder needs no copy to become durable (bench/README.md, bench:tier).
 */
import type { BigIntStats } from "node:fs";
import { stat } from "node:fs/promises";
import type { EngineName } from "../engines/engine.js";
import { sameIdentity } from "../store/record-file.js";
import type { KvDescriptor, StagedKv, StateStore } from "../store/state-store.js";

/** A state saved by the engine into a staged file, and what its descriptor will say once committed. */
export interface HostState {
  readonly id: string;
  readonly staged: StagedKv;
  readonly bytes: number;
  readonly tokens: number;
  readonly fingerprint: string;
  readonly engine: EngineName;
  readonly historyLength: number;
}

interface Entry extends HostState {
  identity: BigIntStats;
  /** Dropped (replaced, loaded back, unloaded, removed): its commit is skipped if it has not started. */
  dropped: boolean;
  /** The commit failed (the entry is dropped; the history is durable). */
  failed: boolean;
  /** Handed to the engine to load: its commit must not start (it would rename the file away). */
  loading: boolean;
  writing: boolean;
  written: Promise<void>;
}

export interface HostTierOptions {
  /** Most bytes of passivated states waiting for their commit. */
  maxBytes: number;
  store: StateStore;
  now: () => number;
  /** A state became durable: the store now names `kv`. */
  onDurable(id: string, kv: KvDescriptor): void;
  /** A background commit failed; the store keeps naming the older state (or none). */
  onWriteFailed(id: string, error: unknown): void;
}

/** Figures for benchmarks and tests. */
export interface HostTierStats {
  /** Bytes of states waiting for their commit. */
  bytes: number;
  entries: number;
  /** Rehydrations from a state not yet committed. */
  hits: number;
  writes: number;
  writeFailures: number;
  /** Passivations that waited for a commit to stay within `maxBytes`. */
  waits: number;
}

export class HostTier {
  readonly #options: HostTierOptions;
  /** Least recently passivated first (Map insertion order). */
  readonly #entries = new Map<string, Entry>();
  #queue: Promise<void> = Promise.resolve();
  #disposed = false;
  readonly #stats: HostTierStats = { bytes: 0, entries: 0, hits: 0, writes: 0, writeFailures: 0, waits: 0 };

  constructor(options: HostTierOptions) {
    if (!Number.isSafeInteger(options.maxBytes) || options.maxBytes < 1) {
      throw new RangeError(`hostCacheBytes must be a positive integer, got ${options.maxBytes}`);
    }
    this.#options = options;
  }

  get stats(): Readonly<HostTierStats> {
    return { ...this.#stats, entries: this.#entries.size };
  }

  /**
   * Keeps a state the engine just saved into `state.staged`, replacing the agent's previous one, and
   * queues its commit. Then call `fit()`. Throws (keeping nothing) when the file is not what was saved.
   */
  async add(state: HostState): Promise<void> {
    if (this.#disposed) throw new Error("the host tier is disposed");
    const identity = await stat(state.staged.path, { bigint: true });
    // On a full disk the engine can lose its last buffered block without an error: check what landed.
    if (identity.size !== BigInt(state.bytes)) throw new Error(`the saved state has ${identity.size} bytes; the engine wrote ${state.bytes}`);
    const previous = this.#entries.get(state.id);
    if (previous) this.#drop(previous);
    const entry: Entry = { ...state, identity, dropped: false, failed: false, loading: false, writing: false, written: Promise.resolve() };
    this.#entries.set(state.id, entry);
    this.#stats.bytes += entry.bytes;
    entry.written = this.#queue = this.#queue.then(() => this.#write(entry));
  }

  /** Resolves once at most `maxBytes` wait for their commit (waiting for the oldest commits if needed). */
  async fit(): Promise<void> {
    let waited = false;
    while (this.#stats.bytes > this.#options.maxBytes && !this.#disposed) {
      // Oldest first; a state being loaded leaves the tier as soon as its load ends, so it is not waited for.
      const oldest = [...this.#entries.values()].find((e) => !e.loading);
      if (!oldest) return;
      waited = true;
      await oldest.written;
    }
    if (waited) this.#stats.waits++;
  }

  /**
   * The agent's staged state when it waits for its commit and is still the file the engine wrote; its
   * commit is then held off until `loaded` or `forget`. Undefined when there is none, or when its commit
   * is already running (awaited first: the store then names it).
   */
  async take(id: string, fingerprint: string): Promise<string | undefined> {
    let entry = this.#entries.get(id);
    if (entry?.writing) {
      await entry.written;
      entry = this.#entries.get(id);
    }
    if (!entry || entry.writing || entry.fingerprint !== fingerprint) return undefined;
    entry.loading = true;
    const identity = await stat(entry.staged.path, { bigint: true }).catch(() => undefined);
    if (!sameIdentity(identity, entry.identity)) {
      this.#drop(entry);
      return undefined;
    }
    this.#stats.hits++;
    return entry.staged.path;
  }

  /**
   * The engine loaded the agent's staged state: its commit is skipped and the file deleted (the agent is
   * saved again on its next passivation). No write of the agent's files runs while it is resident.
   */
  loaded(id: string): void {
    const entry = this.#entries.get(id);
    if (entry) this.#drop(entry);
  }

  /** Forgets the agent's state (unloaded, broken cache, removal); a commit already running finishes. */
  forget(id: string): void {
    const entry = this.#entries.get(id);
    if (entry) this.#drop(entry);
  }

  /** Resolves once no commit of `id`'s state is queued or running. */
  async settled(id: string): Promise<void> {
    await this.#entries.get(id)?.written;
  }

  /** Resolves once every queued commit has finished. */
  async flush(): Promise<void> {
    for (let tail = this.#queue; ; tail = this.#queue) {
      await tail;
      if (tail === this.#queue) return;
    }
  }

  /** Stops committing (queued commits are skipped, the running one awaited) and deletes staged files. */
  async dispose(): Promise<void> {
    this.#disposed = true;
    await this.flush();
    for (const entry of [...this.#entries.values()]) this.#drop(entry);
  }

  #drop(entry: Entry): void {
    if (entry.dropped) return;
    entry.dropped = true;
    if (this.#entries.get(entry.id) === entry) this.#entries.delete(entry.id);
    this.#stats.bytes -= entry.bytes;
    if (!entry.writing) void entry.staged.discard();
  }

  /** Commits one state and the record's pointer to it; skipped when the state was dropped meanwhile. */
  async #write(entry: Entry): Promise<void> {
    if (entry.dropped || entry.loading || this.#disposed) return;
    const { store } = this.#options;
    entry.writing = true;
    try {
      const committed = await entry.staged.commit();
      if (committed.bytes !== entry.bytes) throw new Error(`the committed state has ${committed.bytes} bytes, the engine wrote ${entry.bytes}`);
      // Superseded (or removed) while it was committed: the store must not name it (the file is swept
      // by the agent's next commit, or goes with its folder).
      if (entry.dropped) return;
      const kv: KvDescriptor = {
        ...committed,
        tokens: entry.tokens,
        fingerprint: entry.fingerprint,
        engine: entry.engine,
        historyLength: entry.historyLength,
      };
      await store.setKv(entry.id, kv, this.#options.now());
      this.#stats.writes++;
      // Durable: from now on the store's file serves a rehydration (verified once, at its commit).
      entry.writing = false;
      this.#drop(entry);
      this.#options.onDurable(entry.id, kv);
    } catch (error) {
      entry.failed = true;
      this.#stats.writeFailures++;
      // A failed commit deletes its staged file: the next load uses the store's older state or the history.
      entry.writing = false;
      this.#drop(entry);
      this.#options.onWriteFailed(entry.id, error);
    } finally {
      entry.writing = false;
    }
  }
}
