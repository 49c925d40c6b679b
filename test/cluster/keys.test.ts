import { describe, expect, it } from "vitest";
import { agentToken, dataKeyEpoch, keys, tokenToAgent, validateNodeName } from "../../src/cluster/keys.js";

describe("KV keys of agent ids", () => {
  it("every id becomes one subject token of allowed characters, and back", () => {
    for (const id of ["tech", "support/42", "a.b/c.d", "x_y-z/0.9/q", "a".repeat(64)]) {
      const token = agentToken(id);
      expect(token).toMatch(/^[-/_=a-zA-Z0-9]+$/);
      expect(token).not.toContain(".");
      expect(tokenToAgent(token)).toBe(id);
    }
    expect(agentToken("a.b/c")).toBe("a=b/c");
  });

  it("invalid ids are ERR_INVALID_AGENT_ID; tokens no valid id produces decode to nothing", () => {
    for (const id of ["", "UPPER", "a..b/", "../x", "a b", "a/*", "a/>", 42]) {
      expect(() => agentToken(id as string)).toThrow(expect.objectContaining({ code: "ERR_INVALID_AGENT_ID" }));
    }
    for (const token of ["UPPER", "-x", "a//b", "", "a.b", "*", ">"]) expect(tokenToAgent(token)).toBeUndefined();
  });

  it("data keys carry their generation and epoch; anything else is not a data key", () => {
    expect(dataKeyEpoch(keys.record("a=b/c", 3, 17, "0a1b", 2))).toEqual({ kind: "r", gen: 3, epoch: 17 });
    expect(dataKeyEpoch(keys.entry("a", 2, 5, 9))).toEqual({ kind: "j", gen: 2, epoch: 9 });
    for (const key of ["h.a", "j.a.1.2", "r.a.1.2.3", "j.a.x.1.2", "j.a.1.2.3.4"]) expect(dataKeyEpoch(key)).toBeUndefined();
  });

  it("node names are checked, naming the option", () => {
    expect(validateNodeName("node-1")).toBe("node-1");
    for (const name of ["", "Node", "a.b", "-a", "a".repeat(65)]) expect(() => validateNodeName(name)).toThrow(/node must be/);
  });
});
