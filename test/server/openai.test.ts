import OpenAI from "openai";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { TurnResult } from "../../src/index.js";
import { json, serveFake, serveReal, type Served } from "./helpers.js";

const SYSTEM = "You are a dreamer.";

function client(served: Served, options: ConstructorParameters<typeof OpenAI>[0] = {}): OpenAI {
  return new OpenAI({ baseURL: `${served.url}/v1`, apiKey: "unused", maxRetries: 0, ...options });
}

describe("OpenAI-compatible chat completions (fake engine, official openai client)", () => {
  let served: Served | undefined;
  afterEach(async () => {
    await served?.close();
    served = undefined;
  });

  it("answers a non-streaming request for model agent:<id>", async () => {
    served = await serveFake();
    await json(`${served.url}/agents`, { json: { id: "support/42", systemPrompt: SYSTEM } });
    const completion = await client(served).chat.completions.create({
      model: "agent:support/42",
      messages: [
        { role: "system", content: SYSTEM },
        { role: "user", content: "hello" },
      ],
    });
    // The fake model's reply depends only on the prompt: an agent with the same prompt says the same.
    await served.runtime.spawn({ id: "reference", systemPrompt: SYSTEM });
    const expected = (await served.runtime.ask("reference", "hello")).reply;
    expect(completion.object).toBe("chat.completion");
    expect(completion.model).toBe("agent:support/42");
    expect(completion.choices[0]!.message).toMatchObject({ role: "assistant", content: expected });
    expect(completion.choices[0]!.finish_reason).toBe("stop");
    expect(completion.usage).toMatchObject({ completion_tokens: expected.length, prompt_tokens_details: { cached_tokens: expect.any(Number) } });
  });

  it("streams chunks, a finish reason, usage and [DONE]", async () => {
    served = await serveFake();
    await json(`${served.url}/agents`, { json: { id: "support/42", systemPrompt: SYSTEM } });
    const stream = await client(served).chat.completions.create({
      model: "agent:support/42",
      messages: [{ role: "user", content: "hello" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      expect(chunk.object).toBe("chat.completion.chunk");
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      usage = chunk.usage ?? usage;
    }
    await served.runtime.spawn({ id: "reference", systemPrompt: SYSTEM });
    expect(text).toBe((await served.runtime.ask("reference", "hello")).reply);
    expect(finish).toBe("stop");
    expect(usage?.completion_tokens).toBe(text.length);
  });

  it("takes the agent from the X-Agent-Id header, and lists agents as models", async () => {
    served = await serveFake();
    await json(`${served.url}/agents`, { json: { id: "tech", systemPrompt: SYSTEM } });
    const openai = client(served, { defaultHeaders: { "X-Agent-Id": "tech" } });
    const completion = await openai.chat.completions.create({ model: "whatever", messages: [{ role: "user", content: "hi" }] });
    expect(completion.choices[0]!.message.content).toMatch(/^r[0-9a-f]{8}$/);
    const models = await openai.models.list();
    expect(models.data.map((model) => model.id)).toEqual(["agent:tech"]);
  });

  it("answers errors in OpenAI's shape with agentrt's code", async () => {
    served = await serveFake();
    await json(`${served.url}/agents`, { json: { id: "a", systemPrompt: SYSTEM } });
    const openai = client(served);
    const call = (body: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming>) =>
      openai.chat.completions.create({ model: "agent:a", messages: [{ role: "user", content: "hi" }], ...body }).then(
        () => undefined,
        (error: unknown) => error as InstanceType<typeof OpenAI.APIError>,
      );

    const mismatch = await call({
      messages: [
        { role: "system", content: "You are someone else." },
        { role: "user", content: "hi" },
      ],
    });
    expect(mismatch).toBeInstanceOf(OpenAI.BadRequestError);
    expect(mismatch).toMatchObject({ status: 400, code: "ERR_SYSTEM_PROMPT_MISMATCH", param: "messages", type: "invalid_request_error" });

    const unknown = await call({ model: "agent:nobody" });
    expect(unknown).toBeInstanceOf(OpenAI.NotFoundError);
    expect(unknown).toMatchObject({ code: "ERR_AGENT_NOT_FOUND" });

    const noAgent = await call({ model: "gpt-4o" });
    expect(noAgent).toMatchObject({ status: 400, code: "ERR_INVALID_ARGUMENT", param: "model" });

    const lastNotUser = await call({
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", content: "hello" },
      ],
    });
    expect(lastNotUser).toMatchObject({ status: 400, code: "ERR_INVALID_MESSAGE" });

    const tool = await call({ messages: [{ role: "tool", content: "x", tool_call_id: "1" }] });
    expect(tool).toMatchObject({ status: 400, code: "ERR_INVALID_ARGUMENT" });
    expect((await served.runtime.get("a")).historyLength, "refused requests left the history alone").toBe(0);
  });
});

describe("OpenAI-compatible chat completions on the real model: extend and diverge", () => {
  let served: Served;
  const turnEnds: TurnResult[] = [];
  beforeAll(async () => {
    served = await serveReal({ runtime: { maxTokens: 24 } });
    served.runtime.subscribe("agent:turn-end", (event) => turnEnds.push(event));
    await json(`${served.url}/agents`, { json: { id: "dreamer", systemPrompt: SYSTEM } });
  });
  afterAll(async () => {
    await served?.close();
  });
  const lastTurn = () => turnEnds.at(-1)!;
  const u1 = "Once upon a time";
  const u2 = "Tell me a dream.";
  const u3 = "Weighted landscape";
  let a1 = "";
  let firstPromptTokens = 0;

  it("evaluates only the new message when a stateless client resends the conversation (extend)", async () => {
    const openai = client(served);
    const first = await openai.chat.completions.create({
      model: "agent:dreamer",
      messages: [
        { role: "system", content: SYSTEM },
        { role: "user", content: u1 },
      ],
    });
    a1 = first.choices[0]!.message.content!;
    expect(a1.trim().length, "the model said something").toBeGreaterThan(0);
    const turn1 = lastTurn().timings;
    firstPromptTokens = turn1.promptTokens;

    // Streaming, with the whole conversation resent as OpenAI clients do.
    const stream = await openai.chat.completions.create({
      model: "agent:dreamer",
      messages: [
        { role: "system", content: SYSTEM },
        { role: "user", content: u1 },
        { role: "assistant", content: a1 },
        { role: "user", content: u2 },
      ],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      usage = chunk.usage ?? usage;
    }
    const turn2 = lastTurn();
    expect(turn2.reply).toBe(text);
    // The earlier conversation (system prompt, u1, a1) came from the cache: only u2 was evaluated. (The
    // reply's last token or two may tokenize differently as text, hence the small allowance.)
    expect(turn2.timings.reusedTokens, JSON.stringify({ turn1, turn2: turn2.timings })).toBeGreaterThanOrEqual(turn1.cacheTokens - 2);
    expect(turn2.timings.evaluatedTokens).toBeLessThan(turn2.timings.promptTokens - turn1.promptTokens);
    expect(usage?.prompt_tokens_details?.cached_tokens).toBe(turn2.timings.reusedTokens);
    expect((await served.runtime.get("dreamer")).historyLength).toBe(4);
  });

  it("rewinds the cache to the common prefix when the conversation diverges, and answers as a fresh agent would", async () => {
    const before = lastTurn().timings;
    const conversation: OpenAI.ChatCompletionMessageParam[] = [
      { role: "user", content: u1 },
      { role: "assistant", content: a1 },
      { role: "user", content: u3 },
    ];
    const openai = client(served);
    const diverged = await openai.chat.completions.create({ model: "agent:dreamer", messages: conversation });
    const turn3 = lastTurn().timings;
    expect(turn3.reusedTokens, "the common prefix was kept").toBeGreaterThan(0);
    expect(turn3.reusedTokens, "the cache was rewound, not extended").toBeLessThan(before.cacheTokens);
    expect(turn3.reusedTokens, "the system prompt and u1 were not evaluated again").toBeGreaterThanOrEqual(firstPromptTokens);
    // The agent now holds the client's conversation, persisted with the turn.
    const info = await json(`${served.url}/agents/dreamer`);
    expect(info.body.historyLength).toBe(4);

    await json(`${served.url}/agents`, { json: { id: "fresh", systemPrompt: SYSTEM } });
    const fresh = await openai.chat.completions.create({ model: "agent:fresh", messages: conversation });
    expect(lastTurn().timings.evaluatedTokens, "the fresh agent evaluated everything").toBeGreaterThan(turn3.evaluatedTokens);
    expect(diverged.choices[0]!.message.content).toBe(fresh.choices[0]!.message.content);
    expect(diverged.choices[0]!.message.content!.trim().length, "the model said something").toBeGreaterThan(0);
  });
});
