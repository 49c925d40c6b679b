/**
 * The llama.cpp engine's own decode loop (it drives `sequence.evaluate` instead of node-llama-cpp's LlamaChat)
 * must answer exactly as LlamaChat does with the same chat wrapper: same reply text, streamed text adding up to
 * it, and the follow-up turn reusing the cache as before. Checked on both shared real models (completion format)
 * and a random-weight ChatML model (a chat template with text stop triggers).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, LlamaChat, LlamaLogLevel, resolveChatWrapper, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureSyntheticModel } from "../../bench/synthetic/synthetic-model.js";
import { completionChatWrapper, toChatHistory } from "../../src/engines/chat-history.js";
import type { ChatMessage } from "../../src/engines/engine.js";
import { LlamaCppEngine } from "../../src/engines/llama-cpp/llama-cpp-engine.js";
import { MODELS } from "../helpers/model.js";

const never = new AbortController().signal;
const TURNS = ["One day,", "She saw a big dog.", "Then"];

let dir: string;
let llama: Llama;
const models: Record<string, string> = { ...MODELS };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "agentrt-decode-loop-"));
  models.chatml = await ensureSyntheticModel("tiny", "f16", dir);
  llama = await getLlama({ gpu: "auto", build: "never", logLevel: LlamaLogLevel.error });
}, 60_000);
afterAll(async () => {
  await llama?.dispose();
  await rm(dir, { recursive: true, force: true });
});

describe.each(["stories", "aidreams", "chatml"])("decode loop vs LlamaChat (%s)", { timeout: 120_000 }, (name) => {
  it("same replies turn after turn, streamed text adds up to each reply, follow-ups reuse the cache", async () => {
    const path = models[name]!;
    await using engine = await LlamaCppEngine.load({ engine: "llama.cpp", model: path, contextSize: 512, sequences: 1, threads: 1 });
    const model = await llama.loadModel({ modelPath: path });
    const context = await model.createContext({ contextSize: 512, threads: 1 });
    const hasTemplate = typeof (model.fileInfo.metadata as { tokenizer?: { chat_template?: unknown } }).tokenizer?.chat_template === "string";
    const wrapper = (hasTemplate ? resolveChatWrapper(model) : null) ?? (await completionChatWrapper());
    const chat = new LlamaChat({ contextSequence: context.getSequence(), chatWrapper: wrapper });
    try {
      await engine.openSequence("a");
      const messages: ChatMessage[] = [{ role: "system", content: "Once upon a time, there was a little girl named Lily." }];
      let previousPrompt = 0;
      for (const user of TURNS) {
        messages.push({ role: "user", content: user });
        let streamed = "";
        const ours = await engine.generate("a", { messages, maxTokens: 24, sampling: {}, signal: never, onText: (t) => (streamed += t) });
        const theirs = await chat.generateResponse(toChatHistory(messages, false), { maxTokens: 24, temperature: 0 });
        expect(ours.text, `turn "${user}": the reply differs from LlamaChat's`).toBe(theirs.response);
        expect(streamed, "the streamed pieces do not add up to the reply").toBe(ours.text);
        expect(ours.generatedTokens).toBeGreaterThan(0);
        expect(ours.reusedTokens + ours.evaluatedTokens).toBe(ours.promptTokens);
        expect(ours.reusedTokens, "a follow-up reuses the previous prompt").toBeGreaterThanOrEqual(previousPrompt);
        previousPrompt = ours.promptTokens;
        messages.push({ role: "assistant", content: ours.text });
      }
    } finally {
      await chat.dispose();
      await context.dispose();
      await model.dispose();
    }
  });
});
