/**
 * The README's "Serve it over HTTP, with an OpenAI client" block, run as written against `agentrt serve`
 * on the default model (only the port differs: the test takes a free one).
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const exec = promisify(execFile);
const ROOT = resolve(import.meta.dirname, "../..");
const README_URL = "http://127.0.0.1:8080";

async function readmeBlocks(heading: string): Promise<{ sh: string; js: string }> {
  const readme = await readFile(join(ROOT, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf(heading));
  return { sh: /```sh\n([\s\S]*?)```/.exec(section)![1]!, js: /```js\n([\s\S]*?)```/.exec(section)![1]! };
}

describe("README: serve it over HTTP, with an OpenAI client", () => {
  let dir: string;
  let server: ChildProcess;
  let url: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "agentrt-readme-"));
    const env = { ...process.env };
    delete env.AGENTRT_MODEL;
    server = spawn(
      process.execPath,
      ["--import", "tsx", "bin/agentrt.ts", "serve", "--port", "0", "--state-dir", join(dir, "state"), "--threads", "1"],
      {
        cwd: ROOT,
        env,
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let output = "";
    url = await new Promise<string>((resolveUrl, reject) => {
      server.stdout!.on("data", (chunk: Buffer) => {
        output += chunk.toString();
        const match = /agentrt serving \d+ agent\(s\) at (http:\/\/\S+)/.exec(output);
        if (match) resolveUrl(match[1]!);
      });
      server.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()));
      server.once("exit", (code) => reject(new Error(`agentrt serve exited with ${code}:\n${output}`)));
    });
    expect(output).toMatch(/model: stories260K/);
  });

  afterAll(async () => {
    if (server && server.exitCode === null) {
      const exited = new Promise((r) => server.once("exit", r));
      server.kill("SIGTERM");
      await exited;
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("creates the agent with the curl line and answers the OpenAI client with text", async () => {
    const { sh, js } = await readmeBlocks("### Serve it over HTTP");
    // Everything after the line that starts the server, as written, on the test's port.
    const commands = sh.split("\n").slice(1).join("\n").replaceAll(README_URL, url);
    const created = await exec("bash", ["-c", commands], { cwd: ROOT });
    expect(JSON.parse(created.stdout)).toMatchObject({ id: "stories/1" });

    // In the repository, where the openai package resolves (a dev dependency).
    const client = join(ROOT, ".state", `readme-client-${process.pid}.mjs`);
    await mkdir(join(ROOT, ".state"), { recursive: true });
    await writeFile(client, js.replaceAll(README_URL, url));
    try {
      const { stdout } = await exec(process.execPath, [client], { cwd: ROOT });
      const words = stdout.trim().split(/\s+/);
      expect(words.length, stdout).toBeGreaterThan(10);
      expect(stdout, "a story continuation, in English").toMatch(/\b(she|Lily|they|the|and)\b/i);
    } finally {
      await rm(client, { force: true });
    }
  });
});
