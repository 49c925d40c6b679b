/**
 * What a user who embeds agentrt gets: `npm pack` (prepack builds dist/), `npm i <tarball>` into a fresh
 * project with no allowScripts of its own, then the README's service example, `npx agentrt --help` and
 * `npx agentrt demo` run there against the installed package.
 */
import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const exec = promisify(execFile);
const ROOT = resolve(import.meta.dirname, "../..");
const MODEL = resolve(ROOT, "../shared/models/stories260K.gguf");

/** The environment of a user's shell: none of the npm_* variables `npm test` sets (they name this repo). */
function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^npm_/i.test(key) && key !== "INIT_CWD" && key !== "AGENTRT_MODEL") env[key] = value;
  }
  return env;
}

/** Runs a command; resolves with its exit code and output instead of throwing on failure. */
async function run(file: string, args: string[], cwd: string, timeout = 180_000) {
  try {
    const { stdout, stderr } = await exec(file, args, { cwd, env: userEnv(), timeout, maxBuffer: 1 << 24 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: number | string; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : 1, stdout: e.stdout ?? "", stderr: `${e.stderr ?? ""}${String(error)}` };
  }
}

/** The first ```js block after `heading` in the README. */
async function readmeBlock(heading: string): Promise<string> {
  const readme = await readFile(join(ROOT, "README.md"), "utf8");
  const at = readme.indexOf(heading);
  expect(at, `README has "${heading}"`).toBeGreaterThanOrEqual(0);
  const block = /```js\n([\s\S]*?)```/.exec(readme.slice(at));
  expect(block, `a js block under "${heading}"`).not.toBeNull();
  return block![1]!;
}

describe("the packed tarball, installed where users embed it", () => {
  let dir: string;
  let project: string;
  let files: string[];
  let install: Awaited<ReturnType<typeof run>>;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "agentrt-package-"));
    const pack = await run("npm", ["pack", "--json", "--pack-destination", dir], ROOT, 300_000);
    expect(pack.code, `npm pack failed:\n${pack.stderr}`).toBe(0);
    const [packed] = JSON.parse(pack.stdout.slice(pack.stdout.indexOf("["))) as { filename: string; files: { path: string }[] }[];
    files = packed!.files.map((f) => f.path);

    project = join(dir, "service");
    await mkdir(join(project, "models"), { recursive: true });
    await writeFile(join(project, "package.json"), JSON.stringify({ name: "service", version: "1.0.0", private: true, type: "module" }));
    // No allowScripts here: a consumer's npm runs dependencies' install scripts. The registry may be
    // used for metadata; no install script may need the network.
    install = await run("npm", ["i", join(dir, packed!.filename), "--prefer-offline", "--no-audit", "--no-fund"], project, 300_000);
    await copyFile(MODEL, join(project, "models", "stories260K.gguf"));
  }, 600_000);

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("ships only what a user needs: built JavaScript, types, the worker bootstrap, the dashboard, docs", () => {
    const stray = files.filter((f) => !/^(dist\/(src|bin)\/|docs\/|package\.json$|README\.md$|LICENSE)/.test(f));
    expect(stray, "files outside dist/, docs/ and the package basics").toEqual([]);
    expect(files.filter((f) => f.endsWith(".map") || /\.ts$/.test(f.replace(/\.d\.ts$/, ".js")))).toEqual([]);
    for (const needed of [
      "dist/src/index.js",
      "dist/src/index.d.ts",
      "dist/bin/agentrt.js",
      "dist/src/worker/generation-worker.js",
      "dist/src/worker/ts-bootstrap.mjs",
      "dist/src/server/index.js",
      "dist/src/testing/index.js",
    ]) {
      expect(files, `the tarball has ${needed}`).toContain(needed);
    }
    expect(files.some((f) => f.startsWith("dist/src/server/dashboard/"))).toBe(true);
  });

  it("installs with plain npm i, and leaves the optional MLX binding out", async () => {
    expect(install.code, `npm i failed:\n${install.stderr}`).toBe(0);
    await expect(stat(join(project, "node_modules/agentrt/dist/src/index.js"))).resolves.toBeTruthy();
    await expect(stat(join(project, "node_modules/@frost-beta/mlx"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("runs the README's service example as written", async () => {
    await writeFile(join(project, "service.mjs"), await readmeBlock("### Embed it in a service"));
    const { code, stdout, stderr } = await run(process.execPath, ["service.mjs"], project);
    expect(code, stderr).toBe(0);
    // The streamed reply is English text, then the timings line.
    const [reply, rest] = stdout.split(/\n(?=\d+ tokens evaluated)/);
    expect(rest, stdout).toMatch(/^\d+ tokens evaluated, \d+ reused/);
    expect(reply!.split(/\s+/).filter((word) => /^[A-Za-z]+[,.!?']?s?$/.test(word)).length, reply).toBeGreaterThan(10);
    expect(stdout).toMatch(/stories\/1 → disk \(\d+ bytes\)/);
    await expect(stat(join(project, ".state"))).resolves.toBeTruthy();
  });

  it("npx agentrt --help lists the commands", async () => {
    const { code, stdout, stderr } = await run("npx", ["agentrt", "--help"], project);
    expect(code, stderr).toBe(0);
    expect(stdout).toMatch(/usage: agentrt <command>/);
    expect(stdout).toMatch(/demo/);
    expect(stdout).toMatch(/serve/);
  });

  it("npx agentrt demo finds models/stories260K.gguf, or says how to pass a model", async () => {
    const elsewhere = join(project, "elsewhere");
    await mkdir(elsewhere, { recursive: true });
    const missing = await run("npx", ["agentrt", "demo"], elsewhere);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/ERR_MODEL_NOT_FOUND/);
    expect(missing.stderr).toMatch(/pass --model/);

    const found = await run("npx", ["agentrt", "demo", "--threads", "1"], project);
    expect(found.code, found.stderr).toBe(0);
    expect(found.stdout).toContain(join(project, "models", "stories260K.gguf"));
    expect(found.stdout).toContain("✓ identical");
  });

  it("engine mlx without @frost-beta/mlx fails with ERR_ENGINE_UNAVAILABLE and the command that fixes it", async () => {
    const script = `import { AgentRuntime } from "agentrt";
try { await AgentRuntime.create({ model: "models/stories260K.gguf", engine: "mlx", stateDir: ".state-mlx", threads: 1 }); console.log("loaded"); }
catch (error) { console.log(JSON.stringify({ code: error.code, message: error.message })); }`;
    await writeFile(join(project, "mlx.mjs"), script);
    const { stdout, stderr } = await run(process.execPath, ["mlx.mjs"], project);
    const result = JSON.parse(stdout.trim().split("\n").at(-1) ?? "{}", (_k, v) => v) as { code?: string; message?: string };
    expect(result.code, stderr).toBe("ERR_ENGINE_UNAVAILABLE");
    expect(result.message).toContain("npm i @frost-beta/mlx");
  });
});
