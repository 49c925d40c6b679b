import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { AgentRuntime, isAgentRuntimeError, type AgentRuntimeOptions } from "../../src/index.js";
import { FakeClock, FakeEngine, type FakeEngineOptions } from "../../src/testing/index.js";
import { conversation, DirectoryStore, type AgentBehaviour } from "../../src/index.js";

let stateDir: string;
const runtimes: AgentRuntime[] = [];

beforeEach(async () => {
  stateDir = await mkdtemp(join(tmpdir(), "agentrt-unit-"));
});
afterEach(async () => {
  for (const runtime of runtimes.splice(0)) await runtime.destroy();
  await rm(stateDir, { recursive: true, force: true });
});

async function start(options: Partial<AgentRuntimeOptions> = {}, engineOptions: FakeEngineOptions = {}) {
  const maxAgents = options.maxAgents ?? 2;
  const engine = new FakeEngine({ sequences: maxAgents, ...engineOptions });
  const runtime = await AgentRuntime.create({ stateDir, maxAgents, engineFactory: async () => engine, ...options });
  runtimes.push(runtime);
  return { runtime, engine };
}

/** A gate the fake engine waits on before generating for `key`. */
function gates() {
  const waiting = new Map<string, () => void>();
  const entered = new Map<string, () => void>();
  const enteredPromises = new Map<string, Promise<void>>();
  const hold = (key: string) => {
    enteredPromises.set(key, new Promise((resolve) => entered.set(key, resolve)));
  };
  return {
    hold,
    entered: (key: string) => enteredPromises.get(key)!,
    release: (key: string) => waiting.get(key)?.(),
    beforeGenerate: async (key: string) => {
      const signal = entered.get(key);
      if (!signal) return;
      entered.delete(key);
      await new Promise<void>((resolve) => {
        waiting.set(key, resolve);
        signal();
      });
    },
  };
}

const code = (name: string) => (error: unknown) => isAgentRuntimeError(error) && error.code === name;

