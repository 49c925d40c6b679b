/**
 * Overhead benchmark: generation speed through agentrt (AgentRuntime, real generation worker, durable
 * turn) vs the same generation on the bare engine in this process, interleaved in one run.
 *
 * Every variant does the same work: the system prompt is already in the cache (untimed), then the user
 * message is evaluated and G tokens are generated greedily, where G is what agentrt generated for that
 * prompt (a random-weight model may sample end-of-generation early; the raw loops then stop at G too).
 * tokens/s = G / wall time of the turn (message evaluation + generation); TTFT is part of it.
 *
 * - llama.cpp: `agentrt` vs `raw evaluate` (node-llama-cpp `sequence.evaluate`, fixed budget) and
 *   `raw LlamaChat` (node-llama-cpp's chat loop, which agentrt's engine used until it got its own decode loop).
 * - mlx: `agentrt` vs `raw forward` (agentrt's MLX forward pass, src/engines/mlx/model.ts, driven by a
 *   plain greedy loop in this process: no worker, no chat rendering or text decoding per token).
 * - both: `engine in-process` (the engine class agentrt hosts, called in this process) and `engine in
 *   worker` (the bare generation worker, RemoteEngine), which split agentrt's cost between the engine
 *   layer, the thread hop and the runtime (mailbox, supervisor, durable record write, events).
 * - `agentrt − record write`: agentrt's own turns with the time the store spent writing the agent's
 *   record (temp file, fsync, rename, fsync of the folder) taken out; timed through the public `store`
 *   option, not measured separately.
 * - `outside engine ms` (agentrt and agentrt's engine): the turn's wall time less the engine's own time
 *   for it (its TTFT plus its decode time, as the engine reports them): what the layers above the engine
 *   cost per turn, free of the per-instance speed differences between the separately loaded copies of
 *   the model that the tokens/s ratios carry (see bench/README.md); `engine share` is the engine's own time
 *   over the turn's wall time.
 *
 *   npm run bench:overhead
 *   npm run bench:overhead -- --preset smollm2-135m --engine llama.cpp --engine mlx --tokens 32
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { resolveChatWrapper, type ChatWrapper } from "node-llama-cpp";
import { AgentRuntime, DirectoryStore, type AgentRecord } from "../src/index.js";
import { formatTable } from "../src/cli/table.js";
import { commonPrefixLength, completionChatWrapper } from "../src/engines/chat-history.js";
import { createEngine } from "../src/engines/create-engine.js";
import type { ChatMessage, Engine, EngineName } from "../src/engines/engine.js";
import { DelegatingStore } from "../src/store/delegating-store.js";
import type { TurnAppend } from "../src/store/state-store.js";
import { RemoteEngine } from "../src/worker/remote-engine.js";
import {
  CORES,
  DEFAULT_THREADS,
  engineOption,
  interleave,
  intOption,
  median,
  MODEL_OPTIONS,
  outName,
  percent,
  pinMlxThreads,
  plotName,
  progress,
  resolveModel,
  writeResult,
} from "./lib.js";
import { barChart } from "./plot.js";
import { PromptRenderer, RawLlama, RawMlx, type RawGeneration, type RawLlamaContext } from "./raw.js";

const { values } = parseArgs({
  options: {
    ...MODEL_OPTIONS,
    engine: { type: "string", multiple: true },
    tokens: { type: "string" },
    context: { type: "string" },
    out: { type: "string" },
  },
});
const choice = await resolveModel(values);
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const reps = intOption("reps", values.reps, 9);
const maxTokens = intOption("tokens", values.tokens, 64);
const contextSize = intOption("context", values.context, 2048);
const engines = engineOption(values.engine);
if (engines.includes("mlx")) pinMlxThreads(threads);

const never = new AbortController().signal;
const SYSTEM = "You are a storyteller. Continue every story the user starts, at length, without stopping.";
/** User messages to try: the one agentrt answers longest (ideally to maxTokens) is measured. */
const CANDIDATES = [
  "Once upon a time, in a small village by the sea, there lived an old fisherman who",
  "Tell me a long story about a robot that learns to paint.",
  "The engineers measured every change and kept only what made things faster. Then",
  "Write the next chapter: the lighthouse keeper opened the letter and read",
];

interface Sample extends RawGeneration {
  tokensPerSecond: number;
  /** agentrt only: time the turn spent writing the agent's record (temp file, fsync, rename, fsync of the folder). */
  writeMs?: number;
  /** agentrt and agentrt's engine: the engine's own time for the turn (TTFT + decode, as it reports them). */
  engineMs?: number;
}

function sample(generation: RawGeneration): Sample {
  return { ...generation, tokensPerSecond: (generation.tokens * 1000) / generation.ms };
}

