/**
 * Hostile input at the library API: every bad id, message, option or call order gets a clear, typed
 * error (an AgentRuntimeError code, or a TypeError/RangeError naming the option), and never disturbs
 * the agents that were used correctly.
 */
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { AgentRuntime, conversation, DirectoryStore } from "../../src/index.js";
import { fakeRuntime, gate, HookedStore, kindOf, rejection, useScratch } from "./helpers.js";

const scratch = useScratch("hostile-input");

async function start(options: Parameters<typeof fakeRuntime>[1] = {}, engineOptions: Parameters<typeof fakeRuntime>[2] = {}) {
  const stateDir = scratch.stateDir();
  const started = await fakeRuntime(stateDir, { maxMessageChars: 2000, ...options }, { contextSize: 1000, ...engineOptions });
  scratch.track(started.runtime);
  return { ...started, stateDir };
}

/** What a call ends with: "ok" or the kind of error (see kindOf). */
async function outcome(call: () => unknown): Promise<string> {
  try {
    await call();
    return "ok";
  } catch (error) {
    return kindOf(error);
  }
}

const HOSTILE_IDS: unknown[] = [
  "",
  "..",
  "../etc",
  "a/../../b",
  "a/./b",
  "./a",
  "a/",
  "/a",
  "a//b",
  "a\0b",
  "a\nb",
  "a b",
  "a\\b",
  "%2e%2e",
  "a%2Fb",
  "x".repeat(129),
  `${"s/".repeat(8)}s`,
  `${"y".repeat(65)}`,
  "Agent",
  "ａｇｅｎｔ", // fullwidth
  "аgent", // Cyrillic а
  "ag\u200bent", // zero-width space
  "age\u0301nt", // combining accent
  "\u202eabc", // right-to-left override
  "🤖",
  ".hidden",
  "-flag",
  "_proto",
  42,
  null,
  undefined,
  {},
  ["a"],
  { toString: () => "a" },
];

describe("agent ids", () => {
  it.each(HOSTILE_IDS.map((id) => [JSON.stringify(id)?.slice(0, 40) ?? String(id), id]))(
    "%s is refused with ERR_INVALID_AGENT_ID by every method, and nothing is written",
    async (_label, id) => {
      const { runtime, stateDir } = await start();
      const calls: Record<string, () => unknown> = {
        spawn: () => runtime.spawn({ id: id as string, systemPrompt: "x" }),
        send: () => runtime.send(id as string, "hello").result,
        ask: () => runtime.ask(id as string, "hello"),
        get: () => runtime.get(id as string),
        passivate: () => runtime.passivate(id as string),
        remove: () => runtime.remove(id as string),
      };
      for (const [name, call] of Object.entries(calls)) {
        expect(await outcome(call), `${name}(${String(id)})`).toBe("ERR_INVALID_AGENT_ID");
      }
      expect(await readdir(join(stateDir, "agents")).catch(() => [])).toEqual([]);
    },
  );

  it("accepts the documented shape: lowercase segments joined by '/'", async () => {
    const { runtime, stateDir } = await start();
    for (const id of ["a", "support/42", "a.b_c-d", "x".repeat(64), `${"s/".repeat(7)}s`, "constructor", "__proto__".slice(2)]) {
      await runtime.spawn({ id, systemPrompt: "x" });
      expect((await runtime.ask(id, "hi")).id).toBe(id);
    }
    await runtime.close();
    const restarted = await AgentRuntime.create({
      stateDir,
      maxAgents: 2,
      engineFactory: async () => new (await import("../../src/testing/index.js")).FakeEngine({ sequences: 2 }),
    });
    scratch.track(restarted);
    expect((await restarted.list()).agents.map((a) => a.status).filter((s) => s === "failed")).toEqual([]);
    expect((await restarted.list()).agents).toHaveLength(7);
  });
});

