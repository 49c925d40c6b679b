import { spawn as spawnProcess, spawnSync } from "node:child_process";
import { connect, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { AgentBehaviour } from "../../src/index.js";
import { FakeClock } from "../../src/testing/index.js";
import { eventually, json, parseSse, readSse, serveFake, type Served } from "./helpers.js";

let served: Served | undefined;
afterEach(async () => {
  await served?.close();
  served = undefined;
});

const hasCurl = spawnSync("curl", ["--version"]).status === 0;

describe("GET /events: runtime events as Server-Sent Events", () => {
  it("streams events with id/event/data framing, filtered by agent and type", async () => {
    served = await serveFake();
    const { url } = served;
    const response = await fetch(`${url}/events?agent=support/*&type=agent:spawned,agent:turn-end&type=agent:passivated`, {
      headers: { accept: "text/event-stream" },
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
    await json(`${url}/agents`, { json: { id: "tech", systemPrompt: "t" } });
    await json(`${url}/agents`, { json: { id: "support/42", systemPrompt: "s" } });
    await json(`${url}/agents/tech/messages`, { json: { text: "hi" } });
    await json(`${url}/agents/support/42/messages`, { json: { text: "hello" } });
    await json(`${url}/agents/support/42/passivate`, { method: "POST" });
    const { raw, frames } = await readSse(response, (seen) => seen.some((frame) => frame.event === "agent:passivated"));

    // The stream opens with a comment, then one frame per event: "id: n\nevent: type\ndata: json\n\n".
    expect(raw.startsWith(": agentrt events\n\n")).toBe(true);
    expect(raw).toMatch(/id: 1\nevent: agent:spawned\ndata: \{"id":"support\/42","role":"assistant"[^\n]*,"at":\d+(\.\d+)?\}\n\n/);
    expect(frames.map((frame) => [frame.id, frame.event])).toEqual([
      ["1", "agent:spawned"],
      ["2", "agent:turn-end"],
      ["3", "agent:passivated"],
    ]);
    const turnEnd = JSON.parse(frames[1]!.data);
    expect(turnEnd).toMatchObject({ id: "support/42", reply: expect.any(String), timings: { stopReason: "eos" } });
    expect(
      frames.every((frame) => JSON.parse(frame.data).id === "support/42"),
      "only support/* events",
    ).toBe(true);
  });

  it("refuses bad filters before opening the stream", async () => {
    served = await serveFake();
    const badType = await json(`${served.url}/events?type=agent:exploded`);
    expect(badType.status).toBe(400);
    expect(badType.body.error.code).toBe("ERR_INVALID_ARGUMENT");
    const badAgent = await json(`${served.url}/events?agent=BAD`);
    expect(badAgent.body.error.code).toBe("ERR_INVALID_AGENT_ID");
    const badBuffer = await json(`${served.url}/events?buffer=0`);
    expect(badBuffer.status).toBe(400);
  });

  it("drops a subscriber that stops reading, with a final stream:dropped event, while the runtime keeps going; one that never reads is cut off after the linger", async () => {
    // Messages of ~30 KB whose history is not kept: each turn-start event is big, so a few hundred KB of
    // events fill the socket buffers quickly and the server has to hold events for the stuck client.
    const forgetful: AgentBehaviour = {
      name: "forgetful",
      prompt: (agent, text) => [
        { role: "system", content: agent.systemPrompt },
        { role: "user", content: text },
      ],
      record: () => [],
    };
    // The linger runs on this clock: it passes only when the test says so, however slow the machine.
    const clock = new FakeClock();
    served = await serveFake({
      runtime: { behaviour: forgetful },
      engine: { contextSize: 100_000 },
      server: { droppedLingerMs: 10_000, clock },
    });
    const { url } = served;
    await json(`${url}/agents`, { json: { id: "chatty", systemPrompt: "s" } });

    // Raw clients that send the request and then read nothing: one will read later, one never will.
    const accepted: Socket[] = [];
    served.app.server.on("connection", (socket: Socket) => accepted.push(socket));
    const { socket, chunks } = await stuckSubscriber(url);
    const never = await stuckSubscriber(url);
    // The server's end of the never-reading client's connection.
    const neverOnServer = accepted.find((accepted) => accepted.remotePort === never.socket.localPort)!;
    expect(neverOnServer).toBeDefined();

    // A healthy subscriber alongside it sees every turn.
    const healthy = runtimeTurnEnds(served);
    const big = "x".repeat(30_000);
    const started = performance.now();
    const turns = 200;
    for (let i = 0; i < turns; i++) {
      const reply = await json(`${url}/agents/chatty/messages`, { json: { text: `${i} ${big}` } });
      expect(reply.status).toBe(200);
    }
    const elapsed = performance.now() - started;
    expect(healthy.count, "turns completed while the stuck subscriber was connected").toBe(turns);
    expect(elapsed, "200 fake turns should not wait for a stuck subscriber").toBeLessThan(30_000);

    // Now read what the stuck client was sent: the events up to the drop, one stream:dropped, the end.
    socket.resume();
    // The response ends with the last chunk (the connection itself may stay open for keep-alive).
    await eventually(() => Buffer.concat(chunks).includes("\r\n0\r\n\r\n"), "the dropped stream to end", 10_000);
    socket.destroy();
    const body = Buffer.concat(chunks).toString("utf8");
    const payload = body.slice(body.indexOf("\r\n\r\n") + 4);
    // Chunked transfer encoding: strip the chunk size lines to get the event-stream bytes.
    const stream = dechunk(payload);
    const { frames } = parseSse(stream);
    const last = frames.at(-1)!;
    expect(last.event).toBe("stream:dropped");
    expect(JSON.parse(last.data)).toMatchObject({ reason: "overflow", bufferSize: 64 });
    const turnStarts = frames.filter((frame) => frame.event === "agent:turn-start").length;
    expect(turnStarts, "the stuck client got some turns, not all").toBeLessThan(turns);
    expect(turnStarts).toBeGreaterThan(0);
    // Sequence numbers have no gaps: the client lost nothing before the drop.
    expect(frames.map((frame) => Number(frame.id))).toEqual(frames.map((_, index) => index + 1));
    healthy.stop();

    // The one that never reads keeps its connection for the linger, then loses it.
    clock.advance(9_999);
    await json(`${url}/healthz`); // a round trip, so a premature cut would have been seen
    expect(neverOnServer.destroyed, "cut off before the linger was over").toBe(false);
    clock.advance(1);
    await eventually(() => neverOnServer.destroyed, "the never-reading client to be cut off at the end of the linger");
    never.socket.destroy();
  }, 60_000);

  it("pings an idle stream every heartbeatMs on the server's clock, and stops its timer when the client leaves", async () => {
    const clock = new FakeClock();
    served = await serveFake({ server: { heartbeatMs: 1000, clock } });
    const controller = new AbortController();
    const response = await fetch(`${served.url}/events`, { signal: controller.signal });
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let raw = "";
    const readUntil = async (done: () => boolean, what: string) => {
      while (!done()) {
        const chunk = await reader.read();
        if (chunk.done) throw new Error(`the stream ended before ${what}`);
        raw += decoder.decode(chunk.value, { stream: true });
      }
    };
    const pings = () => raw.split(": ping\n\n").length - 1;
    await readUntil(() => raw.includes(": agentrt events\n\n"), "it opened");
    clock.advance(999);
    // Bytes arrive in order: had a ping been sent at 999 ms, it would come before this event.
    await served.runtime.spawn({ id: "a", systemPrompt: "s" });
    await readUntil(() => raw.includes("event: agent:spawned"), "the spawn event");
    expect(pings(), "no ping before heartbeatMs").toBe(0);
    clock.advance(1);
    await readUntil(() => pings() === 1, "the first ping");
    clock.advance(2000);
    await readUntil(() => pings() === 3, "two more pings");
    expect(clock.pending, "one heartbeat armed").toBe(1);
    controller.abort();
    await eventually(() => clock.pending === 0, "the heartbeat to stop with the stream");
  });

  it("closing the server (await using, or app.close()) ends open event streams and leaves the runtime open", async () => {
    served = await serveFake();
    const response = await fetch(`${served.url}/events`);
    expect(response.status).toBe(200);
    const reading = readSse(response);
    await served.app[Symbol.asyncDispose]();
    const { raw } = await reading;
    expect(raw, "the stream was open, then ended").toBe(": agentrt events\n\n");
    const info = await served.runtime.spawn({ id: "after", systemPrompt: "s" });
    expect(info.status, "the runtime still works").toBe("resident");
  });

  it.skipIf(!hasCurl)("serves a message stream that curl -N reads event by event", async () => {
    served = await serveFake();
    await json(`${served.url}/agents`, { json: { id: "support/42", systemPrompt: "s" } });
    const curl = spawnProcess("curl", [
      "-sN",
      "-H",
      "accept: text/event-stream",
      "-H",
      "content-type: application/json",
      "-d",
      JSON.stringify({ text: "hello" }),
      `${served.url}/agents/support/42/messages`,
    ]);
    let out = "";
    curl.stdout.on("data", (chunk: Buffer) => (out += chunk.toString("utf8")));
    const code = await new Promise<number | null>((resolve) => curl.on("close", resolve));
    expect(code).toBe(0);
    const { frames, rest } = parseSse(out);
    expect(rest, "the stream ends on a frame boundary").toBe("");
    expect(frames.at(-1)!.event).toBe("done");
    expect(
      frames
        .slice(0, -1)
        .map((frame) => JSON.parse(frame.data).text)
        .join(""),
    ).toBe(JSON.parse(frames.at(-1)!.data).reply);
  });
});

/** A raw client that asks for `/events` with a 64-event buffer, sees the stream open, then stops reading. */
async function stuckSubscriber(url: string): Promise<{ socket: Socket; chunks: Buffer[] }> {
  const socket = connect(Number(new URL(url).port), "127.0.0.1");
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  socket.write(`GET /events?buffer=64 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`);
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  await eventually(() => Buffer.concat(chunks).includes(": agentrt events"), "the stream to open");
  socket.pause();
  return { socket, chunks };
}

function runtimeTurnEnds(served: Served): { count: number; stop(): void } {
  const state = { count: 0, stop: () => {} };
  state.stop = served.runtime.subscribe("agent:turn-end", () => state.count++);
  return state;
}

/** Decodes an HTTP/1.1 chunked body. */
function dechunk(body: string): string {
  let out = "";
  let rest = body;
  while (rest.length > 0) {
    const lineEnd = rest.indexOf("\r\n");
    if (lineEnd < 0) break;
    const size = parseInt(rest.slice(0, lineEnd), 16);
    if (!Number.isFinite(size) || size === 0) break;
    out += rest.slice(lineEnd + 2, lineEnd + 2 + size);
    rest = rest.slice(lineEnd + 2 + size + 2);
  }
  return out;
}
