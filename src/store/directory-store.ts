/**
 * The state store on a local directory. Layout, one folder per agent:
 *
 *   <root>/LOCK                                holder of the single-writer lock (informational, for humans)
 *   <root>/agents/<encoded id>/agent.json      record as of the last compaction (checksummed envelope)
 *   <root>/agents/<encoded id>/journal         acknowledged turns and cache commits since (framed entries)
 *   <root>/agents/<encoded id>/kv-<sha>.<ext>  the saved KV cache the current state names
 *
 * A turn appends one entry to the journal and fdatasyncs it: the bytes written do not depend on the
 * history's length. Once the journal holds at least `compaction.minBytes` and `compaction.ratio` times
 * the record's size, the record is rewritten with the journal folded in (generation g + 1, by temp file +
 * fsync + rename) and the journal is then emptied. Entries carry the generation they extend, so a crash
 * between the two steps leaves a journal of generation g beside a record of g + 1, which the reader knows
 * is folded in already. Compacting in proportion to the record keeps the amortised bytes per turn at
 * most (2 + 1/ratio) × the turn's own size, whatever the history's length.
 *
 * Torn tails, damage and foreign entries: see `journal.ts`. Locking: see `state-lock.ts`.
 */
import { constants, type BigIntStats } from "node:fs";
import { mkdir, open, readdir, rm, stat, truncate, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { agentIdToKey, validateAgentId } from "../agent-id.js";
import type { ChatMessage } from "../engines/engine.js";
import { AgentRuntimeError } from "../errors.js";
import { AgentIndex, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT } from "./agent-index.js";
import { fsyncPath, writeFileAtomic } from "./atomic-file.js";
import { KeyedQueue } from "./keyed-queue.js";
import { KvFiles } from "./kv-files.js";
import {
  applyEntry,
  encodeEntry,
  entriesFor,
  highestGeneration,
  JournalDamage,
  scanJournal,
  type JournalEntry,
  type ScannedJournal,
} from "./journal.js";
import { encodeRecord, MAX_RECORD_BYTES, parseRecord, readBounded, recordProblem, sameIdentity, type FileIdentity } from "./record-file.js";
import { StateLock } from "./state-lock.js";
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
} from "./state-store.js";

export { MAX_RECORD_BYTES } from "./record-file.js";

const RECORD_FILE = "agent.json";
const JOURNAL_FILE = "journal";
/** Agents whose journal position this store remembers (≈ 200 bytes each); others are re-read on demand. */
const STATE_CACHE_SIZE = 4096;

export interface DirectoryStoreOptions {
  /**
   * fsync files and folders so that what resolved survives a power loss. Default true. `false` is for
   * generating large test or benchmark stores only: a crash may then lose anything.
   */
  fsync?: boolean;
  /**
   * When the journal is folded into the record: once it holds at least `minBytes` (default 64 KiB) and
   * at least `ratio` (default 1) times the record's size.
   */
  compaction?: { minBytes?: number; ratio?: number };
  /** Called when a read drops a torn journal tail: an append a crash interrupted, never acknowledged. */
  onTornTail?: (event: { id: string; path: string; bytes: number }) => void;
}

/** What this store object wrote since it was created (for benchmarks and tests). */
export interface DirectoryStoreStats {
  appends: number;
  compactions: number;
  recordWrites: number;
  /** Bytes of journal frames and record files written (KV files not included). */
  bytesWritten: number;
}

/** Where an agent's files stand, remembered between calls and checked against the files before use. */
interface AgentState {
  record: FileIdentity;
  journal: FileIdentity | undefined;
  format: number;
  generation: number;
  recordBytes: number;
  /** Generation of the journal's entries; undefined when it holds none. */
  journalGeneration: number | undefined;
  /** Last sequence number and end of the entries that extend the record (0 when none do). */
  seq: number;
  validEnd: number;
}

function writeFailed(id: string, what: string, error: unknown): AgentRuntimeError {
  if (error instanceof AgentRuntimeError && error.code === "ERR_STATE_WRITE_FAILED") return error;
  return new AgentRuntimeError("ERR_STATE_WRITE_FAILED", `Could not ${what} of ${id}: ${(error as Error).message}`, {
    cause: error,
    details: { id, errno: (error as NodeJS.ErrnoException).code },
  });
}

async function identityOf(path: string): Promise<FileIdentity | undefined> {
  return stat(path, { bigint: true }).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw error;
  });
}

function checkLimit(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > MAX_LIST_LIMIT) {
    throw new RangeError(`${name} must be an integer from 1 to ${MAX_LIST_LIMIT}, got ${String(value)}`);
  }
  return value;
}

