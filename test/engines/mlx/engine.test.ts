/**
 * The MLX engine's own behaviour on the real 260K GGUF: prefix reuse and rewinding, persistence in mlx-lm's
 * prompt-cache layout, refusal of corrupt state files, context limits, aborts, seeded sampling, worker threads.
 */
import { copyFile, mkdtemp, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentRuntimeError, isAgentRuntimeError } from "../../../src/errors.js";
import type { ChatMessage } from "../../../src/engines/engine.js";
import { MlxEngine } from "../../../src/engines/mlx/index.js";
import type { MlxProbe } from "../../../src/testing/index.js";
import { loadMlx, unavailable, type Mx, type MxArray } from "../../../src/engines/mlx/mlx.js";
import { readSafetensorsHeader } from "../../../src/engines/mlx/safetensors.js";
import { KV_STEP } from "../../../src/engines/mlx/kv-cache.js";
import { MODEL, openEngine, reply, requireModel, treeFlatten } from "./helpers.js";

const LAYERS = 4;
const KV_HEADS = 4;
const HEAD_DIM = 16;

const turn1: ChatMessage[] = [
  { role: "system", content: "You are a storyteller." },
  { role: "user", content: "Once upon a time" },
];

async function expectCode(promise: Promise<unknown>, code: string): Promise<AgentRuntimeError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `expected ${code}`).toBeInstanceOf(AgentRuntimeError);
  expect((error as AgentRuntimeError).code).toBe(code);
  return error as AgentRuntimeError;
}

