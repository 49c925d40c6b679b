/**
 * The `kvType` option: 8-bit K/V (llama.cpp's Q8_0) in memory and in state files, refused cleanly where it cannot
 * work. The shared real models have 8- and 16-wide attention heads, which Q8_0's 32-value blocks do not divide, so
 * the quantized cache itself is exercised on a random-weight model of 32-wide heads (bench/synthetic).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureSyntheticModel } from "../../bench/synthetic/synthetic-model.js";
import { AgentRuntime } from "../../src/index.js";
import type { ChatMessage, EngineLoadOptions, GenerateOutput } from "../../src/engines/engine.js";
import { LlamaCppEngine } from "../../src/engines/llama-cpp/llama-cpp-engine.js";
import { MlxEngine } from "../../src/engines/mlx/index.js";
import { RemoteEngine } from "../../src/worker/remote-engine.js";
import { MODELS } from "../helpers/model.js";

const never = new AbortController().signal;
const BASE = { contextSize: 256, sequences: 2, threads: 1 } as const;

async function refusal(run: () => Promise<unknown>): Promise<Error> {
  try {
    const engine = await run();
    await (engine as { dispose?: () => Promise<void> })?.dispose?.();
  } catch (error) {
    return error as Error;
  }
  throw new Error("the load was expected to fail and did not");
}

describe("kvType refused where it cannot work", { timeout: 60_000 }, () => {
  it.each(Object.entries(MODELS))(
    "llama.cpp on %s (heads narrower than a Q8_0 block): RangeError naming kvType, process intact",
    async (_name, model) => {
      const error = await refusal(() => LlamaCppEngine.load({ ...BASE, engine: "llama.cpp", model, kvType: "q8_0" }));
      expect(error, String(error)).toBeInstanceOf(RangeError);
      expect(error.message).toMatch(/kvType "q8_0".*multiple of 32/);
      // The refusal came before llama.cpp saw anything: the same model still loads and answers in F16.
      await using engine = await LlamaCppEngine.load({ ...BASE, engine: "llama.cpp", model });
      expect(engine.info.kvType).toBe("f16");
      await engine.openSequence("a");
      const out = await engine.generate("a", {
        messages: [{ role: "user", content: "Once" }],
        maxTokens: 4,
        sampling: {},
        signal: never,
        onText: () => {},
      });
      expect(out.generatedTokens).toBeGreaterThan(0);
    },
  );

  it("through the worker and the runtime: the same refusal, before a thread starts", async () => {
    const viaWorker = await refusal(() => RemoteEngine.start({ ...BASE, engine: "llama.cpp", model: MODELS.stories, kvType: "q8_0" }));
    expect(viaWorker.name).toBe("RangeError");
    expect(viaWorker.message).toMatch(/kvType "q8_0"/);
    const dir = await mkdtemp(join(tmpdir(), "agentrt-kvtype-"));
    try {
      const viaRuntime = await refusal(() => AgentRuntime.create({ model: MODELS.stories, stateDir: dir, threads: 1, kvType: "q8_0" }));
      expect(viaRuntime.message).toMatch(/kvType "q8_0"/);
      const bad = await refusal(() => AgentRuntime.create({ model: MODELS.stories, stateDir: dir, threads: 1, kvType: "q4" as never }));
      expect(bad).toBeInstanceOf(RangeError);
      expect(bad.message).toMatch(/^kvType must be/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("mlx: q8_0 is refused with a RangeError (its cache is float32); an unknown type by both engines", async () => {
    const mlx = await refusal(() => MlxEngine.load({ ...BASE, engine: "mlx", model: MODELS.aidreams, kvType: "q8_0" }));
    expect(mlx).toBeInstanceOf(RangeError);
    expect(mlx.message).toMatch(/kvType "q8_0" is not supported by the MLX engine/);
    for (const engine of ["llama.cpp", "mlx"] as const) {
      const options = { ...BASE, engine, model: MODELS.aidreams, kvType: "f8" } as unknown as EngineLoadOptions;
      const error = await refusal(() => (engine === "mlx" ? MlxEngine.load(options) : LlamaCppEngine.load(options)));
      expect(error).toBeInstanceOf(RangeError);
      expect(error.message).toMatch(/^kvType must be one of "f16", "q8_0"/);
    }
  });
});

describe("kvType q8_0 on llama.cpp (random-weight model, 32-wide heads)", { timeout: 120_000 }, () => {
  let model: string;
  let dir: string;
  const conversation: ChatMessage[] = [
    { role: "system", content: "You are a storyteller." },
    { role: "user", content: "Tell me about the sea and the old lighthouse." },
  ];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "agentrt-kvtype-"));
    // hidden 128 over 4 heads: 32-wide heads, one Q8_0 block each.
    model = await ensureSyntheticModel("tiny", "f16", dir, { hiddenSize: 128 });
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function turn(engine: LlamaCppEngine, key: string, messages: ChatMessage[]): Promise<GenerateOutput> {
    return engine.generate(key, { messages, maxTokens: 16, sampling: {}, signal: never, onText: () => {} });
  }

  it("halves KV bytes in memory and on disk, has its own fingerprint, and a state file brings back the same next reply", async () => {
    await using f16 = await LlamaCppEngine.load({ ...BASE, engine: "llama.cpp", model });
    await using q8 = await LlamaCppEngine.load({ ...BASE, engine: "llama.cpp", model, kvType: "q8_0" });
    expect(q8.info.kvType).toBe("q8_0");
    expect(q8.info.kvBytesPerToken / f16.info.kvBytesPerToken, "Q8_0 stores 32 values in 34 bytes, F16 in 64").toBeCloseTo(34 / 64, 5);
    expect(q8.info.fingerprint, "a q8_0 state file must never load into an f16 cache").not.toBe(f16.info.fingerprint);

    const sizes: Record<string, number> = {};
    for (const [name, engine] of [
      ["f16", f16],
      ["q8", q8],
    ] as const) {
      await engine.openSequence("a");
      const first = await turn(engine, "a", conversation);
      expect(first.generatedTokens).toBeGreaterThan(0);
      const saved = await engine.saveState("a", join(dir, `${name}.bin`));
      sizes[name] = saved.bytes / saved.tokens;
    }
    expect(sizes.q8! / sizes.f16!, `state bytes per token: ${JSON.stringify(sizes)}`).toBeLessThan(0.6);

    // Rehydrated into another sequence, the q8_0 cache gives the next reply the resident one gives.
    await q8.openSequence("b");
    const first = await turn(q8, "b", conversation);
    const next: ChatMessage[] = [...conversation, { role: "assistant", content: first.text }, { role: "user", content: "And then?" }];
    const resident = await turn(q8, "b", next);
    await q8.closeSequence("b");
    await q8.openSequence("b");
    const loaded = await q8.loadState("b", join(dir, "q8.bin"));
    expect(loaded.tokens).toBeGreaterThan(0);
    const rehydrated = await turn(q8, "b", next);
    expect(rehydrated.reusedTokens, "the loaded cache was used").toBeGreaterThan(0);
    expect(rehydrated.text).toBe(resident.text);
  });
});
