/**
 * The host-RAM tier of passivated agents' KV states. A passivation saves the engine's state into a
 * private folder on a RAM file system (`/dev/shm`, else the OS temp folder) and returns: no fsync, no
 * checksum pass, no journal append on the agent's way out. A background writer then copies each state
 * to the store (stage, commit: fsync + checksum + rename, then `setKv`), one at a time, oldest first.
 * Until that write is durable the store still names the agent's previous state file (or none), and the
 * history — durable before every acknowledgement, as always — is what a crash falls back to: the agent
 * is rebuilt from it (or from its older state file, whose cache is a prefix the next turn extends).
 *
 * At most `maxBytes` of states are kept (least recently passivated dropped first, once durable); a
 * rehydration finds its state here and the engine loads it from RAM, unverified but checked to be the
 * very file this tier wrote (same inode, size, mtime and ctime: any write or replacement changes them).
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync, type BigIntStats } from "node:fs";
import { copyFile, mkdir, readdir, rm, stat, statfs, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { EngineName } from "../engines/engine.js";
import { sameIdentity } from "../store/record-file.js";
import type { KvDescriptor, StateStore } from "../store/state-store.js";

/** A state held in RAM: what the descriptor will say once it is written to the store. */
export interface HostState {
  readonly id: string;
  readonly path: string;
  readonly extension: string;
  readonly bytes: number;
  readonly tokens: number;
  readonly fingerprint: string;
  readonly engine: EngineName;
  readonly historyLength: number;
}

interface Entry extends HostState {
  identity: BigIntStats;
  /** The store names this state (or a newer one). */
  durable: boolean;
  /** The background write failed: the entry may be dropped like a durable one (the history is durable). */
  failed: boolean;
  /** Dropped from the tier (replaced, unloaded, evicted); its file goes once no write is reading it. */
  dropped: boolean;
  /** Loaded back into the engine while its write was running. */
  loaded: boolean;
  writing: boolean;
  written: Promise<void>;
}

export interface HostTierOptions {
  /** Most bytes of states kept in RAM. */
  maxBytes: number;
  store: StateStore;
  now: () => number;
  /** A state became durable: the store now names `kv`. */
  onDurable(id: string, kv: KvDescriptor): void;
  /** A background write failed; the state stays in RAM, the store keeps naming the older one. */
  onWriteFailed(id: string, error: unknown): void;
}

/** Figures for benchmarks, tests and the memory report. */
export interface HostTierStats {
  bytes: number;
  entries: number;
  hits: number;
  writes: number;
  writeFailures: number;
  evictions: number;
}

/** The tier's folder: one per state location (the store's single-writer lock makes older ones stale). */
function tierRoot(location: string): { dir: string; prefix: string } {
  const base = existsSync("/dev/shm") ? "/dev/shm" : tmpdir();
  const prefix = `agentrt-tier-${createHash("sha256").update(location).digest("hex").slice(0, 16)}-`;
  return { dir: join(base, `${prefix}${process.pid}-${randomBytes(4).toString("hex")}`), prefix };
}

export class HostTier {
  readonly #options: HostTierOptions;
  /** `maxBytes`, or less when the RAM file system has less than twice that free. */
  #maxBytes: number;
  /** Least recently passivated first (Map insertion order). */
  readonly #entries = new Map<string, Entry>();
  #dir: Promise<string> | undefined;
  #queue: Promise<void> = Promise.resolve();
  #disposed = false;
  readonly #stats: HostTierStats = { bytes: 0, entries: 0, hits: 0, writes: 0, writeFailures: 0, evictions: 0 };

  constructor(options: HostTierOptions) {
    if (!Number.isSafeInteger(options.maxBytes) || options.maxBytes < 1)
      throw new RangeError(`hostCacheBytes must be a positive integer, got ${options.maxBytes}`);
    this.#options = options;
    this.#maxBytes = options.maxBytes;
  }

