import { readdir, readFile, rm, stat, writeFile, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentRuntime, DirectoryStore, type EngineName, type RuntimeEvents, type TurnResult } from "../../src/index.js";
import { ENGINES, FAST, MODEL_PATH } from "../helpers/model.js";

const ROLES = [
  { id: "tech", role: "technical", systemPrompt: "You are the technical lead of a robotics team." },
  { id: "biz", role: "business", systemPrompt: "You are a business analyst who thinks about customers." },
  { id: "coord", role: "coordinator", systemPrompt: "You coordinate a small team and assign tasks." },
];

describe.each(ENGINES)("core on the real model (%s)", (engine: EngineName) => {
  let root: string;
  const open: AgentRuntime[] = [];
  let counter = 0;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "agentrt-core-"));
  });
  afterAll(async () => {
    for (const runtime of open) await runtime.destroy();
    await rm(root, { recursive: true, force: true });
  });

  async function start(options: { maxAgents?: number; stateDir?: string } = {}) {
    const stateDir = options.stateDir ?? join(root, `state-${++counter}`);
    const runtime = await AgentRuntime.create({ model: MODEL_PATH, engine, stateDir, maxAgents: options.maxAgents ?? 3, ...FAST });
    open.push(runtime);
    return { runtime, stateDir };
  }

  function collect<E extends keyof RuntimeEvents>(runtime: AgentRuntime, name: E): Array<RuntimeEvents[E][0]> {
    const seen: Array<RuntimeEvents[E][0]> = [];
    runtime.subscribe(name, ((event: RuntimeEvents[E][0]) => seen.push(event)) as never);
    return seen;
  }

  it("runs three agents with distinct roles, each holding its own conversation", async () => {
    const { runtime } = await start();
    for (const spec of ROLES) await runtime.spawn(spec);
    const results: TurnResult[] = [];
    for (const spec of ROLES) results.push(await runtime.ask(spec.id, "Once upon a time"));
    expect((await runtime.list()).agents.map((a) => [a.id, a.role, a.status, a.turns])).toEqual(
      [...ROLES].sort((a, b) => a.id.localeCompare(b.id)).map((spec) => [spec.id, spec.role, "resident", 1]),
    );
    for (const result of results) expect(result.reply.length, `${result.id} replied nothing`).toBeGreaterThan(0);
    // Distinct system prompts give each agent a differently sized cache.
    expect(new Set(results.map((r) => r.timings.promptTokens)).size).toBe(3);
    // Greedy decoding is deterministic: a second runtime gives the same replies.
    const { runtime: again } = await start();
    for (const [index, spec] of ROLES.entries()) {
      await again.spawn(spec);
      expect((await again.ask(spec.id, "Once upon a time")).reply).toBe(results[index]!.reply);
    }
  });

  it("isolates agents: B's reply is the same whether or not A had turns", async () => {
    const quiet = await start();
    await quiet.runtime.spawn(ROLES[0]!);
    await quiet.runtime.spawn(ROLES[1]!);
    const alone = await quiet.runtime.ask("biz", "What do customers want?");

    const busy = await start();
    await busy.runtime.spawn(ROLES[0]!);
    await busy.runtime.spawn(ROLES[1]!);
    await busy.runtime.ask("tech", "Tell me about the robot");
    await busy.runtime.ask("tech", "And then what happened?");
    const afterNeighbour = await busy.runtime.ask("biz", "What do customers want?");
    expect(afterNeighbour.reply).toBe(alone.reply);
    expect(afterNeighbour.timings.promptTokens).toBe(alone.timings.promptTokens);
  });

  it("evaluates only the new tokens on a follow-up turn, and the cache grows", async () => {
    const { runtime } = await start();
    await runtime.spawn(ROLES[0]!);
    const turns: TurnResult[] = [];
    for (const text of ["Once upon a time", "Tell me more", "What happened next?"]) turns.push(await runtime.ask("tech", text));
    for (let i = 1; i < turns.length; i++) {
      const previous = turns[i - 1]!.timings;
      const current = turns[i]!.timings;
      // The whole previous prompt is served from the cache ...
      expect(current.reusedTokens, `turn ${i + 1} reused`).toBeGreaterThanOrEqual(previous.promptTokens);
      // ... and the engine's own count of evaluated tokens is exactly the part not in the cache.
      expect(current.evaluatedTokens, `turn ${i + 1} evaluated`).toBe(current.promptTokens - current.reusedTokens);
      expect(current.evaluatedTokens).toBeLessThan(current.promptTokens / 2);
      expect(current.cacheTokens).toBeGreaterThan(previous.cacheTokens);
    }
    const memory = await runtime.memory();
    expect(memory.agents.find((a) => a.id === "tech")?.cacheTokens).toBe(turns.at(-1)!.timings.cacheTokens);
  });

  it("a 4th agent passivates the least recently used one; its files exist; memory matches engine and disk", async () => {
    const { runtime, stateDir } = await start({ maxAgents: 3 });
    const passivated = collect(runtime, "agent:passivated");
    for (const spec of ROLES) await runtime.spawn(spec);
    await runtime.ask("tech", "Once upon a time");
    await runtime.ask("coord", "Once upon a time");
    await runtime.ask("biz", "Once upon a time");
    await runtime.ask("tech", "More please"); // LRU order now: coord, biz, tech
    await runtime.spawn({ id: "support/42", role: "support", systemPrompt: "You help customers." });
    expect(passivated.map((e) => e.id)).toEqual(["coord"]);
    expect((await runtime.get("coord")).status).toBe("passivated");

    const dir = join(stateDir, "agents", "coord");
    const files = (await readdir(dir)).sort();
    // The record, its journal (turns and the passivation since the last compaction) and one KV file.
    expect(files).toHaveLength(3);
    expect(files[0]).toBe("agent.json");
    expect(files[1]).toBe("journal");
    expect(files[2]).toBe(`kv-${files[2]!.slice(3, 19)}${runtime.model.stateFileExtension}`);
    const memory = await runtime.memory({ agents: ["coord", "biz", "tech", "support/42"] });
    const kvPerToken = memory.model.kvBytesPerToken;
    for (const row of memory.agents) {
      const folder = join(stateDir, "agents", encodeURIComponent(row.id));
      let onDisk = 0;
      for (const name of await readdir(folder)) onDisk += (await stat(join(folder, name))).size;
      expect(row.diskBytes, `${row.id} disk bytes`).toBe(onDisk);
      if (row.status === "resident") expect(row.cacheBytes).toBe(row.cacheTokens * kvPerToken);
      else expect(row.cacheBytes).toBe(0);
    }
    // The engine's own state file agrees with the per-token KV size: payload plus a small header.
    const kvFile = files.find((name) => name.startsWith("kv-"))!;
    const kvBytes = (await stat(join(dir, kvFile))).size;
    const coord = memory.agents.find((a) => a.id === "coord")!;
    expect(kvBytes).toBeGreaterThanOrEqual(coord.savedTokens * kvPerToken);
    expect(kvBytes).toBeLessThan(coord.savedTokens * kvPerToken + 64 * 1024);
    expect(coord.savedTokens).toBe(passivated[0]!.tokens);
    expect(memory.totals.residentAgents).toBe(3);
    expect(memory.totals.cacheBytes).toBe(memory.agents.reduce((sum, a) => sum + a.cacheBytes, 0));
    expect(memory.totals.memoryBytes).toBe(memory.model.bytes + memory.totals.cacheAllocatedBytes);
    for (const row of memory.agents.filter((a) => a.status === "resident")) {
      expect(row.cacheAllocatedBytes, `${row.id} reserves at least what it holds`).toBeGreaterThanOrEqual(row.cacheBytes);
    }
  });

  it("agents with the same system prompt start from its saved state instead of evaluating it again", async () => {
    const systemPrompt = "You are one of many support agents for a robot company. Be kind, brief and precise in every answer.";
    const { runtime, stateDir } = await start({ maxAgents: 3 });
    const spawned = collect(runtime, "agent:spawned");
    await runtime.spawn({ id: "first", systemPrompt });
    await runtime.spawn({ id: "second", systemPrompt });
    expect(spawned[0]).toMatchObject({ sharedPrefixTokens: 0 });
    expect(spawned[0]!.evaluatedTokens).toBeGreaterThan(32);
    expect(spawned[1]).toMatchObject({ sharedPrefixTokens: spawned[0]!.evaluatedTokens, evaluatedTokens: 0 });
    expect((await readdir(join(stateDir, "prefixes"))).filter((name) => name.endsWith(runtime.model.stateFileExtension))).toHaveLength(1);
    // Starting from the shared state changes nothing in what the agent says.
    const a = await runtime.ask("first", "Where is my robot?");
    const b = await runtime.ask("second", "Where is my robot?");
    expect(b.reply).toBe(a.reply);
  });

  it("cancels a turn mid-generation through the worker; the history is unchanged and the agent answers next", async () => {
    const { runtime } = await start();
    await runtime.spawn(ROLES[0]!);
    const controller = new AbortController();
    const turn = runtime.send("tech", "Tell me a long story", { maxTokens: 400, signal: controller.signal });
    let chunks = 0;
    await expect(
      (async () => {
        for await (const _ of turn) if (++chunks === 2) controller.abort(new Error("user cancelled"));
      })(),
    ).rejects.toThrow("user cancelled");
    await expect(turn.result).rejects.toThrow("user cancelled");
    expect((await runtime.get("tech")).turns).toBe(0);
    const next = await runtime.ask("tech", "Once upon a time");
    expect(next.reply.length).toBeGreaterThan(0);
  });

  it("refuses a message that cannot fit the context with ERR_CONTEXT_FULL and keeps the history", async () => {
    const { runtime } = await start();
    await runtime.spawn(ROLES[0]!);
    await runtime.ask("tech", "Once upon a time");
    const huge = "The robot counted every star in the sky. ".repeat(200);
    await expect(runtime.ask("tech", huge)).rejects.toMatchObject({ code: "ERR_CONTEXT_FULL" });
    expect((await runtime.get("tech")).turns).toBe(1);
    expect((await runtime.ask("tech", "Tell me more")).reply.length).toBeGreaterThan(0);
  });

  describe("rehydration is exact", () => {
    const script = ["Once upon a time", "Tell me about the stars", "What did the robot dream?"];
    let reference: TurnResult;

    beforeAll(async () => {
      const { runtime } = await start();
      await runtime.spawn(ROLES[0]!);
      for (const text of script.slice(0, 2)) await runtime.ask("tech", text);
      reference = await runtime.ask("tech", script[2]!);
    });

    async function preparedAgent() {
      const started = await start();
      await started.runtime.spawn(ROLES[0]!);
      for (const text of script.slice(0, 2)) await started.runtime.ask("tech", text);
      return started;
    }

    it("passivated and rehydrated: the same next reply as never evicted", async () => {
      const { runtime } = await preparedAgent();
      const rehydrated = collect(runtime, "agent:rehydrated");
      await runtime.passivate("tech");
      expect((await runtime.get("tech")).status).toBe("passivated");
      const next = await runtime.ask("tech", script[2]!);
      expect(rehydrated).toEqual([expect.objectContaining({ id: "tech", source: "state" })]);
      expect(next.reply).toBe(reference.reply);
      expect(next.timings.evaluatedTokens).toBe(reference.timings.evaluatedTokens);
    });

    it("restored by a brand-new runtime over the same state dir: the same next reply", async () => {
      const { runtime, stateDir } = await preparedAgent();
      await runtime.close();
      const { runtime: restarted } = await start({ stateDir });
      expect(await restarted.get("tech")).toMatchObject({ status: "passivated", turns: 2, role: "technical" });
      const next = await restarted.ask("tech", script[2]!);
      expect(next.reply).toBe(reference.reply);
      expect(next.timings.reusedTokens).toBe(reference.timings.reusedTokens);
    });

    it("a corrupted state file is refused before the engine sees it; the agent is rebuilt and answers", async () => {
      const { runtime, stateDir } = await preparedAgent();
      await runtime.close();
      const dir = join(stateDir, "agents", "tech");
      const kvFile = (await readdir(dir)).find((name) => name.startsWith("kv-"))!;
      const bytes = await readFile(join(dir, kvFile));
      for (let i = 0; i < bytes.length; i += 97) bytes[i] = bytes[i]! ^ 0xff;
      await writeFile(join(dir, kvFile), bytes);

      const { runtime: restarted } = await start({ stateDir });
      const errors = collect(restarted, "agent:error");
      const rehydrated = collect(restarted, "agent:rehydrated");
      const next = await restarted.ask("tech", script[2]!);
      expect(errors.map((e) => e.error.code)).toEqual(["ERR_STATE_CORRUPT"]);
      expect(rehydrated).toEqual([expect.objectContaining({ id: "tech", source: "history" })]);
      expect(next.reply.length).toBeGreaterThan(0);
      expect(next.reply).toBe(reference.reply);
    });

    it("a state file from another model is refused; the agent is rebuilt from history and answers", async () => {
      const { runtime, stateDir } = await preparedAgent();
      await runtime.close();
      const store = new DirectoryStore(stateDir);
      const record = (await store.read("tech"))!;
      await store.write({ ...record, kv: { ...record.kv!, fingerprint: "0".repeat(64) } });

      const { runtime: restarted } = await start({ stateDir });
      const errors = collect(restarted, "agent:error");
      const next = await restarted.ask("tech", script[2]!);
      expect(errors.map((e) => e.error.code)).toEqual(["ERR_STATE_FOREIGN"]);
      expect(next.reply).toBe(reference.reply);
    });
  });
});
