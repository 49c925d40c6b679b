/**
 * Residency by memory: how many agents a KV budget (`kvBudgetBytes`) keeps resident per GiB, at a mean history of
 * H tokens, on each engine and KV type.
 *
 * For every variant a runtime gets a budget of about `--fit` agents' caches and `maxAgents` well above it, then
 * `--agents` agents each take one turn on a conversation of a length spread evenly around H (H − 192 … H + 192
 * tokens, mean H). Read from `runtime.memory()` at the end: agents resident, the KV bytes the engine itself
 * reports as reserved for them (llama.cpp: the whole context per sequence; MLX: its arrays), and the bytes the
 * supervisor charged against the budget. Agents per GiB = GiB ÷ reserved bytes per resident agent; "by tokens"
 * is what the tokens they hold would allow if nothing were reserved beyond them.
 *
 *   npm run bench:budget                                                  # stories260K, llama.cpp f16 + MLX
 *   npm run bench:budget -- --model models/smollm2-135m-f16.gguf --agents 8   # the synthetic 135M shape
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AgentRuntime } from "../src/index.js";
import { formatTable } from "../src/cli/table.js";
import { kvReservedBytes, type ChatMessage, type EngineName, type KvType } from "../src/engines/engine.js";
import {
  buildHistories,
  DEFAULT_THREADS,
  engineOption,
  intOption,
  MODEL_OPTIONS,
  pinMlxThreads,
  progress,
  resolveModel,
  writeResult,
} from "./lib.js";

const { values } = parseArgs({
  options: {
    ...MODEL_OPTIONS,
    engine: { type: "string", multiple: true },
    history: { type: "string" },
    agents: { type: "string" },
    fit: { type: "string" },
    context: { type: "string" },
    "kv-type": { type: "string", multiple: true },
  },
});
const choice = await resolveModel(values);
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const history = intOption("history", values.history, 512);
const agents = intOption("agents", values.agents, 10);
const fit = intOption("fit", values.fit, 4);
const contextSize = intOption("context", values.context, 1024);
const engines = engineOption(values.engine, ["llama.cpp", "mlx"]);
const kvTypes = (values["kv-type"] ?? ["f16", "q8_0"]) as KvType[];
const GiB = 2 ** 30;
pinMlxThreads(threads);

// Lengths spread evenly around the mean: H − 192, H − 96, H, H + 96, H + 192, repeated.
const offsets = [-192, -96, 0, 96, 192];
const targets = Array.from({ length: agents }, (_, i) => Math.max(32, history + offsets[i % offsets.length]!));
const histories = await buildHistories(choice.path, [...new Set(targets)]);

interface Row {
  engine: EngineName;
  kvType: KvType | "float32";
  kvBytesPerToken: number;
  contextSize: number;
  budgetBytes: number;
  maxAgents: number;
  residentAgents: number;
  meanTokens: number;
  reservedBytesPerAgent: number;
  chargedBytes: number;
  agentsPerGiB: number;
  agentsPerGiBByTokens: number;
}

const rows: Row[] = [];
const skipped: string[] = [];
const root = await mkdtemp(join(tmpdir(), "agentrt-bench-budget-"));
try {
  for (const engine of engines) {
    for (const kvType of engine === "mlx" ? (["f16"] as KvType[]) : kvTypes) {
      const base = { model: choice.path, engine, contextSize, threads, maxTokens: 4, sharedPrefixes: false, kvType } as const;
      let probe: AgentRuntime;
      try {
        probe = await AgentRuntime.create({ ...base, stateDir: join(root, `probe-${engine}-${kvType}`), maxAgents: 1 });
      } catch (error) {
        skipped.push(`${engine} ${kvType}: ${(error as Error).message}`);
        progress(`skipped ${engine} ${kvType}: ${(error as Error).message}`);
        continue;
      }
      const info = probe.model;
      await probe.close();
      // About `fit` agents of the mean length (plus the turn's few tokens), and half an agent to spare.
      const budgetBytes = Math.round((fit + 0.5) * kvReservedBytes(info, history + 16));
      const runtime = await AgentRuntime.create({
        ...base,
        stateDir: join(root, `${engine}-${kvType}`),
        maxAgents: 4 * fit,
        kvBudgetBytes: budgetBytes,
      });
      const label = `${engine} ${info.kvType ?? "float32"}`;
      try {
        for (const [index, target] of targets.entries()) {
          const [system, ...rest] = histories.get(target)!;
          const id = `agent-${index}`;
          await runtime.spawn({ id, systemPrompt: system!.content });
          const conversation: ChatMessage[] = [...rest, { role: "user", content: "Go on." }];
          await runtime.sendConversation(id, conversation).result;
          progress(`${label}: agent ${index + 1}/${agents} (${target} tokens)`);
        }
        const { totals } = await runtime.memory();
        const reservedBytesPerAgent = totals.cacheAllocatedBytes / totals.residentAgents;
        const meanTokens = totals.cacheTokens / totals.residentAgents;
        rows.push({
          engine,
          kvType: info.kvType ?? "float32",
          kvBytesPerToken: info.kvBytesPerToken,
          contextSize: info.contextSize,
          budgetBytes,
          maxAgents: runtime.maxAgents,
          residentAgents: totals.residentAgents,
          meanTokens,
          reservedBytesPerAgent,
          chargedBytes: totals.kvBudgetUsedBytes,
          agentsPerGiB: GiB / reservedBytesPerAgent,
          agentsPerGiBByTokens: GiB / (meanTokens * info.kvBytesPerToken),
        });
      } finally {
        await runtime.close();
      }
    }
  }
} finally {
  await rm(root, { recursive: true, force: true });
}

const MiB = (bytes: number) => (bytes / 2 ** 20).toFixed(2);
process.stdout.write(
  `\nResident agents per GiB of KV, ${choice.label}, mean history ${history} tokens (${agents} agents, budget ≈ ${fit}.5 agents)\n\n` +
    formatTable(
      rows.map((r) => ({
        engine: r.engine,
        "KV type": r.kvType,
        "B/token": r.kvBytesPerToken,
        context: r.contextSize,
        "budget MiB": MiB(r.budgetBytes),
        maxAgents: r.maxAgents,
        resident: r.residentAgents,
        "mean tokens": r.meanTokens.toFixed(0),
        "reserved/agent MiB": MiB(r.reservedBytesPerAgent),
        "charged MiB": MiB(r.chargedBytes),
        "agents/GiB": r.agentsPerGiB.toFixed(0),
        "by tokens": r.agentsPerGiBByTokens.toFixed(0),
      })),
    ) +
    "\n" +
    skipped.map((line) => `skipped: ${line}\n`).join(""),
);
const path = await writeResult(`budget-${choice.label}.json`, { model: choice.label, history, agents, fit, contextSize, threads, rows, skipped });
progress(`wrote ${path}`);
