import { join } from "node:path";
import { expect, it } from "vitest";
import { runFuzz } from "./fuzz.js";
import { envInt, fakeRuntime, storedUserMessages, useScratch } from "./helpers.js";

const INPUTS = envInt("AGENTRT_FUZZ_INPUTS", 3000);
const SEEDS = envInt("AGENTRT_FUZZ_SEEDS", 2);
const FIRST_SEED = envInt("AGENTRT_FUZZ_SEED", 1);

const scratch = useScratch("fuzz");

/** The reply a pristine runtime gives to one message, to compare the fuzzed runtime against. */
async function referenceReply(stateDir: string): Promise<string> {
  const { runtime } = await fakeRuntime(stateDir, { maxAgents: 3 });
  scratch.track(runtime);
  await runtime.spawn({ id: "fresh", systemPrompt: "You are fresh." });
  return (await runtime.ask("fresh", "hello there")).reply;
}

for (let seed = FIRST_SEED; seed < FIRST_SEED + SEEDS; seed++) {
  it(`seed ${seed}: ${INPUTS} generated inputs get only typed errors; every acknowledged turn is stored in order; the runtime still answers`, async () => {
    const stateDir = join(scratch.root, `seed-${seed}`);
    const { runtime, report } = await runFuzz({ stateDir, inputs: INPUTS, seed });
    scratch.track(runtime);
    const outcomes = Object.entries(report.outcomes).sort(([a], [b]) => a.localeCompare(b));
    console.log(
      `[figures] fuzz seed ${seed}: ${report.calls} calls from ${INPUTS} inputs; ${report.acked.size} agents alive; outcomes ${JSON.stringify(Object.fromEntries(outcomes))}`,
    );
    expect(report.untyped, "errors that are not typed, or broken invariants").toEqual([]);
    // Every outcome kind is an agentrt code or a validation error: nothing else escaped.
    for (const [key] of outcomes) expect(key).toMatch(/:(ok|ERR_[A-Z_]+|TypeError|RangeError|AbortError)$/);
    expect((await runtime.list()).agents.filter((a) => a.status === "failed")).toEqual([]);
    for (const [id, acked] of report.acked) expect((await runtime.get(id)).turns, `turns of ${id}`).toBe(acked.length);

    await runtime.close();
    for (const [id, acked] of report.acked) {
      expect(await storedUserMessages(stateDir, id), `stored history of ${id}`).toEqual(acked);
    }

    const { runtime: restarted } = await fakeRuntime(stateDir, { maxAgents: 3 });
    scratch.track(restarted);
    expect((await restarted.list()).agents.map((a) => a.id).sort()).toEqual([...report.acked.keys()].sort());
    expect((await restarted.list()).agents.filter((a) => a.status === "failed")).toEqual([]);
    for (const [id, acked] of report.acked) expect((await restarted.get(id)).turns).toBe(acked.length);
    await restarted.spawn({ id: "fresh", systemPrompt: "You are fresh." });
    expect((await restarted.ask("fresh", "hello there")).reply).toBe(await referenceReply(join(scratch.root, `reference-${seed}`)));
  });
}
