/**
 * The engine side of context policies, on both engines and two real models (512-token context):
 *  - countTokens is the promptTokens generate reports for the same messages;
 *  - with contextShift, a turn after the caller dropped the oldest turns removes them from the cache, keeps the
 *    rest (positions shifted) and evaluates only the new message; without it, the kept turns are evaluated again;
 *  - how far a shifted cache drifts from a fresh one: greedy agreement of the next 32 tokens (logged as
 *    "[drift]"; a shift is an approximation, so replies need not be equal, and the test does not require it).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { getLlama, type Llama, type LlamaModel } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findContextShift, MIN_SHIFT_KEEP } from "../../src/engines/context-shift.js";
import type { ChatMessage, Engine, EngineName, GenerateOutput } from "../../src/engines/engine.js";
import { LlamaCppEngine } from "../../src/engines/llama-cpp/llama-cpp-engine.js";
import { loadMlx, type MxArray } from "../../src/engines/mlx/mlx.js";
import { MlxProbe } from "../../src/testing/index.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const MODELS = ["stories260K", "aidreams260K"].map((name) => {
  const path = resolve(root, `../shared/models/${name}.gguf`);
  if (!existsSync(path)) throw new Error(`The context-shift tests need ${path} (../shared/models beside the repo)`);
  return [name, path] as const;
});
const CONTEXT = 512;

describe("findContextShift", () => {
  const P = [1, 2, 3];
  const D = [40, 41, 42, 43, 44];
  const S = Array.from({ length: 12 }, (_, i) => 100 + i);
  const N = [7, 8, 9];

  it("finds D between the common prefix and the kept tokens, ignoring a stale tail after them", () => {
    expect(findContextShift([...P, ...D, ...S], [...P, ...S, ...N], 3)).toEqual({ prefix: 3, removed: 5, kept: 12 });
    expect(findContextShift([...P, ...D, ...S, 55, 56], [...P, ...S, ...N], 3)).toEqual({ prefix: 3, removed: 5, kept: 12 });
  });

  it("keeps the prompt's last token to evaluate, and refuses a shift that keeps under MIN_SHIFT_KEEP tokens", () => {
    expect(findContextShift([...P, ...D, ...S], [...P, ...S], 3)).toEqual({ prefix: 3, removed: 5, kept: 11 });
    const short = S.slice(0, MIN_SHIFT_KEEP - 1);
    expect(findContextShift([...P, ...D, ...short], [...P, ...short, ...N], 3)).toBeUndefined();
    // A plain extension, a prompt unrelated to the cache, and unknown cached ids: nothing to shift.
    expect(findContextShift([...P, ...S], [...P, ...S, ...N], P.length + S.length)).toBeUndefined();
    expect(findContextShift([...P, ...D, ...S], [...P, ...N, ...N, ...N, ...N, ...N], 3)).toBeUndefined();
    expect(findContextShift([...P, ...D, ...S.map(() => undefined)], [...P, ...S, ...N], 3)).toBeUndefined();
  });
});

async function load(engine: EngineName, model: string): Promise<Engine & AsyncDisposable> {
  const options = { model, contextSize: CONTEXT, sequences: 4, threads: 1 };
  return engine === "mlx" ? MlxProbe.load(options) : LlamaCppEngine.load({ ...options, engine });
}

const SYSTEM = "You tell short stories about a cat named Tom.";
const USERS = ["Once upon a time", "Where did Tom go?", "What did he find there?", "And then what happened?", "How did it end?"];

describe.each(MODELS.flatMap(([name, path]) => (["llama.cpp", "mlx"] as const).map((engine) => [engine, name, path] as const)))(
  "context policies, engine side (%s, %s)",
  { timeout: 120_000 },
  (engineName, modelName, modelPath) => {
    let engine: Engine & AsyncDisposable;
    let llama: Llama;
    let vocab: LlamaModel;
    let dir: string;
    const signal = new AbortController().signal;
    const generate = (key: string, messages: ChatMessage[], maxTokens: number, contextShift?: boolean) =>
      engine.generate(key, {
        messages,
        maxTokens,
        sampling: { temperature: 0 },
        signal,
        onText: () => {},
        ...(contextShift === undefined ? {} : { contextShift }),
      });

    beforeAll(async () => {
      engine = await load(engineName, modelPath);
      llama = await getLlama({ gpu: false, build: "never" });
      vocab = await llama.loadModel({ modelPath, vocabOnly: true });
      dir = await mkdtemp(join(tmpdir(), "agentrt-shift-"));
    });
    afterAll(async () => {
      await engine?.[Symbol.asyncDispose]();
      await vocab?.dispose();
      await llama?.dispose();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it("countTokens is the promptTokens generate reports for the same messages", async () => {
      await engine.openSequence("count");
      const conversations: ChatMessage[][] = [
        [{ role: "user", content: "Once upon a time" }],
        [
          { role: "system", content: SYSTEM },
          { role: "user", content: USERS[1]! },
        ],
        [
          { role: "system", content: SYSTEM },
          { role: "user", content: USERS[0]! },
          { role: "assistant", content: "there was a little cat." },
          { role: "user", content: USERS[2]! },
        ],
      ];
      for (const messages of conversations) {
        const counted = await engine.countTokens(messages);
        const out = await generate("count", messages, 4);
        expect(counted, JSON.stringify(messages)).toBe(out.promptTokens);
      }
      await engine.closeSequence("count");
    });

    /** Three turns on `key`; returns the history (system prompt, then user/assistant pairs). */
    async function converse(key: string, turns: number): Promise<ChatMessage[]> {
      let history: ChatMessage[] = [{ role: "system", content: SYSTEM }];
      for (const text of USERS.slice(0, turns)) {
        const messages: ChatMessage[] = [...history, { role: "user", content: text }];
        const out = await generate(key, messages, 16);
        history = [...messages, { role: "assistant", content: out.text }];
      }
      return history;
    }

    function agreement(a: GenerateOutput, b: GenerateOutput): { same: number; of: number } {
      const x = vocab.tokenize(a.text).map(Number);
      const y = vocab.tokenize(b.text).map(Number);
      let same = 0;
      while (same < x.length && same < y.length && x[same] === y[same]) same++;
      return { same, of: Math.max(x.length, y.length) };
    }

    it("with contextShift, a turn after dropping the oldest turn evaluates only the new message; without, the kept turns again", async () => {
      const keys = ["shift", "rewind", "follow", "fresh"];
      for (const key of keys) await engine.openSequence(key);
      const history = await converse("shift", 3);
      // The same cache on the other sequences, through a state file (greedy turns would rebuild it exactly too).
      const file = join(dir, `three-turns${engine.info.stateFileExtension}`);
      await engine.saveState("shift", file);
      for (const key of ["rewind", "follow"]) await engine.loadState(key, file);

      const next: ChatMessage = { role: "user", content: USERS[3]! };
      // The runtime's shift policy drops the oldest turn (user + assistant) after the system prompt.
      const dropped: ChatMessage[] = [history[0]!, ...history.slice(3), next];
      const full: ChatMessage[] = [...history, next];
      const droppedTokens = (await engine.countTokens(full)) - (await engine.countTokens(dropped));
      expect(droppedTokens).toBeGreaterThan(MIN_SHIFT_KEEP);

      const follow = await generate("follow", full, 32, true); // nothing dropped: a plain follow-up
      const shifted = await generate("shift", dropped, 32, true);
      const rewound = await generate("rewind", dropped, 32, false);
      const fresh = await generate("fresh", dropped, 32);
      console.log(
        `[shift] ${engineName} ${modelName}: prompt ${shifted.promptTokens}, dropped ${droppedTokens}; shift: shifted ${shifted.shiftedTokens}, reused ${shifted.reusedTokens}, evaluated ${shifted.evaluatedTokens}; ` +
          `rewind: reused ${rewound.reusedTokens}, evaluated ${rewound.evaluatedTokens}; plain follow-up evaluated ${follow.evaluatedTokens}`,
      );

      expect(follow.shiftedTokens, "a plain follow-up shifted").toBe(0);
      // The shift removed exactly the dropped turn and evaluated what a plain follow-up evaluates: the new message
      // (and the last reply's re-rendered end, as any follow-up does).
      expect(shifted.shiftedTokens).toBe(droppedTokens);
      expect(shifted.evaluatedTokens).toBe(follow.evaluatedTokens);
      expect(shifted.reusedTokens + shifted.evaluatedTokens).toBe(shifted.promptTokens);
      expect(shifted.generatedTokens).toBeGreaterThan(0);
      expect(shifted.cacheTokens).toBe(engine.stats("shift").tokens);
      expect(shifted.cacheTokens).toBeGreaterThanOrEqual(shifted.promptTokens);
      expect(shifted.cacheTokens).toBeLessThanOrEqual(shifted.promptTokens + shifted.generatedTokens);
      if (engine instanceof MlxProbe) {
        // The shifted cache holds the new prompt's tokens in order.
        expect((await engine.cachedTokens("shift")).slice(0, shifted.promptTokens)).toEqual(engine.renderedTokens(dropped));
        // Layer 0's keys depend only on the token and its position (no attention before them): after the shift
        // they must be those of a cache evaluated from scratch, which checks the RoPE re-rotation.
        const mx = await loadMlx(1);
        const layer0 = async (key: string) => {
          const path = join(dir, `${key}.safetensors`);
          await engine.saveState(key, path);
          const arrays = mx.load(path) as Record<string, MxArray>;
          return [arrays["0.0"]!, arrays["0.1"]!].map((a) => a.index("...", mx.Slice(0, shifted.reusedTokens), mx.Slice()));
        };
        const [shiftedKeys, shiftedValues] = await layer0("shift");
        const [freshKeys, freshValues] = await layer0("fresh");
        expect(mx.max(mx.abs(mx.subtract(shiftedKeys!, freshKeys!))).item()).toBeLessThan(1e-4);
        expect(mx.max(mx.abs(mx.subtract(shiftedValues!, freshValues!))).item()).toBeLessThan(1e-4);
      }

      // Without contextShift the cache is rewound to the common prefix and the kept turns are evaluated again.
      expect(rewound.shiftedTokens).toBe(0);
      expect(rewound.reusedTokens + rewound.evaluatedTokens).toBe(rewound.promptTokens);
      expect(rewound.evaluatedTokens - shifted.evaluatedTokens).toBe(shifted.reusedTokens - rewound.reusedTokens);
      expect(shifted.reusedTokens - rewound.reusedTokens).toBeGreaterThanOrEqual(MIN_SHIFT_KEEP);
      // Rewinding is exact: the same reply as a fresh cache.
      expect(rewound.text).toBe(fresh.text);

      // The shifted cache goes on like any other: the next turn reuses the whole previous prompt.
      const after: ChatMessage[] = [...dropped, { role: "assistant", content: shifted.text }, { role: "user", content: USERS[4]! }];
      const later = await generate("shift", after, 8, true);
      // A generated reply can re-tokenize differently by a token (the completion format joins texts):
      // a shift may then drop that stale token instead of re-evaluating what follows it.
      expect(later.shiftedTokens).toBeLessThanOrEqual(2);
      expect(later.reusedTokens).toBeGreaterThanOrEqual(shifted.promptTokens);
      expect(later.cacheTokens).toBe(engine.stats("shift").tokens);

      const { same, of } = agreement(shifted, fresh);
      console.log(
        `[drift] ${engineName} ${modelName}: shifted vs re-evaluated, ${same} of ${of} greedy reply tokens agree (texts ${shifted.text === fresh.text ? "equal" : "differ"})`,
      );
      for (const key of keys) await engine.closeSequence(key);
    });
  },
);
