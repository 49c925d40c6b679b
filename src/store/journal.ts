/**
 * An agent's journal: the acknowledged changes since its record was last written, one framed entry each.
 *
 * Frame: `magic (4 bytes "AJE1") | payload length (u32 BE) | crc32 of the payload (u32 BE) | payload`,
 * the payload a UTF-8 JSON {@link JournalEntry}. Each entry names its agent, the generation of the
 * record it extends (`gen`) and its place in that generation (`seq`, from 1), so that replaying a journal
 * onto a record is checked, never guessed:
 *
 * - a frame that does not parse *at the end of the file* is a torn append (a crash before its fsync
 *   returned, so never acknowledged): it is dropped, and the next append truncates it away;
 * - a bad frame *followed by a good one* cannot come from a crash (appends are sequential and the next
 *   one truncates first): it is damage, and the whole journal is refused with ERR_STATE_CORRUPT rather
 *   than replayed with an acknowledged turn missing;
 * - an entry naming another agent, mixing generations, or skipping a sequence number is refused too.
 *
 * Pure functions over bytes; the file handling is in `directory-store.ts`.
 */
import { crc32 } from "node:zlib";
import type { ChatMessage } from "../engines/engine.js";
import type { AgentRecord, AgentWindow, KvDescriptor } from "./state-store.js";

const MAGIC = Buffer.from("AJE1", "latin1");
export const FRAME_HEADER_BYTES = 12;
/** A single entry larger than this is refused (it would never fit a record either). */
export const MAX_ENTRY_BYTES = 64 * 1024 * 1024;

interface EntryBase {
  /** The agent this entry belongs to: a journal copied from another agent is refused. */
  id: string;
  /** Generation of the record this entry extends; entries of an older generation are already folded in. */
  gen: number;
  /** 1, 2, 3, … within a generation; a gap or repeat is damage. */
  seq: number;
  /** Milliseconds since the epoch: the record's `updatedAt` after this entry. */
  at: number;
}

/** One acknowledged turn: the messages it added to the history (and the window, when the turn moved it). */
export interface TurnEntry extends EntryBase {
  t: "turn";
  messages: ChatMessage[];
  window?: AgentWindow | undefined;
}

/** A passivation: the new saved cache (or none). */
export interface KvEntry extends EntryBase {
  t: "kv";
  kv: KvDescriptor | null;
}

export type JournalEntry = TurnEntry | KvEntry;

export function encodeEntry(entry: JournalEntry): Buffer {
  const payload = Buffer.from(JSON.stringify(entry), "utf8");
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  MAGIC.copy(frame, 0);
  frame.writeUInt32BE(payload.length, 4);
  frame.writeUInt32BE(crc32(payload), 8);
  payload.copy(frame, FRAME_HEADER_BYTES);
  return frame;
}

/** The payload of a well-formed frame at `offset`, or undefined (short, wrong magic, wrong checksum). */
function frameAt(bytes: Buffer, offset: number): { payload: Buffer; end: number } | undefined {
  if (offset + FRAME_HEADER_BYTES > bytes.length) return undefined;
  if (bytes.compare(MAGIC, 0, 4, offset, offset + 4) !== 0) return undefined;
  const length = bytes.readUInt32BE(offset + 4);
  const end = offset + FRAME_HEADER_BYTES + length;
  if (length > MAX_ENTRY_BYTES || end > bytes.length) return undefined;
  const payload = bytes.subarray(offset + FRAME_HEADER_BYTES, end);
  if (crc32(payload) !== bytes.readUInt32BE(offset + 8)) return undefined;
  return { payload, end };
}

/** Why a journal was refused; the store turns it into ERR_STATE_CORRUPT with the agent and path. */
export class JournalDamage extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message);
  }
}

export interface ScannedJournal {
  entries: JournalEntry[];
  /** Bytes of well-formed frames: where the next append goes. */
  validEnd: number;
  /** Bytes dropped after `validEnd` (a torn append), 0 when the file ends cleanly. */
  tornBytes: number;
}

const isCount = (value: unknown): value is number => typeof value === "number" && Number.isSafeInteger(value) && value >= 0;

