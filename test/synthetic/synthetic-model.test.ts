import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChatMLChatWrapper, getLlama, LlamaLogLevel, readGgufFileInfo, resolveChatWrapper, type Llama, type LlamaModel } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GgmlType, GgufValueType, GgufWriter, alignUp } from "../../bench/synthetic/gguf-writer.js";
import {
  buildSyntheticModel,
  ensureSyntheticModel,
  generateSyntheticModel,
  presetParams,
  sidecarPath,
  type SyntheticModelParams,
  type WeightType,
} from "../../bench/synthetic/synthetic-model.js";
import { SPECIAL_TOKENS, buildBpeVocab } from "../../bench/synthetic/tokenizer.js";

const BYTES_PER_BLOCK: Record<number, [elements: number, bytes: number]> = {
  [GgmlType.F32]: [1, 4],
  [GgmlType.F16]: [1, 2],
  [GgmlType.Q8_0]: [32, 34],
};

function tinyParams(type: WeightType, architecture: "llama" | "qwen2" = "llama"): SyntheticModelParams {
  return presetParams("tiny", type, {
    layers: 2,
    hiddenSize: 64,
    heads: 4,
    kvHeads: 2,
    ffnSize: 128,
    vocabSize: 1000,
    architecture,
    preTokenizer: architecture === "qwen2" ? "qwen2" : "smollm",
  });
}

let dir: string;
let llama: Llama;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "agentrt-synthetic-"));
  llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
});

