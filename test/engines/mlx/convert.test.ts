/**
 * The GGUF → mlx-community converter and the folder loader: the float folder (HF names, q/k un-permuted,
 * half-split RoPE, tokenizer.json + Jinja template) must reproduce the GGUF's greedy output exactly; quantized
 * copies load through mx.quantizedMatmul and stay within a stated logit tolerance.
 *
 * Group size: the model's linear inputs are 64 (hidden) and 172 (FFN). 64 divides 64 but not 172 (172 = 4·43, and
 * MLX's group sizes are 32/64/128), so — as mlx-lm's quantize predicate does — layers whose input is 172 wide
 * (mlp.down_proj) stay float32 and every other linear layer plus the embedding is quantized with group 64.
 */
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { convertGgufToMlx, quantizeTensor } from "../../../src/engines/mlx/convert.js";
import type { MlxProbe } from "../../../src/testing/index.js";
import { loadMlx, type Mx, type MxArray } from "../../../src/engines/mlx/mlx.js";
import { readSafetensorsHeader, writeSafetensors } from "../../../src/engines/mlx/safetensors.js";
import { MODEL, openEngine, PROMPTS, reply, requireModel } from "./helpers.js";

/** Max |Δlogit| against the float model over the whole vocabulary (measured: ≤ 0.87 at 4 bits, ≤ 0.08 at 8 bits,
 * logits spanning ~12). */
const TOLERANCE = { 4: 1.5, 8: 0.2 } as const;

