/**
 * Batching benchmark: aggregate generation tokens/s with 1, 2 and 4 agents busy at once, with the
 * worker batching their sequences together vs running one request at a time. Through AgentRuntime:
 * two runtimes (batching on, batching off) side by side, measured alternately, plus the batched
 * runtime's agents asking one after another (`sequential`: the same copy of the model as `batched`, so
 * the ratio carries none of the few-per-cent speed difference between two loaded copies). The ceiling, in the same
 * run and interleaved with them (llama.cpp only): raw node-llama-cpp in this process, the same prompts
 * on the sequences of one context (same threads, context size and batch size) evaluated at once (one
 * llama.cpp batch per step: node-llama-cpp batches the decodes queued in one event-loop turn) vs one
 * after another, each generating exactly the tokens agentrt's agents generated on average (raw ignores
 * end-of-generation tokens).
 *
 *   npm run bench:batching
 *   npm run bench:batching -- --preset smollm2-135m --tokens 32
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AgentRuntime, type TurnResult } from "../src/index.js";
import { commonPrefixLength } from "../src/engines/chat-history.js";
import { detectEngine } from "../src/engines/create-engine.js";
import { formatTable } from "../src/cli/table.js";
import {
  CORES,
  DEFAULT_THREADS,
  interleave,
  intOption,
  listOption,
  median,
  MODEL_OPTIONS,
  percent,
  progress,
  resolveModel,
  writeResult,
} from "./lib.js";
import { lineChart } from "./plot.js";
import { PromptRenderer, RawLlama, type RawLlamaContext } from "./raw.js";

const { values } = parseArgs({
  options: {
    ...MODEL_OPTIONS,
    tokens: { type: "string" },
    agents: { type: "string" },
    "no-raw": { type: "boolean" },
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
  /** The batched runtime's agents asking one after another (the same copy of the model as `batched`). */
  sequentialTokensPerSecond: number;
  batchedOverSequential: number;
  generatedTokens: number;
  /** Raw node-llama-cpp, the same prompts on one context's sequences: at once, and one after another. */
  rawBatchedTokensPerSecond?: number;
  rawSerialTokensPerSecond?: number;
  rawBatchedOverSerial?: number;
  /** agentrt batched over raw batched, median of per-repetition ratios. */
  batchedOverRawBatched?: number;
}

const CONTEXT_SIZE = 1024;
const systemPrompt = (i: number) => `You are storyteller number ${i}.`;
const message = (rep: number) => `Story ${rep}: once upon a time`;

async function start(batching: boolean, root: string): Promise<AgentRuntime> {
  const runtime = await AgentRuntime.create({
    model: choice.path,
    stateDir: join(root, String(batching)),
    maxAgents,
    threads,
    contextSize: CONTEXT_SIZE,
    batching,
    sharedPrefixes: false,
  });
  return runtime;
}

/**
 * `busy` freshly spawned agents ask at once, or one after another when `together` is false (spawn and
 * removal untimed, so every repetition starts from the same short history); aggregate generated tokens
 * per second of wall time.
 */
async function measure(runtime: AgentRuntime, busy: number, rep: number, generated: number[], together = true): Promise<number> {
  const ids = Array.from({ length: busy }, (_, i) => `agent-${i}`);
  for (const [i, id] of ids.entries()) await runtime.spawn({ id, systemPrompt: systemPrompt(i) });
  const started = performance.now();
  const ask = (id: string) => runtime.ask(id, message(rep), { maxTokens });
  const results = together
    ? await Promise.all(ids.map(ask))
    : await ids.reduce(async (done, id) => [...(await done), await ask(id)], Promise.resolve([] as TurnResult[]));
  const seconds = (performance.now() - started) / 1000;
  for (const id of ids) await runtime.remove(id);
  const tokens = results.reduce((sum, r) => sum + r.timings.generatedTokens, 0);
  generated.push(tokens);
  return tokens / seconds;
}

/** The raw ceiling: one node-llama-cpp context with `maxAgents` sequences in this process. */
class RawBatch {
  private constructor(
    readonly raw: RawLlama,
    readonly renderer: PromptRenderer,
    readonly sequences: RawLlamaContext[],
  ) {}

  static async load(): Promise<RawBatch> {
    const raw = await RawLlama.load(choice.path);
    const first = await raw.context({ contextSize: CONTEXT_SIZE, threads, sequences: maxAgents });
    const sequences = [first];
    while (sequences.length < maxAgents) sequences.push(first.another());
    return new RawBatch(raw, await PromptRenderer.load(choice.path), sequences);
  }

