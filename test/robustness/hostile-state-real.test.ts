/**
 * Hostile state files on the real model: llama.cpp must never be handed a file it could crash on, and
 * files the checks cannot judge (forged checksums) must fail inside the engine as errors, not aborts.
 */
import { copyFile, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { expect, it } from "vitest";
import { collect, fakeRuntime, kindOf, realRuntime, rejection, useScratch } from "./helpers.js";
import { agentDir, flipBit, forgedChecksum, kvPath, readRecordBody, rewriteRecord } from "./state-files.js";

const scratch = useScratch("hostile-state-real");

/** Re-seals a KV file the record names so that size and checksum match whatever bytes are there now. */
async function vouchFor(stateDir: string, id: string, bytes: Uint8Array, tokens?: number): Promise<void> {
  await writeFile(await kvPath(stateDir, id), bytes);
  await rewriteRecord(
    stateDir,
    id,
    (b) => void Object.assign(b.kv, { bytes: bytes.length, ...forgedChecksum(bytes), ...(tokens === undefined ? {} : { tokens }) }),
  );
}

it("every kind of damaged llama.cpp state file is refused or fails as an error; each agent is rebuilt and answers", async () => {
  const stateDir = join(scratch.root, "state");
  const ids = ["honest-big", "forged-big", "flipped", "garbage", "truncated", "positions", "foreign", "healthy"];
  // A 1024-token context writes a cache too large for the 512-token context that reads it later.
  {
    const runtime = await realRuntime(stateDir, { contextSize: 1024, maxAgents: 2 });
    scratch.track(runtime);
    await runtime.spawn({ id: "honest-big", systemPrompt: "Once upon a time there was a robot who dreamed. ".repeat(20) });
    for (const id of ids.slice(1)) {
      await runtime.spawn({ id, systemPrompt: `You are ${id}, who dreams of robots.` });
      await runtime.ask(id, "Once upon a time");
    }
    await runtime.close();
  }
  // Another model's agent (the fake engine), whose record and cache are copied over "foreign".
  {
    const { runtime } = await fakeRuntime(join(scratch.root, "other"));
    scratch.track(runtime);
    await runtime.spawn({ id: "foreign", systemPrompt: "other model" });
    await runtime.ask("foreign", "hello");
    await runtime.close();
    const other = await readRecordBody(join(scratch.root, "other"), "foreign");
    await copyFile(await kvPath(join(scratch.root, "other"), "foreign"), join(agentDir(stateDir, "foreign"), other.kv.file));
    await rewriteRecord(stateDir, "foreign", (b) => void (b.kv = other.kv));
  }
  const big = await readFile(await kvPath(stateDir, "honest-big"));
  const small = await readFile(await kvPath(stateDir, "flipped"));
  // The big cache under a small agent's record that claims 10 tokens: only llama.cpp can tell.
  await vouchFor(stateDir, "forged-big", big, 10);
  await writeFile(await kvPath(stateDir, "flipped"), flipBit(small, small.length * 4)); // checksum catches it
  await vouchFor(stateDir, "garbage", Buffer.from(small.map((_, i) => (i * 131) & 0xff)));
  await vouchFor(stateDir, "truncated", small.subarray(0, small.length >> 1));
  // A flipped cell position (measured: loads, then evaluation fails) — with a forged checksum.
  // (Layout: "ggsq", version, token count n, n tokens, stream count, cell count, then each cell's position.)
  const firstCellPosition = 12 + 4 * small.readUInt32LE(8) + 8;
  await vouchFor(stateDir, "positions", flipBit(small, firstCellPosition * 8 + 7));

  const runtime = await realRuntime(stateDir, { contextSize: 512, maxAgents: 2 });
  scratch.track(runtime);
  const errors = collect(runtime, "agent:error");
  const outcomes: Record<string, string> = {};
  for (const id of ids) {
    const before = errors.length;
    const first = await runtime.ask(id, "Tell me more").then(
      (result) => (result.reply.length > 0 ? "answered" : "empty"),
      (error: unknown) => kindOf(error),
    );
    const reported = errors.slice(before).map((e) => e.error.code);
    outcomes[id] = `${first}${reported.length ? ` after ${reported.join(", ")}` : ""}`;
  }
  console.log(`[figures] llama.cpp state files: ${JSON.stringify(outcomes)}`);
  expect(outcomes).toEqual({
    // Its own history no longer fits the smaller context: refused as a turn, the agent intact.
    "honest-big": "ERR_CONTEXT_FULL after ERR_STATE_FOREIGN",
    "forged-big": "answered after ERR_STATE_CORRUPT",
    flipped: "answered after ERR_STATE_CORRUPT",
    garbage: "answered after ERR_STATE_CORRUPT",
    truncated: "answered after ERR_STATE_CORRUPT",
    // Checksum forged and llama.cpp loads it; evaluation then fails: the turn is refused with a code, the
    // cache (and its saved copy) dropped, and the next turn rebuilds from the history.
    positions: "ERR_ENGINE_FAILED after ERR_ENGINE_FAILED",
    foreign: "answered after ERR_STATE_FOREIGN",
    healthy: "answered",
  });
  // Whatever the first turn met, every rebuilt agent answers from now on.
  for (const id of ids.slice(1)) expect((await runtime.ask(id, "And then?")).reply.length, id).toBeGreaterThan(0);
  expect(kindOf(await rejection(runtime.ask("honest-big", "And then?")))).toBe("ERR_CONTEXT_FULL");
  expect((await runtime.list()).agents.filter((a) => a.status === "failed")).toEqual([]);
});
