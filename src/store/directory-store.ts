import { createHash, randomBytes } from "node:crypto";
import { createReadStream, type BigIntStats, type Dirent } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import { AgentRuntimeError } from "../errors.js";
import { agentIdToKey, keyToAgentId, validateAgentId } from "../agent-id.js";
import { validateSampling } from "../engines/sampling.js";
import { fsyncPath, writeFileAtomic } from "./atomic-file.js";
import { sha256File } from "./checksum.js";
import { RECORD_FORMAT_VERSION, type AgentRecord, type KvDescriptor, type StagedKv, type StateStore } from "./state-store.js";

const RECORD_FILE = "agent.json";
/** A record file larger than this is refused before parsing (a hostile or runaway file). */
export const MAX_RECORD_BYTES = 64 * 1024 * 1024;


function sha256Text(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** The record as stored: the body's JSON text and its checksum, so a flipped bit is caught. */
interface RecordEnvelope {
  format: "agentrt-agent";
  sha256: string;
  body: string;
}

/**
 * Stores each agent in `<root>/agents/<encoded id>/`: `agent.json` (record, checksummed) and
 * `kv-<sha>.bin` (engine KV state). The record is the commit point: a KV file is made durable and
 * renamed into place first, then the record that names it; files no record names are swept.
 */
export class DirectoryStore implements StateStore {
  readonly location: string;
  readonly #agentsDir: string;

  constructor(root: string) {
    this.location = root;
    this.#agentsDir = join(root, "agents");
  }

  #dir(id: string): string {
    return join(this.#agentsDir, agentIdToKey(validateAgentId(id)));
  }

  async list(): Promise<string[]> {
    let entries: Dirent[];
    try {
      entries = await readdir(this.#agentsDir, { withFileTypes: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw error;
    }
    const ids: string[] = [];
    for (const entry of entries) {
      // Agents are folders; a stray file whose name happens to be a valid id is not an agent.
      if (!entry.isDirectory()) continue;
      try {
        ids.push(validateAgentId(keyToAgentId(entry.name)));
      } catch {
        // Not an agent folder (stray file, foreign name): ignored rather than fatal.
      }
    }
    return ids.sort();
  }

  async read(id: string): Promise<AgentRecord | undefined> {
    const path = join(this.#dir(id), RECORD_FILE);
    let text: string;
    try {
      const info = await stat(path);
      // Checked before opening: opening a FIFO blocks, reading a device never ends.
      if (!info.isFile()) {
        throw new AgentRuntimeError("ERR_STATE_CORRUPT", `Agent record of ${id} is not a regular file`, { details: { id, path } });
      }
      if (info.size > MAX_RECORD_BYTES) {
        throw new AgentRuntimeError("ERR_STATE_CORRUPT", `Agent record is ${info.size} bytes, over the ${MAX_RECORD_BYTES} limit`, {
          details: { id, path },
        });
      }
      text = await readFile(path, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
    return parseRecord(id, path, text);
  }

  async write(record: AgentRecord): Promise<void> {
    const dir = this.#dir(record.id);
    const body = JSON.stringify(record);
    const envelope: RecordEnvelope = { format: "agentrt-agent", sha256: sha256Text(body), body };
    try {
      await this.#ensureDir(dir);
      await writeFileAtomic(join(dir, RECORD_FILE), JSON.stringify(envelope));
    } catch (error) {
      throw new AgentRuntimeError("ERR_STATE_WRITE_FAILED", `Could not write the record of ${record.id}: ${(error as Error).message}`, {
        cause: error,
        details: { id: record.id, errno: (error as NodeJS.ErrnoException).code },
      });
    }
    await this.#sweep(dir, record.kv?.file);
  }

  /**
   * Creates an agent's folder; when it is new, fsyncs the folders above it too, so that the folder
   * (and the record about to be written into it) survives a power loss, not only a process crash.
   */
  async #ensureDir(dir: string): Promise<void> {
    const created = await mkdir(dir, { recursive: true });
    if (created === undefined) return;
    for (let parent = dirname(dir); ; parent = dirname(parent)) {
      await fsyncPath(parent);
      if (parent === dirname(created) || parent === dirname(parent)) break;
    }
  }

  /** Deletes KV and temp files the committed record does not name (left by earlier saves or crashes). */
  async #sweep(dir: string, keep: string | undefined): Promise<void> {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names) {
      if (name === RECORD_FILE || name === keep) continue;
      if (name.startsWith("kv-") || name.startsWith("staging-") || name.includes(".tmp")) await unlink(join(dir, name)).catch(() => {});
    }
  }

  async stageKv(id: string, extension = ".bin"): Promise<StagedKv> {
    if (!/^\.[a-z0-9]{1,16}$/.test(extension)) throw new RangeError(`Invalid state file extension: ${extension}`);
    const dir = this.#dir(id);
    await mkdir(dir, { recursive: true });
    // The staging name already carries the final extension: some engines pick their reader or writer by it.
    const path = join(dir, `staging-${randomBytes(6).toString("hex")}.tmp${extension}`);
    return {
      path,
      commit: async () => {
        try {
          await fsyncPath(path, "r+");
          const sha256 = await sha256File(path);
          const file = `kv-${sha256.slice(0, 16)}${extension}`;
          await rename(path, join(dir, file));
          await fsyncPath(dir);
          const info = await stat(join(dir, file), { bigint: true });
          this.#remember(join(dir, file), info, sha256);
          return { file, bytes: Number(info.size), sha256 };
        } catch (error) {
          await unlink(path).catch(() => {});
          throw new AgentRuntimeError("ERR_STATE_WRITE_FAILED", `Could not commit the KV state of ${id}: ${(error as Error).message}`, {
            cause: error,
            details: { id, errno: (error as NodeJS.ErrnoException).code },
          });
        }
      },
      discard: async () => {
        await unlink(path).catch(() => {});
      },
    };
  }

  async openKv(id: string, kv: KvDescriptor): Promise<string> {
    if (!/^kv-[0-9a-f]{16}\.[a-z0-9]{1,16}$/.test(kv.file)) {
      throw new AgentRuntimeError("ERR_STATE_CORRUPT", `Invalid KV file name in the record of ${id}`, { details: { id, file: kv.file } });
    }
    const path = join(this.#dir(id), kv.file);
    let size: number;
    let identity: BigIntStats;
    try {
      identity = await stat(path, { bigint: true });
      if (!identity.isFile()) throw new Error("not a regular file");
      size = Number(identity.size);
    } catch (error) {
      throw new AgentRuntimeError("ERR_STATE_CORRUPT", `KV state file of ${id} is missing or not a regular file`, {
        cause: error,
        details: { id, path },
      });
    }
    if (size !== kv.bytes) {
      throw new AgentRuntimeError("ERR_STATE_CORRUPT", `KV state file of ${id} is ${size} bytes, expected ${kv.bytes}`, {
        details: { id, path, size, expected: kv.bytes },
      });
    }
    const known = this.#checked.get(path);
    if (known && known.sha256 === kv.sha256 && sameFile(known.identity, identity)) return path;
    const sha256 = await sha256File(path);
    if (sha256 !== kv.sha256) {
      throw new AgentRuntimeError("ERR_STATE_CORRUPT", `KV state file of ${id} fails its checksum`, { details: { id, path } });
    }
    this.#remember(path, identity, sha256);
    return path;
  }

  /**
   * Files this store hashed itself (at commit or a full check), by inode, size and ctime: a file that
   * still has all three is the same bytes, since any write or replacement changes the ctime. Rehydrating
   * within one process then skips re-hashing; a new process (or a touched file) hashes in full.
   */
  readonly #checked = new Map<string, { identity: BigIntStats; sha256: string }>();

  #remember(path: string, identity: BigIntStats, sha256: string): void {
    this.#checked.delete(path);
    this.#checked.set(path, { identity, sha256 });
    // Bounded: the oldest entries go first (Map keeps insertion order).
    if (this.#checked.size > 4096) this.#checked.delete(this.#checked.keys().next().value!);
  }

  async remove(id: string): Promise<void> {
    const dir = this.#dir(id);
    // The record goes first and durably: a crash part-way then leaves a folder without a record (not an
    // agent, swept by the next spawn of the id), never a record whose cache file is already deleted.
    await rm(join(dir, RECORD_FILE), { recursive: true, force: true });
    await fsyncPath(dir).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "ENOENT") throw error;
    });
    await rm(dir, { recursive: true, force: true });
  }

  async bytesOnDisk(id: string): Promise<number> {
    const dir = this.#dir(id);
    const names = await readdir(dir).catch(() => [] as string[]);
    let total = 0;
    for (const name of names) total += (await stat(join(dir, name)).catch(() => ({ size: 0 }))).size;
    return total;
  }
}