describe("messages", () => {
  it("refuses empty, blank, non-text and oversized messages with coded errors; the agent keeps answering", async () => {
    const { runtime } = await start();
    await runtime.spawn({ id: "a", systemPrompt: "sys" });
    const cases: Array<[unknown, string]> = [
      ["", "ERR_INVALID_MESSAGE"],
      ["   \n\t ", "ERR_INVALID_MESSAGE"],
      [null, "ERR_INVALID_MESSAGE"],
      [undefined, "ERR_INVALID_MESSAGE"],
      [42, "ERR_INVALID_MESSAGE"],
      [{ text: "hi" }, "ERR_INVALID_MESSAGE"],
      [["hi"], "ERR_INVALID_MESSAGE"],
      ["x".repeat(2001), "ERR_MESSAGE_TOO_LARGE"],
      ["x".repeat(10_000_000), "ERR_MESSAGE_TOO_LARGE"],
      // Under the character limit but larger than the model's context (1000 tokens here).
      ["y".repeat(1999), "ERR_CONTEXT_FULL"],
    ];
    for (const [text, code] of cases) {
      expect(await outcome(() => runtime.ask("a", text as string)), JSON.stringify(text)?.slice(0, 30)).toBe(code);
    }
    expect((await runtime.get("a")).turns).toBe(0);
    // Unicode of every plane, NULs, lone surrogates and control characters are text like any other.
    for (const text of ["\0\0\0", "\ud800 lone", "🤖 robots", "\u202e reversed", "line\r\nbreak", "é\u0301"]) {
      expect((await runtime.ask("a", text)).reply).toMatch(/^r[0-9a-f]{8}$/);
    }
    expect((await runtime.get("a")).turns).toBe(6);
  });

  it("a system prompt larger than the context fails the spawn with ERR_CONTEXT_FULL and leaves nothing behind", async () => {
    const { runtime, stateDir } = await start();
    expect(await outcome(() => runtime.spawn({ id: "big", systemPrompt: "z".repeat(1500) }))).toBe("ERR_CONTEXT_FULL");
    expect(await outcome(() => runtime.spawn({ id: "huge", systemPrompt: "z".repeat(5000) }))).toBe("ERR_MESSAGE_TOO_LARGE");
    expect((await runtime.list()).agents).toEqual([]);
    expect(await readdir(join(stateDir, "agents")).catch(() => [])).toEqual([]);
    await runtime.spawn({ id: "big", systemPrompt: "small" });
    expect((await runtime.ask("big", "hi")).reply).toMatch(/^r/);
  });
});

