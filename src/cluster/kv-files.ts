/**
 * Saved KV cache files of a clustered store: a local directory is the first copy and a cache, the
 * JetStream object store the shared one. A passivation writes and fsyncs locally (as DirectoryStore
 * does); the upload runs behind it and the head names the file only once the upload is complete, so the
 * object store is never on the critical path of the node that passivated and will rehydrate the agent.
 * Any other node downloads the object and checks its sha256 before the engine sees a byte.
 */
import { randomBytes } from "node:crypto";
import { createReadStream, type BigIntStats } from "node:fs";
import { mkdir, open as fsOpen, readdir, rename, rm, stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Readable } from "node:stream";
import type { ObjectStore } from "@nats-io/obj";
import { agentIdToKey } from "../agent-id.js";
import { AgentRuntimeError } from "../errors.js";
import { fsyncPath } from "../store/atomic-file.js";
import { CHECKSUM_ALGORITHM, checksumFile } from "../store/checksum.js";
import { kvChecksum } from "../store/kv-descriptor.js";
import type { KvDescriptor, StagedKv } from "../store/state-store.js";
import { agentToken, keys } from "./keys.js";

const KV_FILE = /^kv-[0-9a-f]{16}\.[a-z0-9]{1,16}$/;

function corrupt(id: string, why: string, details: Record<string, unknown>, cause?: unknown): AgentRuntimeError {
  return new AgentRuntimeError("ERR_STATE_CORRUPT", `KV state file of ${id} ${why}`, { cause, details: { id, ...details } });
}

export class KvFiles {
  readonly #root: string;
  readonly #objects: ObjectStore;
  readonly #fsync: boolean;
  /** Files hashed here, by identity (as DirectoryStore): rehydrating in the same process skips re-hashing. */
  readonly #checked = new Map<string, { identity: BigIntStats; digest: string }>();
  /** Local files a passivation is writing or has just committed, which no sweep may delete (full paths). */
  readonly #inUse = new Set<string>();
  /** Uploads and downloads, for counters (bench) and tests. */
  readonly stats = { uploads: 0, uploadBytes: 0, downloads: 0, downloadBytes: 0, localHits: 0 };

  constructor(root: string, objects: ObjectStore, options: { fsync?: boolean | undefined } = {}) {
    this.#root = root;
    this.#objects = objects;
    this.#fsync = options.fsync ?? true;
  }

