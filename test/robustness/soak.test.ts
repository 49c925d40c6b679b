/**
 * Short soaks for the default suite (the long ones are in test/soak, sized by the same env vars).
 */
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { envInt, tempDir } from "./helpers.js";
import { runSoak, type SoakOptions } from "./soak.js";

let root: string;
beforeAll(async () => {
  root = await tempDir("soak-short");
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function soak(options: Omit<SoakOptions, "stateDir">, stateDir: string) {
  const { figures, failures } = await runSoak({ ...options, stateDir, log: (line) => console.log(`[soak] ${line}`) });
  console.log(`[figures] soak: ${JSON.stringify(figures)}`);
  expect(failures).toEqual([]);
  expect(figures.lost).toBe(0);
  expect(figures.reordered).toBe(0);
  expect(figures.messagesAcknowledged).toBe(options.messages);
  expect(figures.maxResidentSeen).toBeLessThanOrEqual(options.maxAgents);
  expect(figures.maxResidentSeen).toBe(options.maxAgents);
  expect(figures.agentsCreated).toBeGreaterThan(options.agents);
  return figures;
}

it("fake engine: 300 agents, maxAgents 8, 1500 messages from 16 senders: none lost or reordered", async () => {
  const figures = await soak(
    {
      engine: "fake",
      agents: envInt("AGENTRT_SHORT_SOAK_AGENTS", 300),
      maxAgents: 8,
      messages: envInt("AGENTRT_SHORT_SOAK_MESSAGES", 1500),
      senders: 16,
      turnsPerAgent: 12,
    },
    join(root, "fake"),
  );
  // Bounded live history (churn): memory must not grow with the number of messages.
  expect(figures.rssDriftMiB).toBeLessThan(40);
});

it("real model: 40 agents, maxAgents 4, 300 messages from 6 senders: none lost or reordered", async () => {
  await soak({ engine: "real", agents: 40, maxAgents: 4, messages: 300, senders: 6, turnsPerAgent: 8 }, join(root, "real"));
});
