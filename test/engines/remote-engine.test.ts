/**
 * countTokens and contextShift cross the worker boundary: RemoteEngine → protocol → generation worker → engine.
 */
import { describe, expect, it } from "vitest";
import type { ChatMessage, EngineName } from "../../src/engines/engine.js";
import { RemoteEngine } from "../../src/worker/remote-engine.js";
import { ENGINES, MODEL_PATH } from "../helpers/model.js";

describe.each(ENGINES)("engine methods through the generation worker (%s)", { timeout: 120_000 }, (engine: EngineName) => {
  it("countTokens answers as generate counts, and contextShift reaches the engine", async () => {
    const remote = await RemoteEngine.start({ engine, model: MODEL_PATH, contextSize: 512, sequences: 1, threads: 1 });
    try {
      await remote.openSequence("a");
      const signal = new AbortController().signal;
      const generate = (messages: ChatMessage[], contextShift: boolean) =>
        remote.generate("a", { messages, maxTokens: 12, sampling: { temperature: 0 }, signal, onText: () => {}, contextShift });
      const system: ChatMessage = { role: "system", content: "You tell short stories about a cat named Tom." };
      let history: ChatMessage[] = [system];
      for (const text of ["Once upon a time", "Where did Tom go?", "What did he find there?"]) {
        const messages: ChatMessage[] = [...history, { role: "user", content: text }];
        const counted = await remote.countTokens(messages);
        const out = await generate(messages, true);
        expect(out.promptTokens).toBe(counted);
        expect(out.shiftedTokens).toBe(0);
        history = [...messages, { role: "assistant", content: out.text }];
      }
      const next: ChatMessage = { role: "user", content: "And then what happened?" };
      const dropped = [system, ...history.slice(3), next];
      const expected = (await remote.countTokens([...history, next])) - (await remote.countTokens(dropped));
      const shifted = await generate(dropped, true);
      expect(shifted.shiftedTokens).toBe(expected);
    } finally {
      await remote.dispose();
    }
  });
});
