import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { DirectoryStore } from "../../src/store/directory-store.js";
import { startClusterFixture, type ClusterFixture } from "./cluster-fixture.js";
import { describeStoreContract } from "./store-contract.js";

const roots: string[] = [];
afterAll(async () => {
  for (const root of roots) await rm(root, { recursive: true, force: true });
});

describeStoreContract("DirectoryStore", () => {
  const root = mkdtemp(join(tmpdir(), "agentrt-contract-"));
  void root.then((path) => roots.push(path));
  return {
    writer: async () => DirectoryStore.open(await root, { fsync: false }),
    reader: async () => new DirectoryStore(await root, { fsync: false }),
    compacting: async () => DirectoryStore.open(await root, { fsync: false, compaction: { minBytes: 0, ratio: 0.05 } }),
  };
});

let fixture: ClusterFixture;
beforeAll(async () => {
  fixture = await startClusterFixture();
});
afterAll(async () => {
  await fixture?.close();
});

describeStoreContract("NatsStore (3-server JetStream cluster)", () => {
  const prefix = fixture.prefix();
  let readers = 0;
  return {
    writer: async () => {
      const store = await fixture.store("writer", prefix);
      await store.open();
      return store;
    },
    // Another node, with its own cache folder: it reads what the writer committed, through the cluster.
    reader: async () => fixture.store(`reader-${readers++}`, prefix),
    compacting: async () => {
      const store = await fixture.store("writer", prefix, { compaction: { minBytes: 0, ratio: 0.05, maxEntries: 5 } });
      await store.open();
      return store;
    },
  };
});
