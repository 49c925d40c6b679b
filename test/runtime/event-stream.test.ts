import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AgentRuntime, type StreamEvent } from "../../src/index.js";
import { FakeEngine } from "../../src/testing/index.js";

let runtime: AgentRuntime;
let stateDir: string;

beforeEach(async () => {
  stateDir = await mkdtemp(join(tmpdir(), "agentrt-events-"));
  runtime = await AgentRuntime.create({ stateDir, maxAgents: 3, engineFactory: async () => new FakeEngine({ sequences: 3 }) });
});
afterEach(async () => {
  await runtime.close();
  await rm(stateDir, { recursive: true, force: true });
});

async function take(stream: AsyncIterator<StreamEvent>, count: number): Promise<StreamEvent[]> {
  const events: StreamEvent[] = [];
  while (events.length < count) {
    const { value, done } = await stream.next();
    if (done) break;
    events.push(value);
  }
  return events;
}

describe("runtime.events(): the library's event subscription", () => {
  it("yields runtime events in order, filtered by agent (exact or prefix/*) and type", async () => {
    const all = runtime.events();
    const support = runtime.events({ agents: ["support/*"], types: ["agent:spawned", "agent:turn-end"] });
    const tech = runtime.events({ agents: ["tech"] });
    await runtime.spawn({ id: "tech", systemPrompt: "t" });
    await runtime.spawn({ id: "support/1", systemPrompt: "s" });
    await runtime.ask("support/1", "hello");

    const supportEvents = await take(support, 2);
    expect(supportEvents.map((event) => [event.type, (event.data as { id: string }).id])).toEqual([
      ["agent:spawned", "support/1"],
      ["agent:turn-end", "support/1"],
    ]);
    expect(supportEvents.map((event) => event.seq)).toEqual([1, 2]);
    expect(tech.pending).toBe(1);
    expect((await take(tech, 1))[0]!.type).toBe("agent:spawned");
    const types = (await take(all, all.pending)).map((event) => event.type);
    expect(types.filter((type) => type === "agent:token").length).toBeGreaterThan(0);
    expect(types.at(-1)).toBe("agent:turn-end");
    for (const stream of [all, support, tech]) stream.close();
  });

  it("drops a consumer that falls bufferSize events behind: buffered events, then stream:dropped, then the end", async () => {
    await runtime.spawn({ id: "a", systemPrompt: "s" });
    const slow = runtime.events({ bufferSize: 5 });
    const started = performance.now();
    // Nobody reads `slow` while the runtime keeps working: it must not wait for it.
    for (let i = 0; i < 5; i++) await runtime.ask("a", `message ${i}`);
    expect(performance.now() - started, "the runtime was held up by a slow consumer").toBeLessThan(5000);
    expect(slow.dropped).toBe(true);
    const events: StreamEvent[] = [];
    for await (const event of slow) events.push(event);
    expect(events).toHaveLength(6);
    expect(events.at(-1)).toMatchObject({ type: "stream:dropped", data: { reason: "overflow", bufferSize: 5 }, seq: 6 });
    // Once dropped, it takes nothing more (no memory grows behind a dead consumer).
    await runtime.ask("a", "one more");
    expect(slow.pending).toBe(0);
  });

  it("ends the subscription on abort: before (throws) and during (a waiting next() rejects with the reason)", async () => {
    const before = new AbortController();
    before.abort(new Error("not wanted"));
    expect(() => runtime.events({ signal: before.signal })).toThrow("not wanted");

    const during = new AbortController();
    const stream = runtime.events({ signal: during.signal });
    const waiting = stream.next();
    during.abort(new Error("enough"));
    await expect(waiting).rejects.toThrow("enough");
    await runtime.spawn({ id: "b", systemPrompt: "s" });
    expect(stream.pending, "an aborted stream no longer listens").toBe(0);
  });

  it("stops listening when the consumer breaks out of for-await", async () => {
    const stream = runtime.events({ types: ["agent:spawned"] });
    await runtime.spawn({ id: "c", systemPrompt: "s" });
    for await (const event of stream) {
      expect(event.type).toBe("agent:spawned");
      break;
    }
    expect(stream.pending, "a stream the consumer left no longer listens").toBe(0);
    await runtime.spawn({ id: "c2", systemPrompt: "s" });
    expect(stream.pending, "events after the consumer left are not buffered").toBe(0);
  });

  it("rejects bad options with errors that name them", () => {
    expect(() => runtime.events({ bufferSize: 0 })).toThrow(/bufferSize/);
    expect(() => runtime.events({ types: ["agent:nope" as never] })).toThrow(/types has unknown event name\(s\): agent:nope/);
    expect(() => runtime.events({ agents: ["Not Valid"] })).toThrow(expect.objectContaining({ code: "ERR_INVALID_AGENT_ID" }));
  });
});
