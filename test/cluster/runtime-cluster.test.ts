/**
 * Runtimes as cluster nodes, in this process (fast, fake engine), on a real 3-server NATS cluster:
 * routing to the owner (tokens, codes, aborts), placement, drain with no failed message, close
 * releasing leases. The separate-process tests with a real model are in cluster-e2e.test.ts.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AgentRuntime, type AgentRuntimeOptions } from "../../src/index.js";
import { createServer } from "../../src/server/index.js";
import { FakeEngine, type FakeEngineOptions } from "../../src/testing/index.js";
import { startClusterFixture, type ClusterFixture } from "./cluster-fixture.js";

let fixture: ClusterFixture;
const runtimes: AgentRuntime[] = [];
const dirs: string[] = [];

beforeAll(async () => {
  fixture = await startClusterFixture();
}, 60_000);

afterAll(async () => {
  await fixture?.close();
}, 60_000);

afterEach(async () => {
  for (const runtime of runtimes.splice(0)) await runtime.destroy().catch(() => {});
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

const lease = { ttlMs: 2000, renewEveryMs: 500, maxClockSkewMs: 200 };

async function node(prefix: string, name: string, options: Partial<AgentRuntimeOptions> = {}, engineOptions: FakeEngineOptions = {}) {
  const stateDir = await mkdtemp(join(tmpdir(), `agentrt-node-${name}-`));
  dirs.push(stateDir);
  const maxAgents = options.maxAgents ?? 4;
  const engine = new FakeEngine({ sequences: maxAgents, ...engineOptions });
  const runtime = await AgentRuntime.create({
    stateDir,
    maxAgents,
    engineFactory: async () => engine,
    cluster: { servers: fixture.cluster.urls, node: name, prefix, lease, replicas: 3 },
    ...options,
  });
  runtimes.push(runtime);
  return { runtime, engine };
}

/** Replies of a single-node runtime (no cluster) to the same conversation. */
async function singleNodeReplies(messages: string[], systemPrompt: string): Promise<string[]> {
  const stateDir = await mkdtemp(join(tmpdir(), "agentrt-single-"));
  dirs.push(stateDir);
  const runtime = await AgentRuntime.create({ stateDir, maxAgents: 2, engineFactory: async () => new FakeEngine({ sequences: 2 }) });
  runtimes.push(runtime);
  await runtime.spawn({ id: "solo", systemPrompt });
  const replies: string[] = [];
  for (const text of messages) replies.push((await runtime.ask("solo", text)).reply);
  return replies;
}

