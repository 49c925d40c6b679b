import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServe } from "../../src/cli/serve.js";
import { json, readSse } from "./helpers.js";

/**
 * `agentrt serve` end to end: the CLI entry on the default model (../shared/models/stories260K.gguf),
 * a real generation worker, real HTTP on an ephemeral port.
 */
describe("agentrt serve on the default model", () => {
  let stateDir: string;
  let url: string;
  let stop: AbortController;
  let closed: Promise<void>;
  const args = () => ["--port", "0", "--state-dir", stateDir, "--threads", "1", "--context-size", "512", "--max-tokens", "24"];

  beforeAll(async () => {
    stateDir = await mkdtemp(join(tmpdir(), "agentrt-serve-"));
    stop = new AbortController();
    ({ url, closed } = await startServe(args(), { signal: stop.signal }));
  });
  afterAll(async () => {
    stop?.abort();
    await closed;
    await rm(stateDir, { recursive: true, force: true });
  });

  it("listens on 127.0.0.1 and reports the model", async () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const health = await json(`${url}/healthz`);
    expect(health.body).toMatchObject({ status: "ok", model: "stories260K", engine: "llama.cpp" });
  });

  it("answers a message as JSON from a real worker", async () => {
    const created = await json(`${url}/agents`, { json: { id: "support/42", role: "support", systemPrompt: "You are a dreamer." } });
    expect(created.status).toBe(201);
    const reply = await json(`${url}/agents/support/42/messages`, { json: { text: "Once upon a time" } });
    expect(reply.status, JSON.stringify(reply.body)).toBe(200);
    expect(reply.body.reply.trim().length).toBeGreaterThan(0);
    expect(reply.body.timings).toMatchObject({ generatedTokens: expect.any(Number), reusedTokens: expect.any(Number) });
    expect(reply.body.timings.generatedTokens).toBeGreaterThan(0);
  });

  it("streams a reply as SSE while /events streams the same tokens", async () => {
    const events = await fetch(`${url}/events?agent=support/42`, { headers: { accept: "text/event-stream" } });
    const watching = readSse(events, (frames) => frames.some((frame) => frame.event === "agent:turn-end"));
    const response = await fetch(`${url}/agents/support%2F42/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({ text: "Tell me a dream." }),
    });
    expect(response.status).toBe(200);
    const { raw, frames } = await readSse(response);
    expect(raw).toMatch(/^event: token\ndata: \{"text":".*"\}\n\n/);
    const done = JSON.parse(frames.at(-1)!.data);
    expect(frames.at(-1)!.event).toBe("done");
    const text = frames
      .filter((frame) => frame.event === "token")
      .map((frame) => JSON.parse(frame.data).text)
      .join("");
    expect(text).toBe(done.reply);
    // The earlier turn stayed in the agent's KV cache.
    expect(done.timings.reusedTokens).toBeGreaterThan(0);

    const seen = (await watching).frames;
    expect(seen[0]).toMatchObject({ event: "agent:turn-start" });
    expect(
      seen
        .filter((frame) => frame.event === "agent:token")
        .map((frame) => JSON.parse(frame.data).text)
        .join(""),
    ).toBe(done.reply);
    expect(JSON.parse(seen.at(-1)!.data).timings).toEqual(done.timings);
  });

  it("keeps agents across a restart: stopping passivates them, the next message rehydrates from the saved cache", async () => {
    stop.abort();
    await closed;
    stop = new AbortController();
    ({ url, closed } = await startServe(args(), { signal: stop.signal }));
    const listed = await json(`${url}/agents`);
    expect(listed.body.agents).toMatchObject([{ id: "support/42", status: "passivated", turns: 2 }]);
    const events = await fetch(`${url}/events?type=agent:rehydrated`, { headers: { accept: "text/event-stream" } });
    const rehydrated = readSse(events, (frames) => frames.length > 0);
    const reply = await json(`${url}/agents/support/42/messages`, { json: { text: "Weighted landscape" } });
    expect(reply.status).toBe(200);
    const [event] = (await rehydrated).frames;
    expect(JSON.parse(event!.data)).toMatchObject({ id: "support/42", source: "state" });
    expect(reply.body.timings.reusedTokens).toBeGreaterThan(0);
  });
});
