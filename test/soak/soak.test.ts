/**
 * Long soaks (npm run test:soak). Sizes: AGENTRT_SOAK_AGENTS, AGENTRT_SOAK_MESSAGES,
 * AGENTRT_SOAK_MAX_AGENTS, AGENTRT_SOAK_SENDERS; the real-model soak: AGENTRT_SOAK_REAL_AGENTS,
 * AGENTRT_SOAK_REAL_MESSAGES.
 */
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { envInt, tempDir } from "../robustness/helpers.js";
import { soakAndCheck } from "../robustness/soak.js";

let root: string;
beforeAll(async () => {
  root = await tempDir("soak");
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const agents = envInt("AGENTRT_SOAK_AGENTS", 10_000);
const messages = envInt("AGENTRT_SOAK_MESSAGES", 60_000);
const maxAgents = envInt("AGENTRT_SOAK_MAX_AGENTS", 16);
const senders = envInt("AGENTRT_SOAK_SENDERS", 64);

it(`fake engine: ${agents} agents, maxAgents ${maxAgents}, ${messages} messages from ${senders} senders`, { timeout: 3_600_000 }, async () => {
  const figures = await soakAndCheck({ engine: "fake", agents, maxAgents, messages, senders, turnsPerAgent: 8 }, join(root, "fake"));
  // Live history is bounded by churn, so the heap must level off: under 1 KiB per message of growth.
  expect(figures.heapDriftMiB * 1024 * 1024).toBeLessThan(messages * 1024);
});

const realAgents = envInt("AGENTRT_SOAK_REAL_AGENTS", 300);
const realMessages = envInt("AGENTRT_SOAK_REAL_MESSAGES", 3000);

it(`real model: ${realAgents} agents, maxAgents 4, ${realMessages} messages from 8 senders`, { timeout: 3_600_000 }, async () => {
  await soakAndCheck({ engine: "real", agents: realAgents, maxAgents: 4, messages: realMessages, senders: 8, turnsPerAgent: 8 }, join(root, "real"));
});
