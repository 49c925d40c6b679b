/**
 * Quantized KV benchmark: `kvType: "q8_0"` against `"f16"` on llama.cpp, on the same model, in one run.
 *
 * - memory: KV bytes per token (the engine's figure), agents per GiB of KV at a mean history of H tokens (what
 *   the tokens occupy) and as llama.cpp reserves it (every sequence preallocates the whole context);
 * - state: bytes per token of a saved state file, and rehydrate time (open a sequence, load the file; the
 *   variants interleaved, median of reps; the file is in the page cache on both sides);
 * - quality: a greedy reply of T tokens from an H-token history with F16 is the reference; Q8_0 is fed the same
 *   tokens (teacher forcing) and its greedy choice is compared at each position (agreement), and its
 *   next-token distribution with F16's (max |Δ log p| over the vocabulary: |Δ logit| up to one constant per
 *   position, which llama.cpp's API does not expose apart); plus how many tokens a free-running Q8_0 reply
 *   follows the reference before it first differs.
 *
 * The shared real models (stories260K, aidreams260K) have 8- and 16-wide heads, which Q8_0's 32-value blocks do
 * not divide: llama.cpp cannot quantize their cache, so they are skipped with that reason.
 *
 *   npm run bench:quant                                  # SmolLM2-135M shape, history 512, 64 tokens, 5 reps
 *   npm run bench:quant -- --preset qwen2.5-0.5b --history 1024
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { getLlama, LlamaLogLevel, type LlamaContextSequence, type Token } from "node-llama-cpp";
import { formatTable } from "../src/cli/table.js";
import type { KvType } from "../src/engines/engine.js";
import { LlamaCppEngine } from "../src/engines/llama-cpp/llama-cpp-engine.js";
import { buildHistories, CORES, DEFAULT_THREADS, interleave, intOption, median, MODEL_OPTIONS, progress, resolveModel, writeResult } from "./lib.js";
import { PromptRenderer } from "./raw.js";

const { values } = parseArgs({
  options: { ...MODEL_OPTIONS, history: { type: "string" }, tokens: { type: "string" }, context: { type: "string" } },
});
const choice = await resolveModel(values.model || values.preset ? values : { preset: "smollm2-135m" });
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const reps = intOption("reps", values.reps, 5);
const history = intOption("history", values.history, 512);
const tokens = intOption("tokens", values.tokens, 64);
const contextSize = intOption("context", values.context, 2048);
const TYPES: KvType[] = ["f16", "q8_0"];
const GiB = 2 ** 30;
const never = new AbortController().signal;

const root = await mkdtemp(join(tmpdir(), "agentrt-bench-quant-"));
const messages = (await buildHistories(choice.path, [history])).get(history)!;
const renderer = await PromptRenderer.load(choice.path);
const prompt = renderer.tokens(messages);
await renderer.dispose();
progress(`${choice.label}: history of ${prompt.length} tokens, ${tokens} generated, context ${contextSize}, ${threads} thread(s)`);

// Memory and state: the engine agentrt hosts, one per KV type.
const engines = new Map<KvType, LlamaCppEngine>();
const state = new Map<KvType, { bytes: number; tokens: number; path: string }>();
try {
  for (const kvType of TYPES) {
    const engine = await LlamaCppEngine.load({ engine: "llama.cpp", model: choice.path, contextSize, sequences: 2, threads, kvType });
    engines.set(kvType, engine);
    await engine.openSequence("a");
    await engine.prefill("a", messages, never);
    const path = join(root, `${kvType}.bin`);
    const saved = await engine.saveState("a", path);
    state.set(kvType, { ...saved, path });
    progress(`${kvType}: ${engine.info.kvBytesPerToken} KV bytes/token, state ${saved.bytes} bytes for ${saved.tokens} tokens`);
  }
  const rehydrate = await interleave(
    reps,
    Object.fromEntries(
      TYPES.map((kvType) => [
        kvType,
        async () => {
          const engine = engines.get(kvType)!;
          await engine.closeSequence("b");
          const started = performance.now();
          await engine.openSequence("b");
          await engine.loadState("b", state.get(kvType)!.path);
          return performance.now() - started;
        },
      ]),
    ) as Record<KvType, () => Promise<number>>,
    (rep) => progress(`rehydrate repetition ${rep + 1}/${reps}`),
  );

  // Quality: raw node-llama-cpp contexts, so the distributions are at hand.
  const llama = await getLlama({ gpu: "auto", build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: choice.path });
  const sequences = new Map<KvType, LlamaContextSequence>();
  for (const kvType of TYPES) {
    const context = await model.createContext({
      contextSize,
      threads,
      batchSize: 512,
      ...(kvType === "q8_0" ? { experimentalKvCacheKeyType: "Q8_0" as const, experimentalKvCacheValueType: "Q8_0" as const } : {}),
    });
    sequences.set(kvType, context.getSequence());
  }
  const greedy = async (sequence: LlamaContextSequence): Promise<Token[]> => {
    await sequence.clearHistory();
    const out: Token[] = [];
    for await (const token of sequence.evaluate(prompt as Token[], { temperature: 0, yieldEogToken: true })) {
      out.push(token);
      if (out.length >= tokens) break;
    }
    return out;
  };
  const reference = await greedy(sequences.get("f16")!);
  const free = await greedy(sequences.get("q8_0")!);
  let followed = 0;
  while (followed < reference.length && free[followed] === reference[followed]) followed++;
  /** Log-probabilities at each of the T positions, teacher-forced along the reference reply. */
  const distributions = async (sequence: LlamaContextSequence): Promise<Map<Token, number>[]> => {
    await sequence.clearHistory();
    const input = [...prompt, ...reference.slice(0, -1)] as Token[];
    const first = prompt.length - 1;
    const output = await sequence.controlledEvaluate(
      input.map((token, i) => (i >= first ? [token, { generateNext: { probabilities: true, options: { temperature: 1 } } }] : token)),
    );
    return output.slice(first).map((item) => item?.next.probabilities ?? new Map());
  };
  const [f16, q8] = [await distributions(sequences.get("f16")!), await distributions(sequences.get("q8_0")!)];
  const argmax = (p: Map<Token, number>) => [...p].reduce((best, entry) => (entry[1] > best[1] ? entry : best), [-1 as Token, -1])[0];
  let agree = 0;
  let selfAgree = 0;
  let maxDelta = 0;
  const deltas: number[] = [];
  for (let i = 0; i < f16.length; i++) {
    if (argmax(q8[i]!) === reference[i]) agree++;
    if (argmax(f16[i]!) === reference[i]) selfAgree++;
    let position = 0;
    for (const [token, p] of f16[i]!) {
      const other = q8[i]!.get(token) ?? 0;
      if (p > 0 && other > 0) position = Math.max(position, Math.abs(Math.log(p) - Math.log(other)));
    }
    deltas.push(position);
    maxDelta = Math.max(maxDelta, position);
  }
  await model.dispose();
  await llama.dispose();

  const f16Info = engines.get("f16")!.info;
  const rows = TYPES.map((kvType) => {
    const info = engines.get(kvType)!.info;
    const saved = state.get(kvType)!;
    return {
      kvType,
      kvBytesPerToken: info.kvBytesPerToken,
      stateBytesPerToken: saved.bytes / saved.tokens,
      rehydrateMs: median(rehydrate[kvType]),
      agentsPerGiBUsed: GiB / (history * info.kvBytesPerToken),
      agentsPerGiBAllocated: GiB / (info.contextSize * info.kvBytesPerToken),
    };
  });
  const quality = {
    positions: f16.length,
    f16SelfAgreement: selfAgree,
    teacherForcedAgreement: agree,
    freeRunningFollowed: followed,
    maxAbsDeltaLogProb: maxDelta,
    medianMaxAbsDeltaLogProb: median(deltas),
  };
  console.log(
    `quant: ${choice.label}, llama.cpp, ${threads} thread(s), ${CORES} cores, history ${prompt.length} tokens, context ${f16Info.contextSize}, median of ${reps}`,
  );
  console.log(
    formatTable(
      rows.map((row) => ({
        "kv type": row.kvType,
        "KV B/token": row.kvBytesPerToken,
        "state B/token": Math.round(row.stateBytesPerToken),
        "rehydrate ms": row.rehydrateMs,
        [`agents/GiB @${history}`]: Math.floor(row.agentsPerGiBUsed),
        [`agents/GiB reserved (ctx ${f16Info.contextSize})`]: Math.floor(row.agentsPerGiBAllocated),
      })),
    ),
  );
  console.log(
    `q8_0 vs f16 over ${quality.positions} greedy tokens: teacher-forced agreement ${agree}/${quality.positions} (f16 with itself ${selfAgree}/${quality.positions}), ` +
      `free-running reply identical for ${followed} tokens; max |Δ log p| ${maxDelta.toFixed(4)} (median over positions ${quality.medianMaxAbsDeltaLogProb.toFixed(4)})`,
  );
  const path = await writeResult(`quant-${choice.label}.json`, {
    model: choice.path,
    label: choice.label,
    threads,
    cores: CORES,
    history: prompt.length,
    tokens,
    contextSize,
    reps,
    rows,
    quality,
    rehydrate,
  });
  progress(`wrote ${path}`);
} finally {
  for (const engine of engines.values()) await engine.dispose();
  await rm(root, { recursive: true, force: true });
}
