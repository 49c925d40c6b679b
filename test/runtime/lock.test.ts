/**
 * One writer per state dir, at the runtime level and across processes: a second runtime (another
 * process) fails at once with ERR_STATE_LOCKED naming the holder; once the holder is SIGKILLed, a new
 * runtime starts without any manual cleanup and finds every acknowledged turn.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AgentRuntime, DirectoryStore, isAgentRuntimeError } from "../../src/index.js";
import { FakeEngine } from "../../src/testing/index.js";
import { startFixture, type Child } from "../helpers/child.js";

const FIXTURES = new URL("./fixtures/", import.meta.url);
let stateDir: string;
const children: Child[] = [];

beforeEach(async () => {
  stateDir = await mkdtemp(join(tmpdir(), "agentrt-runtime-lock-"));
});
afterEach(async () => {
  for (const child of children.splice(0)) child.process.kill("SIGKILL");
  await rm(stateDir, { recursive: true, force: true });
});

function holder(): Child {
  const child = startFixture("runtime-holder.ts", [stateDir], FIXTURES);
  children.push(child);
  return child;
}

describe("a state dir has one runtime at a time", () => {
  it("a runtime in another process is refused with ERR_STATE_LOCKED naming the holder; after a SIGKILL a new one starts", async () => {
    const first = holder();
    const ready = await first.next("ready", "refused");
    expect(ready.ev, JSON.stringify(ready)).toBe("ready");

    // This process, then a third process: both refused at once, naming the holder.
    const attempt = AgentRuntime.create({ stateDir, engineFactory: async () => new FakeEngine() });
    await expect(attempt).rejects.toSatisfy(
      (error) => isAgentRuntimeError(error, "ERR_STATE_LOCKED") && (error as { details?: { pid?: number } }).details?.pid === ready.pid,
    );
    const second = holder();
    const refused = await second.next("ready", "refused");
    expect(refused).toMatchObject({ ev: "refused", code: "ERR_STATE_LOCKED", details: { pid: ready.pid, host: hostname() } });

    // The holder dies without cleaning up: nothing is left to remove by hand.
    first.process.kill("SIGKILL");
    await first.exited;
    const runtime = await AgentRuntime.create({ stateDir, engineFactory: async () => new FakeEngine() });
    try {
      const record = await new DirectoryStore(stateDir).read("a");
      expect(record!.history.map((m) => m.content)).toEqual([`hello from ${ready.pid}`, ready.reply]);
      expect((await runtime.ask("a", "still here?")).reply.length).toBeGreaterThan(0);
    } finally {
      await runtime.close();
    }
  });
});
