/**
 * The host tier (`hostCacheBytes`): passivation returns once the engine saved the state, the store
 * commits it in the background. Fake-engine tests for what a user would notice (durability after close,
 * a failing disk, the budget, removal), then the real model on both engines and both test models: an
 * agent that came back from a state not yet committed answers word for word as one that never left.
 */
import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { AgentRuntime, DirectoryStore, type EngineName, type RuntimeEvents } from "../../src/index.js";
import { ENGINES, FAST, MODELS } from "../helpers/model.js";
import { collect, fakeRuntime, HookedStore, useScratch } from "../robustness/helpers.js";

const scratch = useScratch("host-tier");
const MiB = 1024 * 1024;

/** The record's KV descriptor as a fresh store reads it (what a restart would find). */
async function storedKv(stateDir: string, id: string) {
  return (await new DirectoryStore(stateDir).read(id))?.kv;
}

describe("host tier (fake engine)", () => {
  it("a passivated agent comes back before its state is committed; close() commits every state", async () => {
    const stateDir = scratch.stateDir();
    let fromDisk = 0;
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    // Commits wait until released: the first one holds the queue, so later states stay uncommitted.
    const store = new HookedStore(new DirectoryStore(stateDir), { beforeOpenKv: () => void fromDisk++, beforeCommit: () => held });
    const { runtime } = await fakeRuntime(stateDir, { store, maxAgents: 1, hostCacheBytes: 64 * MiB });
    scratch.track(runtime);
    const rehydrated = collect(runtime, "agent:rehydrated");
    await runtime.spawn({ id: "a", systemPrompt: "A" });
    await runtime.ask("a", "one");
    await runtime.spawn({ id: "b", systemPrompt: "B" }); // passivates a: its commit starts, and waits
    await runtime.ask("b", "one");
    await runtime.spawn({ id: "c", systemPrompt: "C" }); // passivates b: its commit is queued
    expect((await runtime.get("b")).status).toBe("passivated");
    await runtime.ask("b", "two"); // passivates c, rehydrates b from its staged file
    expect(rehydrated).toEqual([expect.objectContaining({ id: "b", source: "state" })]);
    expect(fromDisk).toBe(0);
    expect(await storedKv(stateDir, "b")).toBeUndefined();
    release();
    await runtime.close();
    // Every state is in the store, checksummed, and no staged file is left.
    for (const id of ["a", "b", "c"]) expect(await storedKv(stateDir, id), id).toMatchObject({ checksum: { algorithm: "xxh3-64" } });
    for (const id of ["a", "b", "c"]) expect((await readdir(join(stateDir, "agents", id))).filter((f) => f.startsWith("staging-"))).toEqual([]);

    const { runtime: restarted } = await fakeRuntime(stateDir, { maxAgents: 1 });
    scratch.track(restarted);
    const again = collect(restarted, "agent:rehydrated");
    await restarted.ask("b", "three");
    expect(again).toEqual([expect.objectContaining({ id: "b", source: "state" })]);
    expect((await restarted.get("b")).turns).toBe(3);
  });

  it("a disk that refuses the background commit costs nothing acknowledged: the turns stand, the agent is rebuilt from its history", async () => {
    const stateDir = scratch.stateDir();
    const store = new HookedStore(new DirectoryStore(stateDir), {
      beforeCommit: () => {
        throw Object.assign(new Error("no space left on device"), { code: "ENOSPC" });
      },
    });
    const { runtime } = await fakeRuntime(stateDir, { store, maxAgents: 1, hostCacheBytes: 64 * MiB });
    scratch.track(runtime);
    const rehydrated = collect(runtime, "agent:rehydrated");
    const failed = new Promise<RuntimeEvents["agent:error"][0]>((resolve) => runtime.subscribe("agent:error", resolve));
    await runtime.spawn({ id: "a", systemPrompt: "A" });
    const first = await runtime.ask("a", "one");
    await runtime.passivate("a");
    expect((await failed).error.code).toBe("ERR_STATE_WRITE_FAILED");
    const second = await runtime.ask("a", "two");
    expect(rehydrated).toEqual([expect.objectContaining({ id: "a", source: "history" })]);
    await runtime.close();
    expect([first.reply, second.reply]).toEqual([expect.stringMatching(/^r/), expect.stringMatching(/^r/)]);
    expect(await storedKv(stateDir, "a")).toBeUndefined();
    expect(await new DirectoryStore(stateDir).read("a")).toMatchObject({ history: [{ content: "one" }, {}, { content: "two" }, {}] });
  });

  it("over hostCacheBytes, a passivation waits for the oldest state to be committed", async () => {
    const stateDir = scratch.stateDir();
    // 1 byte: no state fits, so each passivation returns only once its state is durable in the store.
    const { runtime } = await fakeRuntime(stateDir, { maxAgents: 1, hostCacheBytes: 1 });
    scratch.track(runtime);
    const rehydrated = collect(runtime, "agent:rehydrated");
    await runtime.spawn({ id: "a", systemPrompt: "A" });
    await runtime.ask("a", "one");
    await runtime.passivate("a");
    expect(await storedKv(stateDir, "a")).toMatchObject({ checksum: { algorithm: "xxh3-64" } });
    await runtime.ask("a", "two");
    expect(rehydrated).toEqual([expect.objectContaining({ id: "a", source: "state" })]);
    await runtime.close();
  });

  it("removing an agent whose state is not yet committed leaves nothing behind", async () => {
    const stateDir = scratch.stateDir();
    const { runtime } = await fakeRuntime(stateDir, { maxAgents: 1, hostCacheBytes: 64 * MiB });
    scratch.track(runtime);
    await runtime.spawn({ id: "a", systemPrompt: "A" });
    await runtime.ask("a", "one");
    await runtime.passivate("a");
    await runtime.remove("a");
    await runtime.close();
    expect(existsSync(join(stateDir, "agents", "a"))).toBe(false);
    expect(await new DirectoryStore(stateDir).count()).toBe(0);
  });

  it("hostCacheBytes must be a non-negative integer", async () => {
    await expect(fakeRuntime(scratch.stateDir(), { hostCacheBytes: -1 })).rejects.toThrow(/hostCacheBytes/);
    await expect(fakeRuntime(scratch.stateDir(), { hostCacheBytes: 1.5 })).rejects.toThrow(/hostCacheBytes/);
  });
});

