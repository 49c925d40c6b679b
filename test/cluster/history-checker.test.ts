import { describe, expect, it } from "vitest";
import { checkHistory, type Attempt } from "./history-checker.js";

const a = (turn: string, writer: string, epoch: number, acked = true): Attempt => ({ turn, writer, epoch, acked });
const attempts = [a("a1", "A", 5), a("a2", "A", 5), a("a3", "A", 5, false), a("b1", "B", 9), a("b2", "B", 9)];

describe("history checker (it must catch each violation it is there for)", () => {
  it("accepts a clean handover, with or without the stale owner's unacknowledged turn", () => {
    expect(checkHistory(["a1", "a2", "b1", "b2"], attempts)).toEqual([]);
    expect(checkHistory(["a1", "a2", "a3", "b1", "b2"], attempts)).toEqual([]);
  });
  it("catches a lost acknowledged turn, a duplicate, a phantom, reordering and overlapping epochs", () => {
    expect(checkHistory(["a1", "b1", "b2"], attempts)).toEqual([expect.stringMatching(/a2 .* is lost/)]);
    expect(checkHistory(["a1", "a2", "a2", "b1", "b2"], attempts)).toEqual([expect.stringMatching(/a2 appears twice/)]);
    expect(checkHistory(["a1", "a2", "zz", "b1", "b2"], attempts)).toEqual([expect.stringMatching(/zz was never attempted/)]);
    expect(checkHistory(["a2", "a1", "b1", "b2"], attempts)).toEqual([expect.stringMatching(/out of order/)]);
    expect(checkHistory(["a1", "b1", "a2", "b2"], attempts)).toEqual([expect.stringMatching(/a2 of epoch 5 was committed after a turn of epoch 9/)]);
  });
});