  /** Agent i's prompt split as agentrt's agents hold it: the system prompt in the cache, the rest evaluated. */
  #prompt(i: number, rep: number): { prefix: number[]; rest: number[] } {
    const system = { role: "system" as const, content: systemPrompt(i) };
    const prompt = this.renderer.tokens([system, { role: "user", content: message(rep) }]);
    const shared = commonPrefixLength(prompt, this.renderer.tokens([system, { role: "user", content: "x" }]));
    return { prefix: prompt.slice(0, shared), rest: prompt.slice(shared) };
  }

  /** `busy` sequences generate `tokens` each, at once or one after another (resets untimed); aggregate tok/s. */
  async measure(busy: number, rep: number, tokens: number, together: boolean): Promise<number> {
    const prompts = Array.from({ length: busy }, (_, i) => this.#prompt(i, rep));
    const sequences = this.sequences.slice(0, busy);
    for (const [i, sequence] of sequences.entries()) await sequence.reset(prompts[i]!.prefix);
    const started = performance.now();
    const runs = together
      ? await Promise.all(sequences.map((sequence, i) => sequence.generate(prompts[i]!.rest, tokens)))
      : await sequences.reduce(
          async (done, sequence, i) => [...(await done), await sequence.generate(prompts[i]!.rest, tokens)],
          Promise.resolve([] as { tokens: number }[]),
        );
    const seconds = (performance.now() - started) / 1000;
    return runs.reduce((sum, run) => sum + run.tokens, 0) / seconds;
  }

  async dispose(): Promise<void> {
    await this.sequences[0]!.dispose();
    await this.raw.dispose();
    await this.renderer.dispose();
  }
}

const root = await mkdtemp(join(tmpdir(), "agentrt-bench-batch-"));
const rows: Row[] = [];
const withRaw = !values["no-raw"] && (await detectEngine(choice.path)) === "llama.cpp";
try {
  progress(`starting two runtimes (batched, one at a time): ${choice.label}, ${threads} threads, ${maxAgents} agents each`);
  const batched = await start(true, root);
  const serial = await start(false, root);
  const raw = withRaw ? await RawBatch.load() : undefined;
  try {
    for (const busy of counts) {
      progress(`${busy} busy agent(s), ${reps} repetitions`);
      const generated: number[] = [];
      // A warm-up round (untimed); raw sequences generate what one agent did in it on average (agents may stop early).
      const warmUp: number[] = [];
      await measure(batched, busy, 0, warmUp);
      const perAgent = Math.max(1, Math.round(warmUp[0]! / busy));
      const variants: Record<string, (rep: number) => Promise<number>> = {
        batched: (rep) => measure(batched, busy, rep, generated),
        serial: (rep) => measure(serial, busy, rep, generated),
        sequential: (rep) => measure(batched, busy, rep, generated, false),
      };
      if (raw) {
        variants["raw batched"] = (rep) => raw.measure(busy, rep, perAgent, true);
        variants["raw serial"] = (rep) => raw.measure(busy, rep, perAgent, false);
        await raw.measure(busy, 0, perAgent, true);
      }
      const samples = await interleave(reps, variants);
      const ratio = (a: string, b: string) => median(samples[a]!.map((x, i) => x / samples[b]![i]!));
      rows.push({
        agents: busy,
        batchedTokensPerSecond: median(samples.batched!),
        serialTokensPerSecond: median(samples.serial!),
        batchedOverSerial: ratio("batched", "serial"),
        sequentialTokensPerSecond: median(samples.sequential!),
        batchedOverSequential: ratio("batched", "sequential"),
        generatedTokens: median(generated),
        ...(raw
          ? {
              rawBatchedTokensPerSecond: median(samples["raw batched"]!),
              rawSerialTokensPerSecond: median(samples["raw serial"]!),
              rawBatchedOverSerial: ratio("raw batched", "raw serial"),
              batchedOverRawBatched: ratio("batched", "raw batched"),
            }
          : {}),
      });
    }
  } finally {
    await batched.destroy();
    await serial.destroy();
    await raw?.dispose();
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
      "one after another tok/s": row.sequentialTokensPerSecond,
      "batched/one after another": row.batchedOverSequential,
      ...(row.rawBatchedTokensPerSecond !== undefined
        ? {
            "raw batched tok/s": row.rawBatchedTokensPerSecond,
            "raw serial tok/s": row.rawSerialTokensPerSecond,
            "raw batched/serial": row.rawBatchedOverSerial,
            "agentrt/raw batched": percent(row.batchedOverRawBatched!),
          }
        : {}),
    })),
  ),
);
const widest = rows.at(-1);
if (widest?.rawBatchedOverSerial !== undefined) {
  console.log(
    `${widest.agents} busy agents: agentrt batched/serial ${widest.batchedOverSerial.toFixed(2)}× (target ≥ 1.5×), ` +
      `batched/one after another on the same runtime ${widest.batchedOverSequential.toFixed(2)}×, ` +
      `raw ceiling ${widest.rawBatchedOverSerial.toFixed(2)}×, agentrt batched = ${percent(widest.batchedOverRawBatched!)} of raw batched (target ≥ 95 %)`,
  );
}
const path = await writeResult("batching.json", { model: choice.path, label: choice.label, threads, cores: CORES, maxTokens, reps, rows });
const plot = await lineChart(
  `batching-${choice.label}`,
  rows.flatMap((row) => [
    { x: row.agents, y: row.batchedTokensPerSecond, series: "batched" },
    { x: row.agents, y: row.serialTokensPerSecond, series: "one at a time" },
    ...(row.rawBatchedTokensPerSecond !== undefined
      ? [
          { x: row.agents, y: row.rawBatchedTokensPerSecond, series: "raw batched" },
          { x: row.agents, y: row.rawSerialTokensPerSecond!, series: "raw one at a time" },
        ]
      : []),
  ]),
  {
    title: `Aggregate tokens/s vs busy agents (${choice.label}, ${threads} threads)`,
    xTitle: "busy agents",
    yTitle: "tokens/s (median)",
    integerX: true,
  },
);
progress(`wrote ${path} and ${plot}`);