describe.each(ENGINES)("host tier on the real model (%s)", (engine: EngineName) => {
  it.each(Object.entries(MODELS))(
    "%s: agents that came back before their state was committed answer word for word as without the tier; after close the store holds their states",
    async (_name, model) => {
      const script = ["Once upon a time", "the robot", "dreamed of stars"];
      const ids = ["tier/a", "tier/b", "tier/c"];
      const replies: Record<string, string[]> = {};
      for (const hostCacheBytes of [0, 64 * MiB]) {
        const stateDir = scratch.stateDir();
        let fromDisk = 0;
        const store = new HookedStore(new DirectoryStore(stateDir), { beforeOpenKv: () => void fromDisk++ });
        const runtime = await AgentRuntime.create({ model, engine, store, maxAgents: 1, hostCacheBytes, ...FAST });
        scratch.track(runtime);
        const rehydrated = collect(runtime, "agent:rehydrated");
        const errors = collect(runtime, "agent:error");
        const out: string[] = [];
        for (const id of ids) await runtime.spawn({ id, systemPrompt: `Lily and the ${id.slice(5)} dragon.` });
        // Every turn passivates the agent before it and rehydrates this one (one resident slot).
        for (const text of script) for (const id of ids) out.push((await runtime.ask(id, text)).reply);
        await runtime.close();
        expect(errors).toEqual([]);
        expect(rehydrated.length).toBeGreaterThanOrEqual(ids.length * script.length - 1);
        expect(rehydrated.every((e) => e.source === "state")).toBe(true);
        // Without the tier every state comes back from the store; with it, from its staged file or (once committed in the background) from the store.
        if (!hostCacheBytes) expect(fromDisk).toBe(rehydrated.length);
        for (const id of ids) expect(await storedKv(stateDir, id), id).toMatchObject({ checksum: { algorithm: "xxh3-64" }, engine });
        replies[hostCacheBytes] = out;
      }
      expect(replies[64 * MiB]).toEqual(replies[0]);
    },
  );
});
