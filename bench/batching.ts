/**
 * Batching benchmark: aggregate generation tokens/s with 1, 2 and 4 agents busy at once, with the
 * worker batching their sequences together vs running one request at a time. Through AgentRuntime.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AgentRuntime } from "../src/index.js";
import { defaultModel } from "../src/cli/defaults.js";
import { formatTable } from "../src/cli/table.js";
import { median, progress, writeResult } from "./lib.js";

const { values } = parseArgs({
  options: {
    model: { type: "string" },
    threads: { type: "string" },
    reps: { type: "string" },
    tokens: { type: "string" },
    agents: { type: "string" },
  },
});
const model = values.model ?? defaultModel();
const threads = Number(values.threads ?? 2);
const reps = Number(values.reps ?? 3);
const maxTokens = Number(values.tokens ?? 64);
const counts = (values.agents ?? "1,2,4").split(",").map(Number);
const maxAgents = Math.max(...counts);

interface Row {
  agents: number;
  batchedTokensPerSecond: number;
  serialTokensPerSecond: number;
}

async function measure(batching: boolean, busy: number, root: string): Promise<number> {
  const runtime = await AgentRuntime.create({
    model,
    stateDir: join(root, `${batching}-${busy}`),
    maxAgents,
    threads,
    contextSize: 1024,
    batching,
    sharedPrefixes: false,
  });
  try {
    const ids = Array.from({ length: busy }, (_, i) => `agent-${i}`);
    for (const id of ids) await runtime.spawn({ id, systemPrompt: `You are storyteller number ${id}.` });
    const rates: number[] = [];
    for (let rep = 0; rep < reps; rep++) {
      const started = performance.now();
      const results = await Promise.all(ids.map((id) => runtime.ask(id, `Story ${rep}: once upon a time`, { maxTokens })));
      const seconds = (performance.now() - started) / 1000;
      rates.push(results.reduce((sum, r) => sum + r.timings.generatedTokens, 0) / seconds);
    }
    return median(rates);
  } finally {
    await runtime.destroy();
  }
}

const root = await mkdtemp(join(tmpdir(), "agentrt-bench-batch-"));
const rows: Row[] = [];
try {
  for (const busy of counts) {
    progress(`${busy} busy agent(s): batched…`);
    const batchedTokensPerSecond = await measure(true, busy, root);
    progress(`${busy} busy agent(s): one at a time…`);
    const serialTokensPerSecond = await measure(false, busy, root);
    rows.push({ agents: busy, batchedTokensPerSecond, serialTokensPerSecond });
  }
} finally {
  await rm(root, { recursive: true, force: true });
}
console.log(
  formatTable(
    rows.map((row) => ({
      "busy agents": row.agents,
      "batched tok/s": row.batchedTokensPerSecond,
      "one-at-a-time tok/s": row.serialTokensPerSecond,
      "batched/serial": row.batchedTokensPerSecond / row.serialTokensPerSecond,
    })),
  ),
);
const path = await writeResult("batching.json", { model, threads, cores: availableParallelism(), maxTokens, reps, rows });
progress(`wrote ${path}`);
