/**
 * Lifetime benchmark: one agent holds a long conversation (`--turns`, default 1 000) in a small context
 * (`--context`, default 512) under the "slide" and the "shift" context policies (docs/context.md).
 * All through AgentRuntime (worker, store, actor), greedy, `--tokens` (default 8) per reply.
 *
 * Reports, per policy: slides, evaluated tokens per turn (amortized, p50, p99, on slide turns) and TTFT,
 * against re-prefilling the window on every turn (what an agent without a cache, or one rebuilt from
 * its window each turn, pays: the whole prompt each turn); and how far "shift" drifts: at every shift
 * and every `--check-every` turns (default 5), the agent's reply against a fresh agent's given exactly
 * the same window ("slide" must match always; "shift" keeps attention computed with the erased turns).
 *
 *   npm run bench:lifetime
 *   npm run bench:lifetime -- --engine llama.cpp --engine mlx --turns 300
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { AgentRuntime, type ChatMessage, type ContextPolicy, type EngineName, type TurnTimings } from "../src/index.js";
import { formatTable } from "../src/cli/table.js";
import {
  BENCH_DIR,
  CORES,
  DEFAULT_THREADS,
  engineOption,
  intOption,
  median,
  percent,
  percentile,
  pinMlxThreads,
  plotName,
  progress,
  writeResult,
} from "./lib.js";
import { lineChart } from "./plot.js";

const { values } = parseArgs({
  options: {
    model: { type: "string" },
    engine: { type: "string", multiple: true },
    threads: { type: "string" },
    turns: { type: "string" },
    context: { type: "string" },
    tokens: { type: "string" },
    "slide-to": { type: "string" },
    "check-every": { type: "string" },
  },
});
// The 512-token story model: the default test model (aidreams260K) holds only 128 tokens.
const model = values.model ?? resolve(BENCH_DIR, "../../shared/models/stories260K.gguf");
const label = basename(model).replace(/\.gguf$/, "");
const engines = engineOption(values.engine);
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const turns = intOption("turns", values.turns, 1000);
const contextSize = intOption("context", values.context, 512);
const maxTokens = intOption("tokens", values.tokens, 8);
const checkEvery = intOption("check-every", values["check-every"], 5);
const slideTo = values["slide-to"] === undefined ? 0.5 : Number(values["slide-to"]);
if (engines.includes("mlx")) pinMlxThreads(threads);

const SYSTEM = "Once upon a time there was a little robot who told stories.";
const message = (i: number) => `Tell me about day ${i} of the robot.`;
const POLICIES: ContextPolicy[] = ["slide", "shift"];

interface TurnSample extends Pick<TurnTimings, "promptTokens" | "evaluatedTokens" | "ttftMs" | "totalMs"> {
  turn: number;
  slid: boolean;
  shiftedTokens: number;
  windowStart: number;
  reply: string;
  /** Whether the reply equals a fresh agent's given the same window (checked turns only). */
  matchesFresh?: boolean;
  /** The fresh agent's TTFT: the window (and message) re-prefilled from the system prompt's cache. */
  freshTtftMs?: number;
}

async function conversation(engine: EngineName, policy: ContextPolicy, root: string): Promise<TurnSample[]> {
  const common = { model, engine, threads, contextSize, maxTokens, slideTo, maxAgents: 1, sharedPrefixes: false } as const;
  const runtime = await AgentRuntime.create({ ...common, stateDir: join(root, `${engine}-${policy}`), contextPolicy: policy });
  // The reference: fresh agents that evaluate exactly a given window (one at a time, removed after).
  const reference = await AgentRuntime.create({ ...common, stateDir: join(root, `${engine}-${policy}-fresh`), contextPolicy: "error" });
  const samples: TurnSample[] = [];
  try {
    await runtime.spawn({ id: "a", systemPrompt: SYSTEM });
    const history: ChatMessage[] = [];
    for (let i = 0; i < turns; i++) {
      const { reply, timings } = await runtime.ask("a", message(i));
      const sample: TurnSample = {
        turn: i,
        promptTokens: timings.promptTokens,
        evaluatedTokens: timings.evaluatedTokens,
        ttftMs: timings.ttftMs,
        totalMs: timings.totalMs,
        slid: (timings.slidTurns ?? 0) > 0,
        shiftedTokens: timings.shiftedTokens ?? 0,
        windowStart: timings.windowStart ?? 0,
        reply,
      };
      if (sample.slid || i % checkEvery === 0) {
        const id = `fresh-${i}`;
        await reference.spawn({ id, systemPrompt: SYSTEM });
        const window = history.slice(sample.windowStart);
        const fresh = await reference.sendConversation(id, [...window, { role: "user", content: message(i) }]).result;
        await reference.remove(id);
        sample.matchesFresh = fresh.reply === reply;
        sample.freshTtftMs = fresh.timings.ttftMs;
      }
      history.push({ role: "user", content: message(i) }, { role: "assistant", content: reply });
      samples.push(sample);
      if ((i + 1) % 100 === 0) progress(`${engine} ${policy}: turn ${i + 1}/${turns}`);
    }
  } finally {
    await runtime.close();
    await reference.close();
  }
  return samples;
}

const mean = (xs: readonly number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);

