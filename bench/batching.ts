/**
 * Batching benchmark: aggregate generation tokens/s with 1, 2 and 4 agents busy at once, with the
 * worker batching their sequences together vs running one request at a time. Through AgentRuntime:
 * two runtimes (batching on, batching off) side by side, measured alternately.
 *
 *   npm run bench:batching
 *   npm run bench:batching -- --preset smollm2-135m --tokens 32
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AgentRuntime } from "../src/index.js";
import { formatTable } from "../src/cli/table.js";
import { CORES, DEFAULT_THREADS, interleave, intOption, listOption, median, MODEL_OPTIONS, progress, resolveModel, writeResult } from "./lib.js";
import { lineChart } from "./plot.js";

const { values } = parseArgs({
  options: {
    ...MODEL_OPTIONS,
    tokens: { type: "string" },
    agents: { type: "string" },
  },
});
const choice = await resolveModel(values);
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const reps = intOption("reps", values.reps, 9);
const maxTokens = intOption("tokens", values.tokens, 64);
const counts = listOption("agents", values.agents, [1, 2, 4]);
const maxAgents = Math.max(...counts);

interface Row {
  agents: number;
  batchedTokensPerSecond: number;
  serialTokensPerSecond: number;
  /** Median of per-repetition ratios (each pair measured back to back). */
  batchedOverSerial: number;
  generatedTokens: number;
}

async function start(batching: boolean, root: string): Promise<AgentRuntime> {
  const runtime = await AgentRuntime.create({
    model: choice.path,
    stateDir: join(root, String(batching)),
    maxAgents,
    threads,
    contextSize: 1024,
    batching,
    sharedPrefixes: false,
  });
  return runtime;
}

/**
 * `busy` freshly spawned agents ask at once (spawn and removal untimed, so every repetition starts from
 * the same short history); aggregate generated tokens per second of wall time.
 */
async function measure(runtime: AgentRuntime, busy: number, rep: number, generated: number[]): Promise<number> {
  const ids = Array.from({ length: busy }, (_, i) => `agent-${i}`);
  for (const [i, id] of ids.entries()) await runtime.spawn({ id, systemPrompt: `You are storyteller number ${i}.` });
  const started = performance.now();
  const results = await Promise.all(ids.map((id) => runtime.ask(id, `Story ${rep}: once upon a time`, { maxTokens })));
  const seconds = (performance.now() - started) / 1000;
  for (const id of ids) await runtime.remove(id);
  const tokens = results.reduce((sum, r) => sum + r.timings.generatedTokens, 0);
  generated.push(tokens);
  return tokens / seconds;
}

const root = await mkdtemp(join(tmpdir(), "agentrt-bench-batch-"));
const rows: Row[] = [];
try {
  progress(`starting two runtimes (batched, one at a time): ${choice.label}, ${threads} threads, ${maxAgents} agents each`);
  const batched = await start(true, root);
  const serial = await start(false, root);
  try {
    for (const busy of counts) {
      progress(`${busy} busy agent(s), ${reps} repetitions`);
      const generated: number[] = [];
      const samples = await interleave(reps, {
        batched: (rep) => measure(batched, busy, rep, generated),
        serial: (rep) => measure(serial, busy, rep, generated),
      });
      rows.push({
        agents: busy,
        batchedTokensPerSecond: median(samples.batched),
        serialTokensPerSecond: median(samples.serial),
        batchedOverSerial: median(samples.batched.map((b, i) => b / samples.serial[i]!)),
        generatedTokens: median(generated),
      });
    }
  } finally {
    await batched.destroy();
    await serial.destroy();
  }
} finally {
  await rm(root, { recursive: true, force: true });
}
console.log(`batching: ${choice.label}, ${threads} threads, ${CORES} cores, up to ${maxTokens} tokens per agent, median of ${reps}`);
console.log(
  formatTable(
    rows.map((row) => ({
      "busy agents": row.agents,
      "tokens/round": row.generatedTokens,
      "batched tok/s": row.batchedTokensPerSecond,
      "one-at-a-time tok/s": row.serialTokensPerSecond,
      "batched/serial": row.batchedOverSerial,
    })),
  ),
);
const path = await writeResult("batching.json", { model: choice.path, label: choice.label, threads, cores: CORES, maxTokens, reps, rows });
const plot = await lineChart(
  `batching-${choice.label}`,
  rows.flatMap((row) => [
    { x: row.agents, y: row.batchedTokensPerSecond, series: "batched" },
    { x: row.agents, y: row.serialTokensPerSecond, series: "one at a time" },
  ]),
  {
    title: `Aggregate tokens/s vs busy agents (${choice.label}, ${threads} threads)`,
    xTitle: "busy agents",
    yTitle: "tokens/s (median)",
    integerX: true,
  },
);
progress(`wrote ${path} and ${plot}`);
