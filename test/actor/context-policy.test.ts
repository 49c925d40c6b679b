import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  AgentRuntime,
  DirectoryStore,
  isAgentRuntimeError,
  type AgentRuntimeOptions,
  type ChatMessage,
  type ContextPolicy,
  type TurnResult,
} from "../../src/index.js";
import { FakeEngine, type FakeEngineOptions } from "../../src/testing/index.js";
import { MEMORY_HEADING } from "../../src/actor/behaviours/summarizing.js";

// The fake engine's "token" is a character of the rendered conversation, so every count below is exact.
const CONTEXT = 512;
const MAX_TOKENS = 8;
const SYSTEM = "You are a patient listener.";

let root: string;
let dirs = 0;
const runtimes: AgentRuntime[] = [];

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "agentrt-context-"));
});
afterEach(async () => {
  for (const runtime of runtimes.splice(0)) await runtime.destroy();
  await rm(root, { recursive: true, force: true });
});

async function start(options: Partial<AgentRuntimeOptions> = {}, engineOptions: FakeEngineOptions = {}) {
  const stateDir = options.stateDir ?? join(root, `state-${++dirs}`);
  const engine = new FakeEngine({ sequences: 2, contextSize: CONTEXT, ...engineOptions });
  const runtime = await AgentRuntime.create({ maxAgents: 2, maxTokens: MAX_TOKENS, engineFactory: async () => engine, ...options, stateDir });
  runtimes.push(runtime);
  return { runtime, engine, stateDir };
}

const message = (i: number) => `Message number ${i}: tell me something.`;
const codeOf = (error: unknown) => (isAgentRuntimeError(error) ? error.code : String(error));

/** The reply a fresh agent (no slide of its own) gives to `text` after `window`. */
async function freshReply(window: ChatMessage[], text: string, systemPrompt = SYSTEM): Promise<TurnResult> {
  const { runtime } = await start({ contextPolicy: "error" });
  await runtime.spawn({ id: "fresh", systemPrompt });
  const result = await runtime.sendConversation("fresh", [...window, { role: "user", content: text }]).result;
  await runtime.destroy();
  return result;
}

