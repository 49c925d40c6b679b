import { createHash } from "node:crypto";
import { mkdir, readFile, rename, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import type { HostedEngine } from "../engines/engine.js";
import { fsyncPath, writeFileAtomic } from "./atomic-file.js";
import { CHECKSUM_ALGORITHM, checksumFile } from "./checksum.js";
import { kvChecksum } from "./kv-descriptor.js";
import type { KvChecksum } from "./state-store.js";

interface PrefixEntry {
  extension: string;
  fingerprint: string;
  /** The state file's checksum; entries written before it carry `sha256` (still read). */
  checksum?: KvChecksum;
  sha256?: string;
  bytes: number;
  tokens: number;
}

/**
 * Saved KV states of system prompts, shared by every agent spawned with the same prompt on the same
 * model: a new agent loads the state instead of evaluating the prompt again. Derived data (a cache),
 * so it lives in a local folder beside the state, not in the state store.
 */
export class PrefixCache {
  readonly #dir: string;
  readonly #minTokens: number;
  /** Entries whose file checksum was verified by this process (the files are immutable once written). */
  readonly #verified = new Map<string, PrefixEntry>();
  readonly #recent = new Map<string, string>();

  constructor(dir: string, minTokens: number) {
    this.#dir = dir;
    this.#minTokens = minTokens;
  }

  /** The key of a system prompt's shared state on a model (cluster placement compares these across nodes). */
  static key(fingerprint: string, systemPrompt: string): string {
    return createHash("sha256").update(fingerprint).update("\0").update(systemPrompt).digest("hex").slice(0, 32);
  }

  #key(fingerprint: string, systemPrompt: string): string {
    const key = PrefixCache.key(fingerprint, systemPrompt);
    // Most recently used last (bounded): what this node advertises to the cluster's placement.
    this.#recent.delete(key);
    this.#recent.set(key, fingerprint);
    if (this.#recent.size > 256) this.#recent.delete(this.#recent.keys().next().value!);
    return key;
  }

  /** Keys of shared states this process used or saved on model `fingerprint`, most recent first. */
  recentKeys(fingerprint: string, limit: number): string[] {
    const keys: string[] = [];
    for (const [key, model] of [...this.#recent].reverse()) {
      if (model === fingerprint) keys.push(key);
      if (keys.length >= limit) break;
    }
    return keys;
  }

  /** The state file's path. Not `<key><extension>`: with a ".json" engine that is the entry file itself. */
  #statePath(key: string, extension: string): string {
    return join(this.#dir, `${key}.state${extension}`);
  }

  async #entry(key: string, fingerprint: string): Promise<PrefixEntry | undefined> {
    const known = this.#verified.get(key);
    if (known) return known;
    try {
      const entry = JSON.parse(await readFile(join(this.#dir, `${key}.json`), "utf8")) as PrefixEntry;
      // The extension becomes part of a path: anything but a plain one could point outside this folder.
      if (typeof entry.extension !== "string" || !/^\.[a-z0-9]{1,16}$/.test(entry.extension)) return undefined;
      const path = this.#statePath(key, entry.extension);
      const info = await stat(path);
      if (entry.fingerprint !== fingerprint || !info.isFile() || info.size !== entry.bytes) return undefined;
      const expected = kvChecksum(entry);
      if (!expected || (await checksumFile(path, expected.algorithm)) !== expected.value) return undefined;
      this.#verified.set(key, entry);
      return entry;
    } catch {
      // Missing or unreadable: the prompt is evaluated as usual (and the entry rewritten).
      return undefined;
    }
  }

  /** Loads the saved state of `systemPrompt` into sequence `sequenceKey`; resolves its token count, or 0. */
  async load(engine: HostedEngine, sequenceKey: string, systemPrompt: string): Promise<number> {
    const key = this.#key(engine.info.fingerprint, systemPrompt);
    const entry = await this.#entry(key, engine.info.fingerprint);
    if (!entry) return 0;
    try {
      return (await engine.loadState(sequenceKey, this.#statePath(key, entry.extension))).tokens;
    } catch {
      this.#verified.delete(key);
      return 0;
    }
  }

  /** Saves sequence `sequenceKey`, which holds exactly the system prompt, for later agents. */
  async remember(engine: HostedEngine, sequenceKey: string, systemPrompt: string, tokens: number): Promise<void> {
    if (tokens < this.#minTokens) return;
    const key = this.#key(engine.info.fingerprint, systemPrompt);
    if (this.#verified.has(key)) return;
    await mkdir(this.#dir, { recursive: true });
    const extension = engine.info.stateFileExtension;
    const temp = join(this.#dir, `${key}.${randomBytes(6).toString("hex")}.tmp${extension}`);
    try {
      const saved = await engine.saveState(sequenceKey, temp);
      await fsyncPath(temp, "r+");
      const entry: PrefixEntry = {
        extension,
        fingerprint: engine.info.fingerprint,
        checksum: { algorithm: CHECKSUM_ALGORITHM, value: await checksumFile(temp) },
        bytes: saved.bytes,
        tokens: saved.tokens,
      };
      await rename(temp, this.#statePath(key, extension));
      await writeFileAtomic(join(this.#dir, `${key}.json`), JSON.stringify(entry));
      this.#verified.set(key, entry);
    } catch {
      // A cache that cannot be written only costs speed.
      await unlink(temp).catch(() => {});
    }
  }
}