function checkMessages(messages: unknown): asserts messages is ChatMessage[] {
  const valid =
    Array.isArray(messages) && messages.every((m: ChatMessage) => (m?.role === "user" || m?.role === "assistant") && typeof m.content === "string");
  if (!valid) throw new TypeError("turn.messages must be a list of { role: 'user' | 'assistant', content: string }");
}

/**
 * The journal's frames; a journal whose every entry is of a generation older than the record's (folded
 * in by a compaction that crashed before emptying it) is skipped even when damaged, since nothing in it
 * is needed.
 */
function scanOrSkip(bytes: Buffer, generation: number): ScannedJournal {
  try {
    return scanJournal(bytes);
  } catch (error) {
    if (error instanceof JournalDamage && highestGeneration(bytes) < generation) return { entries: [], validEnd: 0, tornBytes: 0 };
    throw error;
  }
}

/**
 * Stores each agent in `<root>/agents/<encoded id>/` (see the layout above). `open()` takes the
 * directory's single-writer lock; every other method also works unlocked (tools, tests, inspection).
 *
 * `list()` and `count()` see agent folders, indexed by one `readdir` on first use and kept up to date by
 * this object's writes and removals (another process's writes are not seen: there is one writer). A
 * folder whose record is gone (a removal a crash interrupted) is listed until `remove()` or a new
 * `write()` of that id; `read()` returns undefined for it.
 */
export class DirectoryStore implements StateStore {
  readonly location: string;
  readonly #agentsDir: string;
  readonly #fsync: boolean;
  readonly #minBytes: number;
  readonly #ratio: number;
  readonly #onTornTail: DirectoryStoreOptions["onTornTail"];
  readonly #index: AgentIndex;
  readonly #kv: KvFiles;
  readonly #states = new Map<string, AgentState>();
  /** Per-agent queue: one mutation or read of an agent's files at a time within this object. */
  readonly #queues = new KeyedQueue();
  #lock: Promise<StateLock> | undefined;
  readonly #stats: DirectoryStoreStats = { appends: 0, compactions: 0, recordWrites: 0, bytesWritten: 0 };

