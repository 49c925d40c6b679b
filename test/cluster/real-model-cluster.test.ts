/**
 * The cluster on the real model, on both engines: two runtimes as nodes (in this process) on a real
 * 3-server NATS cluster, an agent answered through the node that does not own it, then moved by a drain
 * (its saved KV state uploaded by one node's engine, downloaded and loaded by the other's). Greedy
 * replies equal a single-node runtime's for the same conversation.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentRuntime, type EngineName } from "../../src/index.js";
import { NatsCluster } from "../../src/testing/index.js";
import { ENGINES, MODELS } from "../helpers/model.js";

const SETTINGS = { model: MODELS.stories, contextSize: 512, threads: 1, maxTokens: 12, maxAgents: 2 } as const;
const MESSAGES = ["Once upon a time", "The cat was happy", "One day"];

let cluster: NatsCluster;
let root: string;

beforeAll(async () => {
  cluster = await NatsCluster.start();
  root = await mkdtemp(join(tmpdir(), "agentrt-real-cluster-"));
}, 60_000);

afterAll(async () => {
  await cluster?.stop();
  await rm(root, { recursive: true, force: true });
}, 60_000);

describe.each(ENGINES)("a cluster of two nodes on the real model (%s)", (engine: EngineName) => {
  it("answers through either node and moves the agent's saved state to the other node on drain: replies equal one node's", async () => {
    const prefix = `real-${engine.replace(/\W/g, "")}`;
    const lease = { ttlMs: 3000, renewEveryMs: 1000, maxClockSkewMs: 500 };
    const start = (node: string) =>
      AgentRuntime.create({
        ...SETTINGS,
        engine,
        stateDir: join(root, `${prefix}-${node}`),
        cluster: { servers: cluster.urls, node, prefix, lease },
      });
    const a = await start("a");
    const b = await start("b");
    const single = await AgentRuntime.create({ ...SETTINGS, engine, stateDir: join(root, `${prefix}-single`) });
    try {
      await a.spawn({ id: "teller", systemPrompt: "A story about a cat." });
      await single.spawn({ id: "teller", systemPrompt: "A story about a cat." });
      const first = await b.ask("teller", MESSAGES[0]!);
      const owner = first.timings.node!;
      const [from, to] = owner === "a" ? [a, b] : [b, a];
      expect(first.reply).toBe((await single.ask("teller", MESSAGES[0]!)).reply);
      // Through the node that does not own it.
      const second = await to.ask("teller", MESSAGES[1]!);
      expect(second.timings.node).toBe(owner);
      expect(second.reply).toBe((await single.ask("teller", MESSAGES[1]!)).reply);

      const rehydrated: string[] = [];
      to.subscribe("agent:rehydrated", ({ source }) => rehydrated.push(source));
      await from.drain();
      const third = await to.ask("teller", MESSAGES[2]!);
      expect(third.timings.node).toBe(to.node);
      // The state the other engine saved, loaded here: only the new message evaluated.
      expect(rehydrated).toEqual(["state"]);
      expect(third.timings.evaluatedTokens).toBeLessThan(third.timings.promptTokens);
      expect(third.reply).toBe((await single.ask("teller", MESSAGES[2]!)).reply);
    } finally {
      await Promise.allSettled([a.close(), b.close(), single.close()]);
    }
  }, 120_000);
});