describe('contextPolicy "slide"', () => {
  it("holds a 300-turn conversation in a 512-token context: every turn answered, each slide equals a fresh agent given the kept window, bounded cost", async () => {
    const { runtime, stateDir } = await start();
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    const history: ChatMessage[] = [];
    let slides = 0;
    for (let i = 0; i < 300; i++) {
      const before = (await runtime.get("a")).windowStart;
      const result = await runtime.ask("a", message(i));
      const { timings } = result;
      expect(result.reply, `turn ${i} was not answered`).toMatch(/^r[0-9a-f]{7}$/);
      expect(timings.stopReason, `turn ${i} reply cut short`).toBe("maxTokens");
      expect(timings.promptTokens + MAX_TOKENS, `turn ${i} overflowed`).toBeLessThan(CONTEXT);
      if (timings.slidTurns) {
        slides++;
        expect(timings.windowStart!).toBeGreaterThan(before);
        // A slide shrinks the prompt to at most half the context; only the kept window is evaluated.
        expect(timings.promptTokens, `turn ${i}: slid prompt above slideTo`).toBeLessThanOrEqual(CONTEXT / 2);
        expect(timings.evaluatedTokens).toBeLessThanOrEqual(CONTEXT / 2);
        // Greedy: the reply is the one a fresh agent holding exactly the kept window gives.
        const kept = history.slice(timings.windowStart);
        const fresh = await freshReply(kept, message(i));
        expect(result.reply, `turn ${i}: slid reply differs from a fresh agent's`).toBe(fresh.reply);
        expect(timings.promptTokens).toBe(fresh.timings.promptTokens);
      } else {
        expect(timings.windowStart).toBe(before);
        // Between slides only the new message (and the closing of the last reply) is evaluated.
        expect(timings.evaluatedTokens, `turn ${i} re-evaluated the window`).toBeLessThan(100);
      }
      history.push({ role: "user", content: message(i) }, { role: "assistant", content: result.reply });
    }
    // It slides rarely (to half the context, so about every other half-context of turns), not every turn.
    expect(slides).toBeGreaterThan(10);
    expect(slides).toBeLessThan(300 / 3);
    // The whole history stays in the store, with the window's start.
    const record = await new DirectoryStore(stateDir).read("a");
    expect(record!.history).toEqual(history);
    expect(record!.windowStart).toBe((await runtime.get("a")).windowStart);
    expect(record!.contextPolicy).toBe("slide");
    expect(await runtime.get("a")).toMatchObject({ turns: 300, historyLength: 600, contextPolicy: "slide" });
  });

  it("rebuilds a passivated agent from its history as exactly the window it had", async () => {
    const { runtime, stateDir } = await start();
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    for (let i = 0; i < 20; i++) await runtime.ask("a", message(i));
    const windowStart = (await runtime.get("a")).windowStart;
    expect(windowStart, "the conversation should have slid").toBeGreaterThan(0);
    await runtime.close();

    // Another fake model: the saved cache is foreign, so the agent is rebuilt from its history.
    const { runtime: again } = await start({ stateDir }, { model: "another-fake-model" });
    const rehydrated: Array<{ source: string; tokens: number }> = [];
    again.subscribe("agent:rehydrated", (e) => rehydrated.push(e));
    const record = await new DirectoryStore(stateDir).read("a");
    const window = record!.history.slice(record!.windowStart);
    const windowTokens = FakeEngine.render([{ role: "system", content: SYSTEM }, ...window]).length;
    const after = await again.ask("a", message(20));
    expect(rehydrated).toEqual([expect.objectContaining({ source: "history", tokens: windowTokens })]);
    // The rebuilt cache is the window: the turn reuses all of it and evaluates only the new message.
    expect(after.timings.reusedTokens).toBe(windowTokens);
    expect(after.timings.windowStart).toBe(windowStart);
    expect(after.reply).toBe((await freshReply(window, message(20))).reply);
  });

  it("refuses a message that cannot fit even alone with ERR_CONTEXT_FULL and keeps history and window", async () => {
    const { runtime } = await start();
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    for (let i = 0; i < 12; i++) await runtime.ask("a", message(i));
    const before = await runtime.get("a");
    const error = await runtime.ask("a", "x".repeat(CONTEXT)).catch((e: unknown) => e);
    expect(codeOf(error)).toBe("ERR_CONTEXT_FULL");
    expect(await runtime.get("a")).toMatchObject({ historyLength: before.historyLength, windowStart: before.windowStart });
    expect((await runtime.ask("a", "still there?")).reply).toMatch(/^r/);
  });

  it("drops every earlier turn for a message that only fits alone, and cuts the reply at the context's end", async () => {
    const { runtime } = await start();
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    for (let i = 0; i < 3; i++) await runtime.ask("a", message(i));
    // Fits only with no earlier turn, and leaves less room than maxTokens: answered, cut short.
    const alone = FakeEngine.render(
      [
        { role: "system", content: SYSTEM },
        { role: "user", content: "" },
      ],
      true,
    ).length;
    const result = await runtime.ask("a", "y".repeat(CONTEXT - alone - 4), { maxTokens: 8 });
    expect(result.timings).toMatchObject({ windowStart: 6, slidTurns: 3, stopReason: "contextFull", generatedTokens: 3 });
  });

  it("keeps the window when a stateless client resends the same earlier turns, and starts over when they differ", async () => {
    const { runtime } = await start();
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    const history: ChatMessage[] = [];
    for (let i = 0; i < 14; i++) {
      const { reply } = await runtime.ask("a", message(i));
      history.push({ role: "user", content: message(i) }, { role: "assistant", content: reply });
    }
    const start_ = (await runtime.get("a")).windowStart;
    expect(start_).toBeGreaterThan(0);
    // Same turns, last reply edited: same window.
    const edited = [...history.slice(0, -1), { role: "assistant" as const, content: "edited" }];
    const same = await runtime.sendConversation("a", [...edited, { role: "user", content: "and?" }]).result;
    expect(same.timings.windowStart).toBe(start_);
    // A different first turn: the window starts over, then slides as needed.
    const other = [{ role: "user" as const, content: "another beginning" }, ...history.slice(1)];
    const differ = await runtime.sendConversation("a", [...other, { role: "user", content: "and?" }]).result;
    expect(differ.timings.slidTurns).toBeGreaterThan(0);
    expect((await runtime.get("a")).historyLength).toBe(other.length + 2);
  });
});