describe("runtime on a cluster", () => {
  it("answers for any agent from any node, from its owner: same replies as one node, tokens streamed, timings name the owner", async () => {
    const prefix = fixture.prefix();
    const a = await node(prefix, "a");
    const b = await node(prefix, "b");
    const info = await a.runtime.spawn({ id: "team/x", systemPrompt: "You are terse." });
    expect(info.id).toBe("team/x");
    const owner = (await a.runtime.clusterStatus())!;
    expect(owner.nodes.map((n) => n.node).sort()).toEqual(["a", "b"]);

    const messages = ["hello", "what now?", "and then?"];
    const replies: string[] = [];
    const nodes: string[] = [];
    for (const [i, text] of messages.entries()) {
      const via = i % 2 === 0 ? b.runtime : a.runtime;
      const turn = via.send("team/x", text);
      let streamed = "";
      for await (const chunk of turn) streamed += chunk;
      const result = await turn.result;
      expect(streamed).toBe(result.reply);
      replies.push(result.reply);
      nodes.push(result.timings.node!);
    }
    expect(replies).toEqual(await singleNodeReplies(messages, "You are terse."));
    // One owner answered every turn, whichever node was asked.
    expect(new Set(nodes).size).toBe(1);
    expect(["a", "b"]).toContain(nodes[0]);
    // Reads from either node see the owner's history.
    const history = await b.runtime.history("team/x");
    expect(history.messages.map((m) => m.content)).toEqual(messages.flatMap((text, i) => [text, replies[i]]));
    expect((await a.runtime.get("team/x")).turns).toBe(3);
  }, 60_000);

  it("keeps error codes across nodes and carries a caller's abort to the owner's generation", async () => {
    const prefix = fixture.prefix();
    let release = (): void => {};
    let holding = false;
    const entered: Array<() => void> = [];
    const gate = {
      beforeGenerate: () =>
        !holding
          ? undefined
          : new Promise<void>((resolve) => {
              release = () => resolve();
              entered.shift()?.();
            }),
    };
    const a = await node(prefix, "a", {}, gate);
    const b = await node(prefix, "b", {}, gate);
    await a.runtime.spawn({ id: "held", systemPrompt: "s" });
    const owner = (await a.runtime.ask("held", "first")).timings.node;
    expect(["a", "b"]).toContain(owner);
    await expect(b.runtime.ask("nobody", "hi")).rejects.toMatchObject({ code: "ERR_AGENT_NOT_FOUND" });
    await expect(b.runtime.ask("Bad Id!", "hi")).rejects.toMatchObject({ code: "ERR_INVALID_AGENT_ID" });
    await expect(b.runtime.spawn({ id: "held", systemPrompt: "s" })).rejects.toMatchObject({ code: "ERR_AGENT_EXISTS" });

    // Abort through whichever node does not own it.
    const other = owner === "a" ? b.runtime : a.runtime;
    holding = true;
    const controller = new AbortController();
    const started = new Promise<void>((resolve) => entered.push(resolve));
    const turn = other.send("held", "wait for me", { signal: controller.signal });
    await started;
    controller.abort(new Error("caller gave up"));
    await expect(turn.result).rejects.toThrow("caller gave up");
    // The abort travels to the owner over NATS; the generation it held is released only after that
    // had time to land, and must then stop (an abort that did not arrive would commit the turn).
    await new Promise((resolve) => setTimeout(resolve, 300));
    release();
    // The aborted turn left no trace; the agent answers the next message.
    holding = false;
    const next = other.ask("held", "again");
    await next;
    expect((await other.history("held")).messages.map((m) => m.content).filter((_, i) => i % 2 === 0)).toEqual(["first", "again"]);
  }, 60_000);

  it("event streams on any node see the owner's events, tokens included, each naming its node", async () => {
    const prefix = fixture.prefix();
    const a = await node(prefix, "a");
    const b = await node(prefix, "b");
    await a.runtime.spawn({ id: "watched", systemPrompt: "s" });
    const owner = (await a.runtime.ask("watched", "warm up")).timings.node!;
    const watcher = owner === "a" ? b.runtime : a.runtime;
    const stream = watcher.events({ agents: ["watched"], types: ["agent:turn-start", "agent:token", "agent:turn-end"] });
    // The advertisement that asks for token events rides a renewal the stream's opening triggered.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const result = await (owner === "a" ? a.runtime : b.runtime).ask("watched", "tell me");
    const seen: Array<{ type: string; data: Record<string, unknown> }> = [];
    for await (const event of stream) {
      seen.push(event as never);
      if (event.type === "agent:turn-end") break;
    }
    stream.close();
    expect(seen.map((e) => e.type)[0]).toBe("agent:turn-start");
    expect(seen.every((e) => e.data.node === owner)).toBe(true);
    const tokens = seen
      .filter((e) => e.type === "agent:token")
      .map((e) => e.data.text)
      .join("");
    expect(tokens).toBe(result.reply);
    expect((seen.at(-1)!.data as { reply: string }).reply).toBe(result.reply);
  }, 60_000);

  it("places new agents across nodes by free capacity", async () => {
    const prefix = fixture.prefix();
    const nodes = [await node(prefix, "a"), await node(prefix, "b"), await node(prefix, "c")];
    for (let i = 0; i < 12; i++) await nodes[i % 3]!.runtime.spawn({ id: `p/${i}`, systemPrompt: `agent ${i}` });
    const status = (await nodes[0]!.runtime.clusterStatus())!;
    // Renewals carry the counts: wait for one.
    await new Promise((resolve) => setTimeout(resolve, lease.renewEveryMs * 2));
    const owned = (await nodes[0]!.runtime.clusterStatus())!.nodes.map((n) => n.owned ?? 0);
    expect(status.nodes).toHaveLength(3);
    expect(owned.reduce((x, y) => x + y, 0)).toBe(12);
    expect(Math.min(...owned)).toBeGreaterThan(0);
  }, 60_000);

  it("drains a node under traffic with no failed message: its agents answer from the others", async () => {
    const prefix = fixture.prefix();
    const a = await node(prefix, "a");
    const b = await node(prefix, "b");
    const ids = Array.from({ length: 6 }, (_, i) => `d/${i}`);
    for (const id of ids) await a.runtime.spawn({ id, systemPrompt: "s" });
    const failures: unknown[] = [];
    let sent = 0;
    let stop = false;
    const traffic = ids.map(async (id, i) => {
      while (!stop) {
        const via = (sent + i) % 2 === 0 ? a.runtime : b.runtime;
        sent++;
        await via.ask(id, `m${sent}`).catch((error: unknown) => failures.push(error));
      }
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const drained = a.runtime.drain();
    await drained;
    await new Promise((resolve) => setTimeout(resolve, 300));
    stop = true;
    await Promise.all(traffic);
    expect(failures).toEqual([]);
    const status = (await b.runtime.clusterStatus())!;
    expect(status.nodes.find((n) => n.node === "a")!.draining).toBe(true);
    // Every agent's turns answered after the drain were b's.
    for (const id of ids) {
      const result = await a.runtime.ask(id, "after");
      expect(result.timings.node).toBe("b");
    }
    expect(sent).toBeGreaterThan(ids.length);
  }, 90_000);

  it("a node with another model refuses the saved cache it downloads and rebuilds the agent from its history", async () => {
    const prefix = fixture.prefix();
    const a = await node(prefix, "a", {}, { model: "model-one" });
    const b = await node(prefix, "b", {}, { model: "model-two" });
    await a.runtime.spawn({ id: "mixed", systemPrompt: "s" });
    const owner = (await a.runtime.ask("mixed", "hello")).timings.node!;
    const [from, to] = owner === "a" ? [a, b] : [b, a];
    const errors: string[] = [];
    const rehydrated: string[] = [];
    to.runtime.subscribe("agent:error", ({ error }) => errors.push(error.code));
    to.runtime.subscribe("agent:rehydrated", ({ source }) => rehydrated.push(source));
    await from.runtime.drain();
    const result = await to.runtime.ask("mixed", "again");
    expect(result.timings.node).toBe(to.runtime.node);
    expect(errors).toContain("ERR_STATE_FOREIGN");
    expect(rehydrated).toEqual(["history"]);
    expect((await to.runtime.history("mixed")).messages.map((m) => m.content).filter((_, i) => i % 2 === 0)).toEqual(["hello", "again"]);
  }, 60_000);

  it("serves GET /cluster and per-node /metrics over HTTP", async () => {
    const prefix = fixture.prefix();
    const nodes = { a: await node(prefix, "a"), b: await node(prefix, "b") };
    await nodes.a.runtime.spawn({ id: "metered", systemPrompt: "s" });
    const owner = (await nodes.a.runtime.ask("metered", "hi")).timings.node as "a" | "b";
    const app = await createServer(nodes[owner].runtime, { dashboard: false, processMetrics: false });
    try {
      // Counted from here on (the server's metrics follow the runtime's events once it exists).
      await nodes[owner === "a" ? "b" : "a"].runtime.ask("metered", "again");
      const address = await app.listen({ host: "127.0.0.1", port: 0 });
      const cluster = (await (await fetch(`${address}/cluster`)).json()) as {
        enabled: boolean;
        node: string;
        nodes: Array<{ node: string; maxAgents: number }>;
      };
      expect(cluster.enabled).toBe(true);
      expect(cluster.node).toBe(owner);
      expect(cluster.nodes.map((n) => n.node)).toEqual(["a", "b"]);
      expect(cluster.nodes[0]!.maxAgents).toBe(4);
      const metrics = await (await fetch(`${address}/metrics`)).text();
      expect(metrics).toContain(`agentrt_cluster_nodes{node="${owner}"} 2`);
      expect(metrics).toMatch(new RegExp(`agentrt_turns_total\\{stop_reason="[a-z]+",node="${owner}"\\} 1`));
      expect(metrics).toContain(`agentrt_cluster_agents_owned{node="${owner}"} 1`);
    } finally {
      await app.close();
    }
  }, 60_000);

  it("close() hands every agent over at once: another node answers without waiting for a lease to expire", async () => {
    const prefix = fixture.prefix();
    const a = await node(prefix, "a");
    const b = await node(prefix, "b");
    await a.runtime.spawn({ id: "moving", systemPrompt: "s" });
    const first = await b.runtime.ask("moving", "one");
    await a.runtime.close();
    const started = Date.now();
    const second = await b.runtime.ask("moving", "two");
    expect(second.timings.node).toBe("b");
    expect(Date.now() - started).toBeLessThan(lease.ttlMs);
    expect((await b.runtime.history("moving")).messages.map((m) => m.content)).toEqual(["one", first.reply, "two", second.reply]);
  }, 60_000);
});
