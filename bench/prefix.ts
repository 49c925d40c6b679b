/**
 * Shared prompt prefix benchmark: spawn time of agents that share one long system prompt (≈500
 * tokens), with `sharedPrefixes: true` (later agents load the prompt's saved KV state) vs `false`
 * (every agent evaluates it). Two runtimes side by side, spawns alternated. Default model: the
 * SmolLM2-135M shape.
 *
 * Each spawned agent is removed right after (untimed), so no spawn pays for passivating another agent.
 * The first spawn with sharing on evaluates the prompt and saves it; it is reported separately.
 *
 *   npm run bench:prefix
 *   npm run bench:prefix -- --prompt-tokens 1000 --reps 10
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AgentRuntime } from "../src/index.js";
import { formatTable } from "../src/cli/table.js";
import {
  CORES,
  DEFAULT_THREADS,
  engineOption,
  fillerText,
  interleave,
  intOption,
  median,
  MODEL_OPTIONS,
  pinMlxThreads,
  plotName,
  progress,
  resolveModel,
  writeResult,
} from "./lib.js";
import { barChart } from "./plot.js";
import { PromptRenderer } from "./raw.js";

const { values } = parseArgs({
  options: {
    ...MODEL_OPTIONS,
    engine: { type: "string" },
    "prompt-tokens": { type: "string" },
  },
});
const choice = await resolveModel(values.model === undefined && values.preset === undefined ? { preset: "smollm2-135m", type: values.type } : values);
const engine = engineOption(values.engine === undefined ? undefined : [values.engine])[0]!;
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const reps = intOption("reps", values.reps, 6);
const targetTokens = intOption("prompt-tokens", values["prompt-tokens"], 500);
if (engine === "mlx") pinMlxThreads(threads);

/** A system prompt of at least `target` tokens as the model renders it. */
async function longSystemPrompt(target: number): Promise<{ text: string; tokens: number }> {
  const renderer = await PromptRenderer.load(choice.path);
  try {
    let text = "You are one of many agents of a support team. Follow the team handbook below.";
    let tokens = 0;
    for (let i = 0; (tokens = renderer.tokens([{ role: "system", content: text }]).length) < target; i++) text += " " + fillerText(i, 1);
    return { text, tokens };
  } finally {
    await renderer.dispose();
  }
}

const prompt = await longSystemPrompt(targetTokens);
progress(`${choice.label} on ${engine}, ${threads} threads; system prompt of ${prompt.tokens} tokens`);
const root = await mkdtemp(join(tmpdir(), "agentrt-bench-prefix-"));
interface SpawnSample {
  ms: number;
  sharedPrefixTokens: number;
  evaluatedTokens: number;
}
const details: Record<"shared" | "unshared", SpawnSample[]> = { shared: [], unshared: [] };
let firstShared: SpawnSample | undefined;
let samples: Record<"shared" | "unshared", number[]>;
try {
  const start = (sharedPrefixes: boolean) =>
    AgentRuntime.create({
      model: choice.path,
      engine,
      stateDir: join(root, String(sharedPrefixes)),
      maxAgents: 2,
      threads,
      contextSize: 1024,
      sharedPrefixes,
    });
  const runtimes = { shared: await start(true), unshared: await start(false) };
  try {
    let n = 0;
    const spawn = async (variant: "shared" | "unshared"): Promise<SpawnSample> => {
      const runtime = runtimes[variant];
      const id = `agent-${++n}`;
      let event = { sharedPrefixTokens: 0, evaluatedTokens: 0 };
      const off = runtime.subscribe("agent:spawned", (e) => {
        if (e.id === id) event = e;
      });
      const started = performance.now();
      await runtime.spawn({ id, systemPrompt: prompt.text });
      const ms = performance.now() - started;
      off();
      await runtime.remove(id);
      return { ms, ...event };
    };
    // Warm both workers up with a short unrelated prompt, then the first shared spawn (which saves the prefix).
    for (const variant of ["shared", "unshared"] as const) {
      await runtimes[variant].spawn({ id: "warm-up", systemPrompt: "Warm up." });
      await runtimes[variant].remove("warm-up");
    }
    firstShared = await spawn("shared");
    samples = await interleave(reps, {
      shared: async () => {
        const s = await spawn("shared");
        details.shared.push(s);
        return s.ms;
      },
      unshared: async () => {
        const s = await spawn("unshared");
        details.unshared.push(s);
        return s.ms;
      },
    });
  } finally {
    await runtimes.shared.destroy();
    await runtimes.unshared.destroy();
  }
} finally {
  await rm(root, { recursive: true, force: true });
}

const shared = median(samples.shared);
const unshared = median(samples.unshared);
const ratio = median(samples.shared.map((s, i) => s / samples.unshared[i]!));
console.log(`prefix: ${choice.label} on ${engine}, ${threads} threads, ${CORES} cores, system prompt ${prompt.tokens} tokens, median of ${reps}`);
console.log(
  formatTable([
    {
      variant: "sharedPrefixes: false",
      "spawn ms": unshared,
      "evaluated tok": median(details.unshared.map((d) => d.evaluatedTokens)),
      "loaded tok": 0,
      "vs unshared": 1,
    },
    {
      variant: "sharedPrefixes: true, first agent",
      "spawn ms": firstShared!.ms,
      "evaluated tok": firstShared!.evaluatedTokens,
      "loaded tok": firstShared!.sharedPrefixTokens,
      "vs unshared": firstShared!.ms / unshared,
    },
    {
      variant: "sharedPrefixes: true, later agents",
      "spawn ms": shared,
      "evaluated tok": median(details.shared.map((d) => d.evaluatedTokens)),
      "loaded tok": median(details.shared.map((d) => d.sharedPrefixTokens)),
      "vs unshared": ratio,
    },
  ]),
);
const path = await writeResult("prefix.json", {
  model: choice.path,
  label: choice.label,
  engine,
  threads,
  cores: CORES,
  reps,
  systemPromptTokens: prompt.tokens,
  unsharedSpawnMs: unshared,
  firstSharedSpawnMs: firstShared!.ms,
  sharedSpawnMs: shared,
  sharedOverUnshared: ratio,
  samples,
  details: { ...details, firstShared },
});
const plot = await barChart(
  plotName("prefix", choice.label, [engine]),
  [
    { group: "spawn", series: "sharedPrefixes: false", value: unshared },
    { group: "spawn", series: "true, first agent", value: firstShared!.ms },
    { group: "spawn", series: "true, later agents", value: shared },
  ],
  { title: `Spawn time, ${prompt.tokens}-token system prompt (${choice.label}, ${engine})`, xTitle: "", yTitle: "ms (median)" },
);
progress(`wrote ${path} and ${plot}`);