describe('contextPolicy "error"', () => {
  it("refuses with ERR_CONTEXT_FULL once the conversation outgrows the context, and every later message too", async () => {
    const { runtime } = await start({ contextPolicy: "error" });
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    let answered = 0;
    let error: unknown;
    for (let i = 0; i < 40 && !error; i++) {
      await runtime.ask("a", message(i)).then(
        () => answered++,
        (e: unknown) => (error = e),
      );
    }
    expect(codeOf(error)).toBe("ERR_CONTEXT_FULL");
    expect(answered).toBeGreaterThan(3);
    const info = await runtime.get("a");
    expect(info).toMatchObject({ turns: answered, windowStart: 0, contextPolicy: "error" });
    expect(codeOf(await runtime.ask("a", "short").catch((e: unknown) => e))).toBe("ERR_CONTEXT_FULL");
    expect((await runtime.get("a")).turns).toBe(answered);
  });

  it('is per agent: a runtime sliding by default keeps an agent spawned with "error" on error, across a restart', async () => {
    const { runtime, stateDir } = await start();
    await runtime.spawn({ id: "strict", systemPrompt: SYSTEM, contextPolicy: "error" });
    await runtime.spawn({ id: "loose", systemPrompt: SYSTEM });
    await runtime.close();
    const { runtime: again } = await start({ stateDir });
    expect((await again.get("strict")).contextPolicy).toBe("error");
    expect((await again.get("loose")).contextPolicy).toBe("slide");
    const outcomes = { strict: "", loose: "" };
    for (const id of ["strict", "loose"] as const) {
      for (let i = 0; i < 30 && !outcomes[id]; i++) await again.ask(id, message(i)).catch((e: unknown) => (outcomes[id] = codeOf(e)));
    }
    expect(outcomes).toEqual({ strict: "ERR_CONTEXT_FULL", loose: "" });
  });
});

describe('contextPolicy "shift"', () => {
  it("answers every turn of 300, erasing the dropped turns from the cache instead of re-evaluating the kept ones", async () => {
    const slide = await start({ contextPolicy: "slide" });
    const shift = await start({ contextPolicy: "shift" });
    await slide.runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    await shift.runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    let shifts = 0;
    for (let i = 0; i < 300; i++) {
      const a = await slide.runtime.ask("a", message(i));
      const b = await shift.runtime.ask("a", message(i));
      expect(b.reply, `turn ${i} not answered`).toMatch(/^r/);
      // The same window is chosen; the fake's reply depends only on the prompt, so shift is exact here.
      expect(b.timings.windowStart).toBe(a.timings.windowStart);
      expect(b.reply).toBe(a.reply);
      if (b.timings.slidTurns) {
        shifts++;
        expect(b.timings.shiftedTokens, `turn ${i}: nothing shifted`).toBeGreaterThan(0);
        expect(b.timings.evaluatedTokens).toBeLessThan(a.timings.evaluatedTokens);
        expect(b.timings.evaluatedTokens).toBeLessThan(100);
      } else {
        expect(b.timings.shiftedTokens).toBeUndefined();
      }
      expect(b.timings.promptTokens + MAX_TOKENS).toBeLessThan(CONTEXT);
    }
    expect(shifts).toBeGreaterThan(10);
    // Total work: shift evaluates only new tokens; slide re-evaluates each kept window once per slide.
    expect(shift.engine.evaluatedTokens).toBeLessThan(slide.engine.evaluatedTokens);
  });
});

