/**
 * Shared setup of the cluster tests: one real 3-server NATS cluster per test file (started in
 * `beforeAll`, stopped in `afterAll`), and NatsStores on it, each test on buckets of its own prefix.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { NatsStore, type NatsStoreOptions } from "../../src/cluster/nats-store.js";
import { NatsCluster } from "../../src/testing/nats-cluster.js";

export interface ClusterFixture {
  cluster: NatsCluster;
  /** A fresh bucket prefix (isolates one test's state from another's on the same cluster). */
  prefix(): string;
  /** A connection to every server, closed at the end. */
  connect(): Promise<NatsConnection>;
  /** A NatsStore as node `node` on buckets `prefix`, its cache folder fresh; disposed at the end. */
  store(node: string, prefix: string, options?: Partial<NatsStoreOptions>): Promise<NatsStore>;
  /** Closes connections and stores, removes folders, stops the servers. */
  close(): Promise<void>;
}

export async function startClusterFixture(): Promise<ClusterFixture> {
  const cluster = await NatsCluster.start();
  const connections: NatsConnection[] = [];
  const stores: NatsStore[] = [];
  const dirs: string[] = [];
  let n = 0;
  const fixture: ClusterFixture = {
    cluster,
    prefix: () => `t${process.pid}-${n++}`,
    connect: async () => {
      // Pings every second: a hung server (SIGSTOP) is noticed in ~3 s and the client moves to another.
      const nc = await connect({ servers: cluster.urls, maxReconnectAttempts: -1, reconnectTimeWait: 100, pingInterval: 1000, maxPingOut: 2 });
      connections.push(nc);
      return nc;
    },
    store: async (node, prefix, options = {}) => {
      const cacheDir = await mkdtemp(join(tmpdir(), `agentrt-cache-${node}-`));
      dirs.push(cacheDir);
      const store = await NatsStore.create({
        connection: options.connection ?? (await fixture.connect()),
        node,
        cacheDir,
        prefix,
        fsync: false,
        ...options,
      });
      stores.push(store);
      return store;
    },
    close: async () => {
      try {
        for (const store of stores) await store.dispose().catch(() => {});
        for (const nc of connections) await nc.close().catch(() => {});
        for (const dir of dirs) await rm(dir, { recursive: true, force: true });
      } finally {
        await cluster.stop();
      }
    },
  };
  return fixture;
}
