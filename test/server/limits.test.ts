import { readdir, readFile } from "node:fs/promises";
import { afterEach, describe, expect, it } from "vitest";
import { ERROR_CODES } from "../../src/index.js";
import { HTTP_ERROR_CODES, STATUS_BY_CODE } from "../../src/server/index.js";
import { eventually, json, serveFake, type Served } from "./helpers.js";

let served: Served | undefined;
let releaseHeld: (() => void) | undefined;
afterEach(async () => {
  releaseHeld?.();
  await served?.close();
  served = undefined;
});

/** The agent's state as the store holds it, to check refusals wrote nothing. */
async function storeSnapshot(stateDir: string): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  for (const entry of await readdir(stateDir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) {
      const path = `${entry.parentPath}/${entry.name}`;
      files[path] = await readFile(path, "utf8");
    }
  }
  return files;
}

describe("limits and errors: each refusal is a coded JSON error with its status, and changes nothing", () => {
  it("maps every error code to an HTTP status", () => {
    for (const code of [...Object.keys(ERROR_CODES), ...Object.keys(HTTP_ERROR_CODES)]) {
      const status = STATUS_BY_CODE[code as keyof typeof STATUS_BY_CODE];
      expect(status, code).toBeGreaterThanOrEqual(400);
      expect(status, code).toBeLessThan(600);
    }
  });

  it("body size limit → 413 ERR_BODY_TOO_LARGE", async () => {
    served = await serveFake({ server: { bodyLimit: 1000 } });
    await json(`${served.url}/agents`, { json: { id: "a", systemPrompt: "s" } });
    const before = await storeSnapshot(served.stateDir);
    const response = await json(`${served.url}/agents/a/messages`, { json: { text: "x".repeat(2000) } });
    expect(response.status).toBe(413);
    expect(response.body.error.code).toBe("ERR_BODY_TOO_LARGE");
    expect(await storeSnapshot(served.stateDir)).toEqual(before);
  });

  it("message longer than maxMessageChars → 413 ERR_MESSAGE_TOO_LARGE, history unchanged", async () => {
    served = await serveFake({ runtime: { maxMessageChars: 100 } });
    await json(`${served.url}/agents`, { json: { id: "a", systemPrompt: "s" } });
    await json(`${served.url}/agents/a/messages`, { json: { text: "first" } });
    const before = await storeSnapshot(served.stateDir);
    const response = await json(`${served.url}/agents/a/messages`, { json: { text: "x".repeat(101) } });
    expect(response.status).toBe(413);
    expect(response.body.error).toMatchObject({ code: "ERR_MESSAGE_TOO_LARGE", details: { length: 101, limit: 100 } });
    expect((await served.runtime.get("a")).historyLength).toBe(2);
    expect(await storeSnapshot(served.stateDir)).toEqual(before);
  });

  it("more agents than maxStoredAgents → 507 ERR_TOO_MANY_AGENTS, nothing written", async () => {
    served = await serveFake({ runtime: { maxStoredAgents: 2 } });
    expect((await json(`${served.url}/agents`, { json: { id: "a", systemPrompt: "s" } })).status).toBe(201);
    expect((await json(`${served.url}/agents`, { json: { id: "b", systemPrompt: "s" } })).status).toBe(201);
    const before = await storeSnapshot(served.stateDir);
    const third = await json(`${served.url}/agents`, { json: { id: "c", systemPrompt: "s" } });
    expect(third.status).toBe(507);
    expect(third.body.error).toMatchObject({ code: "ERR_TOO_MANY_AGENTS", details: { limit: 2 } });
    expect(await storeSnapshot(served.stateDir)).toEqual(before);
    expect((await json(`${served.url}/agents`)).body.agents).toHaveLength(2);
  });

  it("a full mailbox → 429 ERR_MAILBOX_FULL with Retry-After; queued messages all still answered", async () => {
    let held = false;
    served = await serveFake({
      runtime: { mailboxCapacity: 2 },
      engine: {
        beforeGenerate: async () => {
          if (held) return;
          held = true;
          await new Promise<void>((resolve) => (releaseHeld = resolve));
        },
      },
    });
    const { url } = served;
    await json(`${url}/agents`, { json: { id: "a", systemPrompt: "s" } });
    const running = json(`${url}/agents/a/messages`, { json: { text: "one" } });
    await eventually(() => held, "the first message to run");
    const queued = [json(`${url}/agents/a/messages`, { json: { text: "two" } }), json(`${url}/agents/a/messages`, { json: { text: "three" } })];
    await eventually(async () => (await served!.runtime.get("a")).queued === 2, "two messages to wait");
    const refused = await json(`${url}/agents/a/messages`, { json: { text: "four" } });
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(refused.body.error.code).toBe("ERR_MAILBOX_FULL");
    // Streaming clients get the same refusal as JSON, not a stream.
    const streamed = await fetch(`${url}/agents/a/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({ text: "five" }),
    });
    expect(streamed.status).toBe(429);
    expect(((await streamed.json()) as { error: { code: string } }).error.code).toBe("ERR_MAILBOX_FULL");
    releaseHeld!();
    const answers = await Promise.all([running, ...queued]);
    expect(answers.map((answer) => answer.status)).toEqual([200, 200, 200]);
    expect((await served.runtime.get("a")).historyLength).toBe(6);
  });

  it("bad input → 400 with a code that says what was wrong", async () => {
    served = await serveFake();
    const { url } = served;
    await json(`${url}/agents`, { json: { id: "a", systemPrompt: "s" } });
    const cases: Array<[string, Promise<{ status: number; body: any }>, number, string]> = [
      ["invalid id", json(`${url}/agents`, { json: { id: "Bad Id", systemPrompt: "s" } }), 400, "ERR_INVALID_AGENT_ID"],
      ["existing id", json(`${url}/agents`, { json: { id: "a", systemPrompt: "s" } }), 409, "ERR_AGENT_EXISTS"],
      ["no system prompt", json(`${url}/agents`, { json: { id: "b" } }), 400, "ERR_INVALID_ARGUMENT"],
      ["bad sampling", json(`${url}/agents`, { json: { id: "b", systemPrompt: "s", sampling: { temperature: 99 } } }), 400, "ERR_INVALID_ARGUMENT"],
      ["empty message", json(`${url}/agents/a/messages`, { json: { text: "  " } }), 400, "ERR_INVALID_MESSAGE"],
      ["no text", json(`${url}/agents/a/messages`, { json: {} }), 400, "ERR_INVALID_MESSAGE"],
      ["bad maxTokens", json(`${url}/agents/a/messages`, { json: { text: "hi", maxTokens: -1 } }), 400, "ERR_INVALID_ARGUMENT"],
      ["unknown agent", json(`${url}/agents/nobody/messages`, { json: { text: "hi" } }), 404, "ERR_AGENT_NOT_FOUND"],
      [
        "broken JSON",
        json(`${url}/agents/a/messages`, { method: "POST", headers: { "content-type": "application/json" }, body: "{not json" }),
        400,
        "ERR_INVALID_JSON",
      ],
      [
        "not JSON",
        json(`${url}/agents/a/messages`, { method: "POST", headers: { "content-type": "application/xml" }, body: "<text/>" }),
        415,
        "ERR_UNSUPPORTED_MEDIA_TYPE",
      ],
    ];
    for (const [what, pending, status, code] of cases) {
      const { status: got, body } = await pending;
      expect([what, got, body?.error?.code]).toEqual([what, status, code]);
      expect(typeof body.error.message, what).toBe("string");
    }
    expect((await served.runtime.get("a")).historyLength, "no refused message reached the history").toBe(0);
  });

  it("a closed runtime → 503 ERR_RUNTIME_CLOSED", async () => {
    served = await serveFake();
    await json(`${served.url}/agents`, { json: { id: "a", systemPrompt: "s" } });
    await served.runtime.close();
    const response = await json(`${served.url}/agents/a/messages`, { json: { text: "hi" } });
    expect(response.status).toBe(503);
    expect(response.body.error.code).toBe("ERR_RUNTIME_CLOSED");
  });
});

describe("bearer-token auth", () => {
  it("is off by default", async () => {
    served = await serveFake();
    expect((await json(`${served.url}/agents`)).status).toBe(200);
  });

  it("when a token is set, requires it everywhere but /healthz and the dashboard's files", async () => {
    served = await serveFake({ server: { token: "s3cret" } });
    const { url } = served;
    const missing = await json(`${url}/agents`);
    expect(missing.status).toBe(401);
    expect(missing.body.error.code).toBe("ERR_UNAUTHORIZED");
    expect(missing.headers.get("www-authenticate")).toContain("Bearer");
    const wrong = await json(`${url}/agents`, { headers: { authorization: "Bearer nope" } });
    expect(wrong.status).toBe(401);
    const right = await json(`${url}/agents`, { headers: { authorization: "Bearer s3cret" } });
    expect(right.status).toBe(200);
    for (const path of ["/events", "/metrics", "/memory", "/v1/models"]) {
      expect((await fetch(`${url}${path}`)).status, path).toBe(401);
    }
    const openAi = await json(`${url}/v1/chat/completions`, { json: { model: "agent:a", messages: [] } });
    expect(openAi.body.error).toMatchObject({ type: "authentication_error", code: "ERR_UNAUTHORIZED" });
    for (const path of ["/healthz", "/", "/dashboard/app.js", "/dashboard/style.css"]) {
      expect((await fetch(`${url}${path}`)).status, path).toBe(200);
    }
    // Refused requests did nothing.
    const created = await json(`${url}/agents`, { json: { id: "a", systemPrompt: "s" } });
    expect(created.status).toBe(401);
    expect((await served.runtime.list()).agents).toEqual([]);
  });
});
