import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentRuntime, isAgentRuntimeError } from "../../src/index.js";
import { crashableWorker } from "../../src/testing/index.js";
import { FAST, MODEL_PATH } from "../helpers/model.js";

describe("generation worker", () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "agentrt-worker-"));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it("keeps the main event loop turning while the model loads", async () => {
    let last = performance.now();
    let longestGap = 0;
    let ticks = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
      ticks++;
    }, 5);
    const runtime = await AgentRuntime.create({ model: MODEL_PATH, stateDir: join(root, "loop"), ...FAST });
    clearInterval(timer);
    await runtime.close();
    expect(ticks, "the timer never fired during the load").toBeGreaterThan(3);
    expect(longestGap, "the main thread was blocked during the load").toBeLessThan(250);
  });

  it("a crashed worker fails the pending turn with ERR_WORKER_CRASHED and is replaced; agents continue", async () => {
    const worker = crashableWorker({ model: MODEL_PATH, contextSize: FAST.contextSize, threads: FAST.threads, sequences: 3 });
    const runtime = await AgentRuntime.create({
      engineFactory: worker.factory,
      stateDir: join(root, "crash"),
      ...FAST,
      maxAgents: 3,
      maxTokens: 200,
    });
    try {
      await runtime.spawn({ id: "a", systemPrompt: "You dream." });
      const first = await runtime.ask("a", "Once upon a time");
      const restarted = new Promise((resolve) => runtime.subscribe("worker:restarted", resolve));
      const turn = runtime.send("a", "Tell me a very long story");
      for await (const _ of turn) {
        await worker.crash();
        break;
      }
      await expect(turn.result).rejects.toSatisfy((error) => isAgentRuntimeError(error, "ERR_WORKER_CRASHED"));
      await restarted;
      const next = await runtime.ask("a", "Once upon a time", { maxTokens: 8 });
      expect(next.reply.length).toBeGreaterThan(0);
      // Only acknowledged turns are in the history: the crashed one is not.
      expect((await runtime.get("a")).turns).toBe(2);
      expect(first.reply.length).toBeGreaterThan(0);
    } finally {
      await runtime.close();
    }
  });

  it("an hf: URI that cannot be fetched (offline, or no such repo) fails with ERR_MODEL_NOT_FOUND saying why", async () => {
    const attempt = AgentRuntime.create({
      model: "hf:agentrt-tests/no-such-model-GGUF:Q8_0",
      modelCacheDir: join(root, "hf-cache"),
      stateDir: join(root, "hf"),
      ...FAST,
    });
    await expect(attempt).rejects.toSatisfy(
      (error) => isAgentRuntimeError(error, "ERR_MODEL_NOT_FOUND") && /offline, pass a local GGUF path/.test((error as Error).message),
    );
  });

  it("refuses a missing model and a non-GGUF file with coded errors, never crashing the process", async () => {
    await expect(AgentRuntime.create({ model: join(root, "missing.gguf"), stateDir: join(root, "m"), ...FAST })).rejects.toSatisfy((error) =>
      isAgentRuntimeError(error, "ERR_MODEL_NOT_FOUND"),
    );
    const { writeFile } = await import("node:fs/promises");
    await writeFile(join(root, "fake.gguf"), "this is not a model");
    await expect(AgentRuntime.create({ model: join(root, "fake.gguf"), stateDir: join(root, "m"), ...FAST })).rejects.toSatisfy((error) =>
      isAgentRuntimeError(error, "ERR_MODEL_INVALID"),
    );
  });
});
