/**
 * Cache benchmark: time to first token of the next turn for an agent whose history holds N tokens,
 * (a) resident (cache in memory), (b) rehydrated from its state file (checksum verified, loaded),
 * (c) re-prefilled (the whole history evaluated into a fresh sequence). Medians of repeated runs.
 *
 * Runs the same code paths the runtime uses: the generation worker (RemoteEngine) and the directory store.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { defaultModel } from "../src/cli/defaults.js";
import { formatTable } from "../src/cli/table.js";
import { detectEngine } from "../src/engines/create-engine.js";
import type { ChatMessage, EngineName } from "../src/engines/engine.js";
import { DirectoryStore } from "../src/store/directory-store.js";
import { RemoteEngine } from "../src/worker/remote-engine.js";
import { fillerText, median, progress, writeResult } from "./lib.js";

const { values } = parseArgs({
  options: {
    model: { type: "string" },
    engine: { type: "string", multiple: true },
    threads: { type: "string" },
    reps: { type: "string" },
    lengths: { type: "string" },
    out: { type: "string" },
  },
});
const model = values.model ?? defaultModel();
const threads = Number(values.threads ?? 2);
const reps = Number(values.reps ?? 5);
const lengths = (values.lengths ?? "64,256,1024").split(",").map(Number);
const engines = (values.engine as EngineName[] | undefined) ?? [await detectEngine(model)];
const never = new AbortController().signal;

interface Row {
  engine: EngineName;
  historyTokens: number;
  ttftResidentMs: number;
  ttftRehydrateMs: number;
  ttftReprefillMs: number;
  stateBytes: number;
}

/** Builds a conversation of at least `tokens` tokens, counting with the engine's own tokenizer. */
async function buildHistory(engine: RemoteEngine, tokens: number): Promise<{ messages: ChatMessage[]; tokens: number }> {
  const messages: ChatMessage[] = [{ role: "system", content: "You remember." }];
  await engine.openSequence("scratch");
  let count = (await engine.prefill("scratch", messages, never)).promptTokens;
  // Grow by whole turns, then trim the last reply word by word so the history lands close to the target.
  for (let turn = 0; count < tokens; turn++) {
    messages.push({ role: "user", content: fillerText(turn, 1) }, { role: "assistant", content: fillerText(turn + 3, 2) });
    count = (await engine.prefill("scratch", messages, never)).promptTokens;
  }
  const last = messages.at(-1)!;
  while (messages.length > 2) {
    const words = last.content.split(" ");
    if (words.length <= 1) break;
    const shorter = words.slice(0, -1).join(" ");
    const candidate = [...messages.slice(0, -1), { ...last, content: shorter }];
    const shorterCount = (await engine.prefill("scratch", candidate, never)).promptTokens;
    if (shorterCount < tokens) break;
    last.content = shorter;
    count = shorterCount;
  }
  await engine.closeSequence("scratch");
  return { messages, tokens: count };
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
  return (first || performance.now()) - started;
}

const rows: Row[] = [];
const root = await mkdtemp(join(tmpdir(), "agentrt-bench-cache-"));
try {
  for (const engineName of engines) {
    const contextSize = Math.max(...lengths) + 256;
    progress(`loading ${model} on ${engineName} (${threads} threads, context ${contextSize})…`);
    const engine = await RemoteEngine.start({ engine: engineName, model, contextSize, sequences: 4, threads });
    const store = new DirectoryStore(join(root, engineName));
    try {
      for (const target of lengths) {
        const { messages, tokens } = await buildHistory(engine, target);
        const next: ChatMessage[] = [...messages, { role: "user", content: "What did we talk about first?" }];
        progress(`${engineName}: history of ${tokens} tokens, ${reps} repetitions`);

        // The resident agent holds the history; each turn rewinds to it (the reply is dropped) and asks again.
        await engine.openSequence("resident");
        await engine.prefill("resident", messages, never);
        const staged = await store.stageKv("agent");
        const saved = await engine.saveState("resident", staged.path);
        const committed = await staged.commit();
        const kv = { ...committed, tokens: saved.tokens, fingerprint: engine.info.fingerprint, engine: engineName, historyLength: messages.length };

        const resident: number[] = [];
        const rehydrate: number[] = [];
        const reprefill: number[] = [];
        for (let rep = 0; rep < reps; rep++) {
          resident.push(await firstTokenMs(engine, "resident", next));

          const started = performance.now();
          await engine.openSequence("rehydrated");
          const path = await store.openKv("agent", kv); // size + sha256 check, as the runtime does
          await engine.loadState("rehydrated", path);
          await firstTokenMs(engine, "rehydrated", next);
          rehydrate.push(performance.now() - started);
          await engine.closeSequence("rehydrated");

          await engine.openSequence("fresh");
          reprefill.push(await firstTokenMs(engine, "fresh", next));
          await engine.closeSequence("fresh");
        }
        await engine.closeSequence("resident");
        rows.push({
          engine: engineName,
          historyTokens: tokens,
          ttftResidentMs: median(resident),
          ttftRehydrateMs: median(rehydrate),
          ttftReprefillMs: median(reprefill),
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

console.log(
  formatTable(
    rows.map((row) => ({
      engine: row.engine,
      "history tok": row.historyTokens,
      "resident ms": row.ttftResidentMs,
      "rehydrate ms": row.ttftRehydrateMs,
      "re-prefill ms": row.ttftReprefillMs,
      "a/c": row.ttftResidentMs / row.ttftReprefillMs,
      "b/c": row.ttftRehydrateMs / row.ttftReprefillMs,
      "state KiB": row.stateBytes / 1024,
    })),
  ),
);
const path = await writeResult(values.out ?? "cache.json", {
  model,
  threads,
  reps,
  cores: (await import("node:os")).availableParallelism(),
  rows: rows.map((row) => ({
    ...row,
    residentOverReprefill: row.ttftResidentMs / row.ttftReprefillMs,
    rehydrateOverReprefill: row.ttftRehydrateMs / row.ttftReprefillMs,
  })),
});
progress(`wrote ${path}`);
