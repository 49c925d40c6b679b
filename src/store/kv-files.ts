/**
 * An agent's saved cache files: staged by the engine, committed (fsync, checksum, rename, folder fsync),
 * and verified (size + checksum: XXH3-64, or sha256 for older files) before the engine loads one. The state that names a file is written by
 * the store after the commit; files the committed state does not name are swept by the store.
 */
import { randomBytes } from "node:crypto";
import type { BigIntStats } from "node:fs";
import { mkdir, rename, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { AgentRuntimeError } from "../errors.js";
import { fsyncPath } from "./atomic-file.js";
import { CHECKSUM_ALGORITHM, checksumFile } from "./checksum.js";
import { kvChecksum } from "./kv-descriptor.js";
import { sameIdentity } from "./record-file.js";
import type { KvChecksum, KvDescriptor, StagedKv } from "./state-store.js";

export class KvFiles {
  readonly #fsync: boolean;
  /**
   * Files this store hashed itself (at commit or a full check), by inode, size and ctime: a file that
   * still has all three is the same bytes, since any write or replacement changes the ctime. Rehydrating
   * within one process then skips re-hashing; a new process (or a touched file) hashes in full.
   */
  readonly #checked = new Map<string, { identity: BigIntStats; digest: string }>();

  constructor(fsync: boolean) {
    this.#fsync = fsync;
  }

  #remember(path: string, identity: BigIntStats, checksum: KvChecksum): void {
    const digest = `${checksum.algorithm}:${checksum.value}`;
    this.#checked.delete(path);
    this.#checked.set(path, { identity, digest });
    // Bounded: the oldest entries go first (Map keeps insertion order).
    if (this.#checked.size > 4096) this.#checked.delete(this.#checked.keys().next().value!);
  }

  async stage(id: string, dir: string, extension: string): Promise<StagedKv> {
    if (!/^\.[a-z0-9]{1,16}$/.test(extension)) throw new RangeError(`Invalid state file extension: ${extension}`);
    await mkdir(dir, { recursive: true });
    // The staging name already carries the final extension: some engines pick their reader or writer by it.
    const path = join(dir, `staging-${randomBytes(6).toString("hex")}.tmp${extension}`);
    return {
      path,
      commit: async () => {
        try {
          if (this.#fsync) await fsyncPath(path, "r+");
          const checksum: KvChecksum = { algorithm: CHECKSUM_ALGORITHM, value: await checksumFile(path, CHECKSUM_ALGORITHM) };
          const file = `kv-${checksum.value.slice(0, 16)}${extension}`;
          await rename(path, join(dir, file));
          if (this.#fsync) await fsyncPath(dir);
          const info = await stat(join(dir, file), { bigint: true });
          this.#remember(join(dir, file), info, checksum);
          return { file, bytes: Number(info.size), checksum };
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

  async open(id: string, dir: string, kv: KvDescriptor): Promise<string> {
    if (!/^kv-[0-9a-f]{16}\.[a-z0-9]{1,16}$/.test(kv.file)) {
      throw new AgentRuntimeError("ERR_STATE_CORRUPT", `Invalid KV file name in the record of ${id}`, { details: { id, file: kv.file } });
    }
    const path = join(dir, kv.file);
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
    const expected = kvChecksum(kv);
    if (!expected)
      throw new AgentRuntimeError("ERR_STATE_CORRUPT", `The saved cache descriptor of ${id} has no valid checksum`, { details: { id, path } });
    const known = this.#checked.get(path);
    if (known && known.digest === `${expected.algorithm}:${expected.value}` && sameIdentity(known.identity, identity)) return path;
    if ((await checksumFile(path, expected.algorithm)) !== expected.value) {
      throw new AgentRuntimeError("ERR_STATE_CORRUPT", `KV state file of ${id} fails its checksum`, {
        details: { id, path, algorithm: expected.algorithm },
      });
    }
    this.#remember(path, identity, expected);
    return path;
  }
}
