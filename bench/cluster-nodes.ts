/**
 * Cluster benchmark, node level (issue 13): agentrt runtimes as nodes of a real 3-server JetStream
 * cluster on loopback (R3 buckets). The store-level figures are bench/cluster.ts's.
 *
 * 1. **Turn latency through a non-owner**: two `AgentRuntime`s in this process (nodes "a" and "b",
 *    stories260K, llama.cpp, 1 thread, context 512); each round sends the same fixed conversation
 *    (`sendConversation`, so every turn does identical work) once through the agent's owner and once
 *    through the other node, in alternating order. The extra p50 is the forwarding cost (NATS request,
 *    tokens streamed back, the reply). Also the bare RPC hop: `get` through a raw `RpcClient` to the
 *    owner, against `get` on the owner and on the other node. Both runtimes share this process's event
 *    loop (and the 2 cores with the 3 servers).
 * 2. **Takeover after SIGKILL**: two `agentrt serve --cluster` processes (test/cluster/fixtures/
 *    serve-node.ts); the owner of an agent is SIGKILLed and the agent is asked through the survivor over
 *    HTTP until it answers; ms from the kill to that answer, against the lease TTL.
 * 3. **Migration against state size**: agents with histories of growing length; per agent: the owner's
 *    `drain()` (passivate + upload + release) then the next turn through the other node (acquire +
 *    download + load + turn), against a passivation and rehydration on one node (local disk), against a
 *    rebuild from history (the prefill of the same conversation). Split from the `agent:passivated` and
 *    `agent:rehydrated` events.
 * 4. **Throughput** of states moved through the object store vs the local disk, from 3.
 *
 *   npm run bench:cluster-nodes
 *   npm run bench:cluster-nodes -- --model /path/smollm2-135m-f16.gguf --sizes 128,512,2048 --context 4096
 *   npm run bench:cluster-nodes -- --parts latency,takeover --rounds 100 --ttls 3000
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { connect } from "@nats-io/transport-node";
import { formatTable } from "../src/cli/table.js";
import { RpcClient } from "../src/cluster/rpc-client.js";
import type { ChatMessage } from "../src/engines/engine.js";
import { AgentRuntime } from "../src/index.js";
import { NatsCluster } from "../src/testing/nats-cluster.js";
import { startFixture, type Child } from "../test/helpers/child.js";
import { serveNodeArgv } from "../test/cluster/fixtures/serve-node-argv.js";
import { MODELS } from "../test/helpers/model.js";
import { buildHistories, CORES, intOption, listOption, median, percentile, progress, resolveModel, writeResult } from "./lib.js";

const { values } = parseArgs({
  options: {
    parts: { type: "string" },
    rounds: { type: "string" },
    agents: { type: "string" },
    "max-tokens": { type: "string" },
    ttls: { type: "string" },
    "takeover-reps": { type: "string" },
    model: { type: "string" },
    preset: { type: "string" },
    type: { type: "string" },
    sizes: { type: "string" },
    context: { type: "string" },
    reps: { type: "string" },
  },
});
const parts = new Set((values.parts ?? "latency,takeover,migration").split(",").map((p) => p.trim()));
const rounds = intOption("rounds", values.rounds, 200);
const latencyAgents = intOption("agents", values.agents, 2);
const maxTokens = intOption("max-tokens", values["max-tokens"], 4);
const ttls = listOption("ttls", values.ttls, [3000, 10_000]);
const takeoverReps = intOption("takeover-reps", values["takeover-reps"], 3);
const migrationModel = await resolveModel({ model: values.model ?? MODELS.stories, preset: values.preset, type: values.type });
const smallModel = migrationModel.path === MODELS.stories;
const sizes = listOption("sizes", values.sizes, smallModel ? [64, 192, 384] : [128, 512, 2048]);
const contextSize = intOption("context", values.context, smallModel ? 512 : 4096);
const reps = intOption("reps", values.reps, 2);
const MB = 1e6;

const cluster = await NatsCluster.start();
const work = await mkdtemp(join(tmpdir(), "agentrt-bench-cluster-nodes-"));
const runtimes = new Set<AgentRuntime>();
const children = new Set<Child>();
const result: Record<string, unknown> = {
  date: new Date().toISOString(),
  cores: CORES,
  natsServer: "nats-server 2.9.10 ×3, loopback, R3 file storage",
  machine: `${CORES} shared cores: the 3 servers, the nodes and this process all on them`,
};
const rows: Array<{ measure: string; value: number | string; note: string }> = [];
const ms = (value: number) => Number(value.toFixed(2));

async function runtime(node: string, prefix: string, model: string, context: number, lease?: { ttlMs: number }): Promise<AgentRuntime> {
  const rt = await AgentRuntime.create({
    model,
    engine: "llama.cpp",
    threads: 1,
    contextSize: context,
    maxAgents: 4,
    stateDir: await mkdtemp(join(work, `${node}-`)),
    cluster: { servers: cluster.urls, node, prefix, ...(lease ? { lease } : {}) },
  });
  runtimes.add(rt);
  return rt;
}

async function close(rt: AgentRuntime): Promise<void> {
  runtimes.delete(rt);
  await rt.close();
}

try {
  // ---- 1. turn latency through a non-owner vs the owner ----------------------------------------------
  if (parts.has("latency")) {
    progress(`latency: nodes a and b in this process, stories260K, ${latencyAgents} agents, ${rounds} rounds…`);
    const prefix = "lat";
    const nodes = { a: await runtime("a", prefix, MODELS.stories, 512), b: await runtime("b", prefix, MODELS.stories, 512) };
    const conversation: ChatMessage[] = [{ role: "user", content: "Tell me a story about a cat." }];
    const agents: Array<{ id: string; owner: AgentRuntime; other: AgentRuntime; ownerName: string }> = [];
    for (let i = 0; i < latencyAgents; i++) {
      const id = `lat/${i}`;
      await nodes.a.spawn({ id, systemPrompt: "You tell stories." });
      const ownerName = (await nodes.a.sendConversation(id, conversation, { maxTokens }).result).timings.node!;
      const owner = ownerName === "a" ? nodes.a : nodes.b;
      agents.push({ id, owner, other: owner === nodes.a ? nodes.b : nodes.a, ownerName });
    }
    const turn = async (rt: AgentRuntime, id: string) => {
      const start = performance.now();
      const done = await rt.sendConversation(id, conversation, { maxTokens }).result;
      return { ms: performance.now() - start, engineMs: done.timings.totalMs + done.timings.queueMs };
    };
    // Warm-up: both paths once per agent.
    for (const agent of agents) {
      await turn(agent.owner, agent.id);
      await turn(agent.other, agent.id);
    }
    const samples = { owner: [] as number[], other: [] as number[], ownerEngine: [] as number[], otherEngine: [] as number[], delta: [] as number[] };
    for (let round = 0; round < rounds; round++) {
      const agent = agents[round % agents.length]!;
      const first = round % 2 === 0;
      const x = first ? await turn(agent.owner, agent.id) : undefined;
      const y = await turn(agent.other, agent.id);
      const z = x ?? (await turn(agent.owner, agent.id));
      samples.owner.push(z.ms);
      samples.other.push(y.ms);
      samples.ownerEngine.push(z.engineMs);
      samples.otherEngine.push(y.engineMs);
      samples.delta.push(y.ms - z.ms);
      if ((round + 1) % 50 === 0) progress(`  ${round + 1} rounds`);
    }
    // The bare hop: a unary `get` forwarded to the owner by a raw RPC client, vs `get` on each node.
    progress(`latency: ${rounds} rounds of get (raw RPC, owner, other)…`);
    const nc = await connect({ servers: cluster.urls });
    const rpc = new RpcClient(nc, { prefix });
    const hop = { rpc: [] as number[], ownerGet: [] as number[], otherGet: [] as number[] };
    const agent = agents[0]!;
    const time = async (f: () => Promise<unknown>) => {
      const start = performance.now();
      await f();
      return performance.now() - start;
    };
    for (let round = 0; round < rounds; round++) {
      hop.rpc.push(await time(() => rpc.call(agent.ownerName, "get", { id: agent.id })));
      hop.ownerGet.push(await time(() => agent.owner.get(agent.id)));
      hop.otherGet.push(await time(() => agent.other.get(agent.id)));
    }
    await rpc.close();
    await nc.close();
    const stat = (v: number[]) => ({ p50: ms(median(v)), p90: ms(percentile(v, 90)), p99: ms(percentile(v, 99)) });
    const extra = median(samples.delta);
    result.latency = {
      model: "stories260K",
      contextSize: 512,
      maxTokens,
      rounds,
      agents: latencyAgents,
      sameProcess: true,
      turnMs: { owner: stat(samples.owner), other: stat(samples.other) },
      engineMs: { owner: stat(samples.ownerEngine), other: stat(samples.otherEngine) },
      extraMs: { p50OfPairedDelta: ms(extra), p50Difference: ms(median(samples.other) - median(samples.owner)) },
      meetsTarget2ms: extra < 2,
      getMs: { rawRpc: stat(hop.rpc), owner: stat(hop.ownerGet), other: stat(hop.otherGet) },
    };
    rows.push(
      {
        measure: "turn via owner p50 / p90 ms",
        value: ms(median(samples.owner)),
        note: `p90 ${percentile(samples.owner, 90).toFixed(2)}; ${maxTokens} tokens, stories260K`,
      },
      { measure: "turn via non-owner p50 / p90 ms", value: ms(median(samples.other)), note: `p90 ${percentile(samples.other, 90).toFixed(2)}` },
      {
        measure: "extra through a non-owner, p50 of paired deltas ms",
        value: ms(extra),
        note: `${extra < 2 ? "meets" : "misses"} < 2 ms; p90 ${percentile(samples.delta, 90).toFixed(2)}`,
      },
      {
        measure: "get: raw RPC to owner / on owner / via non-owner p50 ms",
        value: `${median(hop.rpc).toFixed(2)} / ${median(hop.ownerGet).toFixed(2)} / ${median(hop.otherGet).toFixed(2)}`,
        note: "unary request, no engine",
      },
    );
    await close(nodes.a);
    await close(nodes.b);
  }

  // ---- 2. takeover after SIGKILL -------------------------------------------------------------------
  if (parts.has("takeover")) {
    const fixtures = new URL("../test/cluster/fixtures/", import.meta.url);
    const takeover: Array<{ ttlMs: number; ms: number[]; attempts: number[] }> = [];
    for (const ttl of ttls) {
      progress(`takeover: TTL ${ttl} ms, ${takeoverReps} SIGKILLs…`);
      const prefix = `take${ttl}`;
      const start = async (name: string) => {
        const argv = serveNodeArgv({
          model: MODELS.stories,
          urls: cluster.urls,
          name,
          prefix,
          stateDir: join(work, `${prefix}-${name}`),
          leaseTtlMs: ttl,
        });
        const child = startFixture("serve-node.ts", [JSON.stringify(argv)], fixtures);
        children.add(child);
        const ready = await child.next("ready");
        return { name, url: String(ready.url), child };
      };
      const send = async (url: string, id: string, text: string) => {
        const response = await fetch(`${url}/agents/${encodeURIComponent(id)}/messages`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ text, maxTokens }),
          signal: AbortSignal.timeout(120_000),
        });
        const json = (await response.json()) as { timings?: { node: string }; error?: { code: string } };
        return { status: response.status, node: json.timings?.node, code: json.error?.code };
      };
      const nodes = new Map([
        ["a", await start("a")],
        ["b", await start("b")],
      ]);
      const entry = { ttlMs: ttl, ms: [] as number[], attempts: [] as number[] };
      for (let rep = 0; rep < takeoverReps; rep++) {
        const id = `take/${rep}`;
        const via = nodes.get("a")!;
        const spawned = await fetch(`${via.url}/agents`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ id, systemPrompt: "You tell stories." }),
        });
        if (spawned.status !== 201) throw new Error(`spawn ${id}: HTTP ${spawned.status} ${await spawned.text()}`);
        const first = await send(via.url, id, "Once upon a time");
        if (first.status !== 200) throw new Error(`first turn of ${id}: HTTP ${first.status} ${first.code}`);
        const owner = nodes.get(first.node!)!;
        const survivor = [...nodes.values()].find((n) => n !== owner)!;
        // Let a renewal or two pass, so the kill lands at a random point of the renewal interval.
        await new Promise((resolve) => setTimeout(resolve, 500 + Math.random() * ttl * 0.4));
        const killed = performance.now();
        owner.child.process.kill("SIGKILL");
        let attempts = 0;
        for (;;) {
          attempts++;
          const answer = await send(survivor.url, id, `After the crash ${attempts}`);
          if (answer.status === 200) break;
          if (performance.now() - killed > ttl * 4 + 30_000) throw new Error(`no answer for ${id} after the kill (last ${answer.code})`);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        const took = performance.now() - killed;
        entry.ms.push(ms(took));
        entry.attempts.push(attempts);
        progress(`  rep ${rep}: owner ${owner.name} killed; answered by ${survivor.name} after ${took.toFixed(0)} ms (${attempts} HTTP requests)`);
        await owner.child.exited;
        children.delete(owner.child);
        nodes.set(owner.name, await start(owner.name));
      }
      takeover.push(entry);
      for (const node of nodes.values()) {
        node.child.process.kill("SIGTERM");
        await node.child.exited;
        children.delete(node.child);
      }
      const renew = Math.floor(ttl / 3);
      rows.push({
        measure: `takeover after SIGKILL, TTL ${ttl} ms: median (min–max) ms`,
        value: ms(median(entry.ms)),
        note: `${Math.min(...entry.ms).toFixed(0)}–${Math.max(...entry.ms).toFixed(0)}; bound TTL − renewal (${renew}) + skew 1000 … TTL + skew + backoff ≤ 1000 + rebuild + turn`,
      });
    }
    result.takeover = { maxClockSkewMs: 1000, renewEveryMs: "TTL/3", runs: takeover };
  }

  // ---- 3. migration vs state size; 4. throughput ------------------------------------------------------
  if (parts.has("migration")) {
    progress(`migration: ${migrationModel.label}, context ${contextSize}, histories ${sizes.join("/")} tokens, ${reps} reps…`);
    const histories = await buildHistories(migrationModel.path, sizes);
    const prefix = "mig";
    const nodes: Record<"a" | "b", AgentRuntime> = {
      a: await runtime("a", prefix, migrationModel.path, contextSize),
      b: await runtime("b", prefix, migrationModel.path, contextSize),
    };
    type Passivated = { bytes: number; ms: number; tokens: number };
    type Rehydrated = { ms: number; source: "state" | "history"; tokens: number };
    const seen = new Map<string, { passivated: Passivated[]; rehydrated: Rehydrated[] }>();
    const listen = (rt: AgentRuntime) => {
      rt.subscribe("agent:passivated", (e) => seen.get(e.id)?.passivated.push(e));
      rt.subscribe("agent:rehydrated", (e) => seen.get(e.id)?.rehydrated.push(e));
    };
    listen(nodes.a);
    listen(nodes.b);
    const uploads = async (rt: AgentRuntime) => (await rt.clusterStatus())!.stats.uploads ?? 0;
    const waitUpload = async (rt: AgentRuntime, before: number, bytes: number) => {
      const deadline = performance.now() + (bytes / MB / 5) * 1000 + 10_000;
      while ((await uploads(rt)) <= before && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
    };
    const migration: Array<Record<string, number | string>> = [];
    for (let rep = 0; rep < reps; rep++) {
      for (const size of sizes) {
        const id = `mig/${size}/${rep}`;
        seen.set(id, { passivated: [], rehydrated: [] });
        const conversation = [...histories.get(size)!.slice(1), { role: "user" as const, content: "Go on." }];
        await nodes.a.spawn({ id, systemPrompt: "You remember." });
        let start = performance.now();
        const built = await nodes.a.sendConversation(id, conversation, { maxTokens }).result;
        const prefillTurnMs = performance.now() - start;
        const ownerName = built.timings.node as "a" | "b";
        const owner = nodes[ownerName];
        const otherName = ownerName === "a" ? "b" : "a";
        const other = nodes[otherName];
        // Migration: the owner drains (passivate + upload + release), the next turn runs on the other.
        start = performance.now();
        await owner.drain();
        const drainMs = performance.now() - start;
        const handedOff = seen.get(id)!.passivated.at(-1)!;
        const reroutedBefore = (await other.clusterStatus())!.stats.rerouted ?? 0;
        start = performance.now();
        const moved = await other.ask(id, "And then?", { maxTokens });
        const migratedTurnMs = performance.now() - start;
        const remote = seen.get(id)!.rehydrated.at(-1)!;
        // Routing retries of that turn (a placement that chose the draining node: ERR_NODE_DRAINING, back off).
        const rerouted = ((await other.clusterStatus())!.stats.rerouted ?? 0) - reroutedBefore;
        if (moved.timings.node !== otherName) throw new Error(`${id} answered by ${moved.timings.node}, not ${otherName}`);
        // Same node: passivate to local disk (upload behind, waited for), rehydrate from the local file.
        const before = await uploads(other);
        start = performance.now();
        await other.passivate(id);
        const localPassivateMs = performance.now() - start;
        const local = seen.get(id)!.passivated.at(-1)!;
        await waitUpload(other, before, local.bytes);
        start = performance.now();
        await other.ask(id, "What next?", { maxTokens });
        const localTurnMs = performance.now() - start;
        const localBack = seen.get(id)!.rehydrated.at(-1)!;
        // The drained node is done: a fresh one under the same name for the next agent.
        await close(owner);
        nodes[ownerName] = await runtime(ownerName, prefix, migrationModel.path, contextSize);
        listen(nodes[ownerName]);
        const row = {
          size,
          rep,
          tokens: handedOff.tokens,
          stateBytes: handedOff.bytes,
          prefillTurnMs: ms(prefillTurnMs),
          drainMs: ms(drainMs),
          drainPassivateMs: ms(handedOff.ms),
          migratedTurnMs: ms(migratedTurnMs),
          remoteRehydrateMs: ms(remote.ms),
          remoteSource: remote.source,
          rerouted,
          localPassivateMs: ms(localPassivateMs),
          localPassivateEventMs: ms(local.ms),
          localTurnMs: ms(localTurnMs),
          localRehydrateMs: ms(localBack.ms),
          localSource: localBack.source,
        };
        migration.push(row);
        progress(
          `  ${size} tokens (${(handedOff.bytes / MB).toFixed(1)} MB): prefill turn ${prefillTurnMs.toFixed(0)} ms; drain ${drainMs.toFixed(0)} + turn on ${otherName} ${migratedTurnMs.toFixed(0)} ms (rehydrate ${remote.ms.toFixed(0)} from ${remote.source}, ${rerouted} reroutes); local passivate ${local.ms.toFixed(0)} + turn ${localTurnMs.toFixed(0)} ms (rehydrate ${localBack.ms.toFixed(0)} from ${localBack.source})`,
        );
      }
    }
    const bySize = sizes.map((size) => {
      const runs = migration.filter((r) => r.size === size);
      const m = (key: string) => median(runs.map((r) => r[key] as number));
      const bytes = m("stateBytes");
      return {
        size,
        tokens: m("tokens"),
        stateMB: bytes / MB,
        prefillTurnMs: m("prefillTurnMs"),
        drainMs: m("drainMs"),
        drainPassivateMs: m("drainPassivateMs"),
        migratedTurnMs: m("migratedTurnMs"),
        remoteRehydrateMs: m("remoteRehydrateMs"),
        localPassivateMs: m("localPassivateEventMs"),
        localTurnMs: m("localTurnMs"),
        localRehydrateMs: m("localRehydrateMs"),
        // MB/s of state moved: passivate + upload + release (drain) and acquire + download + load (rehydrate).
        objectStoreOutMBps: bytes / MB / (m("drainMs") / 1000),
        objectStoreInMBps: bytes / MB / (m("remoteRehydrateMs") / 1000),
        localOutMBps: bytes / MB / (m("localPassivateEventMs") / 1000),
        localInMBps: bytes / MB / (m("localRehydrateMs") / 1000),
        sources: [...new Set(runs.flatMap((r) => [`remote:${r.remoteSource}`, `local:${r.localSource}`]))].join(","),
      };
    });
    result.migration = { model: migrationModel.label, contextSize, maxTokens, reps, runs: migration, bySize };
    process.stdout.write(
      `${formatTable(
        bySize.map((s) => ({
          history: s.size,
          "state MB": Number(s.stateMB.toFixed(2)),
          "prefill turn ms": Math.round(s.prefillTurnMs),
          "drain ms": Math.round(s.drainMs),
          "turn on b ms": Math.round(s.migratedTurnMs),
          "rehydrate b ms": Math.round(s.remoteRehydrateMs),
          "local pass. ms": Math.round(s.localPassivateMs),
          "local turn ms": Math.round(s.localTurnMs),
          "local rehyd. ms": Math.round(s.localRehydrateMs),
        })),
      )}\n\n`,
    );
    process.stdout.write(
      `${formatTable(
        bySize.map((s) => ({
          history: s.size,
          "state MB": Number(s.stateMB.toFixed(2)),
          "out via store MB/s": Number(s.objectStoreOutMBps.toFixed(1)),
          "in via store MB/s": Number(s.objectStoreInMBps.toFixed(1)),
          "local out MB/s": Number(s.localOutMBps.toFixed(1)),
          "local in MB/s": Number(s.localInMBps.toFixed(1)),
          sources: s.sources,
        })),
      )}\n\n`,
    );
    await close(nodes.a);
    await close(nodes.b);
  }

  if (rows.length > 0) process.stdout.write(`${formatTable(rows)}\n`);
  const path = await writeResult(smallModel ? "cluster-nodes.json" : `cluster-nodes-${migrationModel.label}.json`, result);
  progress(`wrote ${path}`);
} finally {
  for (const child of children) child.process.kill("SIGKILL");
  await Promise.all([...children].map((child) => child.exited));
  for (const rt of runtimes) await rt.destroy().catch(() => {});
  await cluster.stop();
  await rm(work, { recursive: true, force: true });
}
