/**
 * An agent's data keys in the data bucket: the record's chunks and the journal's entries. They are
 * written before a head names them (see `nats-store.ts`), each under its writer's epoch, and read only
 * through a head: what no head names does not exist, and is purged as garbage.
 */
import { createHash, randomBytes } from "node:crypto";
import type { KV } from "@nats-io/kv";
import type { ChatMessage } from "../engines/engine.js";
import { AgentRuntimeError } from "../errors.js";
import { encodeRecord, MAX_RECORD_BYTES, parseRecord } from "../store/record-file.js";
import type { AgentRecord } from "../store/state-store.js";
import { entryEpoch, journalLength, type Head } from "./head.js";
import { agentToken, dataKeyEpoch, keys } from "./keys.js";
import { retryTransient } from "./nats-errors.js";

/** One journal entry as stored (inside a checksummed envelope). */
export interface EntryBody {
  id: string;
  gen: number;
  seq: number;
  epoch: number;
  at: number;
  messages: ChatMessage[];
}

/** A key the head names is gone: the head moved on under the reader (a compaction), or the store is damaged. */
export class MissingKey extends Error {}

const sha256 = (data: string | Uint8Array): string => createHash("sha256").update(data).digest("hex");

export function corrupt(id: string, why: string, cause?: unknown): AgentRuntimeError {
  return new AgentRuntimeError("ERR_STATE_CORRUPT", `The stored state of ${id} is unreadable: ${why}`, { cause, details: { id } });
}

export function checkMessages(messages: unknown): asserts messages is ChatMessage[] {
  const valid =
    Array.isArray(messages) && messages.every((m: ChatMessage) => (m?.role === "user" || m?.role === "assistant") && typeof m.content === "string");
  if (!valid) throw new TypeError("turn.messages must be a list of { role: 'user' | 'assistant', content: string }");
}

export function sealEntry(body: EntryBody): Uint8Array {
  const text = JSON.stringify(body);
  return Buffer.from(JSON.stringify({ format: "agentrt-entry", sha256: sha256(text), body: text }));
}

function parseEntry(id: string, value: Uint8Array): EntryBody {
  try {
    const envelope = JSON.parse(Buffer.from(value).toString("utf8")) as { format?: string; sha256?: string; body?: string };
    if (envelope?.format !== "agentrt-entry" || typeof envelope.body !== "string") throw new Error("not a journal entry");
    if (sha256(envelope.body) !== envelope.sha256) throw new Error("checksum mismatch");
    const entry = JSON.parse(envelope.body) as EntryBody;
    checkMessages(entry.messages);
    if (entry.id !== id || !Number.isFinite(entry.at)) throw new Error("invalid fields");
    return entry;
  } catch (error) {
    throw corrupt(id, `a journal entry is damaged (${(error as Error).message})`, error);
  }
}

export class AgentData {
  readonly #data: KV;
  readonly #location: string;
  /** Largest value written: record chunks are cut to it, a larger journal entry is folded into a record. */
  readonly chunkBytes: number;
  readonly stats = { puts: 0, recordWrites: 0 };

  constructor(data: KV, options: { chunkBytes: number; location: string }) {
    this.#data = data;
    this.chunkBytes = options.chunkBytes;
    this.#location = options.location;
  }

