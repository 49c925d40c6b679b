/**
 * Churn benchmark: many agents, few resident slots, random access. Spawns `--agents` agents (default
 * 1 000) on a runtime with `--max-agents` resident (default 4), then sends `--turns` short turns to
 * agents picked at random (seeded), `--concurrency` at a time. Nearly every turn passivates one agent
 * and rehydrates another. All through AgentRuntime (worker, store, supervisor).
 *
 * Reports passivations and rehydrations per second, turn latency percentiles (send → acknowledged,
 * queueing included), and the process RSS sampled over time (plotted).
 *
 *   npm run bench:churn
 *   npm run bench:churn -- --agents 200 --turns 200 --preset smollm2-135m
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
  intOption,
  median,
  MODEL_OPTIONS,
  outName,
  percentile,
  pinMlxThreads,
  plotName,
  progress,
  resolveModel,
  RssSampler,
  seededRandom,
  writeResult,
} from "./lib.js";
import { lineChart } from "./plot.js";

const { values } = parseArgs({
  options: {
    ...MODEL_OPTIONS,
    engine: { type: "string" },
    agents: { type: "string" },
    "max-agents": { type: "string" },
    turns: { type: "string" },
    concurrency: { type: "string" },
    tokens: { type: "string" },
    seed: { type: "string" },
    "host-cache-mib": { type: "string" },
    out: { type: "string" },
  },
});
const choice = await resolveModel(values);
const engine = engineOption(values.engine === undefined ? undefined : [values.engine])[0]!;
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const agentCount = intOption("agents", values.agents, 1000);
const maxAgents = intOption("max-agents", values["max-agents"], 4);
const turnCount = intOption("turns", values.turns, 400);
const concurrency = intOption("concurrency", values.concurrency, 4);
const maxTokens = intOption("tokens", values.tokens, 8);
const seed = intOption("seed", values.seed, 42);
/** `hostCacheBytes` in MiB (the host-RAM tier); 0: off. */
const hostCacheMiB = values["host-cache-mib"] === undefined ? 0 : Number(values["host-cache-mib"]);
if (engine === "mlx") pinMlxThreads(threads);

/** A few roles, so agents share system prompts as in a real deployment (and the shared prefix cache works). */
const ROLES = ["support", "research", "planner", "writer"];
const systemPrompt = (role: string) => `You are the ${role} agent of a small company. ${fillerText(ROLES.indexOf(role), 2)}`;

/** Runs `count` tasks with at most `limit` in flight. */
async function pool(count: number, limit: number, task: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, count) }, async () => {
      while (next < count) await task(next++);
    }),
  );
}

const root = await mkdtemp(join(tmpdir(), "agentrt-bench-churn-"));
const rss = new RssSampler(250);
/** RSS against the passivations so far, sampled during the turns: the slope says whether memory is bounded. */
const byPassivations: { passivations: number; rssMiB: number }[] = [];
let churnTimer: NodeJS.Timeout | undefined;
const phases: { name: string; seconds: number }[] = [];
const mark = (name: string) => phases.push({ name, seconds: (performance.now() - startedAt) / 1000 });
const startedAt = performance.now();
let passivations = 0;
let rehydrations = 0;
let rehydratedFromState = 0;
const latencies: number[] = [];
let spawnSeconds = 0;
let turnSeconds = 0;
let turnPassivations = 0;
let turnRehydrations = 0;
try {
  progress(`${choice.label} on ${engine}, ${threads} threads; ${agentCount} agents, ${maxAgents} resident`);
  const runtime = await AgentRuntime.create({
    model: choice.path,
    engine,
    stateDir: join(root, "state"),
    maxAgents,
    threads,
    contextSize: 1024,
    hostCacheBytes: Math.round(hostCacheMiB * 2 ** 20),
  });
  runtime.subscribe("agent:passivated", () => passivations++);
  runtime.subscribe("agent:rehydrated", (event) => {
    rehydrations++;
    if (event.source === "state") rehydratedFromState++;
  });
  try {
    mark("spawn");
    const spawnStart = performance.now();
    await pool(agentCount, concurrency, async (i) => {
      const role = ROLES[i % ROLES.length]!;
      await runtime.spawn({ id: `${role}/${i}`, role, systemPrompt: systemPrompt(role) });
      if ((i + 1) % 100 === 0) progress(`spawned ${i + 1}/${agentCount}`);
    });
    spawnSeconds = (performance.now() - spawnStart) / 1000;

    mark("turns");
    const random = seededRandom(seed);
    const targets = Array.from({ length: turnCount }, () => Math.floor(random() * agentCount));
    const before = { passivations, rehydrations };
    const turnStart = performance.now();
    churnTimer = setInterval(
      () => byPassivations.push({ passivations: passivations - before.passivations, rssMiB: process.memoryUsage.rss() / 2 ** 20 }),
      250,
    );
    await pool(turnCount, concurrency, async (t) => {
      const i = targets[t]!;
      const id = `${ROLES[i % ROLES.length]}/${i}`;
      const started = performance.now();
      await runtime.ask(id, fillerText(t, 1), { maxTokens });
      latencies.push(performance.now() - started);
      if ((t + 1) % 100 === 0) progress(`turn ${t + 1}/${turnCount}`);
    });
    turnSeconds = (performance.now() - turnStart) / 1000;
    clearInterval(churnTimer);
    turnPassivations = passivations - before.passivations;
    turnRehydrations = rehydrations - before.rehydrations;
    mark("close");
  } finally {
    await runtime.close();
  }
} finally {
  rss.stop();
  await rm(root, { recursive: true, force: true });
}