describe("options", () => {
  it("refuses invalid sampling, maxTokens, signals and specs with a TypeError/RangeError that names the option", async () => {
    const { runtime } = await start();
    await runtime.spawn({ id: "a", systemPrompt: "sys" });
    const spawnCases: Array<[unknown, string, RegExp]> = [
      [{ temperature: -1 }, "RangeError", /temperature/],
      [{ temperature: Number.NaN }, "RangeError", /temperature/],
      [{ temperature: Number.POSITIVE_INFINITY }, "RangeError", /temperature/],
      [{ temperature: "0.5" }, "RangeError", /temperature/],
      [{ topK: 1.5 }, "RangeError", /topK/],
      [{ topK: -1 }, "RangeError", /topK/],
      [{ topP: 0 }, "RangeError", /topP/],
      [{ topP: 1.5 }, "RangeError", /topP/],
      [{ seed: -1 }, "RangeError", /seed/],
      [{ seed: 2 ** 60 }, "RangeError", /seed/],
      [{ temprature: 1 }, "TypeError", /temprature/],
      ["greedy", "TypeError", /sampling/],
      [null, "TypeError", /sampling/],
    ];
    for (const [sampling, kind, names] of spawnCases) {
      const error = await rejection(runtime.spawn({ id: "s", systemPrompt: "x", sampling: sampling as never }));
      expect(kindOf(error), JSON.stringify(sampling)).toBe(kind);
      expect((error as Error).message).toMatch(names);
    }
    const specCases: Array<[unknown, string, RegExp]> = [
      [null, "TypeError", /spawn options/],
      ["a", "TypeError", /spawn options/],
      [{ id: "s" }, "TypeError", /systemPrompt/],
      [{ id: "s", systemPrompt: 7 }, "TypeError", /systemPrompt/],
      [{ id: "s", systemPrompt: "x", role: 7 }, "TypeError", /role/],
      [{ id: "s", systemPrompt: "x", role: "r".repeat(10_000) }, "ERR_MESSAGE_TOO_LARGE", /role/],
      [{ id: "s", systemPrompt: "x", behaviour: {} }, "TypeError", /behaviour/],
      [{ id: "s", systemPrompt: "x", behaviour: { name: "b", prompt: "no" } }, "TypeError", /behaviour/],
    ];
    for (const [spec, kind, names] of specCases) {
      const error = await rejection(runtime.spawn(spec as never));
      expect(kindOf(error), JSON.stringify(spec)?.slice(0, 60)).toBe(kind);
      expect((error as Error).message).toMatch(names);
    }
    const sendCases: Array<[unknown, string, RegExp]> = [
      [{ maxTokens: 0 }, "RangeError", /maxTokens/],
      [{ maxTokens: -5 }, "RangeError", /maxTokens/],
      [{ maxTokens: 1.5 }, "RangeError", /maxTokens/],
      [{ maxTokens: Number.NaN }, "RangeError", /maxTokens/],
      [{ maxTokens: "8" }, "RangeError", /maxTokens/],
      [{ signal: "stop" }, "TypeError", /signal/],
      [{ signal: {} }, "TypeError", /signal/],
      [null, "TypeError", /options/],
      ["fast", "TypeError", /options/],
    ];
    for (const [options, kind, names] of sendCases) {
      const error = await rejection(runtime.send("a", "hello", options as never).result);
      expect(kindOf(error), JSON.stringify(options)).toBe(kind);
      expect((error as Error).message).toMatch(names);
    }
    expect((await runtime.list()).agents.map((a) => a.id)).toEqual(["a"]);
    expect((await runtime.get("a")).turns).toBe(0);
    expect((await runtime.ask("a", "still here", { maxTokens: 1_000_000 })).reply).toMatch(/^r/);
    // A custom behaviour that is well formed is accepted.
    await runtime.spawn({ id: "custom", systemPrompt: "x", behaviour: { ...conversation, name: "custom" } });
  });

  it("AgentRuntime.create refuses bad sizes with a RangeError naming the option", async () => {
    const stateDir = scratch.stateDir();
    for (const [name, value] of [
      ["maxAgents", 0],
      ["maxAgents", 1.5],
      ["contextSize", -1],
      ["mailboxCapacity", Number.NaN],
      ["maxMessageChars", "10"],
      ["maxStoredAgents", 0],
    ] as const) {
      const error = await rejection(
        AgentRuntime.create({
          stateDir,
          engineFactory: async () => {
            throw new Error("never started");
          },
          [name]: value,
        }),
      );
      expect(kindOf(error)).toBe("RangeError");
      expect((error as Error).message).toContain(name);
    }
  });
});

