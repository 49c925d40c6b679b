import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentRuntime, type EngineName } from "../../src/index.js";
import { kvReservedBytes, type ModelInfo } from "../../src/engines/engine.js";
import { ENGINES, MODELS } from "../helpers/model.js";

const SETTINGS = { model: MODELS.stories, contextSize: 512, threads: 1, maxTokens: 8, sharedPrefixes: false } as const;

describe.each(ENGINES)("kvBudgetBytes on the real model (%s)", (engine: EngineName) => {
  let root: string;
  let info: ModelInfo;
  let counter = 0;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "agentrt-budget-"));
    const probe = await AgentRuntime.create({ ...SETTINGS, engine, stateDir: join(root, "probe"), maxAgents: 1 });
    info = probe.model;
    await probe.close();
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const start = (kvBudgetBytes: number) =>
    AgentRuntime.create({ ...SETTINGS, engine, stateDir: join(root, `state-${++counter}`), maxAgents: 4, kvBudgetBytes });

  it("bounds resident agents by KV bytes: what the engine reserves stays within the budget", async () => {
    // Room for two agents of one allocation step each (the whole context on llama.cpp, 256 tokens on MLX).
    const step = kvReservedBytes(info, 1);
    expect(step).toBe(engine === "llama.cpp" ? info.contextSize * info.kvBytesPerToken : 256 * info.kvBytesPerToken);
    const budget = 2 * step + step / 2;
    const runtime = await start(budget);
    try {
      // llama.cpp sized its context to the budget at load: 2 sequences, not maxAgents' 4.
      expect(runtime.maxAgents).toBe(engine === "llama.cpp" ? 2 : 4);
      for (const id of ["a", "b", "c"]) {
        await runtime.spawn({ id, systemPrompt: "Once upon a time" });
        await runtime.ask(id, "there was a cat");
      }
      const memory = await runtime.memory();
      expect(memory.totals.residentAgents).toBe(2);
      expect(memory.totals.storedAgents).toBe(3);
      expect(memory.totals.kvBudgetBytes).toBe(budget);
      // The engine's own figure (MLX: its arrays' bytes) is within what the supervisor charged, within the budget.
      expect(memory.totals.cacheAllocatedBytes).toBeLessThanOrEqual(memory.totals.kvBudgetUsedBytes);
      expect(memory.totals.kvBudgetUsedBytes).toBeLessThanOrEqual(budget);
      // And it still holds after agents come and go.
      for (const id of ["a", "c", "b", "a"]) await runtime.ask(id, "and then");
      const after = await runtime.memory();
      expect(after.totals.residentAgents).toBe(2);
      expect(after.totals.cacheAllocatedBytes).toBeLessThanOrEqual(after.totals.kvBudgetUsedBytes);
      expect(after.totals.kvBudgetUsedBytes).toBeLessThanOrEqual(budget);
    } finally {
      await runtime.close();
    }
  });

  it.runIf(engine === "llama.cpp")("refuses at start a budget under one sequence's context (llama.cpp preallocates it)", async () => {
    await expect(start(info.contextSize * info.kvBytesPerToken - 1)).rejects.toThrow(/kvBudgetBytes .* less than one sequence/);
  });

  it.runIf(engine === "mlx")("refuses an agent whose cache alone outgrew the budget with ERR_KV_BUDGET (MLX grows caches)", async () => {
    const runtime = await start(kvReservedBytes(info, 1));
    try {
      await runtime.spawn({ id: "long", systemPrompt: "Once upon a time" });
      // One long message takes the cache past one 256-token step: the turn runs, then the agent must leave.
      await runtime.ask("long", "the cat sat on the mat and ".repeat(40));
      await expect(runtime.ask("long", "and then")).rejects.toMatchObject({ code: "ERR_KV_BUDGET" });
    } finally {
      await runtime.close();
    }
  });
});
