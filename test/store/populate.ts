/**
 * Fills a store with many agents fast, through the store API (the runtime's tests and bench:population
 * use it). Records are small conversations of `turns` user/assistant pairs; ids are `<prefix><n>` with n
 * zero-padded, so lexicographic order is numeric order.
 */
import type { AgentRecord, StateStore } from "../../src/store/state-store.js";
import { RECORD_FORMAT_VERSION } from "../../src/store/state-store.js";

export interface PopulateOptions {
  /** Agents to create. */
  count: number;
  /** User/assistant pairs in each history. Default 10. */
  turns?: number;
  /** Id prefix. Default "agent-". */
  prefix?: string;
  /** Writes in flight at once. Default 32. */
  concurrency?: number;
  /** Called every 1 000 agents with the number done. */
  onProgress?: (done: number) => void;
}

export function populationId(prefix: string, n: number, count: number): string {
  return `${prefix}${String(n).padStart(String(Math.max(1, count - 1)).length, "0")}`;
}

export function populationRecord(id: string, turns: number, now = 1_700_000_000_000): AgentRecord {
  const history: AgentRecord["history"] = [];
  for (let t = 0; t < turns; t++) {
    history.push({ role: "user", content: `Question ${t} for ${id}: what is the status of my order?` });
    history.push({ role: "assistant", content: `Answer ${t}: your order ships tomorrow.` });
  }
  return {
    formatVersion: RECORD_FORMAT_VERSION,
    id,
    role: "support",
    systemPrompt: "You are customer support.",
    sampling: {},
    history,
    createdAt: now,
    updatedAt: now,
  };
}

/** Writes `count` agents into `store` (open it with `fsync: false` for speed); resolves their ids' prefix. */
export async function populateStore(store: StateStore, options: PopulateOptions): Promise<void> {
  const { count, turns = 10, prefix = "agent-", concurrency = 32 } = options;
  let next = 0;
  let done = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const n = next++;
      const id = populationId(prefix, n, count);
      await store.write(populationRecord(id, turns));
      if (++done % 1000 === 0) options.onProgress?.(done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
}
