/**
 * Crash safety on the real model: the runtime runs in a child process that is SIGKILLed at chosen
 * moments (a random time, the start of a KV save, the start of a record write, just after an
 * acknowledgement) and restarted over the same state dir. See crash-harness.ts for what is checked.
 */
import { rm } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import { runCrashHarness } from "./crash-harness.js";
import { envInt, tempDir } from "./helpers.js";

const KILLS = envInt("AGENTRT_CRASH_KILLS", 20);

let stateDir: string;
beforeAll(async () => {
  stateDir = await tempDir("crash");
});
afterAll(async () => {
  await rm(stateDir, { recursive: true, force: true });
});

it(`survives ${KILLS} SIGKILLs during turns and passivations without losing an acknowledged turn`, { timeout: 30_000 + KILLS * 15_000 }, async () => {
  const figures = await runCrashHarness({
    stateDir,
    kills: KILLS,
    seed: envInt("AGENTRT_CRASH_SEED", 7),
    log: (line) => console.log(`[crash] ${line}`),
  });
  console.log(`[figures] crash harness: ${JSON.stringify(figures)}`);
  expect(figures.kills).toBe(KILLS);
  expect(figures.acknowledgedTurns).toBeGreaterThan(KILLS);
  expect(figures.killsBy["KV save begins"]).toBeGreaterThan(0);
  expect(figures.killsBy["record write begins"]).toBeGreaterThan(0);
});