describe("GGUF → mlx-community folder", { timeout: 90_000 }, () => {
  let dir: string;
  let gguf: MlxProbe;
  let float: MlxProbe;
  let mx: Mx;

  beforeAll(async () => {
    requireModel();
    mx = await loadMlx(1);
    dir = await mkdtemp(join(tmpdir(), "agentrt-mlx-convert-"));
    await convertGgufToMlx(MODEL, join(dir, "f32"));
    gguf = await openEngine(MODEL);
    float = await openEngine(join(dir, "f32"));
  });

  afterAll(async () => {
    await gguf?.dispose();
    await float?.dispose();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("writes an mlx-community folder with HF tensor names and config", async () => {
    const config = JSON.parse(await readFile(join(dir, "f32", "config.json"), "utf8"));
    expect(config).toMatchObject({
      model_type: "llama",
      hidden_size: 64,
      num_hidden_layers: 4,
      num_attention_heads: 4,
      num_key_value_heads: 4,
      intermediate_size: 172,
      vocab_size: 512,
    });
    const header = await readSafetensorsHeader(join(dir, "f32", "model.safetensors"));
    expect(header.tensors.get("model.layers.0.self_attn.q_proj.weight")).toMatchObject({ dtype: "F32", shape: [64, 64] });
    expect(header.tensors.get("model.layers.3.mlp.down_proj.weight")).toMatchObject({ dtype: "F32", shape: [64, 172] });
    expect(header.tensors.has("model.embed_tokens.weight")).toBe(true);
    const tokenizerConfig = JSON.parse(await readFile(join(dir, "f32", "tokenizer_config.json"), "utf8"));
    // The GGUF has no chat template, so neither has the folder: both get the completion format.
    expect(tokenizerConfig.chat_template).toBeUndefined();
    expect(float.info.chatFormat).toBe("completion");
  });

  it.each(PROMPTS.map((p, i) => [i, p] as const))(
    "prompt %i: float folder renders the same tokens and gives exactly the GGUF's greedy output",
    async (i, messages) => {
      await gguf.openSequence(`g${i}`);
      await float.openSequence(`f${i}`);
      const a = await reply(gguf, `g${i}`, messages, 32);
      const b = await reply(float, `f${i}`, messages, 32);
      expect(b.promptTokens).toBe(a.promptTokens);
      expect((await float.cachedTokens(`f${i}`)).slice(0, b.promptTokens)).toEqual((await gguf.cachedTokens(`g${i}`)).slice(0, a.promptTokens));
      expect(float.lastReplyTokens(`f${i}`)).toEqual(gguf.lastReplyTokens(`g${i}`));
      expect(b.text).toBe(a.text);
      expect(b.stopReason).toBe(a.stopReason);
      await gguf.closeSequence(`g${i}`);
      await float.closeSequence(`f${i}`);
    },
  );

  it("upcasts float16/bfloat16 weights at load (MLX's CPU matmul would abort the process) and refuses integer floats", async () => {
    const f32 = mx.load(join(dir, "f32", "model.safetensors")) as Record<string, MxArray>;
    for (const [name, dtype] of [
      ["f16", mx.float16],
      ["bf16", mx.bfloat16],
    ] as const) {
      const folder = join(dir, name);
      await mkdir(folder);
      for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json"]) await copyFile(join(dir, "f32", file), join(folder, file));
      mx.saveSafetensors(join(folder, "model.safetensors"), Object.fromEntries(Object.entries(f32).map(([k, v]) => [k, v.astype(dtype)])));
      const engine = await openEngine(folder);
      try {
        await float.openSequence("h");
        await reply(float, "h", PROMPTS[0]!, 1);
        const tokens = (await float.cachedTokens("h")) as number[];
        await float.closeSequence("h");
        const reference = float.logitsAfter(tokens);
        const logits = engine.logitsAfter(tokens);
        const maxDiff = Math.max(...reference.map((v, j) => Math.abs(v - logits[j]!)));
        console.log(`${name}: max |Δlogit| ${maxDiff.toFixed(4)}`);
        expect(maxDiff).toBeLessThan(0.5);
      } finally {
        await engine.dispose();
      }
    }
    const bad = join(dir, "int-weights");
    await mkdir(bad);
    for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json"]) await copyFile(join(dir, "f32", file), join(bad, file));
    mx.saveSafetensors(join(bad, "model.safetensors"), { ...f32, "model.norm.weight": f32["model.norm.weight"]!.astype(mx.int32) });
    await expect(openEngine(bad)).rejects.toMatchObject({ code: "ERR_MODEL_INVALID" });
  });

  it("loads Qwen2-style q/k/v biases and tied embeddings", async () => {
    const f32 = mx.load(join(dir, "f32", "model.safetensors")) as Record<string, MxArray>;
    const config = JSON.parse(await readFile(join(dir, "f32", "config.json"), "utf8"));
    const copyFolder = async (name: string, tensors: Record<string, MxArray>, patch: Record<string, unknown>) => {
      const folder = join(dir, name);
      await mkdir(folder);
      for (const file of ["tokenizer.json", "tokenizer_config.json"]) await copyFile(join(dir, "f32", file), join(folder, file));
      await writeFile(join(folder, "config.json"), JSON.stringify({ ...config, ...patch }));
      mx.saveSafetensors(join(folder, "model.safetensors"), tensors);
      return folder;
    };
    await float.openSequence("b");
    await reply(float, "b", PROMPTS[1]!, 1);
    const tokens = (await float.cachedTokens("b")) as number[];
    await float.closeSequence("b");
    const reference = float.logitsAfter(tokens);

    // Zero biases on q/k/v under model_type qwen2 must not change the logits.
    const withBiases = { ...f32 };
    for (let i = 0; i < 4; i++)
      for (const p of ["q", "k", "v"]) withBiases[`model.layers.${i}.self_attn.${p}_proj.bias`] = mx.zeros([64], mx.float32);
    const qwen = await openEngine(await copyFolder("qwen2", withBiases, { model_type: "qwen2", architectures: ["Qwen2ForCausalLM"] }));
    try {
      const logits = qwen.logitsAfter(tokens);
      expect(Math.max(...reference.map((v, j) => Math.abs(v - logits[j]!)))).toBeLessThan(1e-4);
    } finally {
      await qwen.dispose();
    }

    // Tied: the output projection is the embedding table, and an lm_head in the file is ignored (mlx-lm's
    // sanitize). This llama2.c-born model stores the same table twice, so tied logits equal the reference; a zeroed
    // lm_head proves the file's head was not used.
    const head = f32["lm_head.weight"]!;
    expect(mx.max(mx.abs(mx.subtract(head, f32["model.embed_tokens.weight"]!))).item()).toBe(0);
    const tiedEngine = await openEngine(
      await copyFolder("tied", { ...f32, "lm_head.weight": mx.zeros([512, 64], mx.float32) }, { tie_word_embeddings: true }),
    );
    try {
      const logits = tiedEngine.logitsAfter(tokens);
      expect(Math.max(...reference.map((v, j) => Math.abs(v - logits[j]!)))).toBeLessThan(1e-4);
    } finally {
      await tiedEngine.dispose();
    }
    // Untied with a zeroed head: every logit is 0.
    const untied = await openEngine(
      await copyFolder("untied", { ...f32, "lm_head.weight": mx.zeros([512, 64], mx.float32) }, { tie_word_embeddings: false }),
    );
    try {
      expect(untied.logitsAfter(tokens).every((v) => v === 0)).toBe(true);
    } finally {
      await untied.dispose();
    }
  });

  it("the JavaScript quantizer matches MLX's dequantize", async () => {
    const w = mx.array(
      Array.from({ length: 8 }, (_, r) => Array.from({ length: 128 }, (_, c) => Math.sin(r * 131 + c * 0.37) * (1 + r))),
      mx.float32,
    );
    for (const bits of [4, 8]) {
      const tensors = quantizeTensor(mx, "w", w, 64, bits);
      const file = join(dir, `q${bits}.safetensors`);
      await writeSafetensors(file, tensors);
      const loaded = mx.load(file) as Record<string, MxArray>;
      expect(loaded["w.weight"]!.shape).toEqual([8, (128 * bits) / 32]);
      const back = mx.dequantize(loaded["w.weight"]!, loaded["w.scales"]!, loaded["w.biases"]!, 64, bits);
      const maxScale = mx.max(loaded["w.scales"]!).item() as number;
      const error = mx.max(mx.abs(mx.subtract(back, w))).item() as number;
      // Round-to-nearest: every weight within half a quantization step (plus float slack).
      expect(error).toBeLessThanOrEqual(maxScale / 2 + 1e-5);
    }
  });

  it.each([4, 8] as const)("%i-bit copy (group 64) loads and its logits stay within tolerance", async (bits) => {
    const result = await convertGgufToMlx(MODEL, join(dir, `q${bits}`), { quantize: { bits, groupSize: 64 } });
    expect(result.floatLayers).toEqual([0, 1, 2, 3].map((i) => `model.layers.${i}.mlp.down_proj`));
    expect(result.quantizedLayers).toContain("model.embed_tokens");
    expect(result.quantizedLayers).toContain("model.layers.0.self_attn.q_proj");
    const config = JSON.parse(await readFile(join(dir, `q${bits}`, "config.json"), "utf8"));
    expect(config.quantization).toMatchObject({ group_size: 64, bits });
    const header = await readSafetensorsHeader(join(dir, `q${bits}`, "model.safetensors"));
    expect(header.tensors.get("model.layers.0.self_attn.q_proj.weight")).toMatchObject({ dtype: "U32", shape: [64, (64 * bits) / 32] });
    expect(header.tensors.get("model.layers.0.self_attn.q_proj.scales")).toMatchObject({ dtype: "F32", shape: [64, 1] });

    const quantized = await openEngine(join(dir, `q${bits}`));
    try {
      expect(quantized.info.modelBytes).toBeLessThan(float.info.modelBytes / 2);
      for (const [i, messages] of PROMPTS.entries()) {
        await float.openSequence("t");
        await reply(float, "t", messages, 1);
        const tokens = (await float.cachedTokens("t")) as number[];
        await float.closeSequence("t");
        const reference = float.logitsAfter(tokens);
        const logits = quantized.logitsAfter(tokens);
        const maxDiff = Math.max(...reference.map((v, j) => Math.abs(v - logits[j]!)));
        console.log(`${bits}-bit, prompt ${i}: max |Δlogit| ${maxDiff.toFixed(4)}`);
        expect(maxDiff).toBeLessThan(TOLERANCE[bits]);
        expect(logits.indexOf(Math.max(...logits))).toBe(reference.indexOf(Math.max(...reference)));
      }
      await quantized.openSequence("q");
      const out = await reply(quantized, "q", PROMPTS[0]!, 16);
      expect(out.generatedTokens).toBeGreaterThan(0);
    } finally {
      await quantized.dispose();
    }
  });
});
