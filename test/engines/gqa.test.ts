/**
 * The grouped-query-attention model (stories260K: 8 query heads share 4 KV heads) through the real
 * worker on both engines: what GQA could break — KV sizes, cache reuse across turns, state files,
 * rehydration — and the completion format a model without a chat template gets.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentRuntime, type EngineName, type TurnResult } from "../../src/index.js";
import { ENGINES, MODELS } from "../helpers/model.js";

const LILY = { id: "lily", role: "storyteller", systemPrompt: "Once upon a time, there was a little girl named Lily. She loved to play outside." };
const SCRIPT = ["One day,", "The next day,", "At the end of the day,"];
// 5 layers × (keys + values) × 4 KV heads × head size 8 (64 / 8 query heads).
const KV_VALUES_PER_TOKEN = 5 * 2 * 4 * 8;

describe.each(ENGINES)("grouped-query attention: stories260K on %s", (engine: EngineName) => {
  let root: string;
  let counter = 0;
  const open: AgentRuntime[] = [];
  let reference: TurnResult[];

  async function start(stateDir = join(root, `state-${++counter}`)) {
    const runtime = await AgentRuntime.create({ model: MODELS.stories, engine, stateDir, maxAgents: 3, contextSize: 512, threads: 1, maxTokens: 32 });
    open.push(runtime);
    return { runtime, stateDir };
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "agentrt-gqa-"));
    const { runtime } = await start();
    await runtime.spawn(LILY);
    reference = [];
    for (const text of SCRIPT) reference.push(await runtime.ask("lily", text));
  });
  afterAll(async () => {
    for (const runtime of open) await runtime.destroy();
    await rm(root, { recursive: true, force: true });
  });

  it("sizes the KV cache by the 4 KV heads, not the 8 query heads", async () => {
    const { runtime } = await start();
    const bytesPerValue = engine === "mlx" ? 4 : 2; // MLX keeps float32 KV; llama.cpp's default is f16
    expect(runtime.model).toMatchObject({ name: "stories260K", chatFormat: "completion", contextSize: 512 });
    expect(runtime.model.kvBytesPerToken).toBe(KV_VALUES_PER_TOKEN * bytesPerValue);
  });

  it("continues the story in English through the completion format", () => {
    expect(reference[0]!.reply).toMatch(/^she saw a big, red ball\. She wanted to play with it/);
    for (const turn of reference) expect(turn.reply.split(/\s+/).length, turn.reply).toBeGreaterThan(8);
  });

  it("a follow-up turn reuses the whole previous turn, its reply included, and evaluates only the new words", () => {
    for (let i = 1; i < reference.length; i++) {
      const previous = reference[i - 1]!.timings;
      const current = reference[i]!.timings;
      // The reply, re-rendered as text, gives back the tokens the model generated (the last one was
      // never fed back, hence − 1).
      expect(current.reusedTokens, `turn ${i + 1} reused`).toBeGreaterThanOrEqual(previous.cacheTokens - 1);
      expect(current.evaluatedTokens, `turn ${i + 1} evaluated`).toBe(current.promptTokens - current.reusedTokens);
      // Less than the prompt grew by: the reply itself was not evaluated again.
      expect(current.evaluatedTokens).toBeLessThan(current.promptTokens - previous.promptTokens - reference[i - 1]!.timings.generatedTokens / 2);
    }
  });

  it("passivated and rehydrated from its state file: the same next reply as never evicted", async () => {
    const { runtime } = await start();
    const rehydrated: string[] = [];
    runtime.subscribe("agent:rehydrated", (e) => rehydrated.push(`${e.id}:${e.source}`));
    await runtime.spawn(LILY);
    for (const text of SCRIPT.slice(0, 2)) await runtime.ask("lily", text);
    await runtime.passivate("lily");
    const next = await runtime.ask("lily", SCRIPT[2]!);
    expect(rehydrated).toEqual(["lily:state"]);
    expect(next.reply).toBe(reference[2]!.reply);
    expect(next.timings.reusedTokens).toBe(reference[2]!.timings.reusedTokens);
  });

  it("restored by a brand-new runtime over the same state dir: the same next reply", async () => {
    const { runtime, stateDir } = await start();
    await runtime.spawn(LILY);
    for (const text of SCRIPT.slice(0, 2)) await runtime.ask("lily", text);
    await runtime.close();
    const { runtime: restarted } = await start(stateDir);
    expect(await restarted.get("lily")).toMatchObject({ status: "passivated", turns: 2 });
    const next = await restarted.ask("lily", SCRIPT[2]!);
    expect(next.reply).toBe(reference[2]!.reply);
    expect(next.timings.reusedTokens).toBe(reference[2]!.timings.reusedTokens);
  });
});