describe("AgentRuntime with a fake engine", () => {
  it("handles messages to one agent one at a time, in order", async () => {
    const { runtime } = await start();
    await runtime.spawn({ id: "a", systemPrompt: "sys" });
    const texts = Array.from({ length: 8 }, (_, i) => `message ${i}`);
    const events: string[] = [];
    runtime.subscribe("agent:turn-start", (e) => events.push(`start ${e.text}`));
    runtime.subscribe("agent:turn-end", (e) => events.push(`end ${e.turnId}`));
    const turns = texts.map((text) => runtime.send("a", text));
    const results = await Promise.all(turns.map((turn) => turn.result));
    // One at a time: each turn ends before the next starts, in the order sent.
    expect(events).toEqual(texts.flatMap((text, i) => [`start ${text}`, `end ${results[i]!.turnId}`]));
    expect((await runtime.get("a")).turns).toBe(8);
    // The stored history is in send order: each user message followed by the reply to it.
    const record = await new DirectoryStore(stateDir).read("a");
    expect(record!.history.map((m) => m.content)).toEqual(texts.flatMap((text, i) => [text, results[i]!.reply]));
  });

  it("lets different agents interleave while one is mid-turn", async () => {
    const gate = gates();
    const { runtime } = await start({}, { beforeGenerate: gate.beforeGenerate });
    await runtime.spawn({ id: "a", systemPrompt: "sys a" });
    await runtime.spawn({ id: "b", systemPrompt: "sys b" });
    gate.hold("a");
    const slow = runtime.ask("a", "slow");
    await gate.entered("a");
    const fast = await runtime.ask("b", "fast");
    expect(fast.reply).toMatch(/^r[0-9a-f]{8}$/);
    gate.release("a");
    await slow;
  });

  it("passivates the least recently used idle agent when one more is needed", async () => {
    const { runtime, engine } = await start({ maxAgents: 2 });
    const passivated: string[] = [];
    runtime.subscribe("agent:passivated", (e) => passivated.push(e.id));
    await runtime.spawn({ id: "a", systemPrompt: "sys a" });
    await runtime.spawn({ id: "b", systemPrompt: "sys b" });
    await runtime.ask("a", "touch a"); // b is now least recently used
    await runtime.spawn({ id: "c", systemPrompt: "sys c" });
    expect(passivated).toEqual(["b"]);
    expect(engine.openKeys().sort()).toEqual(["a", "c"]);
    expect((await runtime.get("b")).status).toBe("passivated");
  });

  it("never passivates an agent mid-turn: admission waits for it to finish", async () => {
    const gate = gates();
    const { runtime, engine } = await start({ maxAgents: 1 }, { beforeGenerate: gate.beforeGenerate });
    await runtime.spawn({ id: "a", systemPrompt: "sys a" });
    gate.hold("a");
    const turn = runtime.ask("a", "long turn");
    await gate.entered("a");
    let spawned = false;
    const spawn = runtime.spawn({ id: "b", systemPrompt: "sys b" }).then(() => (spawned = true));
    // b's record is written before it asks for a slot; once it is, b can only be waiting for a.
    await vi.waitFor(async () => expect(await new DirectoryStore(stateDir).read("b")).toBeDefined());
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(spawned).toBe(false);
    expect((await runtime.get("a")).status).toBe("resident");
    expect(engine.openKeys()).toEqual(["a"]);
    gate.release("a");
    await turn;
    await spawn;
    expect((await runtime.get("a")).status).toBe("passivated");
    expect(engine.openKeys()).toEqual(["b"]);
  });

  it("rehydrates a passivated agent transparently, reusing its whole cache", async () => {
    const { runtime, engine } = await start({ maxAgents: 1 });
    await runtime.spawn({ id: "a", systemPrompt: "sys a" });
    const first = await runtime.ask("a", "hello");
    await runtime.spawn({ id: "b", systemPrompt: "sys b" });
    const rehydrated: Array<{ id: string; source: string; tokens: number }> = [];
    runtime.subscribe("agent:rehydrated", (e) => rehydrated.push(e));
    const before = engine.evaluatedTokens;
    const second = await runtime.ask("a", "again");
    expect(rehydrated).toEqual([expect.objectContaining({ id: "a", source: "state", tokens: first.timings.cacheTokens })]);
    expect(second.timings.reusedTokens).toBe(first.timings.cacheTokens);
    expect(engine.evaluatedTokens - before).toBe(second.timings.promptTokens - first.timings.cacheTokens);
  });

  it("a new runtime over the same state dir knows every agent and continues it", async () => {
    const { runtime } = await start({ maxAgents: 2 });
    await runtime.spawn({ id: "support/42", role: "support", systemPrompt: "help" });
    await runtime.ask("support/42", "first");
    await runtime.close();
    const { runtime: again } = await start({ maxAgents: 2 });
    expect((await again.list()).agents).toEqual([expect.objectContaining({ id: "support/42", role: "support", status: "passivated", turns: 1 })]);
    const reply = await again.ask("support/42", "second");
    expect(reply.timings.reusedTokens).toBeGreaterThan(0);
    expect((await again.get("support/42")).turns).toBe(2);
  });

  it("validates ids and refuses path tricks with ERR_INVALID_AGENT_ID", async () => {
    const { runtime } = await start();
    for (const id of ["../etc", "a/../b", "", "A", "a\0b", ".hidden", "a//b", "x".repeat(200), "é", "a b", "a/", "/a"]) {
      await expect(runtime.spawn({ id, systemPrompt: "s" }), JSON.stringify(id)).rejects.toSatisfy(code("ERR_INVALID_AGENT_ID"));
    }
    await expect(runtime.spawn({ id: "support/42", systemPrompt: "s" })).resolves.toMatchObject({ id: "support/42" });
  });

  it("gives coded errors for unknown agents, duplicates, bad messages and full mailboxes", async () => {
    const gate = gates();
    const { runtime } = await start({ mailboxCapacity: 1, maxMessageChars: 100 }, { beforeGenerate: gate.beforeGenerate });
    await runtime.spawn({ id: "a", systemPrompt: "s" });
    await expect(runtime.ask("nobody", "hi")).rejects.toSatisfy(code("ERR_AGENT_NOT_FOUND"));
    await expect(runtime.spawn({ id: "a", systemPrompt: "s" })).rejects.toSatisfy(code("ERR_AGENT_EXISTS"));
    await expect(runtime.ask("a", "   ")).rejects.toSatisfy(code("ERR_INVALID_MESSAGE"));
    await expect(runtime.ask("a", "x".repeat(101))).rejects.toSatisfy(code("ERR_MESSAGE_TOO_LARGE"));
    await expect(runtime.spawn({ id: "b", systemPrompt: "s", sampling: { temperature: -1 } })).rejects.toThrow(/sampling.temperature/);
    gate.hold("a");
    const running = runtime.ask("a", "one");
    await gate.entered("a");
    const queued = runtime.ask("a", "two");
    await expect(runtime.ask("a", "three")).rejects.toSatisfy(code("ERR_MAILBOX_FULL"));
    gate.release("a");
    await Promise.all([running, queued]);
    expect((await runtime.get("a")).turns).toBe(2);
  });

  it("concurrent spawns of one id: exactly one wins", async () => {
    const { runtime } = await start();
    const results = await Promise.allSettled([1, 2, 3].map(() => runtime.spawn({ id: "same", systemPrompt: "s" })));
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    expect(results.filter((r) => r.status === "rejected" && code("ERR_AGENT_EXISTS")(r.reason))).toHaveLength(2);
  });

  it("an already-aborted signal fails before any work; an abort mid-turn leaves the history unchanged", async () => {
    const gate = gates();
    const { runtime } = await start({}, { beforeGenerate: gate.beforeGenerate });
    await runtime.spawn({ id: "a", systemPrompt: "s" });
    const aborted = AbortSignal.abort(new Error("stop before"));
    await expect(runtime.ask("a", "hi", { signal: aborted })).rejects.toThrow("stop before");
    const controller = new AbortController();
    gate.hold("a");
    const turn = runtime.ask("a", "hi", { signal: controller.signal });
    await gate.entered("a");
    controller.abort(new Error("stop during"));
    gate.release("a");
    await expect(turn).rejects.toThrow("stop during");
    expect((await runtime.get("a")).turns).toBe(0);
    await expect(runtime.ask("a", "after")).resolves.toMatchObject({ id: "a" });
  });

  it("streams tokens that add up to the reply, and emits typed events", async () => {
    const { runtime } = await start();
    const events: string[] = [];
    for (const name of ["agent:spawned", "agent:turn-start", "agent:turn-end"] as const) runtime.subscribe(name, () => events.push(name));
    const spawned = await runtime.spawn({ id: "a", systemPrompt: "s" });
    expect(spawned.busy, "an agent is idle once spawn resolves").toBe(false);
    const turn = runtime.send("a", "hello");
    let streamed = "";
    for await (const chunk of turn) streamed += chunk;
    const result = await turn.result;
    expect(streamed).toBe(result.reply);
    expect(events).toEqual(["agent:spawned", "agent:turn-start", "agent:turn-end"]);
  });

  it("after close, every call fails with ERR_RUNTIME_CLOSED; close passivates residents", async () => {
    const { runtime } = await start();
    await runtime.spawn({ id: "a", systemPrompt: "s" });
    await runtime.ask("a", "hi");
    await runtime.close();
    await runtime.close(); // idempotent
    await expect(runtime.get("a")).rejects.toSatisfy(code("ERR_RUNTIME_CLOSED"));
    expect((await new DirectoryStore(stateDir).read("a"))!.kv, "close saved the resident agent's cache").toBeDefined();
    await expect(runtime.ask("a", "again")).rejects.toSatisfy(code("ERR_RUNTIME_CLOSED"));
    await expect(runtime.spawn({ id: "b", systemPrompt: "s" })).rejects.toSatisfy(code("ERR_RUNTIME_CLOSED"));
  });

  it("remove deletes the agent and its stored state", async () => {
    const { runtime } = await start();
    await runtime.spawn({ id: "a", systemPrompt: "s" });
    await runtime.remove("a");
    expect((await runtime.list()).agents).toEqual([]);
    await expect(runtime.ask("a", "hi")).rejects.toSatisfy(code("ERR_AGENT_NOT_FOUND"));
    await runtime.close();
    const { runtime: again } = await start();
    expect((await again.list()).agents).toEqual([]);
  });

  it("a crashed engine fails the turn in flight with ERR_WORKER_CRASHED, then the runtime restarts it", async () => {
    const gate = gates();
    const engines: FakeEngine[] = [];
    const runtime = await AgentRuntime.create({
      stateDir,
      maxAgents: 2,
      engineFactory: async () => {
        engines.push(new FakeEngine({ sequences: 2, beforeGenerate: engines.length === 0 ? gate.beforeGenerate : undefined }));
        return engines.at(-1)!;
      },
    });
    runtimes.push(runtime);
    await runtime.spawn({ id: "a", systemPrompt: "s" });
    await runtime.ask("a", "before");
    gate.hold("a");
    const turn = runtime.ask("a", "during");
    await gate.entered("a");
    const restarted = new Promise((resolve) => runtime.subscribe("worker:restarted", resolve));
    await engines[0]!.crash();
    gate.release("a");
    await expect(turn).rejects.toSatisfy(code("ERR_WORKER_CRASHED"));
    await restarted;
    expect(engines).toHaveLength(2);
    const after = await runtime.ask("a", "after");
    expect(after.reply).toMatch(/^r/);
    expect((await runtime.get("a")).turns).toBe(2);
  });

  it("passivates by the injected clock's last-use time, not by call order", async () => {
    const clock = new FakeClock();
    const { runtime } = await start({ maxAgents: 2, clock });
    const passivated: string[] = [];
    runtime.subscribe("agent:passivated", (e) => passivated.push(e.id));
    await runtime.spawn({ id: "a", systemPrompt: "sys a" });
    clock.advance(1000);
    await runtime.spawn({ id: "b", systemPrompt: "sys b" });
    // Both touched at the same clock time: a (spawned earlier) stays older only if time is the clock's.
    await runtime.ask("b", "b again");
    clock.advance(1000);
    await runtime.ask("a", "a again");
    expect((await runtime.get("a")).lastUsed - (await runtime.get("b")).lastUsed).toBe(1000);
    await runtime.spawn({ id: "c", systemPrompt: "sys c" });
    expect(passivated).toEqual(["b"]);
  });

  it("a message aborted while it waits leaves the mailbox at once, rejecting with the signal's reason", async () => {
    const gate = gates();
    const { runtime } = await start({}, { beforeGenerate: gate.beforeGenerate });
    await runtime.spawn({ id: "a", systemPrompt: "sys" });
    gate.hold("a");
    const running = runtime.ask("a", "first");
    await gate.entered("a");
    const controller = new AbortController();
    const waiting = runtime.ask("a", "second", { signal: controller.signal });
    const after = runtime.ask("a", "third");
    expect((await runtime.get("a")).queued).toBe(2);
    const reason = new Error("caller gave up");
    controller.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    expect((await runtime.get("a")).queued, "the aborted message no longer waits").toBe(1);
    gate.release("a");
    await running;
    await after;
    const record = await new DirectoryStore(stateDir).read("a");
    expect(record!.history.filter((m) => m.role === "user").map((m) => m.content)).toEqual(["first", "third"]);
  });

  it("saves each agent's behaviour by name and restores it on restart; an unknown name is a coded error", async () => {
    const echo: AgentBehaviour = {
      name: "echo-twice",
      prompt: (agent, text) => conversation.prompt(agent, `${text} ${text}`),
      record: (agent, text, reply) => conversation.record(agent, `${text} ${text}`, reply),
    };
    const first = await start({ behaviours: [echo] });
    await first.runtime.spawn({ id: "e", systemPrompt: "sys", behaviour: "echo-twice" });
    await first.runtime.spawn({ id: "plain", systemPrompt: "sys" });
    await expect(first.runtime.spawn({ id: "x", systemPrompt: "sys", behaviour: "nope" })).rejects.toSatisfy(code("ERR_BEHAVIOUR_NOT_FOUND"));
    await first.runtime.ask("e", "hi");
    await first.runtime.close();
    expect((await new DirectoryStore(stateDir).read("e"))!.behaviour).toBe("echo-twice");

    const again = await start({ behaviours: [echo] });
    expect((await again.runtime.get("e")).behaviour).toBe("echo-twice");
    expect((await again.runtime.get("plain")).behaviour).toBe("conversation");
    await again.runtime.ask("e", "yo");
    const record = await new DirectoryStore(stateDir).read("e");
    expect(record!.history.filter((m) => m.role === "user").map((m) => m.content)).toEqual(["hi hi", "yo yo"]);
    await again.runtime.close();

    // Without the behaviour registered, the agent is kept (nothing lost) but answers with the code.
    const without = await start();
    expect((await without.runtime.get("e")).status).toBe("failed");
    await expect(without.runtime.ask("e", "hello")).rejects.toSatisfy(code("ERR_BEHAVIOUR_NOT_FOUND"));
    expect((await new DirectoryStore(stateDir).read("e"))!.history).toHaveLength(4);
  });

  it("pages through an agent's history, newest last, and refuses bad paging options by name", async () => {
    const { runtime } = await start();
    await runtime.spawn({ id: "h", systemPrompt: "sys" });
    for (let i = 0; i < 5; i++) await runtime.ask("h", `m${i}`);
    const newest = await runtime.history("h", { limit: 4 });
    expect(newest).toMatchObject({ id: "h", start: 6, total: 10 });
    expect(newest.messages.filter((m) => m.role === "user").map((m) => m.content)).toEqual(["m3", "m4"]);
    const older = await runtime.history("h", { before: newest.start, limit: 4 });
    expect(older.start).toBe(2);
    expect(older.messages.filter((m) => m.role === "user").map((m) => m.content)).toEqual(["m1", "m2"]);
    expect((await runtime.history("h", { before: 2, limit: 4 })).messages.map((m) => m.content)[0]).toBe("m0");
    await expect(runtime.history("h", { limit: 0 })).rejects.toThrow(/limit/);
    await expect(runtime.history("h", { before: -1 })).rejects.toThrow(/before/);
    await expect(runtime.history("nobody")).rejects.toSatisfy(code("ERR_AGENT_NOT_FOUND"));
  });
});
