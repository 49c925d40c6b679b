/**
 * Saved caches across nodes and hostile cluster input: the object store is off the path of the node that
 * passivated (local copy first, the head names the upload only once it is complete), other nodes
 * download and verify, and damaged objects, entries and records are coded errors before anyone uses them.
 */
import { readFile, writeFile } from "node:fs/promises";
import { jetstream } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NatsStore } from "../../src/cluster/nats-store.js";
import type { KvDescriptor } from "../../src/store/state-store.js";
import { populationRecord } from "../store/populate.js";
import { startClusterFixture, type ClusterFixture } from "./cluster-fixture.js";

let fixture: ClusterFixture;
beforeAll(async () => {
  fixture = await startClusterFixture();
});
afterAll(async () => {
  await fixture?.close();
});

async function saveCache(store: NatsStore, id: string, bytes: Buffer): Promise<KvDescriptor> {
  const staged = await store.stageKv(id, ".bin");
  await writeFile(staged.path, bytes);
  const committed = await staged.commit();
  const kv: KvDescriptor = { ...committed, tokens: 10, fingerprint: "f".repeat(64), engine: "llama.cpp", historyLength: 0 };
  await store.setKv(id, kv, Date.now());
  return kv;
}

/** The live objects holding `id`'s saved caches. */
async function objectsOf(store: NatsStore, id: string): Promise<string[]> {
  return (await store.buckets.objects.list()).filter((o) => !o.deleted && o.name.startsWith(`${id}/`)).map((o) => o.name);
}

const pattern = (size: number, seed: number): Buffer => {
  const bytes = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + seed) & 0xff;
  return bytes;
};

async function twoNodes(): Promise<{ a: NatsStore; b: NatsStore; prefix: string }> {
  const prefix = fixture.prefix();
  const a = await fixture.store("node-a", prefix);
  const b = await fixture.store("node-b", prefix);
  await a.open();
  return { a, b, prefix };
}

describe("saved caches in the cluster", () => {
  it("the passivating node rehydrates from its local copy at once; others see the cache only once uploaded, then download and verify it", async () => {
    const { a, b } = await twoNodes();
    await a.write(populationRecord("big", 1));
    const bytes = pattern(16 * 1024 * 1024, 1);
    const kv = await saveCache(a, "big", bytes);
    // setKv resolved before the upload finished: the head does not name the cache yet…
    expect((await b.read("big"))?.kv).toBeUndefined();
    // …but the node that saved it reads it and opens it locally, without the object store.
    expect((await a.read("big"))?.kv).toEqual(kv);
    await a.openKv("big", kv);
    expect(a.stats.localHits).toBe(1);
    await a.settled();
    expect((await b.read("big"))?.kv).toEqual(kv);
    const path = await b.openKv("big", kv);
    expect((await readFile(path)).equals(bytes)).toBe(true);
    expect(b.stats.downloads).toBe(1);
    await b.openKv("big", kv);
    expect(b.stats.downloads).toBe(1); // the second time from its local cache
    expect(await b.bytesOnDisk("big")).toBeGreaterThan(bytes.length);
  });

  it("a newer cache supersedes an upload still in flight; the older object is never named and is deleted", async () => {
    const { a, b } = await twoNodes();
    await a.write(populationRecord("x", 0));
    await saveCache(a, "x", pattern(4 * 1024 * 1024, 2));
    const newer = await saveCache(a, "x", pattern(1024, 3));
    await a.settled();
    expect((await b.read("x"))?.kv).toEqual(newer);
    const names = await objectsOf(a, "x");
    expect(names).toHaveLength(1);
    expect(names[0]).toMatch(new RegExp(`^x/${(await a.owner("x"))!.epoch}/[0-9a-f]{8}-${newer.file}$`));
  });
  it("a rewrite naming the cache still uploading keeps that upload (no second one); a rewrite without a cache drops it", async () => {
    const { a, b } = await twoNodes();
    await a.write(populationRecord("w", 0));
    const kv = await saveCache(a, "w", pattern(8 * 1024 * 1024, 9));
    const current = (await a.read("w"))!;
    expect(current.kv).toEqual(kv); // the pending cache, on the node that saved it
    await a.write({ ...current, history: populationRecord("w", 2).history });
    await a.settled();
    expect((await b.read("w"))?.kv).toEqual(kv);
    expect((await b.read("w"))?.history).toHaveLength(4);
    expect(a.stats.uploads).toBe(1);
    expect(await objectsOf(a, "w")).toHaveLength(1);
    await a.write({ ...populationRecord("w", 1), kv: undefined });
    expect((await b.read("w"))?.kv).toBeUndefined();
    expect(await objectsOf(a, "w")).toEqual([]);
  });
});