describe("MLX engine", { timeout: 60_000 }, () => {
  let engine: MlxProbe;
  let mx: Mx;
  let dir: string;
  let seq = 0;
  /** A fresh sequence key; the engine holds at most 4 at once, so callers close what they open. */
  const open = async () => {
    const key = `s${seq++}`;
    await engine.openSequence(key);
    return key;
  };

  beforeAll(async () => {
    requireModel();
    engine = await openEngine(MODEL, 512, 4);
    mx = await loadMlx(1);
    dir = await mkdtemp(join(tmpdir(), "agentrt-mlx-"));
  });

  afterAll(async () => {
    await engine?.dispose();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("loads the GGUF with sensible model info", () => {
    expect(engine.info.engine).toBe("mlx");
    expect(engine.info.name).toBe("aidreams260K");
    expect(engine.info.chatFormat).toBe("completion");
    expect(engine.info.kvBytesPerToken).toBe(LAYERS * 2 * KV_HEADS * HEAD_DIM * 4);
    expect(engine.info.modelBytes).toBeGreaterThan(1_000_000);
    expect(engine.info.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(engine.concurrent).toBe(false);
  });

  it("a follow-up turn evaluates only the tokens the cache lacks, and answers as a fresh sequence would", async () => {
    const a = await open();
    const first = await reply(engine, a, turn1);
    expect(first.reusedTokens).toBe(0);
    expect(first.evaluatedTokens).toBe(first.promptTokens);
    const turn2: ChatMessage[] = [...turn1, { role: "assistant", content: first.text }, { role: "user", content: "And then?" }];
    const second = await reply(engine, a, turn2);
    // The whole first prompt is reused; only the reply's re-rendering and the new message are evaluated.
    expect(second.reusedTokens).toBeGreaterThanOrEqual(first.promptTokens);
    expect(second.evaluatedTokens).toBe(second.promptTokens - second.reusedTokens);
    expect(second.evaluatedTokens).toBeLessThan(second.promptTokens - first.promptTokens + 2);

    const fresh = await open();
    const reference = await reply(engine, fresh, turn2);
    expect(reference.reusedTokens).toBe(0);
    expect(second.text).toBe(reference.text);
    await engine.closeSequence(a);
    await engine.closeSequence(fresh);
  });

  it("prefill caches the system prompt; the same prompt again evaluates one token", async () => {
    const a = await open();
    const system: ChatMessage[] = [turn1[0]!];
    const pre = await engine.prefill(a, system, new AbortController().signal);
    expect(pre).toMatchObject({ reusedTokens: 0, evaluatedTokens: pre.promptTokens, cacheTokens: pre.promptTokens });
    const again = await engine.prefill(a, system, new AbortController().signal);
    expect(again).toMatchObject({ reusedTokens: pre.promptTokens, evaluatedTokens: 0 });

    const out = await reply(engine, a, turn1);
    expect(out.reusedTokens).toBeGreaterThan(0);
    // Re-asking the identical prompt re-evaluates only its last token (its logits pick the first reply token).
    const repeat = await reply(engine, a, turn1);
    expect(repeat.reusedTokens).toBe(repeat.promptTokens - 1);
    expect(repeat.evaluatedTokens).toBe(1);
    expect(repeat.text).toBe(out.text);
    await engine.closeSequence(a);
  });

  it("rewinds to a common prefix when the conversation changes", async () => {
    const a = await open();
    await reply(engine, a, [...turn1, { role: "assistant", content: "x" }, { role: "user", content: "A long detour about echoes" }]);
    const cachedBefore = engine.stats(a).tokens;
    const branch: ChatMessage[] = [turn1[0]!, { role: "user", content: "Once upon a midnight" }];
    const out = await reply(engine, a, branch);
    expect(out.reusedTokens).toBeGreaterThan(0);
    expect(out.reusedTokens).toBeLessThan(cachedBefore);
    const fresh = await open();
    const reference = await reply(engine, fresh, branch);
    expect(reference.text).toBe(out.text);
    // The rewound cache holds exactly the branch's prompt (and reply) tokens.
    expect(await engine.cachedTokens(a)).toEqual(await engine.cachedTokens(fresh));
    await engine.closeSequence(a);
    await engine.closeSequence(fresh);
  });

  it("stats report the bytes held by the tokens and the arrays reserved (in steps of 256 positions)", async () => {
    const a = await open();
    try {
      expect(engine.stats(a)).toEqual({ tokens: 0, bytes: 0, allocatedBytes: 0 });
      const out = await reply(engine, a, turn1, 8);
      const { tokens, bytes, allocatedBytes } = engine.stats(a);
      expect(tokens).toBe(out.cacheTokens);
      expect(bytes).toBe(tokens * engine.info.kvBytesPerToken);
      expect(allocatedBytes).toBe(Math.ceil(tokens / KV_STEP) * KV_STEP * engine.info.kvBytesPerToken);
    } finally {
      await engine.closeSequence(a);
    }
    // A key without a sequence holds nothing (as in the llama.cpp engine).
    expect(engine.stats(a)).toEqual({ tokens: 0, bytes: 0, allocatedBytes: 0 });
  });

  it("save → load gives exactly the next reply of a never-saved sequence", async () => {
    const a = await open();
    const first = await reply(engine, a, turn1);
    const file = join(dir, "a.safetensors");
    const saved = await engine.saveState(a, file);
    expect(saved.tokens).toBe(engine.stats(a).tokens);
    expect(saved.bytes).toBe((await readFile(file)).length);

    const b = await open();
    expect(await engine.loadState(b, file)).toEqual({ tokens: saved.tokens });
    expect(await engine.cachedTokens(b)).toEqual(await engine.cachedTokens(a));
    const turn2: ChatMessage[] = [...turn1, { role: "assistant", content: first.text }, { role: "user", content: "Go on." }];
    const fromLoaded = await reply(engine, b, turn2);
    const fromOriginal = await reply(engine, a, turn2);
    expect(fromLoaded.text).toBe(fromOriginal.text);
    expect(fromLoaded.reusedTokens).toBe(fromOriginal.reusedTokens);
    await engine.closeSequence(a);
    await engine.closeSequence(b);
  });

  it("saves and loads an empty cache", async () => {
    const a = await open();
    const b = await open();
    const file = join(dir, "empty.safetensors");
    expect(await engine.saveState(a, file)).toMatchObject({ tokens: 0 });
    await reply(engine, b, turn1, 4);
    expect(await engine.loadState(b, file)).toEqual({ tokens: 0 });
    expect(engine.stats(b)).toMatchObject({ tokens: 0, bytes: 0 });
    const out = await reply(engine, b, turn1, 4);
    expect(out.reusedTokens).toBe(0);
    await engine.closeSequence(a);
    await engine.closeSequence(b);
  });

  it("writes mlx-lm's prompt-cache layout (keys, metadata, shapes)", async () => {
    const a = await open();
    await reply(engine, a, turn1, 6);
    const file = join(dir, "layout.safetensors");
    await engine.saveState(a, file);
    const header = await readSafetensorsHeader(file);
    const tokens = engine.stats(a).tokens;
    // The cache holds the prompt and the reply's tokens fed back (all but the last, unless an end token came).
    const cached = [...engine.renderedTokens(turn1), ...engine.lastReplyTokens(a)].slice(0, tokens);
    expect(cached).toHaveLength(tokens);
    // save_prompt_cache: tree_flatten([c.state for c in cache]) with KVCache.state = (keys, values).
    const stateTree = Array.from({ length: LAYERS }, () => ["k", "v"]);
    expect([...header.tensors.keys()].sort()).toEqual(
      treeFlatten(stateTree)
        .map(([k]) => k)
        .sort(),
    );
    for (const entry of header.tensors.values()) {
      expect(entry.dtype).toBe("F32");
      expect(entry.shape).toEqual([1, KV_HEADS, tokens, HEAD_DIM]);
    }
    // tree_flatten([cache_info, metadata, cache_classes]); KVCache.meta_state is "".
    const expected = Object.fromEntries(
      treeFlatten([
        Array(LAYERS).fill(""),
        { model: "aidreams260K", agentrt_format: "1", agentrt_tokens: JSON.stringify(cached) },
        Array(LAYERS).fill("KVCache"),
      ]),
    );
    expect(header.metadata).toEqual(expected);
    expect(Object.keys(expected)).toContain("0.0");
    expect(Object.keys(expected)).toContain("2.3");
    expect(Object.keys(expected)).toContain("1.agentrt_tokens");
    await engine.closeSequence(a);
  });

  it("loads a prompt cache written in mlx-lm's layout without token ids, trusting the next prompt to extend it", async () => {
    const a = await open();
    const first = await reply(engine, a, turn1);
    const ours = join(dir, "ours.safetensors");
    await engine.saveState(a, ours);
    const arrays = mx.load(ours) as Record<string, MxArray>;
    // What mlx_lm.models.cache.save_prompt_cache writes for a list of KVCache with metadata {"model": …}.
    const state = Array.from({ length: LAYERS }, (_, i) => [arrays[`${i}.0`]!, arrays[`${i}.1`]!]);
    const tensors = Object.fromEntries(treeFlatten(state)) as Record<string, MxArray>;
    const metadata = Object.fromEntries(treeFlatten([Array(LAYERS).fill(""), { model: "aidreams260K" }, Array(LAYERS).fill("KVCache")])) as Record<
      string,
      string
    >;
    const mlxLm = join(dir, "mlx-lm.safetensors");
    mx.saveSafetensors(mlxLm, tensors, metadata);
    // And one with no user metadata at all (tree_flatten writes no "1.*" keys).
    const bare = join(dir, "mlx-lm-bare.safetensors");
    mx.saveSafetensors(bare, tensors, Object.fromEntries(Object.entries(metadata).filter(([k]) => !k.startsWith("1."))));

    const turn2: ChatMessage[] = [...turn1, { role: "assistant", content: first.text }, { role: "user", content: "Go on." }];
    const expected = await reply(engine, a, turn2);
    // A prompt shorter than the opaque cache cannot continue it: the cache is dropped, not trusted.
    const c = await open();
    await engine.loadState(c, mlxLm);
    const short = await reply(engine, c, [{ role: "user", content: "Hi" }], 4);
    expect(short.reusedTokens).toBe(0);
    await engine.closeSequence(c);
    for (const file of [mlxLm, bare]) {
      const b = await open();
      const { tokens } = await engine.loadState(b, file);
      expect(tokens).toBe(first.cacheTokens);
      expect((await engine.cachedTokens(b)).every((t) => t === undefined)).toBe(true);
      const out = await reply(engine, b, turn2);
      expect(out.reusedTokens).toBe(tokens);
      expect(out.text).toBe(expected.text);
      await engine.closeSequence(b);
    }
    await engine.closeSequence(a);
  });

  it("refuses corrupt, truncated and foreign state files with ERR_STATE_CORRUPT, and keeps working", async () => {
    const a = await open();
    await reply(engine, a, turn1, 6);
    const good = join(dir, "good.safetensors");
    await engine.saveState(a, good);
    const size = (await readFile(good)).length;
    const cases: Record<string, string> = {};
    const variant = async (name: string, make: (file: string) => Promise<void>) => {
      const file = join(dir, `${name}.safetensors`);
      await copyFile(good, file);
      await make(file);
      cases[name] = file;
    };
    await variant("truncated", (f) => truncate(f, size - 100));
    await variant("header-cut", (f) => truncate(f, 20));
    await variant("empty", (f) => truncate(f, 0));
    await variant("garbage", (f) => writeFile(f, Buffer.from("definitely not a safetensors file, just words")));
    await variant("huge-header-length", async (f) => {
      const bytes = await readFile(f);
      bytes.writeBigUInt64LE(1n << 40n, 0);
      await writeFile(f, bytes);
    });
    await variant("appended", async (f) => writeFile(f, Buffer.concat([await readFile(f), Buffer.alloc(64)])));
    const arrays = mx.load(good) as Record<string, MxArray>;
    const meta = (await readSafetensorsHeader(good)).metadata;
    await variant("too-few-layers", async (f) => {
      const t = { ...arrays };
      const m = { ...meta };
      delete t["3.0"];
      delete t["3.1"];
      delete m["0.3"];
      delete m["2.3"];
      mx.saveSafetensors(f, t, m);
    });
    await variant("wrong-heads", async (f) => {
      const t = { ...arrays };
      for (let i = 0; i < LAYERS; i++) for (const p of [0, 1]) t[`${i}.${p}`] = t[`${i}.${p}`]!.index(mx.Slice(), mx.Slice(0, 2));
      mx.saveSafetensors(f, t, meta);
    });
    await variant("int-dtype", async (f) => {
      const t = { ...arrays };
      t["0.0"] = t["0.0"]!.astype(mx.int32);
      mx.saveSafetensors(f, t, meta);
    });
    await variant("rotating-class", async (f) => mx.saveSafetensors(f, arrays, { ...meta, "2.0": "RotatingKVCache" }));
    await variant("bad-tokens", async (f) => mx.saveSafetensors(f, arrays, { ...meta, "1.agentrt_tokens": "[1,2,3]" }));
    await variant("token-out-of-vocab", async (f) => {
      const ids = JSON.parse(meta["1.agentrt_tokens"]!) as number[];
      ids[0] = 99999;
      mx.saveSafetensors(f, arrays, { ...meta, "1.agentrt_tokens": JSON.stringify(ids) });
    });

    const b = await open();
    const before = await engine.cachedTokens(b);
    for (const [name, file] of Object.entries(cases)) {
      const error = await expectCode(engine.loadState(b, file), "ERR_STATE_CORRUPT");
      expect(error.message, name).toContain(file);
    }
    await expectCode(engine.loadState(b, join(dir, "missing.safetensors")), "ERR_STATE_CORRUPT");
    // A refused file leaves the sequence as it was, and the engine keeps answering.
    expect(await engine.cachedTokens(b)).toEqual(before);
    const out = await reply(engine, b, turn1, 4);
    expect(out.generatedTokens).toBeGreaterThan(0);
    await engine.closeSequence(a);
    await engine.closeSequence(b);
  });

  it("refuses a prompt that cannot fit before evaluating, and stops with contextFull at the end", async () => {
    const small = await openEngine(MODEL, 48, 1);
    try {
      await small.openSequence("c");
      const long: ChatMessage[] = [{ role: "user", content: "the gentle weights unfold ".repeat(20) }];
      await expectCode(
        small.generate("c", { messages: long, maxTokens: 4, sampling: {}, signal: new AbortController().signal, onText: () => {} }),
        "ERR_CONTEXT_FULL",
      );
      await expectCode(small.prefill("c", long, new AbortController().signal), "ERR_CONTEXT_FULL");
      expect(small.stats("c").tokens).toBe(0);
      // Greedy on this prompt runs without an end token for more than 48 tokens (see the cross-engine test).
      const out = await reply(small, "c", [{ role: "user", content: "Once upon a time" }], 200);
      expect(out.stopReason).toBe("contextFull");
      expect(out.cacheTokens).toBe(48);
      expect(out.generatedTokens).toBe(48 - out.promptTokens + 1);
    } finally {
      await small.dispose();
    }
  });

  it("aborts between tokens and returns what was generated", async () => {
    const a = await open();
    const full = await reply(engine, a, turn1, 24);
    await engine.closeSequence(a);
    const b = await open();
    const controller = new AbortController();
    let pieces = 0;
    const out = await reply(engine, b, turn1, 24, { temperature: 0 }, controller.signal, () => {
      if (++pieces === 3) controller.abort();
    });
    expect(out.stopReason).toBe("aborted");
    expect(out.generatedTokens).toBeGreaterThanOrEqual(3);
    expect(out.generatedTokens).toBeLessThan(full.generatedTokens);
    expect(full.text.startsWith(out.text)).toBe(true);
    // Aborted before anything: nothing generated, nothing thrown.
    const pre = new AbortController();
    pre.abort();
    const none = await reply(engine, b, [{ role: "user", content: "Something new" }], 8, { temperature: 0 }, pre.signal);
    expect(none).toMatchObject({ stopReason: "aborted", generatedTokens: 0, text: "" });
    await expectCode(engine.prefill(b, [{ role: "user", content: "Another" }], pre.signal), "ERR_ABORTED");
    await engine.closeSequence(b);
  });

  it("streams exactly the returned text and respects maxTokens", async () => {
    const a = await open();
    let streamed = "";
    const out = await reply(engine, a, turn1, 10, { temperature: 0 }, undefined, (t) => (streamed += t));
    expect(streamed).toBe(out.text);
    expect(out.generatedTokens).toBeLessThanOrEqual(10);
    if (out.stopReason === "maxTokens") expect(out.generatedTokens).toBe(10);
    expect(out.ttftMs).toBeGreaterThan(0);
    await engine.closeSequence(a);
  });

  it("seeded sampling repeats exactly; different seeds differ", async () => {
    const sample = async (seed: number) => {
      const key = await open();
      const out = await reply(engine, key, [{ role: "user", content: "Once upon a time" }], 24, { temperature: 1.2, topK: 40, topP: 0.95, seed });
      await engine.closeSequence(key);
      return out.text;
    };
    const first = await sample(7);
    expect(await sample(7)).toBe(first);
    // Without top-k (whole vocabulary) and without top-p.
    const wide = async () => {
      const key = await open();
      const out = await reply(engine, key, [{ role: "user", content: "Once upon a time" }], 16, { temperature: 1, topK: 0, topP: 1, seed: 11 });
      await engine.closeSequence(key);
      return out.text;
    };
    expect(await wide()).toBe(await wide());
    const others = await Promise.all([1, 2, 3].map((s) => sample(s)));
    expect(others.some((t) => t !== first)).toBe(true);
  });

  it("keeps memory flat over a long generation (dead wrappers are collected each step)", async () => {
    const key = await open();
    await reply(engine, key, turn1, 16);
    const before = process.memoryUsage().rss;
    let generated = 0;
    for (let seed = 0; generated < 300; seed++) {
      const out = await reply(engine, key, [{ role: "user", content: `Round ${seed}: once upon a time` }], 400, { temperature: 0.9, seed });
      generated += out.generatedTokens;
    }
    const grown = process.memoryUsage().rss - before;
    console.log(`${generated} tokens: RSS grew ${(grown / 1e6).toFixed(1)} MB`);
    // Without per-step collection each token copied the whole cache (~1 MB here) and RSS grew ~0.4 MB/token.
    expect(grown).toBeLessThan(64e6);
    await engine.closeSequence(key);
  });

  it("limits open sequences (ERR_NO_FREE_SEQUENCE) and names a missing one (ERR_SEQUENCE_NOT_OPEN)", async () => {
    const keys = [await open(), await open(), await open(), await open()];
    await expectCode(engine.openSequence("one-too-many"), "ERR_NO_FREE_SEQUENCE");
    for (const k of keys) await engine.closeSequence(k);
    const signal = new AbortController().signal;
    await expectCode(
      engine.generate("never-opened", { messages: turn1, maxTokens: 4, sampling: {}, signal, onText: () => {} }),
      "ERR_SEQUENCE_NOT_OPEN",
    );
    await expectCode(engine.prefill("never-opened", turn1, signal), "ERR_SEQUENCE_NOT_OPEN");
    await expectCode(engine.saveState("never-opened", join(dir, "never.safetensors")), "ERR_SEQUENCE_NOT_OPEN");
  });

  it("a failed state write is ERR_STATE_WRITE_FAILED", async () => {
    const a = await open();
    await reply(engine, a, turn1, 4);
    await expectCode(engine.saveState(a, join(dir, "no-such-folder", "a.safetensors")), "ERR_STATE_WRITE_FAILED");
    await engine.closeSequence(a);
  });

  it("works inside a worker_threads worker", async () => {
    const messages: ChatMessage[] = [{ role: "user", content: "Once upon a time" }];
    const a = await open();
    const here = await reply(engine, a, messages, 12);
    await engine.closeSequence(a);
    const worker = new Worker(new URL("./worker.mjs", import.meta.url), {
      workerData: { entry: new URL("../../../src/engines/mlx/index.ts", import.meta.url).href, model: MODEL, messages, maxTokens: 12 },
    });
    const result = await new Promise<{ ok: boolean; text?: string; message?: string }>((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
    });
    await worker.terminate();
    expect(result.message).toBeUndefined();
    expect(result).toMatchObject({ ok: true, text: here.text });
  });

  it("maps load failures to stable error codes", async () => {
    const dlopen = unavailable(Object.assign(new Error("libopenblas.so.0: cannot open shared object file"), { code: "ERR_DLOPEN_FAILED" }));
    expect(dlopen.code).toBe("ERR_ENGINE_UNAVAILABLE");
    expect(dlopen.message).toContain("libopenblas0-pthread");
    expect(dlopen.message).toContain("liblapack3");
    await expectCode(
      MlxEngine.load({ engine: "mlx", model: join(dir, "nope.gguf"), contextSize: 64, sequences: 1, threads: 1 }),
      "ERR_MODEL_NOT_FOUND",
    );
    const notGguf = join(dir, "text.gguf");
    await writeFile(notGguf, "hello");
    await expectCode(MlxEngine.load({ engine: "mlx", model: notGguf, contextSize: 64, sequences: 1, threads: 1 }), "ERR_MODEL_INVALID");
    const emptyFolder = await mkdtemp(join(dir, "folder-"));
    await expectCode(MlxEngine.load({ engine: "mlx", model: emptyFolder, contextSize: 64, sequences: 1, threads: 1 }), "ERR_MODEL_INVALID");
    expect(isAgentRuntimeError(dlopen, "ERR_ENGINE_UNAVAILABLE")).toBe(true);
  });

  it("bad options are RangeError/TypeError naming the option", async () => {
    const load = (patch: Record<string, unknown>) =>
      MlxEngine.load({ engine: "mlx", model: MODEL, contextSize: 64, sequences: 1, threads: 1, ...patch } as never);
    await expect(load({ contextSize: 1 })).rejects.toThrow(RangeError);
    await expect(load({ contextSize: 1 })).rejects.toThrow(/contextSize/);
    await expect(load({ contextSize: 10.5 })).rejects.toThrow(/contextSize/);
    await expect(load({ sequences: 0 })).rejects.toThrow(/sequences/);
    await expect(load({ threads: 0 })).rejects.toThrow(/threads/);
    await expect(load({ batchSize: 0 })).rejects.toThrow(/batchSize/);
    await expect(load({ model: "" })).rejects.toThrow(TypeError);
    await expect(load({ engine: "llama.cpp" })).rejects.toThrow(/engine/);
  });
});