  dir(id: string): string {
    return join(this.#root, agentIdToKey(id));
  }

  async stage(id: string, extension: string): Promise<StagedKv> {
    if (!/^\.[a-z0-9]{1,16}$/.test(extension)) throw new RangeError(`Invalid state file extension: ${extension}`);
    const dir = this.dir(id);
    await mkdir(dir, { recursive: true });
    const path = join(dir, `staging-${randomBytes(6).toString("hex")}.tmp${extension}`);
    this.#inUse.add(path);
    return {
      path,
      commit: async () => {
        try {
          if (this.#fsync) await fsyncPath(path, "r+");
          const checksum = { algorithm: CHECKSUM_ALGORITHM, value: await checksumFile(path, CHECKSUM_ALGORITHM) };
          const file = `kv-${checksum.value.slice(0, 16)}${extension}`;
          // Kept from sweeps until a sweep that keeps it (its descriptor committed) releases it.
          this.#inUse.add(join(dir, file));
          await rename(path, join(dir, file));
          this.#inUse.delete(path);
          if (this.#fsync) await fsyncPath(dir);
          const info = await stat(join(dir, file), { bigint: true });
          this.#remember(join(dir, file), info, `${checksum.algorithm}:${checksum.value}`);
          return { file, bytes: Number(info.size), checksum };
        } catch (error) {
          this.#inUse.delete(path);
          await unlink(path).catch(() => {});
          throw new AgentRuntimeError("ERR_STATE_WRITE_FAILED", `Could not commit the KV state of ${id}: ${(error as Error).message}`, {
            cause: error,
            details: { id },
          });
        }
      },
      discard: async () => {
        this.#inUse.delete(path);
        await unlink(path).catch(() => {});
      },
    };
  }

  /** A name for a new upload of `kv.file` under `epoch`. */
  objectName(id: string, kv: KvDescriptor, epoch: number): string {
    return keys.object(agentToken(id), epoch, randomBytes(4).toString("hex"), kv.file);
  }

  /** Uploads the local file `kv.file` of `id` as `name`; resolves once the object store acknowledged all of it. */
  async upload(id: string, kv: KvDescriptor, name: string): Promise<void> {
    const path = join(this.dir(id), kv.file);
    const stream = Readable.toWeb(createReadStream(path, { highWaterMark: 1024 * 1024 })) as ReadableStream<Uint8Array>;
    const checksum = kvChecksum(kv);
    const info = await this.#objects.put({ name, metadata: { checksum: checksum ? `${checksum.algorithm}:${checksum.value}` : "" } }, stream);
    if (info.size !== kv.bytes) throw new Error(`uploaded ${info.size} bytes of ${kv.bytes}`);
    this.stats.uploads++;
    this.stats.uploadBytes += info.size;
  }

  /** Deletes the shared copy of `file` (after the head stopped naming it). */
  async deleteObject(name: string): Promise<void> {
    await this.#objects.delete(name).catch(() => {});
  }

  /**
   * A local path to the verified file: the local copy when it is there and intact, else a download from
   * the object store, checked (size and sha256) before it is renamed into place. ERR_STATE_CORRUPT when
   * the file is missing everywhere, or its bytes are not the ones the descriptor vouches for.
   */
  async open(id: string, kv: KvDescriptor, shared: () => Promise<string | undefined>): Promise<string> {
    if (!KV_FILE.test(kv.file)) throw corrupt(id, "has an invalid name", { file: kv.file });
    const dir = this.dir(id);
    const path = join(dir, kv.file);
    const expected = kvChecksum(kv);
    if (!expected) throw corrupt(id, "has no valid checksum", { file: kv.file });
    const want = `${expected.algorithm}:${expected.value}`;
    const digest = async (file: string) => `${expected.algorithm}:${await checksumFile(file, expected.algorithm)}`;
    const local = await stat(path, { bigint: true }).catch(() => undefined);
    if (local?.isFile() && Number(local.size) === kv.bytes) {
      const known = this.#checked.get(path);
      const found = known && sameFile(known.identity, local) ? known.digest : await digest(path);
      if (found === want) {
        this.#remember(path, local, found);
        this.stats.localHits++;
        return path;
      }
      // A damaged local copy (or a descriptor for other bytes) falls through to the shared copy, which
      // replaces the local one only once it verifies.
    }
    await mkdir(dir, { recursive: true });
    const temp = join(dir, `download-${randomBytes(6).toString("hex")}.tmp`);
    try {
      // Only the head knows which object holds the shared copy (and whether it still names this file).
      const name = await shared();
      if (name === undefined) throw corrupt(id, "is not the one the store names", { file: kv.file });
      const result = await this.#objects.get(name).catch((error: unknown) => {
        throw corrupt(id, "could not be fetched from the object store", { file: kv.file }, error);
      });
      if (!result || result.info.deleted) throw corrupt(id, "is missing from the object store", { file: kv.file });
      if (result.info.size !== kv.bytes)
        throw corrupt(id, `is ${result.info.size} bytes in the object store, expected ${kv.bytes}`, { file: kv.file });
      let received = 0;
      const handle = await fsOpen(temp, "w");
      try {
        const reader = result.data.getReader();
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            received += value.length;
            // Never write more than the descriptor vouches for (a forged object could be huge).
            if (received > kv.bytes) throw corrupt(id, `is larger in the object store than the ${kv.bytes} bytes expected`, { file: kv.file });
            await handle.write(value);
          }
        } catch (error) {
          await reader.cancel().catch(() => {});
          throw error instanceof AgentRuntimeError ? error : corrupt(id, "failed its transfer or digest check", { file: kv.file }, error);
        }
        if (this.#fsync) await handle.sync();
      } finally {
        await handle.close();
      }
      // The client checks the object's own digest at the end of the stream: a tampered chunk fails here.
      const digestError = await result.error;
      if (digestError) throw corrupt(id, "fails the object store's digest check", { file: kv.file }, digestError);
      const found = await digest(temp);
      if (found !== want || received !== kv.bytes) throw corrupt(id, "fails its checksum", { file: kv.file });
      await rename(temp, path);
      const info = await stat(path, { bigint: true });
      this.#remember(path, info, found);
      this.stats.downloads++;
      this.stats.downloadBytes += received;
      return path;
    } catch (error) {
      await unlink(temp).catch(() => {});
      throw error instanceof AgentRuntimeError ? error : corrupt(id, "could not be fetched", { file: kv.file }, error);
    }
  }

  /** Deletes local files of `id` other than `keep` (older caches, staging and download leftovers). */
  async sweepLocal(id: string, keep: ReadonlySet<string>): Promise<void> {
    const dir = this.dir(id);
    for (const name of keep) this.#inUse.delete(join(dir, name));
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      // Kept too: a passivation staging or committing a newer state while an older upload finishes.
      if (keep.has(name) || this.#inUse.has(join(dir, name))) continue;
      if (name.startsWith("kv-") || name.startsWith("staging-") || name.startsWith("download-")) await unlink(join(dir, name)).catch(() => {});
    }
  }

  async removeLocal(id: string): Promise<void> {
    const dir = this.dir(id);
    for (const path of this.#inUse) if (dirname(path) === dir) this.#inUse.delete(path);
    await rm(dir, { recursive: true, force: true });
  }

  #remember(path: string, identity: BigIntStats, digest: string): void {
    this.#checked.delete(path);
    this.#checked.set(path, { identity, digest });
    if (this.#checked.size > 4096) this.#checked.delete(this.#checked.keys().next().value!);
  }
}

function sameFile(a: BigIntStats, b: BigIntStats): boolean {
  return a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}
