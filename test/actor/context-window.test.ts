import { describe, expect, it } from "vitest";
import { planWindow, restoredWindow, windowAfterReplace, type ContextWindow, type PlanInput } from "../../src/actor/context-window.js";
import type { ChatMessage } from "../../src/index.js";

const user = (content: string): ChatMessage => ({ role: "user", content });
const assistant = (content: string): ChatMessage => ({ role: "assistant", content });

/** A "model" whose token is a character of the contents, with the note in front. */
function input(history: ChatMessage[], overrides: Partial<PlanInput> = {}): PlanInput {
  return {
    history,
    window: { start: 0, memory: undefined },
    render: (window: ContextWindow) => [{ role: "system", content: `sys${window.memory ?? ""}` }, ...history.slice(window.start), user("new")],
    fold: undefined,
    countTokens: async (messages) => messages.reduce((n, m) => n + m.content.length, 0),
    contextSize: 100,
    maxTokens: 10,
    slideTo: 0.5,
    ...overrides,
  };
}

describe("planWindow", () => {
  it("keeps the window while the prompt and a full reply fit", async () => {
    const history = [user("a".repeat(40)), assistant("b".repeat(40))];
    expect(await planWindow(input(history))).toEqual({ window: { start: 0, memory: undefined }, slidTurns: 0, foldEvaluatedTokens: 0 });
  });

  it("drops whole turns only, starting the window at a user message even after consecutive user messages", async () => {
    // sys(3) + 30 + 30 + 30 + 5 + new(3): over the fit limit (89); slideTo target 50.
    const history = [user("x".repeat(30)), user("y".repeat(30)), assistant("z".repeat(30)), user("w".repeat(5))];
    const plan = await planWindow(input(history));
    expect(plan.window.start).toBe(3);
    expect(plan.slidTurns).toBe(2);
  });

  it("refuses a message that cannot fit with no turn kept, with ERR_CONTEXT_FULL", async () => {
    const history = [user("a"), assistant("b")];
    const big = input(history, { render: () => [{ role: "system", content: "s" }, user("n".repeat(100))] });
    await expect(planWindow(big)).rejects.toMatchObject({ code: "ERR_CONTEXT_FULL", details: { promptTokens: 101, contextSize: 100 } });
  });

  it("refits when the fold writes a note longer than the turns it replaced, folding again", async () => {
    const history = Array.from({ length: 10 }, (_, i) => [user(`u${i}`.padEnd(8, ".")), assistant(`a${i}`.padEnd(8, "."))]).flat();
    const folds: number[] = [];
    const plan = await planWindow(
      input(history, {
        fold: async (window, leaving) => {
          folds.push(leaving.length);
          void window;
          // Longer than the room a slide to half the context leaves: the window must shrink again.
          return { memory: "m".repeat(60), evaluatedTokens: 7 };
        },
      }),
    );
    expect(folds).toEqual([16, 2]);
    expect(plan.foldEvaluatedTokens).toBe(7 * folds.length);
    const tokens = await input(history).countTokens(input(history).render(plan.window));
    expect(tokens + 10).toBeLessThan(100);
    expect(plan.slidTurns).toBe(plan.window.start / 2);
  });
});

describe("stored windows", () => {
  const history = [user("a"), assistant("b"), user("c"), assistant("d")];
  it.each([
    [2, 2],
    [4, 4],
    [1, 0], // an assistant message: not a turn boundary
    [5, 0], // past the history
    [-2, 0],
    [1.5, 0],
    ["2", 0],
  ])("start %j becomes %j", (start, expected) => {
    expect(restoredWindow(history, start, undefined).start).toBe(expected);
  });

  it("keeps a window whose earlier messages a stateless client resent unchanged, and resets it otherwise", () => {
    const window = { start: 2, memory: "note" };
    expect(windowAfterReplace(history, [...history.slice(0, 3), assistant("edited")], window)).toEqual(window);
    expect(windowAfterReplace(history, [user("other"), ...history.slice(1)], window)).toEqual({ start: 0, memory: undefined });
    expect(windowAfterReplace(history, [user("a")], window)).toEqual({ start: 0, memory: undefined });
  });
});