const rssValues = rss.samples.map((s) => s.rssMiB);
/** Least-squares slope of RSS (MiB) per 1 000 passivations, after the first `warmUp` share of the turns. */
function rssSlope(warmUp: number): number {
  const total = byPassivations.at(-1)?.passivations ?? 0;
  const points = byPassivations.filter((p) => p.passivations >= total * warmUp);
  if (points.length < 2) return NaN;
  const mx = points.reduce((a, p) => a + p.passivations, 0) / points.length;
  const my = points.reduce((a, p) => a + p.rssMiB, 0) / points.length;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.passivations - mx) * (p.rssMiB - my);
    den += (p.passivations - mx) ** 2;
  }
  return den === 0 ? NaN : (num / den) * 1000;
}
/** RSS medians over each tenth of the turn phase (by passivations): a flat tail means bounded. */
const tenths = Array.from({ length: 10 }, (_, k) => {
  const total = byPassivations.at(-1)?.passivations ?? 0;
  const slice = byPassivations.filter((p) => p.passivations >= (total * k) / 10 && p.passivations < (total * (k + 1)) / 10 + (k === 9 ? 1 : 0));
  return slice.length ? median(slice.map((p) => p.rssMiB)) : NaN;
});
const phaseStart = (name: string) => phases.find((p) => p.name === name)?.seconds ?? Infinity;
const turnSamples = rss.samples.filter((s) => s.seconds >= phaseStart("turns") && s.seconds < phaseStart("close"));
const result = {
  model: choice.path,
  label: choice.label,
  engine,
  threads,
  cores: CORES,
  agents: agentCount,
  maxAgents,
  turns: turnCount,
  concurrency,
  maxTokens,
  seed,
  spawnSeconds,
  spawnsPerSecond: agentCount / spawnSeconds,
  turnSeconds,
  turnsPerSecond: turnCount / turnSeconds,
  passivationsPerSecond: turnPassivations / turnSeconds,
  rehydrationsPerSecond: turnRehydrations / turnSeconds,
  passivationsTotal: passivations,
  rehydrationsTotal: rehydrations,
  rehydratedFromState,
  turnLatencyMs: {
    p50: percentile(latencies, 50),
    p90: percentile(latencies, 90),
    p99: percentile(latencies, 99),
    max: Math.max(...latencies),
    median: median(latencies),
  },
  rssSlopeMiBPer1000Passivations: rssSlope(0.2),
  rssTenthsMiB: tenths,
  rssByPassivations: byPassivations,
  rssMiB: {
    start: rssValues[0],
    peak: Math.max(...rssValues),
    end: rssValues.at(-1),
    turnPhaseFirst: turnSamples[0]?.rssMiB,
    turnPhaseLast: turnSamples.at(-1)?.rssMiB,
  },
  phases,
  rss: rss.samples,
};

console.log(
  `churn: ${choice.label} on ${engine}, ${threads} threads, ${CORES} cores; ${agentCount} agents, ${maxAgents} resident, ${turnCount} turns × ${maxTokens} tokens, ${concurrency} in flight, seed ${seed}`,
);
console.log(
  formatTable([
    {
      "spawn/s": result.spawnsPerSecond,
      "turns/s": result.turnsPerSecond,
      "passivations/s": result.passivationsPerSecond,
      "rehydrations/s": result.rehydrationsPerSecond,
      "p50 turn ms": result.turnLatencyMs.p50,
      "p99 turn ms": result.turnLatencyMs.p99,
      "RSS start MiB": result.rssMiB.start!,
      "RSS peak MiB": result.rssMiB.peak,
      "RSS end MiB": result.rssMiB.end!,
      "RSS MiB/1000 pass.": result.rssSlopeMiBPer1000Passivations,
    },
  ]),
);
console.log(
  `RSS (MiB) by tenth of the turns' passivations: ${tenths.map((v) => v.toFixed(1)).join(" ")}; slope after the first 20 %: ${result.rssSlopeMiBPer1000Passivations.toFixed(2)} MiB per 1 000 passivations`,
);
const path = await writeResult(`${outName(values.out, "churn")}.json`, { ...result, hostCacheMiB, mallocArenaMax: process.env.MALLOC_ARENA_MAX });
const plot = await lineChart(
  plotName("churn", choice.label, [engine]),
  rss.samples.map((s) => ({ x: s.seconds, y: s.rssMiB, series: phaseAt(s.seconds) })),
  {
    title: `RSS over time: ${agentCount} agents, ${maxAgents} resident, ${turnCount} turns (${choice.label}, ${engine})`,
    xTitle: "seconds",
    yTitle: "RSS (MiB)",
    zeroY: true,
  },
);
progress(`wrote ${path} and ${plot}`);

function phaseAt(seconds: number): string {
  let name = "start";
  for (const phase of phases) if (seconds >= phase.seconds) name = phase.name;
  return name;
}