interface EngineSetup {
  engine: EngineName;
  runtime: AgentRuntime;
  store: TimedStore;
  message: string;
  generated: number;
  promptTokens: number;
  prefix: number[];
  rest: number[];
  dispose: () => Promise<void>;
  raw: Record<string, () => Promise<RawGeneration>>;
}

/** The directory store agentrt uses by default, timing its record writes (passed as `store`). */
class TimedStore extends DelegatingStore {
  writeMs = 0;

  constructor(root: string) {
    super(new DirectoryStore(root));
  }

  override async write(record: AgentRecord): Promise<void> {
    const started = performance.now();
    try {
      await this.inner.write(record);
    } finally {
      this.writeMs += performance.now() - started;
    }
  }

  override async appendTurn(id: string, turn: TurnAppend): Promise<void> {
    const started = performance.now();
    try {
      await this.inner.appendTurn(id, turn);
    } finally {
      this.writeMs += performance.now() - started;
    }
  }
}

let spawned = 0;
/** One agentrt turn from a freshly spawned agent (spawn and removal untimed), streamed as a user would. */
async function agentrtTurn(setup: EngineSetup, message: string, budget: number): Promise<Sample & { promptTokens: number; stop: string }> {
  const id = `bench-${++spawned}`;
  await setup.runtime.spawn({ id, systemPrompt: SYSTEM });
  try {
    setup.store.writeMs = 0;
    const started = performance.now();
    let first = 0;
    const turn = setup.runtime.send(id, message, { maxTokens: budget });
    for await (const _chunk of turn) first ||= performance.now();
    const { timings } = await turn.result;
    const finished = performance.now();
    const ms = finished - started;
    return {
      ms,
      ttftMs: (first || finished) - started,
      tokens: timings.generatedTokens,
      tokensPerSecond: (timings.generatedTokens * 1000) / ms,
      writeMs: setup.store.writeMs,
      engineMs: timings.ttftMs + (timings.tokensPerSecond > 0 ? ((timings.generatedTokens - 1) * 1000) / timings.tokensPerSecond : 0),
      promptTokens: timings.promptTokens,
      stop: timings.stopReason,
    };
  } finally {
    await setup.runtime.remove(id);
  }
}

async function setUp(engine: EngineName, root: string, renderer: PromptRenderer): Promise<EngineSetup> {
  progress(`${engine}: starting agentrt (${threads} threads, context ${contextSize})…`);
  const store = new TimedStore(join(root, engine));
  const runtime = await AgentRuntime.create({
    model: choice.path,
    engine,
    store,
    maxAgents: 1,
    threads,
    contextSize,
    sharedPrefixes: false,
  });
  const setup: EngineSetup = {
    engine,
    runtime,
    store,
    message: "",
    generated: 0,
    promptTokens: 0,
    prefix: [],
    rest: [],
    raw: {},
    dispose: () => runtime.destroy(),
  };
  // Pick the message agentrt answers longest; this also warms the worker up.
  for (const message of CANDIDATES) {
    const turn = await agentrtTurn(setup, message, maxTokens);
    progress(`${engine}: ${JSON.stringify(message.slice(0, 32))}… → ${turn.tokens} tokens (${turn.stop})`);
    if (turn.tokens > setup.generated) Object.assign(setup, { message, generated: turn.tokens, promptTokens: turn.promptTokens });
    if (turn.tokens >= maxTokens) break;
  }
  const messages: ChatMessage[] = [
    { role: "system", content: SYSTEM },
    { role: "user", content: setup.message },
  ];
  const prompt = renderer.tokens(messages);
  // What a spawned agent holds: the part of the prompt every user message shares.
  const shared = commonPrefixLength(prompt, renderer.tokens([messages[0]!, { role: "user", content: "x" }]));
  setup.prefix = prompt.slice(0, shared);
  setup.rest = prompt.slice(shared);
  progress(
    `${engine}: prompt ${prompt.length} tokens (agentrt rendered ${setup.promptTokens}), ${setup.rest.length} evaluated per turn, ${setup.generated} generated`,
  );

  if (engine === "llama.cpp") {
    progress("llama.cpp: loading the raw node-llama-cpp model in this process…");
    const raw = await RawLlama.load(choice.path);
    const context: RawLlamaContext = await raw.context({ contextSize, threads, sequences: 1 });
    const hasTemplate = typeof (raw.model.fileInfo.metadata as { tokenizer?: { chat_template?: unknown } }).tokenizer?.chat_template === "string";
    const wrapper: ChatWrapper = (hasTemplate ? resolveChatWrapper(raw.model) : null) ?? (await completionChatWrapper());
    setup.raw = {
      "raw evaluate": async () => {
        await context.reset(setup.prefix);
        return context.generate(setup.rest, setup.generated);
      },
      "raw LlamaChat": async () => {
        await context.reset(setup.prefix);
        return context.chat(wrapper, messages, setup.generated);
      },
    };
    setup.dispose = async () => {
      await runtime.destroy();
      await context.dispose();
      await raw.dispose();
    };
  } else {
    progress("mlx: loading the raw MLX forward pass in this process…");
    const raw = await RawMlx.load(choice.path, threads);
    setup.raw = {
      "raw forward": async () => {
        raw.reset(setup.prefix);
        return raw.generate(setup.rest, setup.generated);
      },
    };
    setup.dispose = async () => {
      await runtime.destroy();
      raw.dispose();
    };
  }
  // The engine agentrt hosts, without the runtime: in this process, and in its generation worker.
  progress(`${engine}: loading agentrt's engine in this process and in a bare generation worker…`);
  const loadOptions = { engine, model: choice.path, contextSize, sequences: 1, threads };
  const inProcess = await createEngine(loadOptions);
  const worker = await RemoteEngine.start(loadOptions);
  setup.raw["engine in-process"] = () => engineTurn(inProcess, messages, setup.generated);
  setup.raw["engine in worker"] = () => engineTurn(worker, messages, setup.generated);
  const disposeRaw = setup.dispose;
  setup.dispose = async () => {
    await disposeRaw();
    await inProcess.dispose();
    await worker.dispose();
  };
  // One untimed run of each variant (first-call allocations).
  for (const run of Object.values(setup.raw)) await run();
  return setup;
}

