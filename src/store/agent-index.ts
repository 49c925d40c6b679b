/**
 * The ids in a directory store, for paging and counting without reading a record. Built from one
 * `readdir` on first use (not at open: an opened store costs nothing until it is listed), then kept
 * up to date by the store's own writes and removals. A few bytes per id (100 000 ids ≈ 8 MiB of heap).
 */
import type { Dirent } from "node:fs";
import { readdir } from "node:fs/promises";
import { keyToAgentId, MAX_AGENT_ID_LENGTH } from "../agent-id.js";
import type { StoredAgentPage } from "./state-store.js";

/**
 * `validateAgentId`'s rule as one expression (a test checks that they agree): building the index of
 * 100 000 ids takes ≈ 30 ms with it against ≈ 400 ms through the validator's split, loop and errors.
 */
const AGENT_ID = /^[a-z0-9][a-z0-9_.-]{0,63}(?:\/[a-z0-9][a-z0-9_.-]{0,63}){0,7}$/;

/** The agent id a folder name encodes, or undefined when it is not one (a stray or foreign name). */
export function folderToAgentId(name: string): string | undefined {
  let id = name;
  if (name.includes("%")) {
    try {
      id = keyToAgentId(name);
    } catch {
      return undefined;
    }
  }
  return id.length <= MAX_AGENT_ID_LENGTH && AGENT_ID.test(id) ? id : undefined;
}

export const DEFAULT_LIST_LIMIT = 100;
export const MAX_LIST_LIMIT = 1000;

/** First index in sorted `ids` whose id is ≥ `value` (> `value` when `strict`). */
function lowerBound(ids: readonly string[], value: string, strict: boolean): number {
  let lo = 0;
  let hi = ids.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const id = ids[mid]!;
    if (id < value || (strict && id === value)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class AgentIndex {
  readonly #agentsDir: string;
  #ids: Set<string> | undefined;
  #loading: Promise<Set<string>> | undefined;
  /** The ids sorted, built on the first page (a sort of 100 000 ids takes ≈ 50 ms). */
  #sorted: string[] | undefined;
  /** Changes made while the first readdir runs (it may or may not have seen them). */
  #pending: Array<[added: boolean, id: string]> = [];

  constructor(agentsDir: string) {
    this.#agentsDir = agentsDir;
  }

  async #load(): Promise<Set<string>> {
    if (this.#ids) return this.#ids;
    this.#loading ??= (async () => {
      let entries: Dirent[];
      try {
        entries = await readdir(this.#agentsDir, { withFileTypes: true });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
        entries = [];
      }
      const ids = new Set<string>();
      for (const entry of entries) {
        // Agents are folders; a stray file whose name happens to be a valid id is not an agent.
        if (!entry.isDirectory()) continue;
        // Not an agent folder (stray, foreign name): ignored rather than fatal.
        const id = folderToAgentId(entry.name);
        if (id !== undefined) ids.add(id);
      }
      for (const [added, id] of this.#pending) {
        if (added) ids.add(id);
        else ids.delete(id);
      }
      this.#pending = [];
      this.#ids = ids;
      return ids;
    })().finally(() => {
      this.#loading = undefined;
    });
    return this.#loading;
  }

  /** Records that `id`'s folder exists now (a no-op until the index is built). */
  added(id: string): void {
    if (this.#loading) this.#pending.push([true, id]);
    if (!this.#ids || this.#ids.has(id)) return;
    this.#ids.add(id);
    // Kept sorted by insertion once built (a 100 000-id memmove, not a sort, per spawn between listings).
    this.#sorted?.splice(lowerBound(this.#sorted, id, false), 0, id);
  }

  removed(id: string): void {
    if (this.#loading) this.#pending.push([false, id]);
    if (!this.#ids?.delete(id) || !this.#sorted) return;
    const at = lowerBound(this.#sorted, id, false);
    if (this.#sorted[at] === id) this.#sorted.splice(at, 1);
  }

  async count(): Promise<number> {
    return (await this.#load()).size;
  }

  async page(options: { prefix?: string | undefined; after?: string | undefined; limit: number }): Promise<StoredAgentPage> {
    const ids = await this.#load();
    const sorted = (this.#sorted ??= [...ids].sort());
    const prefix = options.prefix ?? "";
    let start = lowerBound(sorted, prefix, false);
    if (options.after !== undefined) start = Math.max(start, lowerBound(sorted, options.after, true));
    const page: string[] = [];
    let index = start;
    for (; index < sorted.length && page.length < options.limit; index++) {
      const id = sorted[index]!;
      if (!id.startsWith(prefix)) break;
      page.push(id);
    }
    const more = index < sorted.length && sorted[index]!.startsWith(prefix);
    return more ? { ids: page, next: page[page.length - 1] } : { ids: page };
  }
}