function summarize(engine: EngineName, policy: ContextPolicy, samples: TurnSample[]) {
  const slid = samples.filter((s) => s.slid);
  const steady = samples.filter((s) => !s.slid);
  const checked = samples.filter((s) => s.matchesFresh !== undefined);
  const evaluated = samples.map((s) => s.evaluatedTokens);
  return {
    engine,
    policy,
    turns: samples.length,
    slides: slid.length,
    evaluatedPerTurn: mean(evaluated),
    evaluatedP50: percentile(evaluated, 50),
    evaluatedP99: percentile(evaluated, 99),
    evaluatedOnSlide: mean(slid.map((s) => s.evaluatedTokens)),
    shiftedOnSlide: mean(slid.map((s) => s.shiftedTokens)),
    /** Re-prefilling the window every turn evaluates the whole prompt every turn. */
    reprefillPerTurn: mean(samples.map((s) => s.promptTokens)),
    ttftMs: {
      mean: mean(samples.map((s) => s.ttftMs)),
      p50: percentile(
        samples.map((s) => s.ttftMs),
        50,
      ),
      p99: percentile(
        samples.map((s) => s.ttftMs),
        99,
      ),
    },
    ttftSlideMs: median(slid.map((s) => s.ttftMs)),
    /** Whole turn (token counting and the slide's search included), median. */
    turnMs: median(samples.map((s) => s.totalMs)),
    turnSlideMs: median(slid.map((s) => s.totalMs)),
    ttftSteadyMs: median(steady.map((s) => s.ttftMs)),
    freshTtftMs: median(checked.map((s) => s.freshTtftMs!)),
    checked: checked.length,
    matchesFresh: checked.filter((s) => s.matchesFresh).length,
    checkedAfterShift: checked.filter((s) => samples.slice(0, s.turn).some((p) => p.slid)).length,
  };
}

const root = await mkdtemp(join(tmpdir(), "agentrt-bench-lifetime-"));
const runs: Array<{ engine: EngineName; policy: ContextPolicy; samples: TurnSample[] }> = [];
try {
  for (const engine of engines) {
    for (const policy of POLICIES) {
      progress(`${label} on ${engine}, ${threads} threads: ${turns} turns under "${policy}", context ${contextSize}`);
      const started = performance.now();
      runs.push({ engine, policy, samples: await conversation(engine, policy, root) });
      progress(`${engine} ${policy}: ${((performance.now() - started) / 1000).toFixed(0)} s`);
    }
  }
} finally {
  await rm(root, { recursive: true, force: true });
}

const summaries = runs.map((run) => summarize(run.engine, run.policy, run.samples));
/** Where "shift" first answers differently from "slide" (same messages, so same windows until then). */
const divergence = engines.map((engine) => {
  const [slide, shift] = POLICIES.map((policy) => runs.find((r) => r.engine === engine && r.policy === policy)!.samples);
  const first = slide!.findIndex((s, i) => s.reply !== shift![i]!.reply);
  const firstShift = shift!.findIndex((s) => s.slid);
  return { engine, firstDifferentTurn: first, firstShiftTurn: firstShift, sameReplies: slide!.filter((s, i) => s.reply === shift![i]!.reply).length };
});

console.log(
  `lifetime: ${label}, ${threads} threads, ${CORES} cores; ${turns} turns × ${maxTokens} tokens, context ${contextSize}, slideTo ${slideTo}`,
);
console.log(
  formatTable(
    summaries.map((s) => ({
      engine: s.engine,
      policy: s.policy,
      slides: s.slides,
      "eval/turn": s.evaluatedPerTurn,
      "eval p99": s.evaluatedP99,
      "eval on slide": s.evaluatedOnSlide,
      "re-prefill eval/turn": s.reprefillPerTurn,
      "eval vs re-prefill": percent(s.evaluatedPerTurn / s.reprefillPerTurn),
      "TTFT ms": s.ttftMs.mean,
      "TTFT p99 ms": s.ttftMs.p99,
      "TTFT slide ms": s.ttftSlideMs,
      "TTFT steady ms": s.ttftSteadyMs,
      "fresh TTFT ms": s.freshTtftMs,
      "turn ms": s.turnMs,
      "turn slide ms": s.turnSlideMs,
      "= fresh agent": `${s.matchesFresh}/${s.checked}`,
    })),
  ),
);
console.log(
  formatTable(
    divergence.map((d) => ({
      engine: d.engine,
      "first shift at turn": d.firstShiftTurn,
      "shift first differs from slide at turn": d.firstDifferentTurn < 0 ? "never" : d.firstDifferentTurn,
      "same reply as slide": `${d.sameReplies}/${turns}`,
    })),
  ),
);
const path = await writeResult("lifetime.json", {
  model,
  label,
  threads,
  cores: CORES,
  turns,
  contextSize,
  maxTokens,
  slideTo,
  checkEvery,
  summaries,
  divergence,
  runs: runs.map((r) => ({ engine: r.engine, policy: r.policy, samples: r.samples.map(({ reply: _, ...rest }) => rest) })),
});
const plot = await lineChart(
  plotName("lifetime", label, engines),
  runs.flatMap((r) => r.samples.map((s) => ({ x: s.turn, y: s.evaluatedTokens, series: `${r.policy} (${r.engine})` }))),
  {
    title: `Evaluated tokens per turn over ${turns} turns at context ${contextSize} (${label})`,
    xTitle: "turn",
    yTitle: "evaluated tokens",
    integerX: true,
  },
);
progress(`wrote ${path} and ${plot}`);