/** One turn on an engine as agentrt drives it (system prompt prefilled untimed, text streamed). */
async function engineTurn(engine: Engine | RemoteEngine, messages: ChatMessage[], budget: number): Promise<RawGeneration & { engineMs: number }> {
  await engine.closeSequence("bench");
  await engine.openSequence("bench");
  await engine.prefill("bench", messages.slice(0, 1), never);
  const started = performance.now();
  let first = 0;
  const output = await engine.generate("bench", {
    messages,
    maxTokens: budget,
    sampling: { temperature: 0 },
    signal: never,
    onText: () => (first ||= performance.now()),
  });
  const finished = performance.now();
  return { ms: finished - started, ttftMs: (first || finished) - started, tokens: output.generatedTokens, engineMs: output.ttftMs + output.decodeMs };
}

const root = await mkdtemp(join(tmpdir(), "agentrt-bench-overhead-"));
const renderer = await PromptRenderer.load(choice.path);
const setups: EngineSetup[] = [];
const details = new Map<string, Sample[]>();
let samples: Record<string, number[]>;
try {
  for (const engine of engines) setups.push(await setUp(engine, root, renderer));
  const variants: Record<string, () => Promise<number>> = {};
  const record = (name: string, generation: RawGeneration & { writeMs?: number; engineMs?: number }): number => {
    const s = {
      ...sample(generation),
      ...(generation.writeMs !== undefined ? { writeMs: generation.writeMs } : {}),
      ...(generation.engineMs !== undefined ? { engineMs: generation.engineMs } : {}),
    };
    details.set(name, [...(details.get(name) ?? []), s]);
    return s.tokensPerSecond;
  };
  for (const setup of setups) {
    variants[`${setup.engine}|agentrt`] = async () => record(`${setup.engine}|agentrt`, await agentrtTurn(setup, setup.message, setup.generated));
    for (const [name, run] of Object.entries(setup.raw))
      variants[`${setup.engine}|${name}`] = async () => record(`${setup.engine}|${name}`, await run());
  }
  samples = await interleave(reps, variants, (rep) => progress(`repetition ${rep + 1}/${reps}`));
} finally {
  for (const setup of setups) await setup.dispose().catch(() => {});
  await renderer.dispose();
  await rm(root, { recursive: true, force: true });
}

/** Median of per-repetition ratios: each pair was measured back to back. */
function pairedRatio(a: readonly number[], b: readonly number[]): number {
  return median(a.map((value, i) => value / b[i]!));
}

// agentrt's turns with the record write taken out: what the runtime costs besides making the turn durable.
for (const engine of engines) {
  const runs = details.get(`${engine}|agentrt`);
  if (!runs) continue;
  const key = `${engine}|agentrt − record write`;
  details.set(
    key,
    runs.map((r) => ({ ...sample({ ms: r.ms - (r.writeMs ?? 0), ttftMs: r.ttftMs, tokens: r.tokens }), engineMs: r.engineMs! })),
  );
  samples[key] = details.get(key)!.map((r) => r.tokensPerSecond);
}

