import { afterEach, describe, expect, it } from "vitest";
import { eventually, responseClosed, json, readSse, serveFake, type Served } from "./helpers.js";

let served: Served | undefined;
/** Lets a turn held in the fake engine go, so a failed test cannot hang the runtime's close. */
let releaseHeld: (() => void) | undefined;
afterEach(async () => {
  releaseHeld?.();
  releaseHeld = undefined;
  await served?.close();
  served = undefined;
});

const spawn = (url: string, id: string, extra: Record<string, unknown> = {}) =>
  json(`${url}/agents`, { json: { id, systemPrompt: `You are ${id}.`, ...extra } });

describe("agent API over HTTP (fake engine)", () => {
  it("creates, lists, inspects and deletes agents addressed by ids with '/'", async () => {
    served = await serveFake();
    const { url } = served;
    const created = await spawn(url, "support/42", { role: "support" });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(created.headers.get("location")).toBe("/agents/support/42");
    expect(created.body).toMatchObject({ id: "support/42", role: "support", status: "resident" });
    await spawn(url, "tech");

    const list = await json(`${url}/agents`);
    expect(list.body.agents.map((a: { id: string }) => a.id).sort()).toEqual(["support/42", "tech"]);
    expect(list.body.agents[0].memory).toMatchObject({ status: "resident" });

    // The wildcard path and the URL-encoded form name the same agent.
    for (const path of ["/agents/support/42", "/agents/support%2F42"]) {
      const one = await json(`${url}${path}`);
      expect(one.status, path).toBe(200);
      expect(one.body.id).toBe("support/42");
      expect(one.body.memory.cacheTokens).toBeGreaterThan(0);
    }

    const removed = await fetch(`${url}/agents/support/42`, { method: "DELETE" });
    expect(removed.status).toBe(204);
    const gone = await json(`${url}/agents/support/42`);
    expect(gone.status).toBe(404);
    expect(gone.body.error.code).toBe("ERR_AGENT_NOT_FOUND");
  });

  it("answers a message as JSON with the reply and the turn's timings", async () => {
    served = await serveFake();
    await spawn(served.url, "support/42");
    const first = await json(`${served.url}/agents/support/42/messages`, { json: { text: "hello" } });
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    expect(first.body).toMatchObject({ id: "support/42", turnId: expect.any(Number), reply: expect.stringMatching(/^r[0-9a-f]{8}$/) });
    const second = await json(`${served.url}/agents/support%2F42/messages`, { json: { text: "again", maxTokens: 4 } });
    expect(second.body.reply).toHaveLength(4);
    // The second turn evaluated only its new message: the first turn stayed in the cache.
    expect(second.body.timings.reusedTokens).toBeGreaterThanOrEqual(first.body.timings.promptTokens);
    const info = await json(`${served.url}/agents/support/42`);
    expect(info.body).toMatchObject({ turns: 2, historyLength: 4, lastTurn: { generatedTokens: 4 } });
  });

  it("pages an agent's history with ?before and ?limit, newest last; bad paging is a 400 naming the field", async () => {
    served = await serveFake();
    await spawn(served.url, "support/42");
    for (const text of ["one", "two", "three"]) await json(`${served.url}/agents/support/42/messages`, { json: { text } });
    const newest = await json(`${served.url}/agents/support/42/history?limit=2`);
    expect(newest.status, JSON.stringify(newest.body)).toBe(200);
    expect(newest.body).toMatchObject({ id: "support/42", start: 4, total: 6 });
    expect(newest.body.messages.map((m: { role: string; content: string }) => m.role)).toEqual(["user", "assistant"]);
    expect(newest.body.messages[0].content).toBe("three");
    const older = await json(`${served.url}/agents/support%2F42/history?before=4&limit=4`);
    expect(older.body.messages.filter((m: { role: string }) => m.role === "user").map((m: { content: string }) => m.content)).toEqual(["one", "two"]);
    const bad = await json(`${served.url}/agents/support/42/history?limit=0`);
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toMatch(/limit/);
    expect((await json(`${served.url}/agents/nobody/history`)).status).toBe(404);
  });

  it("streams a message as Server-Sent Events when asked for text/event-stream", async () => {
    served = await serveFake();
    await spawn(served.url, "support/42");
    const response = await fetch(`${served.url}/agents/support/42/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({ text: "hello" }),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
    expect(response.headers.get("cache-control")).toContain("no-cache");
    const { raw, frames } = await readSse(response);
    // Every event is "event: <name>\ndata: <json>\n\n"; tokens first, then exactly one done.
    expect(raw).toMatch(/^event: token\ndata: \{"text":"r"\}\n\n/);
    expect(raw.endsWith("\n\n")).toBe(true);
    const names = frames.map((frame) => frame.event);
    expect(
      names.slice(0, -1).every((name) => name === "token"),
      names.join(","),
    ).toBe(true);
    expect(names.at(-1)).toBe("done");
    const done = JSON.parse(frames.at(-1)!.data);
    const text = frames
      .slice(0, -1)
      .map((frame) => JSON.parse(frame.data).text)
      .join("");
    expect(text).toBe(done.reply);
    expect(done.timings.generatedTokens).toBe(text.length);
  });

  it("answers a refused streamed message with a JSON error and its status, not a stream", async () => {
    served = await serveFake();
    const response = await fetch(`${served.url}/agents/nobody/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({ text: "hello" }),
    });
    expect(response.status).toBe(404);
    expect(await response.json()).toEqual({
      error: { code: "ERR_AGENT_NOT_FOUND", message: 'No agent with id "nobody"', details: { id: "nobody" } },
    });
  });

  it("cancels the generation when the client disconnects mid-stream; the agent is free at once", async () => {
    let release!: () => void;
    let held = 0;
    served = await serveFake({
      engine: {
        beforeGenerate: async () => {
          held++;
          if (held === 1) await new Promise<void>((resolve) => (release = releaseHeld = resolve));
        },
      },
    });
    await spawn(served.url, "slow");
    const errors: string[] = [];
    served.runtime.subscribe("agent:error", (event) => errors.push(event.error.code));
    const controller = new AbortController();
    const closed = responseClosed(served.app, "/messages");
    const response = await fetch(`${served.url}/agents/slow/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({ text: "a long story" }),
      signal: controller.signal,
    });
    expect(response.status).toBe(200);
    await eventually(() => held === 1, "the turn to reach the engine");
    const turnEnds: unknown[] = [];
    served.runtime.subscribe("agent:turn-end", (event) => turnEnds.push(event));
    controller.abort();
    // The engine is still holding the turn; once the server has seen the socket close, let it continue:
    // it finds the signal aborted and stops.
    await closed;
    expect((await served.runtime.get("slow")).busy).toBe(true);
    release();
    await eventually(async () => (await served!.runtime.get("slow")).busy === false, "the aborted turn to end", 2000);
    expect(turnEnds, "an aborted turn is not acknowledged").toEqual([]);
    expect((await served.runtime.get("slow")).historyLength, "the aborted turn left no history").toBe(0);
    const next = await json(`${served.url}/agents/slow/messages`, { json: { text: "next" } });
    expect(next.status).toBe(200);
    expect(next.body.timings.stopReason).toBe("eos");
  });

  it("cancels a JSON (non-streamed) message when the client goes away", async () => {
    let release!: () => void;
    let held = 0;
    served = await serveFake({
      engine: {
        beforeGenerate: async () => {
          held++;
          if (held === 1) await new Promise<void>((resolve) => (release = releaseHeld = resolve));
        },
      },
    });
    await spawn(served.url, "slow");
    const controller = new AbortController();
    const closed = responseClosed(served.app, "/messages");
    const pending = fetch(`${served.url}/agents/slow/messages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ text: "a long story" }),
      signal: controller.signal,
    }).catch((error: Error) => error);
    await eventually(() => held === 1, "the turn to reach the engine");
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    await closed;
    release();
    await eventually(async () => (await served!.runtime.get("slow")).busy === false, "the aborted turn to end", 2000);
    expect((await served.runtime.get("slow")).historyLength).toBe(0);
  });

  it("passivates an agent on request; the next message rehydrates it", async () => {
    served = await serveFake();
    await spawn(served.url, "a");
    await json(`${served.url}/agents/a/messages`, { json: { text: "hello" } });
    const passivated = await json(`${served.url}/agents/a/passivate`, { method: "POST" });
    expect(passivated.status).toBe(200);
    expect(passivated.body.status).toBe("passivated");
    const reply = await json(`${served.url}/agents/a/messages`, { json: { text: "again" } });
    expect(reply.status).toBe(200);
    expect((await json(`${served.url}/agents/a`)).body.status).toBe("resident");
  });

  it("reports memory and health, and 404s unknown endpoints with a code", async () => {
    served = await serveFake();
    await spawn(served.url, "a");
    const memory = await json(`${served.url}/memory`);
    expect(memory.body.totals.residentAgents).toBe(1);
    expect((await json(`${served.url}/healthz`)).body).toMatchObject({ status: "ok", model: "fake-model" });
    const missing = await json(`${served.url}/nothing/here`);
    expect(missing.status).toBe(404);
    expect(missing.body.error.code).toBe("ERR_ROUTE_NOT_FOUND");
    const badAction = await json(`${served.url}/agents/a/explode`, { method: "POST" });
    expect(badAction.status).toBe(404);
    expect(badAction.body.error.code).toBe("ERR_ROUTE_NOT_FOUND");
  });
});
