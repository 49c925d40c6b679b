import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { AgentRuntime } from "../../src/index.js";
import { kvReservedBytes } from "../../src/engines/engine.js";
import { ResidentSlots } from "../../src/supervisor/resident-slots.js";
import { FakeEngine } from "../../src/testing/index.js";

interface FakeAgent {
  id: string;
  pins: number;
  lastUsed: number;
}

const agent = (id: string, lastUsed: number, pins = 0): FakeAgent => ({ id, lastUsed, pins });
const ids = (agents: readonly FakeAgent[]) => agents.map((a) => a.id).sort();

function slots(maxAgents: number, budgetBytes: number) {
  const passivated: string[] = [];
  const resident = new ResidentSlots<FakeAgent>({
    maxAgents,
    budgetBytes,
    passivate: async (a) => {
      passivated.push(a.id);
    },
  });
  return { resident, passivated };
}

describe("ResidentSlots with a byte budget", () => {
  it("passivates by bytes, not by count: one large newcomer evicts the two least recently used", async () => {
    const { resident, passivated } = slots(10, 100);
    for (const [index, id] of ["a", "b", "c"].entries()) await resident.admit(agent(id, index), undefined, 30);
    expect(resident.usedBytes).toBe(90);
    // 90 + 10 fits: no eviction although a fourth agent arrives.
    await resident.admit(agent("d", 3), undefined, 10);
    expect(passivated).toEqual([]);
    // 100 + 50 does not: a (30) and b (30) leave, c and d (40) stay with the newcomer (50).
    await resident.admit(agent("e", 4), undefined, 50);
    expect(passivated).toEqual(["a", "b"]);
    expect(ids(resident.residents)).toEqual(["c", "d", "e"]);
    expect(resident.usedBytes).toBe(90);
  });

  it("waits while the residents that would have to leave are busy, then evicts the first to go idle", async () => {
    const { resident, passivated } = slots(10, 100);
    const busy = agent("busy", 1, 1);
    const idleButSmall = agent("small", 2);
    await resident.admit(busy, undefined, 60);
    await resident.admit(idleButSmall, undefined, 10);
    let admitted = false;
    const waiting = resident.admit(agent("next", 3), undefined, 50).then(() => (admitted = true));
    await new Promise((resolve) => setImmediate(resolve));
    // The idle one went, but 60 + 50 still does not fit: the newcomer waits for the busy one.
    expect(passivated).toEqual(["small"]);
    expect(admitted).toBe(false);
    busy.pins = 0;
    resident.notify();
    await waiting;
    expect(passivated).toEqual(["small", "busy"]);
    expect(ids(resident.residents)).toEqual(["next"]);
  });

  it("refuses an agent whose bytes alone exceed the budget with ERR_KV_BUDGET, evicting nobody", async () => {
    const { resident, passivated } = slots(10, 100);
    await resident.admit(agent("a", 1), undefined, 40);
    await expect(resident.admit(agent("huge", 2), undefined, 101)).rejects.toMatchObject({
      code: "ERR_KV_BUDGET",
      details: { id: "huge", bytes: 101, budgetBytes: 100 },
    });
    expect(passivated).toEqual([]);
    expect(ids(resident.residents)).toEqual(["a"]);
  });

  it("still applies maxAgents when the bytes fit", async () => {
    const { resident, passivated } = slots(2, 1_000_000);
    for (const [index, id] of ["a", "b", "c"].entries()) await resident.admit(agent(id, index), undefined, 1);
    expect(passivated).toEqual(["a"]);
    expect(ids(resident.residents)).toEqual(["b", "c"]);
  });

  it("fit() passivates idle residents after one grew, least recently used first, never a busy one", async () => {
    const { resident, passivated } = slots(10, 100);
    const grower = agent("grower", 5, 1);
    const a = agent("a", 1);
    const b = agent("b", 2);
    for (const x of [a, b, grower]) await resident.admit(x, undefined, 30);
    resident.charge(grower, 60);
    await resident.fit();
    expect(passivated).toEqual(["a"]);
    resident.charge(grower, 200);
    await resident.fit();
    // b leaves; the grower is busy, so it stays over the budget until it is idle.
    expect(passivated).toEqual(["a", "b"]);
    expect(ids(resident.residents)).toEqual(["grower"]);
    grower.pins = 0;
    await resident.fit();
    expect(passivated).toEqual(["a", "b", "grower"]);
    expect(resident.usedBytes).toBe(0);
  });

  it("rejects a budget that is not a positive integer", () => {
    expect(() => new ResidentSlots({ maxAgents: 1, budgetBytes: 0, passivate: async () => {} })).toThrow(RangeError);
  });
});

