/**
 * Cross-engine agreement: greedy decoding with the MLX engine and with raw node-llama-cpp on the same GGUF and
 * the same rendered prompt tokens must give the same tokens (or the split must sit on a near-tie in the logits).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getLlama, type ChatWrapper, type Llama, type LlamaModel, type ChatHistoryItem } from "node-llama-cpp";
import { completionChatWrapper } from "../../../src/engines/chat-history.js";
import type { ChatMessage } from "../../../src/engines/engine.js";
import type { MlxProbe } from "../../../src/testing/index.js";
import { MODEL, openEngine, PROMPTS, reply, requireModel, STORIES } from "./helpers.js";

const TOKENS = 32;

// stories260K adds grouped-query attention: MLX must share each KV head among its query heads as llama.cpp does.
describe.each([
  ["aidreams260K", MODEL],
  ["stories260K", STORIES],
])("MLX vs node-llama-cpp, greedy (%s)", { timeout: 120_000 }, (_name, modelPath) => {
  let llama: Llama;
  let model: LlamaModel;
  let engine: MlxProbe;
  let wrapper: ChatWrapper;

  beforeAll(async () => {
    wrapper = await completionChatWrapper();
    const path = requireModel(modelPath);
    llama = await getLlama({ gpu: false, build: "never" });
    model = await llama.loadModel({ modelPath: path });
    engine = await openEngine(path, 512);
  });

  afterAll(async () => {
    await engine?.dispose();
    await model?.dispose();
  });

  /** What the llama.cpp engine does: history → the completion format (no template in this GGUF) → tokens. */
  function render(messages: ChatMessage[]): number[] {
    const history: ChatHistoryItem[] = messages.map((m): ChatHistoryItem =>
      m.role === "user"
        ? { type: "user", text: m.content }
        : m.role === "system"
          ? { type: "system", text: m.content }
          : { type: "model", response: [m.content] },
    );
    if (messages.at(-1)?.role === "user") history.push({ type: "model", response: [] });
    return wrapper.generateContextState({ chatHistory: history }).contextText.tokenize(model.tokenizer).map(Number);
  }

  async function llamaCppGreedy(tokens: number[], count: number): Promise<number[]> {
    const context = await model.createContext({ contextSize: 512, sequences: 1, threads: 2 });
    try {
      const out: number[] = [];
      for await (const token of context.getSequence().evaluate(tokens as never, { temperature: 0 })) {
        out.push(Number(token));
        if (out.length >= count) break;
      }
      return out;
    } finally {
      await context.dispose();
    }
  }

  it.each(PROMPTS.map((p, i) => [i, p] as const))("prompt %i: same rendered tokens and same greedy tokens", async (i, messages) => {
    const tokens = render(messages);
    const key = `p${i}`;
    await engine.openSequence(key);
    const mlx = await reply(engine, key, messages, TOKENS);
    // The MLX engine renders exactly the llama.cpp engine's prompt.
    expect((await engine.cachedTokens(key)).slice(0, tokens.length)).toEqual(tokens);
    expect(mlx.promptTokens).toBe(tokens.length);

    const mlxTokens = engine.lastReplyTokens(key);
    expect(mlxTokens).toHaveLength(mlx.generatedTokens);
    const reference = await llamaCppGreedy(tokens, TOKENS);
    let same = 0;
    while (same < mlxTokens.length && same < reference.length && mlxTokens[same] === reference[same]) same++;
    const compared = Math.min(mlxTokens.length, reference.length);
    console.log(`prompt ${i}: ${same}/${compared} greedy tokens agree (MLX stop: ${mlx.stopReason}, ${mlxTokens.length} tokens)`);
    if (same < compared) {
      // A split is only acceptable on a near-tie: the two candidates' MLX logits must be within 1e-3.
      const logits = engine.logitsAfter([...tokens, ...reference.slice(0, same)]);
      const gap = Math.abs(logits[mlxTokens[same]!]! - logits[reference[same]!]!);
      console.log(`prompt ${i}: split at ${same}; logit gap ${gap}`);
      expect(gap).toBeLessThan(1e-3);
    } else if (mlxTokens.length === TOKENS && reference.length === TOKENS) {
      // Both ran the whole length and agree on every token.
      expect(mlx.stopReason).toBe("maxTokens");
    } else {
      // Every token agrees but a side ended early. llama.cpp's evaluate ends at an end-of-generation token, so
      // both must end at the same place, unless MLX's last tokens completed a stop text (cut from its reply text),
      // which the raw evaluate does not look for.
      expect(mlx.stopReason).toBe("eos");
      const stopText = mlx.text !== model.detokenize(mlxTokens as never, false);
      console.log(
        `prompt ${i}: MLX ended after ${mlxTokens.length} tokens (${stopText ? "stop text" : "end token"}), llama.cpp after ${reference.length}`,
      );
      if (stopText) expect(reference.length).toBeGreaterThanOrEqual(mlxTokens.length);
      else expect(reference.length, "MLX and llama.cpp end the reply at different tokens").toBe(mlxTokens.length);
    }
    await engine.closeSequence(key);
  });
});
