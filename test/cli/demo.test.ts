import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { completeSentences } from "../../src/cli/stories.js";
import { defaultModel, defaultModelCandidates } from "../../src/cli/defaults.js";
import { ENGINES } from "../helpers/model.js";

const run = promisify(execFile);
const ROOT = resolve(import.meta.dirname, "../..");

describe("completeSentences (what a demo turn keeps)", () => {
  it("cuts after the last full sentence and never inside an open quotation", () => {
    expect(completeSentences("he saw a rock. He wanted to show it to his")).toBe("he saw a rock.");
    expect(completeSentences('She asked, "Can I play?" Her mom')).toBe('She asked, "Can I play?"');
    expect(completeSentences('It was fun. Tom said, "I want to play. Let us go to the')).toBe("It was fun.");
    expect(completeSentences('Tom said, "I want to play. Let us go." He ran to the')).toBe('Tom said, "I want to play. Let us go."');
    expect(completeSentences("no sentence end at all")).toBe("no sentence end at all");
  });
  it("while the text grows, counts a sentence end only once whitespace follows it", () => {
    expect(completeSentences("It was fun.", { final: false })).toBe("");
    expect(completeSentences("It was fun. The", { final: false })).toBe("It was fun.");
  });
});

describe("the default model", () => {
  it("is stories260K.gguf beside the repository", () => {
    const saved = process.env.AGENTRT_MODEL;
    delete process.env.AGENTRT_MODEL;
    try {
      expect(defaultModel()).toBe(resolve(ROOT, "../shared/models/stories260K.gguf"));
    } finally {
      if (saved !== undefined) process.env.AGENTRT_MODEL = saved;
    }
  });
  it("is looked for in ./models and ../shared/models too, and --help needs none", async () => {
    const dir = await mkdtemp(join(tmpdir(), "agentrt-nomodel-"));
    try {
      // Where agentrt is installed from npm, these are where it looks (test/package runs that case).
      expect(defaultModelCandidates(dir)).toContain(join(dir, "models", "stories260K.gguf"));
      const help = await run(process.execPath, ["--import", "tsx", join(ROOT, "bin/agentrt.ts"), "demo", "--help"], { cwd: ROOT });
      expect(help.stdout).toMatch(/usage: agentrt demo/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/** A reply line is readable English: a sentence or more of plain words, ending at a full stop. */
function expectReadable(line: string): void {
  expect(line, "a reply has text").toMatch(/\w{2,}/);
  expect(line, `"${line}" starts with a word or a quote`).toMatch(/^["A-Za-z]/);
  expect(line, `"${line}" ends a sentence`).toMatch(/[.!?]"?$/);
  expect(line, `"${line}" is plain text (no markup, no stray symbols)`).toMatch(/^[A-Za-z0-9 ,.!?'"-]+$/);
  const words = line.split(/\s+/);
  expect(words.length, `"${line}" has at least four words`).toBeGreaterThanOrEqual(4);
  // Fragments like "Sp ar ky" would show up as many one- and two-letter pieces.
  const tiny = words.filter(
    (w) =>
      w.replace(/[^A-Za-z]/g, "").length <= 2 &&
      !/^(a|I|he|we|me|it|is|in|on|to|at|up|so|no|go|my|do|of|an|as|be|by|or|us|if|oh|hi)$/i.test(w.replace(/[^A-Za-z]/g, "")),
  );
  expect(tiny, `"${line}" has no word fragments`).toEqual([]);
}

describe.each(ENGINES)("npm run demo on %s", (engine) => {
  let dir: string;
  let stdout: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "agentrt-demo-"));
    const env = { ...process.env };
    delete env.AGENTRT_MODEL;
    ({ stdout } = await run(
      process.execPath,
      ["--import", "tsx", join(ROOT, "bin/agentrt.ts"), "demo", "--engine", engine, "--threads", "1", "--state-dir", join(dir, "state")],
      { cwd: ROOT, env, maxBuffer: 1 << 22 },
    ));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("runs on stories260K with the completion format", () => {
    expect(stdout).toMatch(new RegExp(`loaded stories260K on ${engine.replace(".", "\\.")} .*chat format completion`));
  });

  it("prints only readable replies, every one of them", () => {
    const replies = stdout
      .split("\n")
      .filter((line) => /^\[[a-z]+\] agent: /.test(line))
      .map((line) => line.replace(/^\[[a-z]+\] agent: /, ""));
    expect(replies).toHaveLength(8);
    for (const reply of replies) expectReadable(reply);
  });

  it("passivates the least recently used agent, rehydrates it, and it goes on as if it had never left memory", () => {
    expect(stdout).toMatch(/⇣ passivated garden: \d+ cached tokens/);
    expect(stdout).toMatch(/⇡ rehydrated garden: \d+ tokens from its KV state file/);
    expect(stdout).toContain("✓ identical");
    expect(stdout).not.toContain("DIFFERENT");
  });

  it("ends with the memory report and the timings of all eight turns", () => {
    expect(stdout).toMatch(/6\. memory\nagent +status/);
    expect(stdout).toMatch(/3 resident, 1 on disk/);
    const timings = stdout.slice(stdout.indexOf("7. timings"), stdout.indexOf("8. close"));
    expect(timings.split("\n").filter((line) => /^(garden|lily|jack|max) +\d+ /.test(line))).toHaveLength(8);
  });
});
