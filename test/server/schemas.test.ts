import { afterEach, describe, expect, it } from "vitest";
import { REQUEST_SCHEMAS } from "../../src/server/index.js";
import { checkErrorCodes } from "../../src/server/validation.js";
import { json, serveFake, type Served } from "./helpers.js";

let served: Served | undefined;
afterEach(async () => {
  await served?.close();
  served = undefined;
});

type Answer = { status: number; body: any };

/** Runs each case and returns `[what, status, code, message]` rows, to compare as one table. */
async function table(cases: Array<[string, Promise<Answer>]>): Promise<Array<[string, number, string, string]>> {
  const rows: Array<[string, number, string, string]> = [];
  for (const [what, pending] of cases) {
    const { status, body } = await pending;
    rows.push([what, status, body?.error?.code, body?.error?.message]);
  }
  return rows;
}

describe("request schemas: fastify checks every body, query and param, and answers with agentrt's codes", () => {
  it("refuses bad agent and message bodies with the code the runtime would give, naming the field", async () => {
    served = await serveFake();
    const { url } = served;
    await json(`${url}/agents`, { json: { id: "a", systemPrompt: "s" } });
    const rows = await table([
      ["missing id", json(`${url}/agents`, { json: { systemPrompt: "s" } })],
      ["id not a string", json(`${url}/agents`, { json: { id: 5, systemPrompt: "s" } })],
      ["missing systemPrompt", json(`${url}/agents`, { json: { id: "b" } })],
      ["role not a string", json(`${url}/agents`, { json: { id: "b", systemPrompt: "s", role: ["x"] } })],
      ["behaviour not a string", json(`${url}/agents`, { json: { id: "b", systemPrompt: "s", behaviour: { name: "x" } } })],
      ["temperature not a number", json(`${url}/agents`, { json: { id: "b", systemPrompt: "s", sampling: { temperature: "hot" } } })],
      ["topP out of range", json(`${url}/agents`, { json: { id: "b", systemPrompt: "s", sampling: { topP: 0 } } })],
      ["body not an object", json(`${url}/agents`, { json: ["a"] })],
      ["missing text", json(`${url}/agents/a/messages`, { json: { maxTokens: 4 } })],
      ["text not a string", json(`${url}/agents/a/messages`, { json: { text: 5 } })],
      ["maxTokens as text", json(`${url}/agents/a/messages`, { json: { text: "hi", maxTokens: "4" } })],
      ["maxTokens not whole", json(`${url}/agents/a/messages`, { json: { text: "hi", maxTokens: 1.5 } })],
    ]);
    expect(rows).toEqual([
      ["missing id", 400, "ERR_INVALID_AGENT_ID", "id is required"],
      ["id not a string", 400, "ERR_INVALID_AGENT_ID", "id must be string"],
      ["missing systemPrompt", 400, "ERR_INVALID_ARGUMENT", "systemPrompt is required"],
      ["role not a string", 400, "ERR_INVALID_ARGUMENT", "role must be string"],
      ["behaviour not a string", 400, "ERR_INVALID_ARGUMENT", "behaviour must be string"],
      ["temperature not a number", 400, "ERR_INVALID_ARGUMENT", "sampling.temperature must be number"],
      ["topP out of range", 400, "ERR_INVALID_ARGUMENT", "sampling.topP must be > 0"],
      ["body not an object", 400, "ERR_INVALID_ARGUMENT", "The body must be a JSON object"],
      ["missing text", 400, "ERR_INVALID_MESSAGE", "text is required"],
      ["text not a string", 400, "ERR_INVALID_MESSAGE", "text must be string"],
      ["maxTokens as text", 400, "ERR_INVALID_ARGUMENT", "maxTokens must be integer"],
      ["maxTokens not whole", 400, "ERR_INVALID_ARGUMENT", "maxTokens must be integer"],
    ]);
    expect(
      (await served.runtime.list()).agents.map((agent) => agent.id),
      "no refused spawn created an agent",
    ).toEqual(["a"]);
    expect((await served.runtime.get("a")).historyLength, "no refused message reached the history").toBe(0);
  });

  it("leaves the checks the runtime owns to the runtime: configured limits, the id grammar, unknown sampling keys", async () => {
    served = await serveFake({ runtime: { maxMessageChars: 10 } });
    const { url } = served;
    const rows = await table([
      ["long system prompt", json(`${url}/agents`, { json: { id: "a", systemPrompt: "x".repeat(11) } })],
      ["bad id", json(`${url}/agents`, { json: { id: "Not/Valid", systemPrompt: "s" } })],
      ["unknown sampling key", json(`${url}/agents`, { json: { id: "a", systemPrompt: "s", sampling: { minP: 0.1 } } })],
    ]);
    expect(rows.map(([what, status, code]) => [what, status, code])).toEqual([
      ["long system prompt", 413, "ERR_MESSAGE_TOO_LARGE"],
      ["bad id", 400, "ERR_INVALID_AGENT_ID"],
      ["unknown sampling key", 400, "ERR_INVALID_ARGUMENT"],
    ]);
    expect(rows[2]![3], "the runtime names the unknown key").toContain("minP");
    // Unknown top-level fields are neither refused nor stripped into something else: the spawn works.
    const created = await json(`${url}/agents`, { json: { id: "a", systemPrompt: "s", comment: "from a newer client" } });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const long = await json(`${url}/agents/a/messages`, { json: { text: "x".repeat(11) } });
    expect([long.status, long.body.error.code, long.body.error.details]).toEqual([413, "ERR_MESSAGE_TOO_LARGE", { length: 11, limit: 10 }]);
  });

  it("reads numbers in the query string, and refuses bad ones naming the parameter", async () => {
    served = await serveFake({ server: { maxEventBufferSize: 100 } });
    const { url } = served;
    const rows = await table([
      ["not a number", json(`${url}/events?buffer=lots`)],
      ["zero", json(`${url}/events?buffer=0`)],
      ["above the server's maximum", json(`${url}/events?buffer=101`)],
      ["given twice", json(`${url}/events?buffer=5&buffer=6`)],
    ]);
    expect(rows).toEqual([
      ["not a number", 400, "ERR_INVALID_ARGUMENT", "buffer must be integer"],
      ["zero", 400, "ERR_INVALID_ARGUMENT", "buffer must be >= 1"],
      ["above the server's maximum", 400, "ERR_INVALID_ARGUMENT", "buffer must be <= 100"],
      ["given twice", 400, "ERR_INVALID_ARGUMENT", "buffer must be integer"],
    ]);
    const controller = new AbortController();
    const open = await fetch(`${url}/events?buffer=100&agent=a&agent=b,c`, { signal: controller.signal });
    expect(open.status, "the largest allowed buffer, as text, opens the stream").toBe(200);
    controller.abort();
  });

  it("refuses bad OpenAI requests in OpenAI's shape, with the field as param", async () => {
    served = await serveFake();
    const { url } = served;
    await json(`${url}/agents`, { json: { id: "a", systemPrompt: "s" } });
    const post = (body: Record<string, unknown>) => json(`${url}/v1/chat/completions`, { json: { model: "agent:a", ...body } });
    const hi = [{ role: "user", content: "hi" }];
    const cases: Array<[string, Promise<Answer>]> = [
      ["no messages", post({})],
      ["empty messages", post({ messages: [] })],
      ["tool role", post({ messages: [{ role: "tool", content: "x", tool_call_id: "1" }] })],
      ["image part", post({ messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "http://x" } }] }] })],
      ["content a number", post({ messages: [{ role: "user", content: 5 }] })],
      ["n of 2", post({ messages: hi, n: 2 })],
      ["stream as text", post({ messages: hi, stream: "yes" })],
      ["max_tokens as text", post({ messages: hi, max_tokens: "3" })],
    ];
    const errors: unknown[] = [];
    for (const [what, pending] of cases) {
      const { status, body } = await pending;
      errors.push([what, status, body.error.type, body.error.code, body.error.param]);
    }
    expect(errors).toEqual([
      ["no messages", 400, "invalid_request_error", "ERR_INVALID_ARGUMENT", "messages"],
      ["empty messages", 400, "invalid_request_error", "ERR_INVALID_ARGUMENT", "messages"],
      ["tool role", 400, "invalid_request_error", "ERR_INVALID_ARGUMENT", "messages[0].role"],
      ["image part", 400, "invalid_request_error", "ERR_INVALID_ARGUMENT", "messages[0].content[0].type"],
      ["content a number", 400, "invalid_request_error", "ERR_INVALID_ARGUMENT", "messages[0].content"],
      ["n of 2", 400, "invalid_request_error", "ERR_INVALID_ARGUMENT", "n"],
      ["stream as text", 400, "invalid_request_error", "ERR_INVALID_ARGUMENT", "stream"],
      ["max_tokens as text", 400, "invalid_request_error", "ERR_INVALID_ARGUMENT", "max_tokens"],
    ]);
    expect((await served.runtime.get("a")).historyLength, "refused requests left the history alone").toBe(0);

    // What the schema allows still works: text parts, nulls OpenAI clients send, ignored sampling fields.
    const ok = await post({
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "h" },
            { type: "text", text: "i" },
          ],
        },
      ],
      max_tokens: null,
      n: 1,
      stream: false,
      temperature: 0.7,
    });
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(ok.body.choices[0].message.content).toMatch(/^r[0-9a-f]{8}$/);
  });

  it("routes ids with '/' as one parameter, whether written as path segments or URL-encoded", async () => {
    served = await serveFake();
    const { url } = served;
    // An agent whose last segment is an action name is still reachable.
    expect((await json(`${url}/agents`, { json: { id: "x/messages", systemPrompt: "s" } })).status).toBe(201);
    const reply = await json(`${url}/agents/x/messages/messages?ignored=1`, { json: { text: "hi" } });
    expect([reply.status, reply.body.id]).toEqual([200, "x/messages"]);
    for (const path of ["/agents/x/messages", "/agents/x%2Fmessages", "/agents/x/messages?verbose=1"]) {
      const info = await json(`${url}${path}`);
      expect([path, info.status, info.body.historyLength]).toEqual([path, 200, 2]);
    }
    const passivated = await json(`${url}/agents/x%2Fmessages/passivate`, { method: "POST" });
    expect([passivated.status, passivated.body.status]).toEqual([200, "passivated"]);
    // An id longer than any route parameter fastify would take by default still reaches the runtime's check.
    const long = await json(`${url}/agents/${"a/".repeat(80)}b`);
    expect([long.status, long.body.error.code]).toEqual([400, "ERR_INVALID_AGENT_ID"]);
    const malformed = await json(`${url}/agents/a%ZZ`);
    expect([malformed.status, malformed.body.error.code], "a malformed URL is answered in agentrt's shape").toEqual([400, "ERR_INVALID_ARGUMENT"]);
    expect((await fetch(`${url}/agents/x/messages`, { method: "DELETE" })).status).toBe(204);
    expect((await served.runtime.list()).agents).toEqual([]);
  });

  it("exports the request schemas by route, each a route the server has, and every x-error-code in them is a real code", async () => {
    served = await serveFake();
    for (const route of Object.keys(REQUEST_SCHEMAS)) {
      const [method, url] = route.split(" ") as [string, string];
      expect(served.app.hasRoute({ method: method as "GET", url }), route).toBe(true);
    }
    expect(Object.keys(REQUEST_SCHEMAS)).toEqual([
      "GET /agents",
      "POST /agents",
      "GET /agents/:id",
      "GET /agents/:id/history",
      "DELETE /agents/:id",
      "POST /agents/:id/messages",
      "POST /agents/:id/passivate",
      "GET /events",
      "POST /v1/chat/completions",
    ]);
    expect(REQUEST_SCHEMAS["POST /agents"].body.properties.behaviour.type).toBe("string");
    for (const [route, schema] of Object.entries(REQUEST_SCHEMAS)) expect(() => checkErrorCodes(schema, route)).not.toThrow();
    expect(() => checkErrorCodes({ body: { properties: { x: { "x-error-code": "ERR_NOPE" } } } }, "POST /x")).toThrow(
      /POST \/x: x-error-code ERR_NOPE/,
    );
  });
});
