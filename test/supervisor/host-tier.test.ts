/**
 * The host-RAM tier (`hostCacheBytes`): passivated states kept in RAM and written to the store in the
 * background. Fake-engine tests for what a user would notice (durability after close, a failing disk,
 * the RAM budget, removal), then the real model on both engines and both test models: an agent that
 * came back from RAM answers word for word as one that never left memory.
 */
import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { AgentRuntime, DirectoryStore, type EngineName } from "../../src/index.js";
import { FakeEngine } from "../../src/testing/index.js";
import { ENGINES, FAST, MODELS } from "../helpers/model.js";
import { collect, fakeRuntime, HookedStore, useScratch } from "../robustness/helpers.js";

const scratch = useScratch("host-tier");
const MiB = 1024 * 1024;

/** The record's KV descriptor as a fresh store reads it (what a restart would find). */
async function storedKv(stateDir: string, id: string) {
  return (await new DirectoryStore(stateDir).read(id))?.kv;
}

/** Tier folders of this state dir left in RAM. */
async function tierFolders(): Promise<string[]> {
  const base = existsSync("/dev/shm") ? "/dev/shm" : undefined;
  return base ? (await readdir(base)).filter((name) => name.startsWith("agentrt-tier-")) : [];
}

describe("host-RAM tier (fake engine)", () => {
  it("a passivated agent comes back from RAM; close() writes every state to the store and frees the RAM", async () => {
    const stateDir = scratch.stateDir();
    const before = await tierFolders();
    let fromDisk = 0;
    const store = new HookedStore(new DirectoryStore(stateDir), { beforeOpenKv: () => void fromDisk++ });
    const { runtime } = await fakeRuntime(stateDir, { store, maxAgents: 1, hostCacheBytes: 64 * MiB });
    scratch.track(runtime);
    const rehydrated = collect(runtime, "agent:rehydrated");
    await runtime.spawn({ id: "a", systemPrompt: "A" });
    await runtime.ask("a", "one");
    await runtime.spawn({ id: "b", systemPrompt: "B" }); // passivates a (into RAM)
    expect(runtime.get("a").status).toBe("passivated");
    await runtime.ask("a", "two"); // passivates b, rehydrates a
    expect(rehydrated.filter((e) => e.id === "a")).toEqual([expect.objectContaining({ source: "state" })]);
    expect(fromDisk).toBe(0);
    await runtime.close();
    // Both states are in the store, checksummed, and the tier's folder is gone.
    for (const id of ["a", "b"]) expect(await storedKv(stateDir, id), id).toMatchObject({ checksum: { algorithm: "xxh3-64" } });
    expect(await tierFolders()).toEqual(before);

    const { runtime: restarted } = await fakeRuntime(stateDir, { maxAgents: 1 });
    scratch.track(restarted);
    const again = collect(restarted, "agent:rehydrated");
    await restarted.ask("a", "three");
    expect(again).toEqual([expect.objectContaining({ id: "a", source: "state" })]);
    expect(restarted.get("a").turns).toBe(3);
  });

  it("a disk that refuses the background write costs nothing acknowledged: the turn stands, the agent comes back from RAM, a restart rebuilds it from history", async () => {
    const stateDir = scratch.stateDir();
    const store = new HookedStore(new DirectoryStore(stateDir), {
      beforeCommit: () => {
        throw Object.assign(new Error("no space left on device"), { code: "ENOSPC" });
      },
    });
    const { runtime } = await fakeRuntime(stateDir, { store, maxAgents: 1, hostCacheBytes: 64 * MiB });
    scratch.track(runtime);
    const errors = collect(runtime, "agent:error");
    const rehydrated = collect(runtime, "agent:rehydrated");
    await runtime.spawn({ id: "a", systemPrompt: "A" });
    const first = await runtime.ask("a", "one");
    await runtime.passivate("a");
    await runtime.ask("a", "two");
    expect(rehydrated).toEqual([expect.objectContaining({ id: "a", source: "state" })]);
    await runtime.close();
    expect(errors.map((e) => [e.id, e.error.code])).toContainEqual(["a", "ERR_STATE_WRITE_FAILED"]);
    expect(first.reply).toMatch(/^r/);
    expect(await storedKv(stateDir, "a")).toBeUndefined();

    const { runtime: restarted } = await fakeRuntime(stateDir, { maxAgents: 1 });
    scratch.track(restarted);
    const again = collect(restarted, "agent:rehydrated");
    await restarted.ask("a", "three");
    expect(again).toEqual([expect.objectContaining({ id: "a", source: "history" })]);
    expect(restarted.get("a").turns).toBe(3);
  });

  it("over hostCacheBytes, a passivation waits for the oldest state to be written and drops it from RAM", async () => {
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

  it("removing an agent whose state is still in RAM leaves nothing behind", async () => {
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

  it("when the RAM folder refuses a save (a full /dev/shm), the state goes straight to the store", async () => {
    const stateDir = scratch.stateDir();
    class FullRam extends FakeEngine {
      override async saveState(key: string, path: string) {
        if (!path.startsWith(stateDir)) throw Object.assign(new Error("no space left on device"), { code: "ENOSPC" });
        return super.saveState(key, path);
      }
    }
    const runtime = scratch.track(
      await AgentRuntime.create({ stateDir, maxAgents: 1, hostCacheBytes: 64 * MiB, engineFactory: async () => new FullRam({ sequences: 1 }) }),
    );
    const errors = collect(runtime, "agent:error");
    await runtime.spawn({ id: "a", systemPrompt: "A" });
    await runtime.ask("a", "one");
    await runtime.passivate("a");
    expect(runtime.get("a").status).toBe("passivated");
    expect(await storedKv(stateDir, "a")).toMatchObject({ checksum: { algorithm: "xxh3-64" } });
    expect((await runtime.ask("a", "two")).reply).toMatch(/^r/);
    expect(errors).toEqual([]);
  });

  it("hostCacheBytes must be a non-negative integer", async () => {
    await expect(fakeRuntime(scratch.stateDir(), { hostCacheBytes: -1 })).rejects.toThrow(/hostCacheBytes/);
    await expect(fakeRuntime(scratch.stateDir(), { hostCacheBytes: 1.5 })).rejects.toThrow(/hostCacheBytes/);
  });
});

describe.each(ENGINES)("host-RAM tier on the real model (%s)", (engine: EngineName) => {
  it.each(Object.entries(MODELS))(
    "%s: agents that came back from RAM answer word for word as without the tier; after close the store holds their states",
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
        // With the tier every state came back from RAM (64 MiB holds them all); without it, from the store.
        expect(fromDisk).toBe(hostCacheBytes ? 0 : rehydrated.length);
        for (const id of ids) expect(await storedKv(stateDir, id), id).toMatchObject({ checksum: { algorithm: "xxh3-64" }, engine });
        replies[hostCacheBytes] = out;
      }
      expect(replies[64 * MiB]).toEqual(replies[0]);
    },
  );
});