describe("summarizing behaviour", () => {
  it("folds the turns leaving the window into a memory note, kept after the system prompt and persisted", async () => {
    const prompts: ChatMessage[][] = [];
    const { runtime, stateDir } = await start({}, { beforeGenerate: (_key, messages) => void prompts.push(messages) });
    await runtime.spawn({ id: "s", systemPrompt: SYSTEM, behaviour: "summarizing" });
    let folded: TurnResult | undefined;
    for (let i = 0; i < 30 && !folded; i++) {
      const result = await runtime.ask("s", message(i));
      if (result.timings.slidTurns) folded = result;
    }
    expect(folded, "no slide in 30 turns").toBeDefined();
    expect(folded!.timings.foldEvaluatedTokens).toBeGreaterThan(0);
    // The fold asked the agent's own model, over the leaving turns, before the turn itself.
    const [request, turn] = prompts.slice(-2);
    expect(request!.at(-1)!.content).toContain("These turns are leaving your context");
    expect(request!.at(-1)!.content).toContain(message(0));
    const note = (await runtime.get("s")).memoryNote!;
    expect(note).toMatch(/^r[0-9a-f]+$/);
    expect(turn![0]).toEqual({ role: "system", content: `${SYSTEM}\n\n${MEMORY_HEADING} ${note}` });
    const record = await new DirectoryStore(stateDir).read("s");
    expect(record).toMatchObject({ behaviour: "summarizing", memoryNote: note, windowStart: folded!.timings.windowStart });

    // After a restart the note is still rendered, and the next fold sees it.
    await runtime.close();
    prompts.length = 0;
    const { runtime: again } = await start({ stateDir }, { beforeGenerate: (_key, messages) => void prompts.push(messages) });
    await again.ask("s", "after the restart");
    expect(prompts.at(-1)![0]!.content).toContain(note);
    let refolded = false;
    for (let i = 0; i < 30 && !refolded; i++) refolded = (await again.ask("s", message(100 + i))).timings.slidTurns !== undefined;
    expect(refolded).toBe(true);
    expect(prompts.some((p) => p.at(-1)!.content.includes(`Your memory so far: ${note}`))).toBe(true);
    expect((await again.get("s")).memoryNote).not.toBe(note);
  });
});

describe('summarizing under "shift"', () => {
  it("does not shift when a new note changes the system message: the turn re-evaluates the window after the fold", async () => {
    const { runtime } = await start({ contextPolicy: "shift" });
    await runtime.spawn({ id: "s", systemPrompt: SYSTEM, behaviour: "summarizing" });
    let folds = 0;
    for (let i = 0; i < 60; i++) {
      const { timings } = await runtime.ask("s", message(i));
      if (!timings.slidTurns) continue;
      folds++;
      expect(timings.foldEvaluatedTokens).toBeGreaterThan(0);
      expect(timings.shiftedTokens).toBeUndefined();
      expect(timings.promptTokens + MAX_TOKENS).toBeLessThan(CONTEXT);
    }
    expect(folds).toBeGreaterThan(3);
  });
});