afterAll(async () => {
  await llama?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("GgufWriter", () => {
  it("writes typed metadata (scalars and arrays) that node-llama-cpp reads back", async () => {
    const w = new GgufWriter();
    w.addString("general.architecture", "llama");
    w.addScalar("test.u8", GgufValueType.UINT8, 200);
    w.addScalar("test.i8", GgufValueType.INT8, -100);
    w.addScalar("test.u16", GgufValueType.UINT16, 60000);
    w.addScalar("test.i16", GgufValueType.INT16, -30000);
    w.addUint32("test.u32", 4_000_000_000);
    w.addInt32("test.i32", -2_000_000_000);
    w.addUint64("test.u64", 2n ** 40n);
    w.addScalar("test.i64", GgufValueType.INT64, -(2n ** 40n));
    w.addFloat32("test.f32", 0.5);
    w.addScalar("test.f64", GgufValueType.FLOAT64, Math.PI);
    w.addBool("test.bool", true);
    w.addString("test.str", "héllo ✓");
    w.addArray("test.strs", GgufValueType.STRING, ["a", "", "ĠHello"]);
    w.addArray("test.ints", GgufValueType.INT32, [1, -2, 3]);
    w.addArray("test.floats", GgufValueType.FLOAT32, [0.25, -1.5]);
    w.addTensor({ name: "a", dims: [3], type: GgmlType.F32, fill: (c) => c.fill(0) });
    w.addTensor({ name: "b", dims: [64, 2], type: GgmlType.Q8_0, fill: (c) => c.fill(0) });
    const path = join(dir, "kv.gguf");
    const size = await w.write(path);
    expect((await stat(path)).size).toBe(size);
    // 12 bytes of "a" padded to 32, then 2 rows x 2 blocks x 34 bytes = 136, padded to 160.
    expect(w.tensorDataBytes).toBe(32 + 160);

    const info = await readGgufFileInfo(path, { sourceType: "filesystem", logWarnings: false });
    const m = info.metadata as unknown as Record<string, Record<string, unknown>>;
    expect(info.version).toBe(3);
    expect(m.general?.alignment).toBe(32);
    expect(m.test).toMatchObject({
      u8: 200,
      i8: -100,
      u16: 60000,
      i16: -30000,
      u32: 4_000_000_000,
      i32: -2_000_000_000,
      f32: 0.5,
      bool: true,
      str: "héllo ✓",
      strs: ["a", "", "ĠHello"],
      ints: [1, -2, 3],
      floats: [0.25, -1.5],
    });
    expect(BigInt(m.test?.u64 as bigint)).toBe(2n ** 40n);
    expect(BigInt(m.test?.i64 as bigint)).toBe(-(2n ** 40n));
    expect(m.test?.f64).toBeCloseTo(Math.PI, 12);
    expect(info.tensorInfo?.map((t) => [t.name, t.dimensions.map(Number), t.ggmlType, Number(t.offset)])).toEqual([
      ["a", [3], GgmlType.F32, 0],
      ["b", [64, 2], GgmlType.Q8_0, 32],
    ]);
  });

  it("rejects a Q8_0 tensor whose rows are not whole blocks", () => {
    const w = new GgufWriter();
    expect(() => w.addTensor({ name: "x", dims: [48, 2], type: GgmlType.Q8_0, fill: () => {} })).toThrow(/block/);
  });
});

describe("byte-level BPE vocabulary", () => {
  it("has the requested size, unique tokens, valid merges and control-typed ChatML tokens", () => {
    const v = buildBpeVocab(1000);
    expect(v.tokens).toHaveLength(1000);
    expect(new Set(v.tokens).size).toBe(1000);
    const known = new Set(v.tokens);
    for (const merge of v.merges) {
      const [l, r, extra] = merge.split(" ");
      expect(extra).toBeUndefined();
      expect(known.has(l as string) && known.has(r as string) && known.has(`${l}${r}`)).toBe(true);
    }
    SPECIAL_TOKENS.forEach((s, i) => {
      expect(v.tokens[i]).toBe(s);
      expect(v.tokenTypes[i]).toBe(3);
    });
    expect(v.tokens).toContain("Hello");
    expect(v.tokens).toContain("Ġworld");
  });
});

const cases: Array<[WeightType, "llama" | "qwen2"]> = [
  ["f16", "llama"],
  ["q8_0", "llama"],
  ["q8_0", "qwen2"],
];

describe.each(cases)("synthetic %s %s model", (type, architecture) => {
  let path: string;
  let params: SyntheticModelParams;
  let model: LlamaModel;

  beforeAll(async () => {
    params = tinyParams(type, architecture);
    path = join(dir, `tiny-${architecture}-${type}.gguf`);
    const result = await generateSyntheticModel(path, params);
    expect(result.skipped).toBe(false);
    model = await llama.loadModel({ modelPath: path });
  });

  afterAll(async () => {
    await model?.dispose();
  });

  it("has a file size equal to the aligned header plus every tensor's aligned size", async () => {
    const { size } = await stat(path);
    const info = await readGgufFileInfo(path, { sourceType: "filesystem", logWarnings: false });
    const tensors = info.tensorInfo ?? [];
    const first = tensors[0];
    if (first === undefined) throw new Error("no tensors");
    // Where tensor data starts, as node-llama-cpp's parser sees it, and as the writer computes it.
    const headerBytes = Number(first.fileOffset) - Number(first.offset);
    expect(headerBytes % 32).toBe(0);
    expect(buildSyntheticModel(params).writer.buildHeader().length).toBe(headerBytes);
    let expectedOffset = 0;
    let sum = 0;
    for (const t of tensors) {
      const [perBlock, blockBytes] = BYTES_PER_BLOCK[t.ggmlType] ?? [0, 0];
      const elements = t.dimensions.reduce<number>((a, d) => a * Number(d), 1);
      const bytes = (elements / perBlock) * blockBytes;
      expect(Number(t.offset)).toBe(expectedOffset);
      expect(Number(t.fileOffset) % 32).toBe(0);
      expectedOffset += alignUp(bytes, 32);
      sum += bytes;
    }
    expect(size).toBe(headerBytes + expectedOffset);
    // Padding is at most 31 bytes per tensor plus the header's.
    expect(size - sum - headerBytes).toBeLessThan(32 * tensors.length);
    expect(buildSyntheticModel(params).tensorBytes).toBe(sum);
    const expectedTensors = 1 + params.layers * (architecture === "qwen2" ? 12 : 9) + 1;
    expect(tensors).toHaveLength(expectedTensors);
    const embd = tensors.find((t) => t.name === "token_embd.weight");
    expect(embd?.dimensions.map(Number)).toEqual([64, 1000]);
    expect(embd?.ggmlType).toBe(type === "f16" ? GgmlType.F16 : GgmlType.Q8_0);
    expect(tensors.find((t) => t.name === "blk.1.attn_k.weight")?.dimensions.map(Number)).toEqual([64, 32]);
    expect(tensors.find((t) => t.name === "blk.0.ffn_down.weight")?.dimensions.map(Number)).toEqual([128, 64]);
    expect(tensors.find((t) => t.name === "output_norm.weight")?.ggmlType).toBe(GgmlType.F32);
  });

  it("carries the expected metadata", () => {
    const m = model.fileInfo.metadata as unknown as Record<string, Record<string, unknown>>;
    expect(m.general?.architecture).toBe(architecture);
    expect(m.general?.file_type).toBe(type === "f16" ? 1 : 7);
    expect(m[architecture]).toMatchObject({
      block_count: 2,
      embedding_length: 64,
      feed_forward_length: 128,
      attention: { head_count: 4, head_count_kv: 2 },
    });
    const tok = m.tokenizer as { ggml: Record<string, unknown>; chat_template: string };
    expect(tok.ggml.model).toBe("gpt2");
    expect(tok.ggml.pre).toBe(params.preTokenizer);
    expect(tok.chat_template).toContain("<|im_start|>");
    expect(model.trainContextSize).toBe(params.contextLength);
  });

  it("tokenizes and detokenizes text exactly", () => {
    const hello = model.tokenize("Hello world");
    expect(hello.map((t) => model.detokenize([t]))).toEqual(["Hello", " world"]);
    for (const text of ["Hello world", "The agent keeps its memory, 2024!\n  Ünïcödé 日本 🙂 ok"]) {
      expect(model.detokenize(model.tokenize(text))).toBe(text);
    }
    const special = model.tokenize("<|im_start|>user\nhi<|im_end|>", true);
    expect(special[0]).toBe(1);
    expect(special.at(-1)).toBe(2);
    expect(model.tokens.eos).toBe(2);
  });

  it("resolves the ChatML chat wrapper", () => {
    expect(resolveChatWrapper(model)).toBeInstanceOf(ChatMLChatWrapper);
  });

  it("generates tokens with finite probabilities", async () => {
    const context = await model.createContext({ contextSize: 512, threads: 2 });
    try {
      const sequence = context.getSequence();
      const generated: number[] = [];
      for await (const out of sequence.evaluateWithMetadata(model.tokenize("Hello world"), { probabilities: true })) {
        const probs = [...out.probabilities.values()];
        expect(probs.length).toBeGreaterThan(0);
        expect(probs.every((p) => Number.isFinite(p))).toBe(true);
        generated.push(out.token);
        if (generated.length >= 5) break;
      }
      expect(generated).toHaveLength(5);
      expect(sequence.nextTokenIndex).toBe(2 + 4);
    } finally {
      await context.dispose();
    }
  });
});

describe("ensureSyntheticModel", () => {
  it("generates once and reuses the file while the parameters match", async () => {
    const overrides = { layers: 1, vocabSize: 600 };
    const [path, again] = await Promise.all([
      ensureSyntheticModel("tiny", "q8_0", dir, overrides),
      ensureSyntheticModel("tiny", "q8_0", dir, overrides),
    ]);
    expect(again).toBe(path);
    const first = await stat(path);
    const side = JSON.parse(await readFile(sidecarPath(path), "utf8")) as { params: SyntheticModelParams; bytes: number };
    expect(side.params.layers).toBe(1);
    expect(side.bytes).toBe(first.size);
    expect(await ensureSyntheticModel("tiny", "q8_0", dir, overrides)).toBe(path);
    expect((await stat(path)).mtimeMs).toBe(first.mtimeMs);
    const other = await ensureSyntheticModel("tiny", "q8_0", dir, { ...overrides, layers: 2 });
    expect(other).not.toBe(path);
  });
});
