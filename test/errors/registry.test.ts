import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { AgentRuntimeError, ERROR_CODES, deserializeError, serializeError, type ErrorCode } from "../../src/errors.js";
import { HTTP_ERROR_CODES } from "../../src/server/errors.js";

describe("error registry", () => {
  const codes = Object.keys(ERROR_CODES) as ErrorCode[];

  it("has ERR_ codes with distinct default messages, none shared with the HTTP front's own codes", () => {
    const messages = codes.map((code) => ERROR_CODES[code]);
    expect(
      messages.filter((message, index) => messages.indexOf(message) !== index),
      "two codes share a default message",
    ).toEqual([]);
    const httpOnly = Object.keys(HTTP_ERROR_CODES);
    expect(
      httpOnly.filter((code) => code in ERROR_CODES),
      "an HTTP code shadows a runtime code",
    ).toEqual([]);
    for (const code of codes) {
      expect(code).toMatch(/^ERR_[A-Z_]+$/);
      expect(ERROR_CODES[code].length).toBeGreaterThan(0);
    }
  });

  it("documents every code in the README's error table, and nothing else", async () => {
    const readme = await readFile(new URL("../../README.md", import.meta.url), "utf8");
    const documented = [...readme.matchAll(/^\| `(ERR_[A-Z_]+)` \|/gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual([...codes].sort());
  });

  it("survives the worker boundary with its class, code and details", () => {
    const original = new AgentRuntimeError("ERR_STATE_CORRUPT", "bad file", { details: { id: "a" } });
    const rebuilt = deserializeError(structuredClone(serializeError(original)));
    expect(rebuilt).toBeInstanceOf(AgentRuntimeError);
    expect(rebuilt).toMatchObject({ code: "ERR_STATE_CORRUPT", message: "bad file", details: { id: "a" } });
    const plain = deserializeError(serializeError(new RangeError("x must be positive")));
    expect(plain).not.toBeInstanceOf(AgentRuntimeError);
    expect(plain.message).toBe("x must be positive");
  });
});
