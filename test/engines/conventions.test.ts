/**
 * The three engines (llama.cpp, MLX, and the fake engine that stands in for them in unit tests) answer the same
 * misuse with the same code: all sequences taken, no sequence for a key, calls after dispose, bad options.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Engine, EngineLoadOptions, EngineName } from "../../src/engines/engine.js";
import { LlamaCppEngine } from "../../src/engines/llama-cpp/llama-cpp-engine.js";
import { MlxEngine } from "../../src/engines/mlx/index.js";
import { AgentRuntimeError } from "../../src/errors.js";
import { FakeEngine } from "../../src/testing/index.js";
import { MODEL_PATH } from "../helpers/model.js";

type Kind = EngineName | "fake";

/** What the three share (the fake engine is a HostedEngine, whose stats take several keys). */
type Common = Omit<Engine, "stats"> & AsyncDisposable;

async function load(kind: Kind, patch: Partial<EngineLoadOptions> = {}): Promise<Common> {
  const options = { model: MODEL_PATH, contextSize: 128, sequences: 2, threads: 1, ...patch };
  if (kind === "fake") return new FakeEngine({ sequences: options.sequences, contextSize: options.contextSize });
  if (kind === "mlx") return MlxEngine.load({ ...options, engine: "mlx" });
  return LlamaCppEngine.load({ ...options, engine: "llama.cpp" });
}

async function codeOf(run: () => unknown): Promise<string | undefined> {
  try {
    await run();
  } catch (error) {
    expect(error, String(error)).toBeInstanceOf(AgentRuntimeError);
    return (error as AgentRuntimeError).code;
  }
  return undefined;
}

describe.each<Kind>(["llama.cpp", "mlx", "fake"])("engine conventions (%s)", { timeout: 60_000 }, (kind) => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "agentrt-conventions-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("all sequences taken: ERR_NO_FREE_SEQUENCE; no sequence for a key: ERR_SEQUENCE_NOT_OPEN", async () => {
    await using engine = await load(kind);
    await engine.openSequence("a");
    await engine.openSequence("b");
    await engine.openSequence("a"); // already open: nothing happens
    expect(await codeOf(() => engine.openSequence("c"))).toBe("ERR_NO_FREE_SEQUENCE");
    const signal = new AbortController().signal;
    const messages = [{ role: "user" as const, content: "Hi" }];
    expect(await codeOf(() => engine.prefill("c", messages, signal))).toBe("ERR_SEQUENCE_NOT_OPEN");
    expect(await codeOf(() => engine.generate("c", { messages, maxTokens: 2, sampling: {}, signal, onText: () => {} }))).toBe(
      "ERR_SEQUENCE_NOT_OPEN",
    );
    expect(await codeOf(() => engine.saveState("c", join(dir, `${kind}-c`)))).toBe("ERR_SEQUENCE_NOT_OPEN");
    // Closing frees the sequence for another key; closing twice is harmless.
    await engine.closeSequence("b");
    await engine.closeSequence("b");
    await engine.openSequence("c");
  });

  it("after dispose every call is ERR_ENGINE_CLOSED; dispose and closeSequence stay harmless", async () => {
    const engine = await load(kind);
    await engine.openSequence("a");
    await engine.dispose();
    await engine.dispose();
    await engine.closeSequence("a");
    expect(await codeOf(() => engine.openSequence("b"))).toBe("ERR_ENGINE_CLOSED");
    expect(await codeOf(() => engine.prefill("a", [{ role: "system", content: "x" }], new AbortController().signal))).toBe("ERR_ENGINE_CLOSED");
  });

  it("bad options are RangeError naming the option", async () => {
    await expect(load(kind, { contextSize: 1 })).rejects.toThrow(RangeError);
    await expect(load(kind, { contextSize: 1 })).rejects.toThrow(/contextSize/);
    await expect(load(kind, { sequences: 0 })).rejects.toThrow(/sequences/);
  });
});
