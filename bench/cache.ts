/**
 * Cache benchmark: time to first token of the next turn for an agent whose history holds N tokens,
 * (a) resident (cache in memory), (b) rehydrated from its state file (checksum verified, loaded),
 * (c) re-prefilled (the whole history evaluated into a fresh sequence). Medians of interleaved reps.
 *
 * Runs the same code paths the runtime uses: the generation worker (RemoteEngine) and the directory
 * store. The state file is read from the page cache (it was just written): a cold disk read is slower.
 *
 *   npm run bench:cache                                   # small real model, llama.cpp
 *   npm run bench:cache -- --preset smollm2-135m --engine llama.cpp --engine mlx --lengths 64,256,1024,2048
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { formatTable } from "../src/cli/table.js";
import type { ChatMessage, EngineName } from "../src/engines/engine.js";
import { DirectoryStore } from "../src/store/directory-store.js";
import { RemoteEngine } from "../src/worker/remote-engine.js";
import {
  buildHistories,
  CORES,
  DEFAULT_THREADS,
  engineOption,
  interleave,
  intOption,
  listOption,
  median,
  MODEL_OPTIONS,
  pinMlxThreads,
  plotName,
  progress,
  resolveModel,
  writeResult,
} from "./lib.js";
import { lineChart } from "./plot.js";

const { values } = parseArgs({
  options: {
    ...MODEL_OPTIONS,
    engine: { type: "string", multiple: true },
    lengths: { type: "string" },
    out: { type: "string" },
  },
});
const choice = await resolveModel(values);
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const reps = intOption("reps", values.reps, 5);
const lengths = listOption("lengths", values.lengths, [64, 256, 1024, 2048]);
const engines = engineOption(values.engine);
if (engines.includes("mlx")) pinMlxThreads(threads);
const never = new AbortController().signal;

interface Row {
  engine: EngineName;
  historyTokens: number;
  ttftResidentMs: number;
  ttftRehydrateMs: number;
  ttftReprefillMs: number;
  /** Parts of the rehydrated turn: size + sha256 check of the state file, and the engine's load. */
  rehydrateVerifyMs: number;
  rehydrateLoadMs: number;
  stateBytes: number;
}

async function firstTokenMs(engine: RemoteEngine, key: string, messages: ChatMessage[]): Promise<number> {
  const started = performance.now();
  let first = 0;
  await engine.generate(key, {
    messages,
    maxTokens: 1,
    sampling: { temperature: 0 },
    signal: never,
    onText: () => (first ||= performance.now()),
  });
  // A first token that decodes to no text (a partial UTF-8 byte, say) still ends the call.
  return (first || performance.now()) - started;
}

const histories = await buildHistories(choice.path, lengths);
const rows: Row[] = [];
const root = await mkdtemp(join(tmpdir(), "agentrt-bench-cache-"));
try {
  for (const engineName of engines) {
    const contextSize = Math.max(...lengths) + 256;
    progress(`loading ${choice.label} on ${engineName} (${threads} threads, context ${contextSize})…`);
    const engine = await RemoteEngine.start({ engine: engineName, model: choice.path, contextSize, sequences: 4, threads });
    const store = new DirectoryStore(join(root, engineName));
    try {
      for (const target of lengths) {
        const messages = histories.get(target)!;
        const next: ChatMessage[] = [...messages, { role: "user", content: "What did we talk about first?" }];

        // The resident agent holds the history; each turn rewinds to it (message and reply dropped) and asks again.
        await engine.openSequence("resident");
        const tokens = (await engine.prefill("resident", messages, never)).cacheTokens;
        progress(`${engineName}: history of ${tokens} tokens, ${reps} repetitions`);
        const staged = await store.stageKv("agent", engine.info.stateFileExtension);
        const saved = await engine.saveState("resident", staged.path);
        const committed = await staged.commit();
        const kv = { ...committed, tokens: saved.tokens, fingerprint: engine.info.fingerprint, engine: engineName, historyLength: messages.length };

        const verify: number[] = [];
        const load: number[] = [];
        const samples = await interleave(reps, {
          resident: async () => {
            // Back to the history alone, so the new message is evaluated as in a real next turn.
            await engine.prefill("resident", messages, never);
            return firstTokenMs(engine, "resident", next);
          },
          rehydrate: async () => {
            const started = performance.now();
            await engine.openSequence("rehydrated");
            const path = await store.openKv("agent", kv); // size + sha256 check, as the runtime does
            const verified = performance.now();
            await engine.loadState("rehydrated", path);
            const loaded = performance.now();
            await firstTokenMs(engine, "rehydrated", next);
            const total = performance.now() - started;
            verify.push(verified - started);
            load.push(loaded - verified);
            await engine.closeSequence("rehydrated");
            return total;
          },
          reprefill: async () => {
            await engine.openSequence("fresh");
            const ms = await firstTokenMs(engine, "fresh", next);
            await engine.closeSequence("fresh");
            return ms;
          },
        });
        await engine.closeSequence("resident");
        rows.push({
          engine: engineName,
          historyTokens: tokens,
          ttftResidentMs: median(samples.resident),
          ttftRehydrateMs: median(samples.rehydrate),
          ttftReprefillMs: median(samples.reprefill),
          rehydrateVerifyMs: median(verify),
          rehydrateLoadMs: median(load),
          stateBytes: committed.bytes,
        });
      }
    } finally {
      await engine.dispose();
    }
  }
} finally {
  await rm(root, { recursive: true, force: true });
}

console.log(`cache: ${choice.label}, ${threads} threads, ${CORES} cores, median of ${reps}`);
console.log(
  formatTable(
    rows.map((row) => ({
      engine: row.engine,
      "history tok": row.historyTokens,
      "resident ms": row.ttftResidentMs,
      "rehydrate ms": row.ttftRehydrateMs,
      "(verify ms": row.rehydrateVerifyMs,
      "load ms)": row.rehydrateLoadMs,
      "re-prefill ms": row.ttftReprefillMs,
      "res/pre": row.ttftResidentMs / row.ttftReprefillMs,
      "reh/pre": row.ttftRehydrateMs / row.ttftReprefillMs,
      "state MiB": row.stateBytes / 2 ** 20,
    })),
  ),
);
const name = values.out ?? "cache";
const path = await writeResult(`${name}.json`, {
  model: choice.path,
  label: choice.label,
  threads,
  reps,
  cores: CORES,
  rows: rows.map((row) => ({
    ...row,
    residentOverReprefill: row.ttftResidentMs / row.ttftReprefillMs,
    rehydrateOverReprefill: row.ttftRehydrateMs / row.ttftReprefillMs,
  })),
});
const plot = await lineChart(
  plotName(name, choice.label, engines),
  rows.flatMap((row) => [
    { x: row.historyTokens, y: row.ttftReprefillMs, series: `${row.engine} re-prefill` },
    { x: row.historyTokens, y: row.ttftRehydrateMs, series: `${row.engine} rehydrated` },
    { x: row.historyTokens, y: row.ttftResidentMs, series: `${row.engine} resident` },
  ]),
  {
    title: `Time to first token vs history (${choice.label}, ${threads} threads)`,
    xTitle: "history tokens",
    yTitle: "TTFT (ms, log)",
    logX: true,
    logY: true,
  },
);
progress(`wrote ${path} and ${plot}`);
