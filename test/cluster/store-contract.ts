/**
 * What every StateStore must do, as a user of the store would notice it: run against DirectoryStore
 * and NatsStore alike (store-contract.test.ts), so that the clustered store is a drop-in replacement.
 */
import { readFile, writeFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import type { AgentRecord, KvDescriptor, StateStore } from "../../src/store/state-store.js";
import { populationRecord } from "../store/populate.js";

export interface ContractSubject {
  /** A store for this test, opened as the writer. */
  writer(): Promise<StateStore>;
  /** Another store object on the same state (a restart, or another node), for reads. */
  reader(): Promise<StateStore>;
  /** A store with aggressive compaction (the journal folded every few turns). */
  compacting(): Promise<StateStore>;
}

const turn = (n: number) => ({
  messages: [
    { role: "user" as const, content: `message ${n}` },
    { role: "assistant" as const, content: `reply ${n}` },
  ],
  updatedAt: 2_000_000 + n,
});

/** A record as the store gives it back (sampling settings normalised by validation). */
const aRecord = (id: string, turns: number): AgentRecord => ({ ...populationRecord(id, turns), sampling: { temperature: 0 } });

const expectedHistory = (turns: number): AgentRecord["history"] => Array.from({ length: turns }, (_, n) => turn(n).messages).flat();

/** Waits for what a store does behind the caller (NatsStore's uploads); a no-op for others. */
const settle = async (store: StateStore): Promise<void> => {
  await (store as { settled?: () => Promise<void> }).settled?.();
};

async function commitKv(store: StateStore, id: string, bytes: Buffer, historyLength: number): Promise<KvDescriptor> {
  const staged = await store.stageKv(id, ".bin");
  await writeFile(staged.path, bytes);
  const committed = await staged.commit();
  return { ...committed, tokens: 1, fingerprint: "f".repeat(64), engine: "llama.cpp", historyLength };
}

export function describeStoreContract(name: string, subject: () => ContractSubject): void {
  describe(`StateStore contract: ${name}`, () => {
    it("a written record reads back equal, from this store object and another; has/list/count see it", async () => {
      const s = subject();
      const store = await s.writer();
      const record = aRecord("support/a.1", 3);
      await store.write(record);
      expect(await store.read("support/a.1")).toEqual(record);
      const other = await s.reader();
      expect(await other.read("support/a.1")).toEqual(record);
      expect(await other.has("support/a.1")).toBe(true);
      expect(await other.has("support/a.2")).toBe(false);
      expect(await other.read("support/a.2")).toBeUndefined();
      expect((await other.list()).ids).toEqual(["support/a.1"]);
      expect(await other.count()).toBe(1);
    });

    it("appended turns are in the history in order, read back by another store object", async () => {
      const s = subject();
      const store = await s.writer();
      await store.write(populationRecord("a", 0));
      for (let n = 0; n < 12; n++) await store.appendTurn("a", turn(n));
      const read = await (await s.reader()).read("a");
      expect(read?.history).toEqual(expectedHistory(12));
      expect(read?.updatedAt).toBe(turn(11).updatedAt);
    });

    it("compaction keeps every turn, in order, across many generations", async () => {
      const s = subject();
      const store = await s.compacting();
      await store.write(populationRecord("a", 2));
      for (let n = 0; n < 40; n++) await store.appendTurn("a", turn(n));
      const read = await (await s.reader()).read("a");
      expect(read?.history).toEqual([...populationRecord("a", 2).history, ...expectedHistory(40)]);
    });

    it("write() replaces the record and supersedes every earlier append", async () => {
      const s = subject();
      const store = await s.writer();
      await store.write(populationRecord("a", 0));
      for (let n = 0; n < 3; n++) await store.appendTurn("a", turn(n));
      const rewritten = { ...aRecord("a", 1), updatedAt: 5 };
      await store.write(rewritten);
      expect(await (await s.reader()).read("a")).toEqual(rewritten);
      await store.appendTurn("a", turn(9));
      expect((await (await s.reader()).read("a"))?.history).toEqual([...rewritten.history, ...turn(9).messages]);
    });

    it("history pages count from the newest message; bad options are RangeErrors", async () => {
      const s = subject();
      const store = await s.writer();
      await store.write(populationRecord("a", 0));
      for (let n = 0; n < 5; n++) await store.appendTurn("a", turn(n));
      const page = await store.history("a", { limit: 3 });
      expect(page).toEqual({ messages: expectedHistory(5).slice(7, 10), start: 7, total: 10 });
      expect((await store.history("a", { before: 2, limit: 5 })).messages).toEqual(expectedHistory(5).slice(0, 2));
      await expect(store.history("a", { limit: 0 })).rejects.toThrow(RangeError);
      await expect(store.history("nobody")).rejects.toMatchObject({ code: "ERR_AGENT_NOT_FOUND" });
    });

    it("appendTurn to an agent with no record is ERR_AGENT_NOT_FOUND; bad input is refused before any write", async () => {
      const store = await subject().writer();
      await expect(store.appendTurn("nobody", turn(0))).rejects.toMatchObject({ code: "ERR_AGENT_NOT_FOUND" });
      await expect(store.appendTurn("Bad..Id", turn(0))).rejects.toMatchObject({ code: "ERR_INVALID_AGENT_ID" });
      await store.write(populationRecord("a", 0));
      await expect(store.appendTurn("a", { messages: [{ role: "system", content: "x" }], updatedAt: 1 } as never)).rejects.toThrow(TypeError);
      expect((await store.read("a"))?.history).toEqual([]);
    });

    it("a saved cache: committed, named by the record, opened with its bytes here and from another store; dropped with setKv(undefined)", async () => {
      const s = subject();
      const store = await s.writer();
      await store.write(populationRecord("a", 1));
      const bytes = Buffer.alloc(300_000, 7);
      const kv = await commitKv(store, "a", bytes, 2);
      await store.setKv("a", kv, 3_000_000);
      expect((await store.read("a"))?.kv).toEqual(kv);
      expect((await readFile(await store.openKv("a", kv))).equals(bytes)).toBe(true);
      await settle(store);
      const other = await s.reader();
      expect((await other.read("a"))?.kv).toEqual(kv);
      expect((await readFile(await other.openKv("a", kv))).equals(bytes)).toBe(true);
      const wrong = {
        ...kv,
        ...(kv.checksum ? { checksum: { ...kv.checksum, value: "0".repeat(kv.checksum.value.length) } } : { sha256: "0".repeat(64) }),
      };
      await expect(other.openKv("a", wrong)).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
      // A newer cache replaces it; a turn after it keeps it.
      const newer = await commitKv(store, "a", Buffer.alloc(1000, 9), 4);
      await store.setKv("a", newer, 3_000_001);
      await store.appendTurn("a", turn(0));
      await settle(store);
      expect((await (await s.reader()).read("a"))?.kv).toEqual(newer);
      await store.setKv("a", undefined, 3_000_002);
      await settle(store);
      expect((await (await s.reader()).read("a"))?.kv).toBeUndefined();
    });

    it("remove() deletes the agent everywhere; the id can be spawned again, fresh", async () => {
      const s = subject();
      const store = await s.writer();
      await store.write(populationRecord("a", 1));
      await store.appendTurn("a", turn(0));
      await store.write(populationRecord("b", 0));
      await store.remove("a");
      const other = await s.reader();
      expect(await other.has("a")).toBe(false);
      expect(await other.read("a")).toBeUndefined();
      expect((await other.list()).ids).toEqual(["b"]);
      expect(await other.count()).toBe(1);
      await store.write(populationRecord("a", 0));
      expect((await other.read("a"))?.history).toEqual([]);
    });

    it("list pages in lexicographic order, filters by prefix, resumes after an id", async () => {
      const s = subject();
      const store = await s.writer();
      const ids = ["x/3", "a", "x/1", "x/2", "y", "x/10"];
      for (const id of ids) await store.write(populationRecord(id, 0));
      const first = await store.list({ prefix: "x/", limit: 2 });
      expect(first).toEqual({ ids: ["x/1", "x/10"], next: "x/10" });
      // The last page says so (no `next`), even when it is full.
      expect(await store.list({ prefix: "x/", after: first.next, limit: 2 })).toEqual({ ids: ["x/2", "x/3"] });
      expect(await store.list({ prefix: "x/", after: "x/3", limit: 2 })).toEqual({ ids: [] });
      expect((await store.list()).ids).toEqual([...ids].sort());
      await expect(store.list({ limit: 5000 })).rejects.toThrow(RangeError);
    });
  });
}
