import { afterEach, describe, expect, it } from "vitest";
import type { AgentBehaviour } from "../../src/index.js";
import { json, serveFake, type Served } from "./helpers.js";

// Needs runtime.spawn to take a behaviour *name* (resolved through the runtime's behaviour registry,
// ERR_BEHAVIOUR_NOT_FOUND when unknown); until then the runtime refuses a string behaviour with 400.

let served: Served | undefined;
afterEach(async () => {
  await served?.close();
  served = undefined;
});

/** A default that is not "conversation", so an agent reporting "conversation" got it by name. */
const forgetful: AgentBehaviour = {
  name: "forgetful",
  prompt: (agent, text) => [
    { role: "system", content: agent.systemPrompt },
    { role: "user", content: text },
  ],
  record: () => [],
};

describe("POST /agents with a behaviour name", () => {
  it('spawns the agent with the named behaviour ("conversation"), which its info reports and its turns follow', async () => {
    served = await serveFake({ runtime: { behaviour: forgetful } });
    const { url } = served;
    const created = await json(`${url}/agents`, { json: { id: "chat", systemPrompt: "s", behaviour: "conversation" } });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(created.body.behaviour).toBe("conversation");
    await json(`${url}/agents`, { json: { id: "default", systemPrompt: "s" } });
    expect((await json(`${url}/agents/default`)).body.behaviour, "without a name, the runtime's default").toBe("forgetful");

    const reply = await json(`${url}/agents/chat/messages`, { json: { text: "hello" } });
    expect(reply.status, JSON.stringify(reply.body)).toBe(200);
    const info = await json(`${url}/agents/chat`);
    expect(info.body).toMatchObject({ behaviour: "conversation", historyLength: 2 });
  });

  it("refuses an unknown behaviour name with 422 ERR_BEHAVIOUR_NOT_FOUND and creates nothing", async () => {
    served = await serveFake();
    const refused = await json(`${served.url}/agents`, { json: { id: "a", systemPrompt: "s", behaviour: "no-such-behaviour" } });
    expect(refused.status, JSON.stringify(refused.body)).toBe(422);
    expect(refused.body.error.code).toBe("ERR_BEHAVIOUR_NOT_FOUND");
    expect(refused.body.error.message).toContain("no-such-behaviour");
    expect((await served.runtime.list()).agents).toEqual([]);
    expect((await json(`${served.url}/agents/a`)).status).toBe(404);
  });
});