  /** A put, retried while the cluster fails over (same key, same bytes: idempotent). */
  async put(key: string, value: Uint8Array): Promise<void> {
    await retryTransient(() => this.#data.put(key, value));
    this.stats.puts++;
  }

  async #get(key: string): Promise<Uint8Array> {
    const entry = await retryTransient(() => this.#data.get(key));
    if (!entry || entry.operation !== "PUT") throw new MissingKey(key);
    return entry.value;
  }

  /** Writes the record's chunks as generation `gen` under `epoch`; resolves what the head records of them. */
  async putRecord(record: AgentRecord, gen: number, epoch: number): Promise<Head["record"]> {
    const token = agentToken(record.id);
    // The head carries the saved cache: the record's copy would go stale at the next setKv.
    const text = Buffer.from(encodeRecord({ ...record, kv: undefined }, gen));
    if (text.length > MAX_RECORD_BYTES) throw new Error(`the record would be ${text.length} bytes, over the ${MAX_RECORD_BYTES} limit`);
    const count = Math.max(1, Math.ceil(text.length / this.chunkBytes));
    const nonce = randomBytes(4).toString("hex");
    await Promise.all(
      Array.from({ length: count }, (_, i) =>
        this.put(keys.record(token, gen, epoch, nonce, i), text.subarray(i * this.chunkBytes, (i + 1) * this.chunkBytes)),
      ),
    );
    this.stats.recordWrites++;
    return { epoch, nonce, chunks: count, bytes: text.length, sha256: sha256(text) };
  }

  /**
   * The record `head` names: its chunks (size and sha256 checked, parsed as a record file) with the
   * journal entries applied in order, the saved cache and `updatedAt` from the head. MissingKey when a
   * named key is gone; ERR_STATE_CORRUPT / ERR_STATE_FOREIGN for damage.
   */
  async materialize(id: string, head: Head): Promise<AgentRecord> {
    const token = agentToken(id);
    const chunks = await Promise.all(
      Array.from({ length: head.record.chunks }, (_, i) => this.#get(keys.record(token, head.gen, head.record.epoch, head.record.nonce, i))),
    );
    const bytes = Buffer.concat(chunks);
    if (bytes.length !== head.record.bytes || sha256(bytes) !== head.record.sha256) throw corrupt(id, "the record fails its checksum");
    const where = `${this.#location}/${keys.record(token, head.gen, head.record.epoch, head.record.nonce, 0)}`;
    const loaded = parseRecord(id, where, bytes.toString("utf8"));
    if (loaded.generation !== head.gen) throw corrupt(id, `the record is generation ${loaded.generation}, the head names ${head.gen}`);
    const record = loaded.record;
    const total = journalLength(head);
    for (let from = 1; from <= total; from += 64) {
      // In parallel, 64 at a time: one round trip per batch rather than per entry.
      const seqs = Array.from({ length: Math.min(64, total - from + 1) }, (_, i) => from + i);
      const values = await Promise.all(seqs.map((seq) => this.#get(keys.entry(token, head.gen, seq, entryEpoch(head, seq)))));
      for (const [i, value] of values.entries()) {
        const seq = seqs[i]!;
        const entry = parseEntry(id, value);
        if (entry.gen !== head.gen || entry.seq !== seq || entry.epoch !== entryEpoch(head, seq))
          throw corrupt(id, `journal entry ${seq} is out of place`);
        record.history.push(...entry.messages);
      }
    }
    record.kv = head.kv ?? undefined;
    record.updatedAt = head.updatedAt;
    return record;
  }

  /** Every data key `head` names. */
  namedKeys(token: string, head: Head): string[] {
    const names = Array.from({ length: head.record.chunks }, (_, i) => keys.record(token, head.gen, head.record.epoch, head.record.nonce, i));
    for (let seq = 1; seq <= journalLength(head); seq++) names.push(keys.entry(token, head.gen, seq, entryEpoch(head, seq)));
    return names;
  }

  /**
   * Purges `stale` keys, and every key of the agent that `keep` does not name with an epoch up to
   * `maxEpoch` (a lost race, a commit refused by fencing): a later owner's keys carry a higher epoch and
   * are never touched. Best effort: garbage left now goes at the next call.
   */
  async purge(id: string, stale: string[], keep: ReadonlySet<string>, maxEpoch: number): Promise<void> {
    const token = agentToken(id);
    const doomed = [...stale];
    try {
      for (const filter of keys.dataFilters(token)) {
        for await (const key of await this.#data.keys(filter)) {
          const parsed = dataKeyEpoch(key);
          if (parsed && parsed.epoch <= maxEpoch && !keep.has(key)) doomed.push(key);
        }
      }
    } catch {
      // Listing is only for garbage.
    }
    await Promise.all([...new Set(doomed)].map((key) => this.#data.purge(key).catch(() => {})));
  }
}