  get stats(): Readonly<HostTierStats> {
    return { ...this.#stats, entries: this.#entries.size };
  }

  /** Creates the folder on first use, removing folders a crashed process left for the same store. */
  #folder(): Promise<string> {
    this.#dir ??= (async () => {
      const { dir, prefix } = tierRoot(this.#options.store.location);
      const parent = join(dir, "..");
      for (const name of await readdir(parent).catch(() => [] as string[])) {
        if (name.startsWith(prefix)) await rm(join(parent, name), { recursive: true, force: true });
      }
      await mkdir(dir, { recursive: true, mode: 0o700 });
      // A container's /dev/shm is often 64 MiB: keep to half of what is free (a save that still does not
      // fit falls back to the store).
      const free = await statfs(dir).then(
        (fs) => fs.bavail * fs.bsize,
        () => Infinity,
      );
      this.#maxBytes = Math.max(1, Math.min(this.#options.maxBytes, Math.floor(free / 2)));
      return dir;
    })();
    return this.#dir;
  }

  /** A fresh path in RAM for the engine to save `id`'s state to. */
  async stagePath(id: string, extension: string): Promise<string> {
    if (!/^\.[a-z0-9]{1,16}$/.test(extension)) throw new RangeError(`Invalid state file extension: ${extension}`);
    const name = `${createHash("sha256").update(id).digest("hex").slice(0, 24)}-${randomBytes(6).toString("hex")}${extension}`;
    return join(await this.#folder(), name);
  }

  /**
   * Keeps a state the engine just saved at `state.path`, replacing the agent's previous one, and queues
   * its write to the store. Then call `fit()`. Throws when the file is not there (nothing is kept).
   */
  async add(state: HostState): Promise<void> {
    if (this.#disposed) throw new Error("the host tier is disposed");
    const identity = await stat(state.path, { bigint: true });
    // On a full RAM disk the engine can lose its last buffered block without an error: check what landed.
    if (identity.size !== BigInt(state.bytes)) throw new Error(`the saved state has ${identity.size} bytes; the engine wrote ${state.bytes}`);
    const previous = this.#entries.get(state.id);
    if (previous) this.#drop(previous);
    const entry: Entry = {
      ...state,
      identity,
      durable: false,
      failed: false,
      dropped: false,
      loaded: false,
      writing: false,
      written: Promise.resolve(),
    };
    this.#entries.set(state.id, entry);
    this.#stats.bytes += entry.bytes;
    entry.written = this.#queue = this.#queue.then(() => this.#write(entry));
  }

  /** The agent's state in RAM when it is still the file this tier wrote (call `loaded` once it is in). */
  async take(id: string, fingerprint: string): Promise<string | undefined> {
    const entry = this.#entries.get(id);
    if (!entry || entry.dropped || entry.fingerprint !== fingerprint) return undefined;
    const identity = await stat(entry.path, { bigint: true }).catch(() => undefined);
    if (!sameIdentity(identity, entry.identity)) {
      this.#drop(entry);
      return undefined;
    }
    this.#stats.hits++;
    return entry.path;
  }

  /**
   * The engine loaded the agent's state from RAM: the copy goes, and so does its write unless it has
   * started (the agent will be saved again on its next passivation); a running write is awaited, so that
   * no write of the agent's files runs while it is resident.
   */
  async loaded(id: string): Promise<void> {
    const entry = this.#entries.get(id);
    if (!entry) return;
    entry.loaded = true;
    if (entry.writing) await entry.written;
    this.#drop(entry);
  }

  /** Forgets the agent's state (unloaded, broken cache, removal); a write already copying it finishes. */
  forget(id: string): void {
    const entry = this.#entries.get(id);
    if (entry) this.#drop(entry);
  }

  /** Resolves once no write of `id`'s state is queued or running. */
  async settled(id: string): Promise<void> {
    await this.#entries.get(id)?.written;
  }

  /** Resolves once every queued write has finished. */
  async flush(): Promise<void> {
    for (let tail = this.#queue; ; tail = this.#queue) {
      await tail;
      if (tail === this.#queue) return;
    }
  }

  /** Stops writing (queued writes are skipped, the running one awaited) and deletes the folder. */
  async dispose(): Promise<void> {
    this.#disposed = true;
    await this.flush();
    for (const entry of this.#entries.values()) this.#drop(entry);
    const dir = await this.#dir?.catch(() => undefined);
    if (dir) await rm(dir, { recursive: true, force: true });
  }

  #drop(entry: Entry): void {
    if (entry.dropped) return;
    entry.dropped = true;
    if (this.#entries.get(entry.id) === entry) this.#entries.delete(entry.id);
    this.#stats.bytes -= entry.bytes;
    if (!entry.writing) void unlink(entry.path).catch(() => {});
  }

  /** Resolves once the tier is within `maxBytes`, waiting for writes when only non-durable states are left. */
  async fit(): Promise<void> {
    while (this.#stats.bytes > this.#maxBytes) {
      // Least recently passivated first, among those the store names already (or could not take).
      const victim = [...this.#entries.values()].find((e) => e.durable || e.failed);
      if (victim) {
        this.#drop(victim);
        this.#stats.evictions++;
        continue;
      }
      const oldest = [...this.#entries.values()][0];
      if (!oldest) return;
      await oldest.written;
    }
  }

  /** Copies one state to the store and commits it; skipped when the state was dropped meanwhile. */
  async #write(entry: Entry): Promise<void> {
    if (entry.dropped || this.#disposed) return;
    const { store } = this.#options;
    entry.writing = true;
    let staged: Awaited<ReturnType<StateStore["stageKv"]>> | undefined;
    try {
      staged = await store.stageKv(entry.id, entry.extension);
      await copyFile(entry.path, staged.path);
      const committed = await staged.commit();
      if (committed.bytes !== entry.bytes) throw new Error(`the copy has ${committed.bytes} bytes, the state ${entry.bytes}`);
      staged = undefined;
      // A newer state (or a removal) superseded this one while it was copied: the store must not name it
      // (the committed file is swept by the next commit, or with the agent's folder).
      if (entry.dropped) return;
      const kv: KvDescriptor = {
        ...committed,
        tokens: entry.tokens,
        fingerprint: entry.fingerprint,
        engine: entry.engine,
        historyLength: entry.historyLength,
      };
      await store.setKv(entry.id, kv, this.#options.now());
      entry.durable = true;
      this.#stats.writes++;
      this.#options.onDurable(entry.id, kv);
    } catch (error) {
      await staged?.discard();
      entry.failed = true;
      this.#stats.writeFailures++;
      this.#options.onWriteFailed(entry.id, error);
    } finally {
      entry.writing = false;
      if (entry.dropped) await unlink(entry.path).catch(() => {});
    }
  }
}