function sameFile(a: BigIntStats, b: BigIntStats): boolean {
  return a.ino === b.ino && a.dev === b.dev && a.size === b.size && a.ctimeNs === b.ctimeNs && a.mtimeNs === b.mtimeNs;
}

function parseRecord(id: string, path: string, text: string): AgentRecord {
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
  let record: AgentRecord;
  try {
    record = JSON.parse(envelope.body) as AgentRecord;
  } catch (error) {
    return corrupt("body is not valid JSON", error);
  }
  if (typeof record !== "object" || record === null || Array.isArray(record)) corrupt("body is not an object");
  if (record.formatVersion !== RECORD_FORMAT_VERSION) {
    throw new AgentRuntimeError("ERR_STATE_FOREIGN", `Agent record of ${id} has format ${String(record.formatVersion)}`, {
      details: { id, path, formatVersion: record.formatVersion },
    });
  }
  if (record.id !== id) corrupt(`it belongs to ${JSON.stringify(record.id)}`);
  const messagesValid =
    Array.isArray(record.history) &&
    record.history.every((m) => (m?.role === "user" || m?.role === "assistant") && typeof m.content === "string");
  if (!messagesValid || typeof record.systemPrompt !== "string" || typeof record.role !== "string") {
    corrupt("invalid fields");
  }
  if (record.behaviour !== undefined && typeof record.behaviour !== "string") corrupt("invalid behaviour name");
  if (!Number.isFinite(record.createdAt) || !Number.isFinite(record.updatedAt)) corrupt("invalid timestamps");
  try {
    // The engine must never see sampling settings a spawn would have refused.
    record.sampling = validateSampling(record.sampling);
  } catch (error) {
    corrupt(`invalid sampling: ${(error as Error).message}`, error);
  }
  return record;
}