describe("options", () => {
  it.each<[Partial<AgentRuntimeOptions>, string]>([
    [{ contextPolicy: "drop" as ContextPolicy }, "contextPolicy"],
    [{ slideTo: 1 }, "slideTo"],
    [{ slideTo: 0 }, "slideTo"],
  ])("refuses %j naming the option", async (options, name) => {
    await expect(start(options)).rejects.toThrow(name);
  });

  it("refuses a spawn with an unknown contextPolicy, naming it", async () => {
    const { runtime } = await start();
    await expect(runtime.spawn({ id: "a", systemPrompt: SYSTEM, contextPolicy: "never" as ContextPolicy })).rejects.toThrow(/contextPolicy/);
  });

  it("slides to slideTo of the context", async () => {
    const { runtime } = await start({ slideTo: 0.25 });
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    for (let i = 0; i < 40; i++) {
      const { timings } = await runtime.ask("a", message(i));
      if (timings.slidTurns) expect(timings.promptTokens).toBeLessThanOrEqual(CONTEXT / 4);
    }
  });
});

describe("the slide's search", () => {
  it("finds the window in a number of token counts logarithmic in the history", async () => {
    let counts = 0;
    class CountingEngine extends FakeEngine {
      override async countTokens(messages: ChatMessage[]): Promise<number> {
        counts++;
        return super.countTokens(messages);
      }
    }
    const engine = new CountingEngine({ sequences: 1, contextSize: 8192 });
    const runtime = await AgentRuntime.create({
      stateDir: join(root, "search"),
      maxAgents: 1,
      maxTokens: MAX_TOKENS,
      engineFactory: async () => engine,
    });
    runtimes.push(runtime);
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    // 1000 earlier turns arrive at once (a stateless client): one slide, found by binary search.
    const earlier = Array.from({ length: 1000 }, (_, i) => [
      { role: "user" as const, content: message(i) },
      { role: "assistant" as const, content: "ok" },
    ]).flat();
    counts = 0;
    const result = await runtime.sendConversation("a", [...earlier, { role: "user", content: "and now?" }]).result;
    expect(result.timings.slidTurns).toBeGreaterThan(900);
    expect(result.timings.promptTokens).toBeLessThanOrEqual(4096);
    // One count for the current window, then ⌈log2(1001)⌉ = 10 probes at most.
    expect(counts).toBeLessThanOrEqual(1 + 10);
  });
});

describe("the token count before a turn", () => {
  class CountingEngine extends FakeEngine {
    counts = 0;
    override async countTokens(messages: ChatMessage[]): Promise<number> {
      this.counts++;
      return super.countTokens(messages);
    }
  }

  it("is skipped when the conversation is far from the limit, from an agent's first turn on (spawned or read back from the store)", async () => {
    const engines: CountingEngine[] = [];
    const options = {
      stateDir: join(root, "skip"),
      maxAgents: 1,
      maxTokens: MAX_TOKENS,
      engineFactory: async () => engines[engines.push(new CountingEngine({ sequences: 1, contextSize: 8192 })) - 1]!,
    };
    const runtime = await AgentRuntime.create(options);
    runtimes.push(runtime);
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    for (let i = 0; i < 3; i++) await runtime.ask("a", message(i));
    await runtime.close();
    const again = await AgentRuntime.create(options);
    runtimes.push(again);
    expect((await again.ask("a", message(3))).timings.reusedTokens).toBeGreaterThan(0);
    expect(engines.map((engine) => engine.counts)).toEqual([0, 0]);
  });

  it("still runs, and the turn slides, when an agent's first turn may not fit", async () => {
    const engine = new CountingEngine({ sequences: 1, contextSize: CONTEXT });
    const runtime = await AgentRuntime.create({
      stateDir: join(root, "count"),
      maxAgents: 1,
      maxTokens: MAX_TOKENS,
      engineFactory: async () => engine,
    });
    runtimes.push(runtime);
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    const earlier = Array.from({ length: 40 }, (_, i) => [
      { role: "user" as const, content: message(i) },
      { role: "assistant" as const, content: "ok" },
    ]).flat();
    const result = await runtime.sendConversation("a", [...earlier, { role: "user", content: "and now?" }]).result;
    expect(engine.counts).toBeGreaterThan(0);
    expect(result.timings.slidTurns).toBeGreaterThan(0);
  });
});
