import { rm } from "node:fs/promises";
import { resolve } from "node:path";
import pino from "pino";
import { AgentRuntime } from "../runtime/runtime.js";
import type { TurnResult } from "../events.js";
import { parseCommon } from "./args.js";
import { formatBytes, formatTable } from "./table.js";

const AGENTS = [
  { id: "tech", role: "technical", systemPrompt: "You are the technical lead. Answer with precise engineering detail." },
  { id: "biz", role: "business", systemPrompt: "You are the business analyst. Answer in terms of cost, value and customers." },
  { id: "coord", role: "coordinator", systemPrompt: "You are the coordinator. Summarise and assign the next steps." },
];
const QUESTIONS = ["Once upon a time, our robot learned to dream.", "What should the robot dream about next?"];

/**
 * The seed scenario: three agents with distinct roles and maxAgents 3, two turns each, a fourth agent
 * that forces the least recently used one to disk, a message that brings it back, then memory and timings.
 */
export async function demoCommand(argv: string[]): Promise<void> {
  const { common, values } = parseCommon(argv, { stateDir: resolve(".state/demo") }, {
    "max-tokens": { type: "string" },
    keep: { type: "boolean" },
  });
  const maxTokens = Number(values["max-tokens"] ?? 24);
  if (!values.keep) await rm(common.stateDir, { recursive: true, force: true });
  const out = (text: string) => process.stdout.write(text);

  out(`agentrt demo\n  model:  ${common.model}\n  state:  ${common.stateDir}\n  loading model in the generation worker…\n`);
  const loadStarted = performance.now();
  const runtime = await AgentRuntime.create({
    model: common.model,
    ...(common.engine ? { engine: common.engine } : {}),
    stateDir: common.stateDir,
    maxAgents: common.maxAgents ?? 3,
    contextSize: common.contextSize ?? 1024,
    ...(common.threads ? { threads: common.threads } : {}),
    maxTokens,
    logger: pino({ level: common.verbose ? "debug" : "warn" }, pino.destination(2)),
  });
  const info = runtime.model;
  out(`  loaded ${info.name} on ${info.engine} in ${Math.round(performance.now() - loadStarted)} ms ` +
    `(${formatBytes(info.modelBytes)}, context ${info.contextSize}/agent, ${info.threads} threads, chat format ${info.chatFormat})\n\n`);

  runtime.subscribe("agent:passivated", (e) => out(`  ⇣ passivated ${e.id}: ${e.tokens} cached tokens → ${formatBytes(e.bytes)} on disk in ${e.ms.toFixed(1)} ms\n`));
  runtime.subscribe("agent:rehydrated", (e) => out(`  ⇡ rehydrated ${e.id}: ${e.tokens} tokens from ${e.source} in ${e.ms.toFixed(1)} ms\n`));
  runtime.subscribe("agent:error", (e) => out(`  ! ${e.id ?? "runtime"}: ${e.error.code} ${e.error.message}\n`));

  const results: TurnResult[] = [];
  const talk = async (id: string, text: string) => {
    out(`[${id}] user: ${text}\n`);
    const turn = runtime.send(id, text);
    let first = true;
    for await (const chunk of turn) {
      // The prefix waits for the first token so passivation/rehydration lines print before it.
      if (first) out(`[${id}] agent: `);
      first = false;
      out(chunk.replace(/\n/g, " "));
    }
    const result = await turn.result;
    const t = result.timings;
    out(`\n    (${t.evaluatedTokens} new tokens evaluated, ${t.reusedTokens} reused from cache, TTFT ${t.ttftMs.toFixed(1)} ms)\n`);
    results.push(result);
  };

  try {
    out("1. three agents, maxAgents 3\n");
    for (const spec of AGENTS) {
      await runtime.spawn(spec);
      out(`  + spawned ${spec.id} (${spec.role})\n`);
    }
    out("\n2. two turns each\n");
    for (const question of QUESTIONS) for (const spec of AGENTS) await talk(spec.id, question);

    out("\n3. a fourth agent: the least recently used idle agent goes to disk\n");
    await runtime.spawn({ id: "support/42", role: "support", systemPrompt: "You are customer support. Be kind and brief." });
    out("  + spawned support/42 (support)\n");
    await talk("support/42", "A customer asks what the robot dreams about.");

    const passivated = runtime.list().find((agent) => agent.status === "passivated");
    if (passivated) {
      out(`\n4. a message to the passivated agent ${passivated.id}: rehydrated transparently\n`);
      await talk(passivated.id, "Remind me what you said before.");
    }

    out("\n5. memory\n");
    const memory = await runtime.memory();
    out(
      formatTable(
        memory.agents.map((agent) => ({
          agent: agent.id,
          status: agent.status,
          "cache tokens": agent.cacheTokens,
          "cache bytes": formatBytes(agent.cacheBytes),
          "saved tokens": agent.savedTokens,
          "disk bytes": formatBytes(agent.diskBytes),
        })),
      ) + "\n",
    );
    const t = memory.totals;
    out(`  model ${formatBytes(memory.model.bytes)} + KV ${formatBytes(t.cacheBytes)} in memory (${t.cacheTokens} tokens, ` +
      `${formatBytes(memory.model.kvBytesPerToken)}/token); ${t.residentAgents} resident, ${t.passivatedAgents} on disk (${formatBytes(t.diskBytes)})\n`);

    out("\n6. timings\n");
    out(
      formatTable(
        results.map((r) => ({
          agent: r.id,
          turn: r.turnId,
          "prompt tok": r.timings.promptTokens,
          evaluated: r.timings.evaluatedTokens,
          reused: r.timings.reusedTokens,
          generated: r.timings.generatedTokens,
          "ttft ms": r.timings.ttftMs,
          "queue ms": r.timings.queueMs,
          "tok/s": r.timings.tokensPerSecond,
        })),
      ) + "\n",
    );
  } finally {
    await runtime.close();
  }
  out(`\nAll agents passivated to ${common.stateDir}; run again with --keep to continue them.\n`);
}