describe("kvBudgetBytes in the runtime (fake engine growing its caches in 64-token steps, 16 bytes a token)", () => {
  let stateDir: string;
  afterEach(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  const STEP = 64;
  const STEP_BYTES = STEP * 16;

  async function start(kvBudgetBytes: number, maxAgents = 10) {
    stateDir = await mkdtemp(join(tmpdir(), "agentrt-budget-"));
    const engine = new FakeEngine({ sequences: maxAgents, kvStepTokens: STEP });
    const runtime = await AgentRuntime.create({ stateDir, maxAgents, kvBudgetBytes, engineFactory: async () => engine, sharedPrefixes: false });
    return { runtime, engine };
  }

  it("admits agents while their caches fit, then passivates the least recently used: bounded by bytes, not maxAgents", async () => {
    const { runtime, engine } = await start(3 * STEP_BYTES);
    try {
      for (const id of ["a", "b", "c", "d"]) await runtime.spawn({ id, systemPrompt: "short" });
      expect(engine.openKeys().sort()).toEqual(["b", "c", "d"]);
      // b's turn grows its cache past one step (it needs two now), so c (least recently used) leaves.
      await runtime.ask("b", "x".repeat(20));
      const tokens = (await runtime.get("b")).lastTurn!.cacheTokens;
      expect(tokens > STEP && tokens <= 2 * STEP).toBe(true);
      expect(engine.openKeys().sort()).toEqual(["b", "d"]);
      const memory = await runtime.memory();
      expect(memory.totals.kvBudgetBytes).toBe(3 * STEP_BYTES);
      expect(memory.totals.kvBudgetUsedBytes).toBe(3 * STEP_BYTES);
      expect(memory.totals.kvBudgetUsedBytes).toBeGreaterThanOrEqual(memory.totals.cacheAllocatedBytes);
      // Agents come back from the store as they are needed; the budget holds throughout.
      for (const id of ["a", "c", "a", "d"]) {
        await runtime.ask(id, "hi");
        expect((await runtime.memory()).totals.cacheAllocatedBytes).toBeLessThanOrEqual(3 * STEP_BYTES);
      }
    } finally {
      await runtime.close();
    }
  });

  it("refuses an agent whose cache alone outgrew the budget with ERR_KV_BUDGET; others still run", async () => {
    const { runtime, engine } = await start(2 * STEP_BYTES);
    try {
      await runtime.spawn({ id: "big", systemPrompt: "short" });
      await runtime.spawn({ id: "small", systemPrompt: "short" });
      // The turn runs (it was admitted at one step) and leaves a cache of three steps: it is passivated after it.
      await runtime.ask("big", "y".repeat(2 * STEP + 10));
      expect(engine.openKeys()).not.toContain("big");
      await expect(runtime.ask("big", "again")).rejects.toMatchObject({ code: "ERR_KV_BUDGET", details: { id: "big", budgetBytes: 2 * STEP_BYTES } });
      await expect(runtime.ask("small", "hi")).resolves.toMatchObject({ id: "small" });
    } finally {
      await runtime.close();
    }
  });

  it("with a preallocating engine (llama.cpp's shape) every resident costs its whole context", async () => {
    stateDir = await mkdtemp(join(tmpdir(), "agentrt-budget-"));
    const engine = new FakeEngine({ sequences: 5, contextSize: 256 });
    expect(kvReservedBytes(engine.info, 1)).toBe(256 * 16);
    const runtime = await AgentRuntime.create({ stateDir, maxAgents: 5, kvBudgetBytes: 2 * 256 * 16 + 100, engineFactory: async () => engine });
    try {
      for (const id of ["a", "b", "c"]) await runtime.spawn({ id, systemPrompt: "short" });
      expect(engine.openKeys().sort()).toEqual(["b", "c"]);
    } finally {
      await runtime.close();
    }
  });

  it("validates kvBudgetBytes", async () => {
    stateDir = await mkdtemp(join(tmpdir(), "agentrt-budget-"));
    await expect(AgentRuntime.create({ stateDir, kvBudgetBytes: -1, engineFactory: async () => new FakeEngine() })).rejects.toThrow(/kvBudgetBytes/);
  });
});