describe("call order", () => {
  it("after close() and after destroy(), every call fails with ERR_RUNTIME_CLOSED", async () => {
    for (const stop of ["close", "destroy"] as const) {
      const { runtime } = await start();
      await runtime.spawn({ id: "a", systemPrompt: "sys" });
      const pending = runtime.ask("a", "before the stop");
      await runtime[stop]();
      await runtime[stop](); // idempotent
      if (stop === "close") expect((await pending).reply).toMatch(/^r/);
      else await pending.catch(() => {});
      expect(await outcome(() => runtime.ask("a", "after"))).toBe("ERR_RUNTIME_CLOSED");
      expect(await outcome(() => runtime.send("zzz", "after").result)).toBe("ERR_RUNTIME_CLOSED");
      expect(await outcome(() => runtime.spawn({ id: "b", systemPrompt: "x" }))).toBe("ERR_RUNTIME_CLOSED");
      expect(await outcome(() => runtime.passivate("a"))).toBe("ERR_RUNTIME_CLOSED");
      expect(await outcome(() => runtime.remove("a"))).toBe("ERR_RUNTIME_CLOSED");
    }
  });

  it("sends racing close(): each is either answered (and durable) or refused with ERR_RUNTIME_CLOSED", async () => {
    const { runtime, stateDir } = await start();
    await runtime.spawn({ id: "a", systemPrompt: "sys" });
    const turns = Array.from({ length: 20 }, (_, i) => runtime.ask("a", `m${i}`));
    const closing = runtime.close();
    const late = Array.from({ length: 5 }, (_, i) => runtime.ask("a", `late${i}`));
    const results = await Promise.allSettled([...turns, ...late]);
    await closing;
    const answered = results.filter((r) => r.status === "fulfilled").length;
    expect(answered).toBe(20);
    for (const r of results.slice(20)) expect(r.status === "rejected" && kindOf(r.reason)).toBe("ERR_RUNTIME_CLOSED");
    const record = await new DirectoryStore(stateDir).read("a");
    expect(record!.history.filter((m) => m.role === "user").map((m) => m.content)).toEqual(turns.map((_, i) => `m${i}`));
  });

  it("concurrent spawns of one id: exactly one wins, the rest get ERR_AGENT_EXISTS", async () => {
    const { runtime, stateDir } = await start();
    const results = await Promise.allSettled(Array.from({ length: 25 }, (_, i) => runtime.spawn({ id: "same", systemPrompt: `prompt ${i}` })));
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    expect(results.filter((r) => r.status === "rejected").map((r) => kindOf((r as PromiseRejectedResult).reason))).toEqual(
      Array(24).fill("ERR_AGENT_EXISTS"),
    );
    expect((await runtime.ask("same", "hi")).reply).toMatch(/^r/);
    expect((await new DirectoryStore(stateDir).read("same"))!.systemPrompt).toBe("prompt 0");
  });

  it("remove racing a spawn of the same id: the id is held until the files are gone, and no write lands after", async () => {
    // The first spawn's record write is slow; the agent is removed meanwhile, then the id spawned again.
    const held = gate();
    const writing = gate();
    const stateDir = scratch.stateDir();
    const inner = new DirectoryStore(stateDir);
    const store = new HookedStore(inner, {
      beforeWrite: async (record) => {
        if (record.systemPrompt !== "slow") return;
        writing.open();
        await held.promise;
      },
    });
    const { runtime } = await fakeRuntime(stateDir, { store });
    scratch.track(runtime);
    const first = runtime.spawn({ id: "x", systemPrompt: "slow" });
    await writing.promise;
    const removing = runtime.remove("x");
    expect(kindOf(await rejection(runtime.spawn({ id: "x", systemPrompt: "too early" })))).toBe("ERR_AGENT_EXISTS");
    held.open();
    expect(kindOf(await rejection(first))).toBe("ERR_AGENT_REMOVED");
    await removing;
    await runtime.spawn({ id: "x", systemPrompt: "second" });
    expect((await runtime.get("x")).systemPrompt).toBe("second");
    expect((await inner.read("x"))!.systemPrompt).toBe("second");
    await runtime.close();
    const { runtime: restarted } = await fakeRuntime(stateDir);
    scratch.track(restarted);
    expect((await restarted.list()).agents.map((a) => [a.id, a.systemPrompt])).toEqual([["x", "second"]]);
  });

  it("remove during a running turn: the turn finishes, queued turns get ERR_AGENT_REMOVED, nothing comes back after a restart", async () => {
    let release: (() => void) | undefined;
    let entered: (() => void) | undefined;
    const inside = new Promise<void>((resolve) => (entered = resolve));
    const { runtime, stateDir } = await start(
      {},
      {
        beforeGenerate: async (_key, messages) => {
          if (messages.at(-1)?.content !== "slow") return;
          entered!();
          await new Promise<void>((resolve) => (release = resolve));
        },
      },
    );
    await runtime.spawn({ id: "a", systemPrompt: "sys" });
    const running = runtime.ask("a", "slow");
    await inside;
    const queued = runtime.ask("a", "queued");
    const removing = runtime.remove("a");
    expect(await outcome(() => runtime.ask("a", "after remove"))).toBe("ERR_AGENT_NOT_FOUND");
    release!();
    await running;
    expect(kindOf(await rejection(queued))).toBe("ERR_AGENT_REMOVED");
    await removing;
    await runtime.close();
    const { runtime: restarted } = await fakeRuntime(stateDir);
    scratch.track(restarted);
    expect((await restarted.list()).agents).toEqual([]);
  });

  it("remove while the agent is being passivated: the passivation does not bring it back", async () => {
    const held = gate();
    const writing = gate();
    let holding = false;
    const stateDir = scratch.stateDir();
    const store = new HookedStore(new DirectoryStore(stateDir), {
      beforeSetKv: async (id, kv) => {
        // Hold the commit of a's passivation (the one naming a KV file).
        if (id === "a" && kv && !holding) {
          holding = true;
          writing.open();
          await held.promise;
        }
      },
    });
    const { runtime } = await fakeRuntime(stateDir, { store, maxAgents: 1 });
    scratch.track(runtime);
    await runtime.spawn({ id: "a", systemPrompt: "sys a" });
    await runtime.ask("a", "hello");
    const spawnB = runtime.spawn({ id: "b", systemPrompt: "sys b" }); // passivates a
    await writing.promise;
    const removing = runtime.remove("a");
    await new Promise((resolve) => setTimeout(resolve, 5));
    held.open();
    await removing;
    await spawnB;
    await runtime.close();
    const { runtime: restarted } = await fakeRuntime(stateDir);
    scratch.track(restarted);
    expect((await restarted.list()).agents.map((a) => a.id)).toEqual(["b"]);
  });

  it("a full mailbox refuses with ERR_MAILBOX_FULL; everything accepted is answered in order", async () => {
    const { runtime, stateDir } = await start({ mailboxCapacity: 4 });
    await runtime.spawn({ id: "a", systemPrompt: "sys" });
    const sends = Array.from({ length: 12 }, (_, i) => runtime.send("a", `m${i}`).result);
    const settled = await Promise.allSettled(sends);
    const accepted = settled.flatMap((r, i) => (r.status === "fulfilled" ? [`m${i}`] : []));
    const refused = settled.filter((r) => r.status === "rejected").map((r) => kindOf((r as PromiseRejectedResult).reason));
    expect(refused.length).toBeGreaterThan(0);
    expect(new Set(refused)).toEqual(new Set(["ERR_MAILBOX_FULL"]));
    const record = await new DirectoryStore(stateDir).read("a");
    expect(record!.history.filter((m) => m.role === "user").map((m) => m.content)).toEqual(accepted);
  });
});

describe("sequences under failure", () => {
  it("an agent that fails to load frees its sequence before a waiting agent takes it", async () => {
    const held = gate();
    const entered = gate();
    const { runtime } = await start(
      { maxAgents: 1 },
      {
        beforeGenerate: async (_key, messages) => {
          if (messages.at(-1)?.content !== "hold") return;
          entered.open();
          await held.promise;
        },
      },
    );
    await runtime.spawn({ id: "a", systemPrompt: "sys" });
    const busy = runtime.ask("a", "hold");
    await entered.promise;
    // Both wait for a's slot; the first fails to load (its prompt overflows the context).
    const failing = runtime.spawn({ id: "big", systemPrompt: "z".repeat(1500) });
    const waiting = runtime.spawn({ id: "c", systemPrompt: "sys c" });
    held.open();
    await busy;
    expect(kindOf(await rejection(failing))).toBe("ERR_CONTEXT_FULL");
    await waiting;
    expect((await runtime.ask("c", "hi")).reply).toMatch(/^r/);
    expect((await runtime.ask("a", "and you?")).reply).toMatch(/^r/);
  });
});
