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
 *   npm run bench:cache -- --preset qwen2.5-1.5b --type q8_0 --threads 2 --lengths 512,2048,8192 --reps 3,3,1 --out cache-1.5b
 *
 * `--reps` is one count, or one per length (`3,3,1`: fewer repetitions where a re-prefill takes minutes).
 * `--reuse-prefill`: the resident agent's own first prefill, followed by its first turn, is also the first
 * re-prefill sample (the same work: a fresh sequence evaluates the whole history, then the message; in two
 * worker calls instead of one), and the repetitions run one re-prefill fewer. Saves one long prefill per length.
 * `--out NAME` names the result (`results/NAME.json`, written again after each length, so a run cut short
 * keeps what it measured) and the plot (`results/NAME.svg`).
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
  outName,
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
    "reuse-prefill": { type: "boolean", default: false },
  },
});
const choice = await resolveModel(values);
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const lengths = listOption("lengths", values.lengths, [64, 256, 1024, 2048]);
const repsList = listOption("reps", values.reps, [5]);
if (repsList.length !== 1 && repsList.length !== lengths.length) {
  throw new RangeError(`--reps takes one count or one per length (${lengths.length}), got ${values.reps}`);
}
/** Repetitions at the i-th length. */
const repsAt = (i: number) => repsList[Math.min(i, repsList.length - 1)]!;
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
  /** Passivation: the engine writes the state + the store's commit (fsync, checksum, rename), as the runtime does. */
  passivateMs: number;
  stateBytes: number;
  reps: number;
  /** Re-prefill samples behind the median (one fewer repetition with --reuse-prefill, plus the first prefill). */
  reprefillSamples: number;
  /** The resident agent's first prefill of the history (no message, no token): progress only. */
  historyPrefillMs: number;
  /** Every sample (ms), in the order measured: on a shared machine the spread says as much as the median. */
  samples: { resident: number[]; rehydrate: number[]; reprefill: number[]; passivate: number[] };
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

progress(`building histories of ${lengths.join(", ")} tokens with the model's tokenizer…`);
const runStart = performance.now();
const elapsed = (since: number) => `${((performance.now() - since) / 1000).toFixed(1)} s`;
const name = outName(values.out, "cache");
/** Writes the result file; again after each length, so a run cut short keeps what it measured. */
async function save(partial: boolean): Promise<string> {
  return writeResult(`${name}.json`, {
    model: choice.path,
    label: choice.label,
    threads,
    reps: repsList,
    cores: CORES,
    partial,
    seconds: (performance.now() - runStart) / 1000,
    rows: rows.map((row) => ({
      ...row,
      bytesPerToken: row.stateBytes / row.historyTokens,
      rehydrateMs: row.rehydrateVerifyMs + row.rehydrateLoadMs,
      residentOverReprefill: row.ttftResidentMs / row.ttftReprefillMs,
      rehydrateOverReprefill: row.ttftRehydrateMs / row.ttftReprefillMs,
    })),
  });
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
      for (const [index, target] of lengths.entries()) {
        const lengthReps = repsAt(index);
        const messages = histories.get(target)!;
        const next: ChatMessage[] = [...messages, { role: "user", content: "What did we talk about first?" }];

        // The resident agent holds the history; each turn rewinds to it (message and reply dropped) and asks again.
        await engine.openSequence("resident");
        progress(`${engineName}: prefilling the resident agent's history (${target} tokens asked)…`);
        const prefillStart = performance.now();
        const tokens = (await engine.prefill("resident", messages, never)).cacheTokens;
        const historyPrefillMs = performance.now() - prefillStart;
        progress(`${engineName}: history of ${tokens} tokens prefilled in ${elapsed(prefillStart)}; ${lengthReps} repetitions`);
        const reprefillSamples: number[] = [];
        if (values["reuse-prefill"]) {
          reprefillSamples.push(historyPrefillMs + (await firstTokenMs(engine, "resident", next)));
          await engine.prefill("resident", messages, never); // back to the history alone before saving it
        }
        const staged = await store.stageKv("agent", engine.info.stateFileExtension);
        const saved = await engine.saveState("resident", staged.path);
        const committed = await staged.commit();
        let kv = { ...committed, tokens: saved.tokens, fingerprint: engine.info.fingerprint, engine: engineName, historyLength: messages.length };

        const verify: number[] = [];
        const load: number[] = [];
        const samples = await interleave(
          lengthReps,
          {
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
            reprefill: async (rep) => {
              if (values["reuse-prefill"] && rep === lengthReps - 1) return NaN; // the first prefill stood in for this one
              await engine.openSequence("fresh");
              const ms = await firstTokenMs(engine, "fresh", next);
              await engine.closeSequence("fresh");
              progress(`${engineName}: re-prefill of ${tokens} tokens: ${(ms / 1000).toFixed(1)} s`);
              return ms;
            },
            passivate: async () => {
              // Back to the history alone (untimed), then what a passivation costs: save + commit.
              await engine.prefill("resident", messages, never);
              const started = performance.now();
              const staged = await store.stageKv("agent", engine.info.stateFileExtension);
              await engine.saveState("resident", staged.path);
              kv = { ...kv, ...(await staged.commit()) };
              return performance.now() - started;
            },
          },
          (rep) => progress(`${engineName}: ${tokens} tokens, repetition ${rep + 1}/${lengthReps} (${elapsed(runStart)} so far)`),
        );
        await engine.closeSequence("resident");
        reprefillSamples.push(...samples.reprefill.filter((ms) => !Number.isNaN(ms)));
        rows.push({
          engine: engineName,
          historyTokens: tokens,
          ttftResidentMs: median(samples.resident),
          ttftRehydrateMs: median(samples.rehydrate),
          ttftReprefillMs: median(reprefillSamples),
          reprefillSamples: reprefillSamples.length,
          historyPrefillMs,
          samples: { resident: samples.resident, rehydrate: samples.rehydrate, reprefill: reprefillSamples, passivate: samples.passivate },
          rehydrateVerifyMs: median(verify),
          rehydrateLoadMs: median(load),
          passivateMs: median(samples.passivate),
          stateBytes: committed.bytes,
          reps: lengthReps,
        });
        await save(true);
      }
    } finally {
      await engine.dispose();
    }
  }
} finally {
  await rm(root, { recursive: true, force: true });
}

console.log(`cache: ${choice.label}, ${threads} threads, ${CORES} cores, median of ${repsList.join("/")}, ${elapsed(runStart)}`);
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
      "B/token": Math.round(row.stateBytes / row.historyTokens),
      "passivate ms": row.passivateMs,
      reps: row.reps,
    })),
  ),
);
const path = await save(false);
const plot = await lineChart(
  values.out ?? plotName("cache", choice.label, engines),
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