  constructor(root: string, options: DirectoryStoreOptions = {}) {
    this.location = root;
    this.#agentsDir = join(root, "agents");
    this.#fsync = options.fsync ?? true;
    this.#minBytes = options.compaction?.minBytes ?? 64 * 1024;
    this.#ratio = options.compaction?.ratio ?? 1;
    if (!(this.#minBytes >= 0)) throw new RangeError("compaction.minBytes must be a number ≥ 0");
    if (!(this.#ratio > 0)) throw new RangeError("compaction.ratio must be a number > 0");
    this.#onTornTail = options.onTornTail;
    this.#index = new AgentIndex(this.#agentsDir);
    this.#kv = new KvFiles(this.#fsync);
  }

  /** A store on `root` with its lock taken. */
  static async open(root: string, options: DirectoryStoreOptions = {}): Promise<DirectoryStore> {
    const store = new DirectoryStore(root, options);
    await store.open();
    return store;
  }

  get stats(): Readonly<DirectoryStoreStats> {
    return { ...this.#stats };
  }

  async open(): Promise<void> {
    this.#lock ??= StateLock.acquire(this.location).catch((error: unknown) => {
      this.#lock = undefined;
      throw error;
    });
    await this.#lock;
  }

  /** Waits for the operations in flight, then releases the lock (another process may then write at once). */
  async dispose(): Promise<void> {
    const lock = this.#lock;
    this.#lock = undefined;
    await this.#queues.settled();
    await (await lock?.catch(() => undefined))?.release();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  #dir(id: string): string {
    return join(this.#agentsDir, agentIdToKey(validateAgentId(id)));
  }

  #exclusive<T>(id: string, work: () => Promise<T>): Promise<T> {
    return this.#queues.run(id, work);
  }

  #remember(id: string, state: AgentState | undefined): void {
    this.#states.delete(id);
    if (!state) return;
    this.#states.set(id, state);
    if (this.#states.size > STATE_CACHE_SIZE) this.#states.delete(this.#states.keys().next().value!);
  }

  async list(options: ListOptions = {}): Promise<StoredAgentPage> {
    if (typeof options !== "object" || options === null) throw new TypeError("list options must be an object");
    const { prefix, after } = options;
    if (prefix !== undefined && typeof prefix !== "string") throw new TypeError("prefix must be a string");
    if (after !== undefined && typeof after !== "string") throw new TypeError("after must be a string");
    return this.#index.page({ prefix, after, limit: checkLimit("limit", options.limit, DEFAULT_LIST_LIMIT) });
  }

  async count(): Promise<number> {
    return this.#index.count();
  }

  async has(id: string): Promise<boolean> {
    return (await identityOf(join(this.#dir(id), RECORD_FILE))) !== undefined;
  }

  async read(id: string): Promise<AgentRecord | undefined> {
    const dir = this.#dir(id);
    return this.#exclusive(id, async () => (await this.#load(id, dir))?.record);
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

  /**
   * Reads the record and applies its journal. A second look at the record after reading the journal
   * catches another store object compacting in between (the old record with the emptied journal would
   * otherwise look like a consistent pair); within this object the per-agent queue prevents it.
   */
  async #load(id: string, dir: string): Promise<{ record: AgentRecord; state: AgentState } | undefined> {
    const recordPath = join(dir, RECORD_FILE);
    const journalPath = join(dir, JOURNAL_FILE);
    for (let attempt = 1; ; attempt++) {
      const file = await readBounded(recordPath, MAX_RECORD_BYTES, "record", id);
      if (!file) {
        this.#remember(id, undefined);
        return undefined;
      }
      const loaded = parseRecord(id, recordPath, file.bytes.toString("utf8"));
      const journal = await readBounded(journalPath, MAX_RECORD_BYTES, "journal", id);
      if (attempt < 3 && !sameIdentity(await identityOf(recordPath), file.identity)) continue;
      let scanned: ScannedJournal = { entries: [], validEnd: 0, tornBytes: 0 };
      let entries: JournalEntry[];
      try {
        if (journal) scanned = scanOrSkip(journal.bytes, loaded.generation);
        entries = entriesFor(id, loaded.generation, scanned);
      } catch (error) {
        if (!(error instanceof JournalDamage)) throw error;
        throw new AgentRuntimeError("ERR_STATE_CORRUPT", `The journal of ${id} is damaged: ${error.message}`, {
          cause: error,
          details: { id, path: journalPath, offset: error.offset },
        });
      }
      const record = loaded.record;
      for (const entry of entries) applyEntry(record, entry);
      if (scanned.tornBytes > 0) this.#onTornTail?.({ id, path: journalPath, bytes: scanned.tornBytes });
      const last = entries[entries.length - 1];
      const state: AgentState = {
        record: file.identity,
        journal: journal?.identity,
        format: loaded.format,
        generation: loaded.generation,
        recordBytes: loaded.bytes,
        journalGeneration: scanned.entries[0]?.gen,
        seq: last?.seq ?? 0,
        validEnd: last ? scanned.validEnd : 0,
      };
      this.#remember(id, state);
      return { record, state };
    }
  }

  /** The remembered state when the files are still as this object left them, else a fresh read. */
  async #current(id: string, dir: string): Promise<AgentState | undefined> {
    const known = this.#states.get(id);
    if (known) {
      const [record, journal] = await Promise.all([identityOf(join(dir, RECORD_FILE)), identityOf(join(dir, JOURNAL_FILE))]);
      if (sameIdentity(record, known.record) && sameIdentity(journal, known.journal)) return known;
    }
    return (await this.#load(id, dir))?.state;
  }

  async write(record: AgentRecord): Promise<void> {
    if (typeof record !== "object" || record === null) throw new TypeError("record must be an object");
    const dir = this.#dir(record.id);
    // Refused before writing: a record that a read would refuse would turn a spawn into a failed agent.
    const problem = recordProblem(record);
    if (problem) throw new TypeError(`The record of ${record.id} has ${problem}`);
    return this.#exclusive(record.id, async () => {
      let created: boolean;
      try {
        created = await this.#ensureDir(dir);
      } catch (error) {
        throw writeFailed(record.id, "write the record", error);
      }
      if (created) this.#index.added(record.id);
      // The new generation must be above every entry in the journal, so that none is replayed onto it.
      let generation: number | undefined = created ? 1 : undefined;
      try {
        const state = generation === undefined ? await this.#current(record.id, dir) : undefined;
        if (state) generation = Math.max(state.generation, state.journalGeneration ?? 0) + 1;
      } catch {
        // Replacing a damaged record: only the journal's generations matter now.
      }
      if (generation === undefined) {
        // No readable record, but maybe a journal: left by a removal a crash interrupted, or beside damage.
        const journal = await readBounded(join(dir, JOURNAL_FILE), MAX_RECORD_BYTES, "journal", record.id).catch(() => undefined);
        generation = (journal ? highestGeneration(journal.bytes) : 0) + 1;
      }
      await this.#writeRecord(record, dir, generation, created);
    });
  }

  /** Writes `record` as generation `generation`, then empties the journal it supersedes and sweeps. */
  async #writeRecord(record: AgentRecord, dir: string, generation: number, created = false): Promise<void> {
    const text = encodeRecord(record, generation);
    const bytes = Buffer.byteLength(text);
    const recordPath = join(dir, RECORD_FILE);
    const journalPath = join(dir, JOURNAL_FILE);
    let identity: FileIdentity | undefined;
    let journal: FileIdentity | undefined;
    try {
      if (bytes > MAX_RECORD_BYTES) throw new Error(`the record would be ${bytes} bytes, over the ${MAX_RECORD_BYTES} limit`);
      await writeFileAtomic(recordPath, text, { fsync: this.#fsync });
      identity = await identityOf(recordPath);
      // Not fsynced: until this is durable, the reader skips the journal's older generation anyway.
      journal = created
        ? undefined
        : await truncate(journalPath, 0).then(
            () => identityOf(journalPath),
            async (error: NodeJS.ErrnoException) => {
              // Not a file we can empty (a hostile directory, say): it goes, since the record no longer needs it.
              if (error.code !== "ENOENT") await rm(journalPath, { recursive: true, force: true });
              return undefined;
            },
          );
    } catch (error) {
      this.#remember(record.id, undefined);
      throw writeFailed(record.id, "write the record", error);
    }
    this.#stats.recordWrites++;
    this.#stats.bytesWritten += bytes;
    this.#remember(record.id, {
      record: identity!,
      journal,
      format: 2,
      generation,
      recordBytes: bytes,
      journalGeneration: undefined,
      seq: 0,
      validEnd: 0,
    });
    if (!created) await this.#sweep(dir, record.kv?.file);
  }

  async appendTurn(id: string, turn: TurnAppend): Promise<void> {
    const dir = this.#dir(id);
    if (typeof turn !== "object" || turn === null) throw new TypeError("turn must be an object");
    checkMessages(turn.messages);
    if (!Number.isFinite(turn.updatedAt)) throw new TypeError("turn.updatedAt must be a finite number");
    const { messages, updatedAt, window } = turn;
    if (window !== undefined && (!Number.isSafeInteger(window.windowStart) || window.windowStart < 0))
      throw new TypeError("turn.window.windowStart must be an integer ≥ 0");
    const entry = (gen: number, seq: number): JournalEntry => ({ t: "turn", id, gen, seq, at: updatedAt, messages, ...(window ? { window } : {}) });
    return this.#exclusive(id, () => this.#append(id, dir, entry));
  }

  async setKv(id: string, kv: KvDescriptor | undefined, updatedAt: number): Promise<void> {
    const dir = this.#dir(id);
    if (kv !== undefined && (typeof kv !== "object" || kv === null || typeof kv.file !== "string")) {
      throw new TypeError("kv must be a KV descriptor or undefined");
    }
    if (!Number.isFinite(updatedAt)) throw new TypeError("updatedAt must be a finite number");
    return this.#exclusive(id, async () => {
      await this.#append(id, dir, (gen, seq) => ({ t: "kv", id, gen, seq, at: updatedAt, kv: kv ?? null }));
      await this.#sweep(dir, kv?.file);
    });
  }

  /** Appends one entry durably, then compacts when the journal has grown enough (outside the ack). */
  async #append(id: string, dir: string, make: (gen: number, seq: number) => JournalEntry): Promise<void> {
    let state: AgentState | undefined;
    try {
      state = await this.#current(id, dir);
    } catch (error) {
      // A damaged record or journal takes no appends: the turn would be acknowledged into a state no one can read.
      if (error instanceof AgentRuntimeError) throw error;
      throw writeFailed(id, "read the state", error);
    }
    if (!state) throw new AgentRuntimeError("ERR_AGENT_NOT_FOUND", `No stored agent with id ${JSON.stringify(id)}`, { details: { id } });
    if (state.format === 1) {
      // A record from before journals: rewritten once in the current format, with this change folded in,
      // so that an older agentrt refuses it instead of reading it without its journal.
      const loaded = (await this.#load(id, dir))!;
      applyEntry(loaded.record, make(0, 1));
      await this.#writeRecord(loaded.record, dir, loaded.state.generation + 1);
      return;
    }
    const continuing = state.journalGeneration === state.generation;
    const base = continuing ? state.validEnd : 0;
    const frame = encodeEntry(make(state.generation, continuing ? state.seq + 1 : 1));
    const path = join(dir, JOURNAL_FILE);
    let identity: BigIntStats;
    try {
      if (state.recordBytes + base + frame.length > MAX_RECORD_BYTES) {
        throw new Error(`the agent's state would exceed ${MAX_RECORD_BYTES} bytes`);
      }
      // O_NONBLOCK: a FIFO swapped in fails (ENXIO) instead of blocking the open until a reader comes.
      const handle = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NONBLOCK, 0o644);
      try {
        // Drops a torn tail (or an older generation) before writing: appends only ever follow whole entries.
        if (state.journal === undefined || state.journal.size !== BigInt(base)) await handle.truncate(base);
        let written = 0;
        while (written < frame.length) written += (await handle.write(frame, written, frame.length - written, base + written)).bytesWritten;
        if (this.#fsync) await handle.datasync();
        identity = await handle.stat({ bigint: true });
      } catch (error) {
        await handle.truncate(base).catch(() => {});
        throw error;
      } finally {
        await handle.close();
      }
      // A new journal file must survive a power loss too: its folder entry is made durable before the ack.
      if (state.journal === undefined && this.#fsync) await fsyncPath(dir);
    } catch (error) {
      this.#remember(id, undefined);
      throw writeFailed(id, "append to the journal", error);
    }
    this.#stats.appends++;
    this.#stats.bytesWritten += frame.length;
    const next: AgentState = {
      ...state,
      journal: identity,
      journalGeneration: state.generation,
      seq: continuing ? state.seq + 1 : 1,
      validEnd: base + frame.length,
    };
    this.#remember(id, next);
    if (next.validEnd >= Math.max(this.#minBytes, this.#ratio * next.recordBytes)) {
      // The append is durable and acknowledged whatever happens here; a failed compaction is retried next time.
      await this.#compact(id, dir).catch(() => {});
    }
  }

  async #compact(id: string, dir: string): Promise<void> {
    const loaded = await this.#load(id, dir);
    if (!loaded) return;
    await this.#writeRecord(loaded.record, dir, Math.max(loaded.state.generation, loaded.state.journalGeneration ?? 0) + 1);
    this.#stats.compactions++;
  }

  /**
   * Creates an agent's folder; when it is new, fsyncs the folders above it too, so that the folder
   * (and the record about to be written into it) survives a power loss, not only a process crash.
   * Resolves whether it was created.
   */
  async #ensureDir(dir: string): Promise<boolean> {
    const created = await mkdir(dir, { recursive: true });
    if (created === undefined) return false;
    if (this.#fsync) {
      for (let parent = dirname(dir); ; parent = dirname(parent)) {
        await fsyncPath(parent);
        if (parent === dirname(created) || parent === dirname(parent)) break;
      }
    }
    return true;
  }

  /** Deletes KV and temp files the committed state does not name (left by earlier saves or crashes). */
  async #sweep(dir: string, keep: string | undefined): Promise<void> {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names) {
      if (name === RECORD_FILE || name === JOURNAL_FILE || name === keep) continue;
      if (name.startsWith("kv-") || name.startsWith("staging-") || name.includes(".tmp")) await unlink(join(dir, name)).catch(() => {});
    }
  }

  async stageKv(id: string, extension = ".bin"): Promise<StagedKv> {
    const dir = this.#dir(id);
    return this.#kv.stage(id, dir, extension);
  }

  async openKv(id: string, kv: KvDescriptor): Promise<string> {
    return this.#kv.open(id, this.#dir(id), kv);
  }

  async remove(id: string): Promise<void> {
    const dir = this.#dir(id);
    return this.#exclusive(id, async () => {
      this.#remember(id, undefined);
      // The record goes first and durably: a crash part-way then leaves a folder without a record (not an
      // agent, swept by the next spawn of the id), never a record whose cache file is already deleted.
      await rm(join(dir, RECORD_FILE), { recursive: true, force: true });
      if (this.#fsync) {
        await fsyncPath(dir).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== "ENOENT") throw error;
        });
      }
      await rm(dir, { recursive: true, force: true });
      this.#index.removed(id);
    });
  }

  async bytesOnDisk(id: string): Promise<number> {
    const dir = this.#dir(id);
    const names = await readdir(dir).catch(() => [] as string[]);
    let total = 0;
    for (const name of names) total += (await stat(join(dir, name)).catch(() => ({ size: 0 }))).size;
    return total;
  }
}
