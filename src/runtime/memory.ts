import type { ModelInfo, SequenceStats } from "../engines/engine.js";
import type { Agent } from "../actor/agent.js";

export interface AgentMemory {
  id: string;
  status: "resident" | "passivated" | "passivating" | "rehydrating" | "failed";
  /** Tokens held in the KV cache in memory (0 when not resident). */
  cacheTokens: number;
  /** KV cache bytes holding its tokens (cacheTokens × kvBytesPerToken; 0 when not resident). */
  cacheBytes: number;
  /** KV bytes the engine reserves for the agent (0 when not resident). */
  cacheAllocatedBytes: number;
  /** Tokens in the saved cache on disk, if any. */
  savedTokens: number;
  /** Bytes the agent occupies in the store (record + cache file). */
  diskBytes: number;
  /** Running a message now. */
  busy: boolean;
  /** Messages waiting in its mailbox. */
  queued: number;
}

export interface MemoryReport {
  model: { name: string; engine: string; bytes: number; contextSize: number; kvBytesPerToken: number };
  agents: AgentMemory[];
  totals: {
    residentAgents: number;
    passivatedAgents: number;
    cacheTokens: number;
    cacheBytes: number;
    cacheAllocatedBytes: number;
    diskBytes: number;
    /** Model bytes + KV bytes reserved in memory. */
    memoryBytes: number;
    /** Agents in the store, in memory or not (those not listed here hold no memory at all). */
    storedAgents: number;
    /** The runtime's `kvBudgetBytes`; null without one. */
    kvBudgetBytes: number | null;
    /** KV bytes charged against the budget: what the engine reserves for every resident agent's cache. */
    kvBudgetUsedBytes: number;
  };
}

export function memoryReport(
  info: ModelInfo,
  agents: readonly Agent[],
  resident: ReadonlySet<string>,
  stats: Record<string, SequenceStats>,
  disk: readonly number[],
  storedAgents: number,
  budget: { budgetBytes: number; usedBytes: number } = { budgetBytes: Infinity, usedBytes: 0 },
): MemoryReport {
  const rows = agents.map((agent, index): AgentMemory => {
    const live = resident.has(agent.id) ? stats[agent.id] : undefined;
    return {
      id: agent.id,
      status: agent.status.state,
      cacheTokens: live?.tokens ?? 0,
      cacheBytes: live?.bytes ?? 0,
      cacheAllocatedBytes: live?.allocatedBytes ?? 0,
      savedTokens: agent.kv?.tokens ?? 0,
      diskBytes: disk[index] ?? 0,
      busy: agent.mailbox.busy,
      queued: agent.mailbox.pending,
    };
  });
  const sum = (pick: (row: AgentMemory) => number) => rows.reduce((total, row) => total + pick(row), 0);
  const cacheBytes = sum((row) => row.cacheBytes);
  const cacheAllocatedBytes = sum((row) => row.cacheAllocatedBytes);
  return {
    model: {
      name: info.name,
      engine: info.engine,
      bytes: info.modelBytes,
      contextSize: info.contextSize,
      kvBytesPerToken: info.kvBytesPerToken,
    },
    agents: rows,
    totals: {
      residentAgents: rows.filter((row) => row.status === "resident").length,
      passivatedAgents: rows.filter((row) => row.status === "passivated").length,
      cacheTokens: sum((row) => row.cacheTokens),
      cacheBytes,
      cacheAllocatedBytes,
      diskBytes: sum((row) => row.diskBytes),
      memoryBytes: info.modelBytes + cacheAllocatedBytes,
      storedAgents,
      kvBudgetBytes: Number.isFinite(budget.budgetBytes) ? budget.budgetBytes : null,
      kvBudgetUsedBytes: budget.usedBytes,
    },
  };
}
