/**
 * Short soaks for the default suite (the long ones are in test/soak, sized by the same env vars).
 */
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { envInt, tempDir } from "./helpers.js";
import { soakAndCheck } from "./soak.js";

let root: string;
beforeAll(async () => {
  root = await tempDir("soak-short");
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

it("fake engine: 300 agents, maxAgents 8, 1500 messages from 16 senders: none lost or reordered", async () => {
  const figures = await soakAndCheck(
    {
      engine: "fake",
      agents: envInt("AGENTRT_SHORT_SOAK_AGENTS", 300),
      maxAgents: 8,
      messages: envInt("AGENTRT_SHORT_SOAK_MESSAGES", 1500),
      senders: 16,
      turnsPerAgent: 6,
    },
    join(root, "fake"),
  );
  expect(figures.agentsCreated, "agents were retired and replaced (churn)").toBeGreaterThan(300);
  // Bounded live history (churn): memory must not grow with the number of messages.
  expect(figures.rssDriftMiB).toBeLessThan(40);
  expect(figures.heapDriftMiB).toBeLessThan(8);
});

it("real model: 40 agents, maxAgents 4, 300 messages from 6 senders: none lost or reordered", async () => {
  const figures = await soakAndCheck({ engine: "real", agents: 40, maxAgents: 4, messages: 300, senders: 6, turnsPerAgent: 8 }, join(root, "real"));
  expect(figures.agentsCreated, "agents were retired and replaced (churn)").toBeGreaterThan(40);
});
