/**
 * The record file (`agent.json`): a checksummed envelope around the agent's record as of its last
 * compaction, plus the generation its journal extends. Format 1 (no journal, no generation) is still read.
 */
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { validateSampling } from "../engines/sampling.js";
import { AgentRuntimeError } from "../errors.js";
import { RECORD_FORMAT_VERSION, type AgentRecord } from "./state-store.js";

/** A record file larger than this is refused before parsing (a hostile or runaway file). */
export const MAX_RECORD_BYTES = 64 * 1024 * 1024;

/** Record formats this store reads: 1 (history only in the record) and 2 (record + journal). */
const READABLE_FORMATS = new Set([1, RECORD_FORMAT_VERSION]);

/** The record as stored: the body's JSON text and its checksum, so a flipped bit is caught. */
interface RecordEnvelope {
  format: "agentrt-agent";
  sha256: string;
  body: string;
}

/** The record body as stored: the record plus the store's own field (inside the checksum). */
type StoredBody = AgentRecord & { generation?: number };

export interface LoadedRecord {
  record: AgentRecord;
  /** Generation the journal extends; 0 for a format-1 record. */
  generation: number;
  /** Format the file was written in (1: the first append rewrites it as the current format). */
  format: number;
  bytes: number;
}

function sha256Text(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** The file's bytes for `record` at `generation`, always in the current format. */
export function encodeRecord(record: AgentRecord, generation: number): string {
  const stored: StoredBody = { ...record, formatVersion: RECORD_FORMAT_VERSION, generation };
  const body = JSON.stringify(stored);
  const envelope: RecordEnvelope = { format: "agentrt-agent", sha256: sha256Text(body), body };
  return JSON.stringify(envelope);
}

export interface FileIdentity {
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

export function sameIdentity(a: FileIdentity | undefined, b: FileIdentity | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

/**
 * Reads a regular file of at most `limit` bytes, or undefined when it does not exist. The type and size
 * are checked on the opened descriptor with O_NONBLOCK, so a FIFO swapped in neither blocks the open nor
 * the read, and a device or a huge file is refused before a byte is read.
 */
export async function readBounded(
  path: string,
  limit: number,
  what: string,
  id: string,
): Promise<{ bytes: Buffer; identity: FileIdentity } | undefined> {
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  try {
    const info = await handle.stat({ bigint: true });
    if (!info.isFile()) {
      throw new AgentRuntimeError("ERR_STATE_CORRUPT", `The ${what} of ${id} is not a regular file`, { details: { id, path } });
    }
    if (info.size > BigInt(limit)) {
      throw new AgentRuntimeError("ERR_STATE_CORRUPT", `The ${what} of ${id} is ${info.size} bytes, over the ${limit} limit`, {
        details: { id, path },
      });
    }
    const bytes = Buffer.allocUnsafe(Number(info.size));
    let filled = 0;
    while (filled < bytes.length) {
      const { bytesRead } = await handle.read(bytes, filled, bytes.length - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return { bytes: bytes.subarray(0, filled), identity: info };
  } finally {
    await handle.close();
  }
}

/** What is wrong with a record's fields (the checks both a read and a write make), or undefined. */
export function recordProblem(record: AgentRecord): string | undefined {
  const messagesValid =
    Array.isArray(record.history) && record.history.every((m) => (m?.role === "user" || m?.role === "assistant") && typeof m.content === "string");
  if (!messagesValid || typeof record.systemPrompt !== "string" || typeof record.role !== "string") return "invalid fields";
  if (record.behaviour !== undefined && typeof record.behaviour !== "string") return "invalid behaviour";
  if (!Number.isFinite(record.createdAt) || !Number.isFinite(record.updatedAt)) return "invalid timestamps";
  return undefined;
}

export function parseRecord(id: string, path: string, text: string): LoadedRecord {
  const corrupt = (why: string, cause?: unknown): never => {
    throw new AgentRuntimeError("ERR_STATE_CORRUPT", `Agent record of ${id} is unreadable: ${why}`, {
      cause,
      details: { id, path },
    });
  };
  let envelope: RecordEnvelope;
  try {
    envelope = JSON.parse(text) as RecordEnvelope;
  } catch (error) {
    return corrupt("not valid JSON", error);
  }
  if (envelope?.format !== "agentrt-agent" || typeof envelope.body !== "string") {
    throw new AgentRuntimeError("ERR_STATE_FOREIGN", `${path} is not an agentrt agent record`, { details: { id, path } });
  }
  if (sha256Text(envelope.body) !== envelope.sha256) corrupt("checksum mismatch");
  let stored: StoredBody;
  try {
    stored = JSON.parse(envelope.body) as StoredBody;
  } catch (error) {
    return corrupt("body is not valid JSON", error);
  }
  if (typeof stored !== "object" || stored === null || Array.isArray(stored)) corrupt("body is not an object");
  const format = stored.formatVersion as number;
  if (!READABLE_FORMATS.has(format)) {
    throw new AgentRuntimeError("ERR_STATE_FOREIGN", `Agent record of ${id} has format ${String(format)}`, {
      details: { id, path, formatVersion: format },
    });
  }
  if (stored.id !== id) corrupt(`it belongs to ${JSON.stringify(stored.id)}`);
  const problem = recordProblem(stored);
  if (problem) corrupt(problem);
  const generation = format === 1 ? 0 : stored.generation;
  if (typeof generation !== "number" || !Number.isSafeInteger(generation) || generation < 0) corrupt("invalid generation");
  try {
    // The engine must never see sampling settings a spawn would have refused.
    stored.sampling = validateSampling(stored.sampling);
  } catch (error) {
    corrupt(`invalid sampling: ${(error as Error).message}`, error);
  }
  delete stored.generation;
  stored.formatVersion = RECORD_FORMAT_VERSION;
  return { record: stored, generation: generation!, format, bytes: Buffer.byteLength(text) };
}