function checkEntry(value: unknown, offset: number): JournalEntry {
  const e = value as JournalEntry;
  const fail = (why: string): never => {
    throw new JournalDamage(`entry at byte ${offset} ${why}`, offset);
  };
  if (typeof value !== "object" || value === null || Array.isArray(value)) fail("is not an object");
  if (typeof e.id !== "string" || !isCount(e.gen) || !isCount(e.seq) || e.seq < 1 || !Number.isFinite(e.at)) fail("has invalid fields");
  if (e.t === "turn") {
    const ok = Array.isArray(e.messages) && e.messages.every((m) => (m?.role === "user" || m?.role === "assistant") && typeof m.content === "string");
    if (!ok) fail("holds invalid messages");
    const w = e.window;
    if (
      w !== undefined &&
      (typeof w !== "object" || w === null || !isCount(w.windowStart) || (w.memoryNote !== undefined && typeof w.memoryNote !== "string"))
    ) {
      fail("holds an invalid window");
    }
  } else if (e.t === "kv") {
    if (e.kv !== null && (typeof e.kv !== "object" || Array.isArray(e.kv))) fail("holds an invalid cache descriptor");
  } else {
    fail(`has unknown type ${JSON.stringify((e as { t?: unknown }).t)}`);
  }
  return e;
}

/**
 * Reads every frame of `bytes`. Throws {@link JournalDamage} for damage that is not a torn tail: a bad
 * frame with a good frame somewhere after it, or a frame whose checksum holds but whose content is not a
 * valid entry (a checksum that matches garbage is not a torn write).
 */
export function scanJournal(bytes: Buffer): ScannedJournal {
  const entries: JournalEntry[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    const frame = frameAt(bytes, offset);
    if (!frame) {
      // Torn tail, unless a whole frame follows: look for one at every later magic.
      for (let at = bytes.indexOf(MAGIC, offset + 1); at !== -1; at = bytes.indexOf(MAGIC, at + 1)) {
        if (frameAt(bytes, at)) throw new JournalDamage(`entry at byte ${offset} is damaged and later entries are intact`, offset);
      }
      return { entries, validEnd: offset, tornBytes: bytes.length - offset };
    }
    let value: unknown;
    try {
      value = JSON.parse(frame.payload.toString("utf8"));
    } catch {
      throw new JournalDamage(`entry at byte ${offset} passes its checksum but is not JSON`, offset);
    }
    entries.push(checkEntry(value, offset));
    offset = frame.end;
  }
  return { entries, validEnd: offset, tornBytes: 0 };
}

/**
 * The entries of `scanned` that extend a record of generation `generation` of agent `id`, checked:
 * every entry names `id`; all share one generation; sequence numbers run 1, 2, 3, …. A journal of an
 * older generation was folded into the record already (a compaction that crashed before it reset the
 * journal) and yields nothing; one of a newer generation means the record is older than its journal.
 */
export function entriesFor(id: string, generation: number, scanned: ScannedJournal): JournalEntry[] {
  const { entries } = scanned;
  if (entries.length === 0) return [];
  const gen = entries[0]!.gen;
  entries.forEach((entry, index) => {
    if (entry.id !== id) throw new JournalDamage(`entry ${index + 1} belongs to agent ${JSON.stringify(entry.id)}`, 0);
    if (entry.gen !== gen) throw new JournalDamage(`entry ${index + 1} is of generation ${entry.gen}, the first of ${gen}`, 0);
    if (entry.seq !== index + 1) throw new JournalDamage(`entry ${index + 1} has sequence number ${entry.seq}`, 0);
  });
  if (gen < generation) return [];
  if (gen > generation) throw new JournalDamage(`the journal extends generation ${gen} but the record is generation ${generation}`, 0);
  return entries;
}

/** The highest generation any well-formed frame names (for choosing the next one), without other checks. */
export function highestGeneration(bytes: Buffer): number {
  let highest = 0;
  for (let at = bytes.indexOf(MAGIC, 0); at !== -1; at = bytes.indexOf(MAGIC, at + 1)) {
    const frame = frameAt(bytes, at);
    if (!frame) continue;
    try {
      const gen = (JSON.parse(frame.payload.toString("utf8")) as { gen?: unknown }).gen;
      if (isCount(gen)) highest = Math.max(highest, gen);
    } catch {
      // Not an entry: irrelevant here.
    }
  }
  return highest;
}

/** Applies one entry to the record it extends (replay, and the one-time format-1 upgrade). */
export function applyEntry(record: AgentRecord, entry: JournalEntry): void {
  if (entry.t === "turn") {
    record.history.push(...entry.messages);
    if (entry.window) {
      record.windowStart = entry.window.windowStart;
      record.memoryNote = entry.window.memoryNote;
    }
  } else {
    record.kv = entry.kv ?? undefined;
  }
  record.updatedAt = entry.at;
}