describe("saved caches and compaction", () => {
  it("turns and compactions while a cache uploads neither cancel the upload nor drop the committed cache", async () => {
    const prefix = fixture.prefix();
    const a = await fixture.store("node-a", prefix, { compaction: { maxEntries: 2 } });
    const b = await fixture.store("node-b", prefix);
    await a.open();
    await a.write(populationRecord("c", 0));
    const first = await saveCache(a, "c", pattern(1000, 10));
    await a.settled();
    const second = await saveCache(a, "c", pattern(8 * 1024 * 1024, 11));
    for (let n = 0; n < 5; n++) await a.appendTurn("c", { messages: [{ role: "user", content: `t${n}` }], updatedAt: 10 + n });
    expect(a.stats.compactions).toBeGreaterThanOrEqual(2);
    expect((await b.read("c"))?.kv).toEqual(first); // still the committed one while the second uploads
    await a.settled();
    const read = (await b.read("c"))!;
    expect(read.kv).toEqual(second);
    expect(read.history.map((m) => m.content)).toEqual(["t0", "t1", "t2", "t3", "t4"]);
  });
});

describe("hostile cluster input", () => {
  it("an object replaced with other bytes of the same size is ERR_STATE_CORRUPT on a node without a local copy", async () => {
    const { a, b } = await twoNodes();
    await a.write(populationRecord("victim", 0));
    const kv = await saveCache(a, "victim", pattern(200_000, 4));
    await a.settled();
    const [name] = await objectsOf(a, "victim");
    await a.buckets.objects.putBlob({ name: name! }, pattern(200_000, 5));
    await expect(b.openKv("victim", kv)).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    // The node with the intact local copy is unaffected.
    await expect(a.openKv("victim", kv)).resolves.toContain(kv.file);
  });

  it("an object whose chunks were tampered with fails the digest check: ERR_STATE_CORRUPT, nothing crashes", async () => {
    const { a, b, prefix } = await twoNodes();
    await a.write(populationRecord("victim", 0));
    const kv = await saveCache(a, "victim", pattern(300_000, 6));
    await a.settled();
    const info = (await a.buckets.objects.info((await objectsOf(a, "victim"))[0]!))!;
    const js = jetstream(await fixture.connect());
    // Purge the real chunks and publish garbage of the same total size on the object's chunk subject.
    const { jetstreamManager } = await import("@nats-io/jetstream");
    const jsm = await jetstreamManager(await fixture.connect());
    await jsm.streams.purge(`OBJ_${prefix}-kv`, { filter: `$O.${prefix}-kv.C.${info.nuid}` });
    await js.publish(`$O.${prefix}-kv.C.${info.nuid}`, pattern(info.size, 7));
    await expect(b.openKv("victim", kv)).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
  });

  it("a missing object, or a descriptor the head does not name, is ERR_STATE_CORRUPT", async () => {
    const { a, b } = await twoNodes();
    await a.write(populationRecord("gone", 0));
    const kv = await saveCache(a, "gone", pattern(10_000, 8));
    await a.settled();
    await a.buckets.objects.delete((await objectsOf(a, "gone"))[0]!);
    await expect(b.openKv("gone", kv)).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    await expect(b.openKv("gone", { ...kv, file: "kv-0000000000000000.bin" })).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    await expect(b.openKv("gone", { ...kv, file: "../../etc/passwd" })).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
  });

  it("a damaged or missing journal entry or record chunk is ERR_STATE_CORRUPT on read, never a shorter history", async () => {
    const { a, b } = await twoNodes();
    await a.write(populationRecord("j", 1));
    await a.appendTurn("j", { messages: [{ role: "user", content: "hello" }], updatedAt: 5 });
    const entryKeys: string[] = [];
    for await (const key of await a.buckets.data.keys("j.j.>")) entryKeys.push(key);
    expect(entryKeys).toHaveLength(1);
    await a.buckets.data.put(entryKeys[0]!, Buffer.from('{"format":"agentrt-entry","sha256":"00","body":"{}"}'));
    await expect(b.read("j")).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    await a.write(populationRecord("r", 1));
    const recordKeys: string[] = [];
    for await (const key of await a.buckets.data.keys("r.r.>")) recordKeys.push(key);
    await a.buckets.data.put(recordKeys[0]!, Buffer.from("garbage"));
    await expect(b.read("r")).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    await expect(b.history("r")).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    // A journal entry key deleted under the head: corrupt, not an empty history.
    await a.buckets.data.purge(entryKeys[0]!);
    await expect(b.read("j")).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
  });
});
