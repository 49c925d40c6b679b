import { afterEach, describe, expect, it } from "vitest";
import { json, serveFake, type Served } from "./helpers.js";

let served: Served | undefined;
afterEach(async () => {
  await served?.close();
  served = undefined;
});

/** `name{labels} value` lines of a Prometheus text exposition, by series. */
function series(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const space = line.lastIndexOf(" ");
    values.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return values;
}

describe("GET /metrics", () => {
  it("exports agents, passivations, rehydrations, token reuse, TTFT and speed histograms, queue depth and KV bytes", async () => {
    served = await serveFake({ runtime: { maxAgents: 1 } });
    const { url } = served;
    await json(`${url}/agents`, { json: { id: "a", systemPrompt: "s" } });
    await json(`${url}/agents/a/messages`, { json: { text: "one" } });
    await json(`${url}/agents/a/messages`, { json: { text: "two" } });
    // A second agent with maxAgents 1 passivates the first; messaging the first brings it back.
    await json(`${url}/agents`, { json: { id: "b", systemPrompt: "s" } });
    await json(`${url}/agents/a/messages`, { json: { text: "three" } });

    const response = await fetch(`${url}/metrics`);
    expect(response.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await response.text();
    expect(text).toContain("# TYPE agentrt_ttft_seconds histogram");
    const m = series(text);
    expect(m.get('agentrt_agents{state="resident"}')).toBe(1);
    // The passivated agent left memory (the store is the directory): it is counted as stored only.
    expect(m.get('agentrt_agents{state="passivated"}')).toBe(0);
    expect(m.get("agentrt_agents_stored")).toBe(2);
    expect(m.get("agentrt_passivations_total")).toBe(2);
    expect(m.get('agentrt_rehydrations_total{source="state"}')).toBe(1);
    expect(m.get('agentrt_turns_total{stop_reason="eos"}')).toBe(3);
    expect(m.get("agentrt_prompt_tokens_reused_total")).toBeGreaterThan(0);
    expect(m.get("agentrt_prompt_tokens_evaluated_total")).toBeGreaterThan(0);
    expect(m.get("agentrt_generated_tokens_total")).toBe(27);
    expect(m.get("agentrt_ttft_seconds_count")).toBe(3);
    expect(m.has('agentrt_tokens_per_second_bucket{le="+Inf"}')).toBe(true);
    expect(m.get("agentrt_queue_depth")).toBe(0);
    expect(m.get('agentrt_kv_bytes{where="memory"}')).toBeGreaterThan(0);
    expect(m.get('agentrt_kv_bytes{where="disk"}')).toBeGreaterThan(0);
    expect(m.get("agentrt_model_bytes")).toBe(1000);
  });
});