const rows = Object.keys(samples).map((key) => {
  const [engine, variant] = key.split("|") as [EngineName, string];
  const runs = details.get(key)!;
  const baseline = engine === "llama.cpp" ? "llama.cpp|raw evaluate" : "mlx|raw forward";
  return {
    engine,
    variant,
    tokens: median(runs.map((r) => r.tokens)),
    tokensPerSecond: median(samples[key]!),
    ttftMs: median(runs.map((r) => r.ttftMs)),
    // A variant that never saw its first token (LlamaChat held them all back) has no decode rate.
    decodeTokensPerSecond: median(runs.map((r) => (r.tokens > 1 && r.ms - r.ttftMs > 1 ? ((r.tokens - 1) * 1000) / (r.ms - r.ttftMs) : NaN))),
    /** This variant over the engine's bare baseline, median of per-repetition ratios. */
    overBaseline: pairedRatio(samples[key]!, samples[baseline]!),
    recordWriteMs: runs.some((r) => r.writeMs !== undefined) ? median(runs.map((r) => r.writeMs ?? 0)) : undefined,
    outsideEngineMs: runs.some((r) => r.engineMs !== undefined) ? median(runs.map((r) => r.ms - (r.engineMs ?? r.ms))) : undefined,
    /** The engine's own time over the turn's wall time: the share a runtime over an equally fast engine keeps. */
    engineShare: runs.some((r) => r.engineMs !== undefined) ? median(runs.map((r) => (r.engineMs ?? r.ms) / r.ms)) : undefined,
  };
});
const agentrtOverRaw = Object.fromEntries(rows.filter((r) => r.variant === "agentrt").map((r) => [r.engine, r.overBaseline]));
const agentrtWithoutWriteOverRaw = Object.fromEntries(
  rows.filter((r) => r.variant === "agentrt − record write").map((r) => [r.engine, r.overBaseline]),
);
const mlxOverLlama =
  samples["mlx|agentrt"] && samples["llama.cpp|agentrt"]
    ? {
        agentrt: pairedRatio(samples["mlx|agentrt"], samples["llama.cpp|agentrt"]),
        raw: pairedRatio(samples["mlx|raw forward"]!, samples["llama.cpp|raw evaluate"]!),
      }
    : undefined;

console.log(`overhead: ${choice.label}, ${threads} threads, ${CORES} cores, context ${contextSize}, median of ${reps}`);
console.log(
  formatTable(
    rows.map((row) => ({
      engine: row.engine,
      variant: row.variant,
      "gen tok": row.tokens,
      "tok/s": row.tokensPerSecond,
      "TTFT ms": row.ttftMs,
      "decode tok/s": row.decodeTokensPerSecond,
      "vs raw": percent(row.overBaseline),
      "record write ms": row.recordWriteMs === undefined ? "" : row.recordWriteMs.toFixed(1),
      "outside engine ms": row.outsideEngineMs === undefined ? "" : row.outsideEngineMs.toFixed(1),
      "engine share": row.engineShare === undefined ? "" : percent(row.engineShare),
    })),
  ),
);
for (const [engine, ratio] of Object.entries(agentrtOverRaw)) {
  console.log(
    `${engine}: agentrt/raw = ${percent(ratio)} (target ≥ 98 %: ${ratio >= 0.98 ? "MET" : "MISSED"}); ` +
      `without the durable record write ${percent(agentrtWithoutWriteOverRaw[engine]!)}`,
  );
}
for (const engine of engines) {
  const agentrt = rows.find((r) => r.engine === engine && r.variant === "agentrt");
  const worker = rows.find((r) => r.engine === engine && r.variant === "engine in worker");
  if (!agentrt?.engineShare || !worker?.outsideEngineMs) continue;
  console.log(
    `${engine}: agentrt above its engine ${agentrt.outsideEngineMs!.toFixed(1)} ms a turn (record write ${agentrt.recordWriteMs!.toFixed(1)} ms; ` +
      `the bare worker's hop ${worker.outsideEngineMs.toFixed(1)} ms): the engine's own time is ${percent(agentrt.engineShare)} of agentrt's turn`,
  );
}
if (mlxOverLlama) console.log(`mlx/llama.cpp tokens/s: agentrt ${percent(mlxOverLlama.agentrt)}, raw ${percent(mlxOverLlama.raw)}`);

const path = await writeResult(`${outName(values.out, "overhead")}.json`, {
  model: choice.path,
  label: choice.label,
  threads,
  cores: CORES,
  contextSize,
  reps,
  maxTokens,
  rows,
  agentrtOverRaw,
  agentrtWithoutWriteOverRaw,
  mlxOverLlama,
  samples,
});
const plot = await barChart(
  plotName("overhead", choice.label, engines),
  rows.map((row) => ({ group: row.engine, series: row.variant, value: row.tokensPerSecond })),
  { title: `Generation tokens/s, agentrt vs bare engine (${choice.label}, ${threads} threads)`, xTitle: "engine", yTitle: "tokens/s (median)" },
);
progress(`wrote ${path} and ${plot}`);
