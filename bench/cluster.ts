/**
 * Cluster benchmark, on a real 3-server JetStream cluster on loopback (R3 buckets):
 *
 * - **Heartbeat traffic**: one node owns `--agents` agents (default 10 000) and sits idle for
 *   `--window` seconds; the KV writes it makes per second are counted on the servers (stream sequence
 *   deltas of the members, heads and data buckets). Membership is per node, so this should be one write
 *   per renewal interval whatever the number of agents; per-agent leases would need agents / interval.
 * - **Turn commits**: appendTurn latency (an entry + a head compare-and-set, each replicated to a
 *   majority) against DirectoryStore's (a journal append + fdatasync) on this disk.
 * - **Saved caches**: a `--mib` MiB file (default 48) through the object store (upload = put, download =
 *   get + sha256 on another node) against the local passivation (write + fsync + sha256 + rename) and a
 *   local rehydration (sha256 of the file, page cache) of the same bytes.
 *
 *   npm run bench:cluster
 *   npm run bench:cluster -- --agents 2000 --window 5 --mib 16 --reps 3
 */
import { randomFillSync } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { formatTable } from "../src/cli/table.js";
import { NatsStore } from "../src/cluster/nats-store.js";
import { sha256File } from "../src/store/checksum.js";
import { DirectoryStore } from "../src/store/directory-store.js";
import { RECORD_FORMAT_VERSION, type AgentRecord, type KvDescriptor, type StateStore } from "../src/store/state-store.js";
import { NatsCluster } from "../src/testing/nats-cluster.js";
import { CORES, intOption, median, percentile, progress, writeResult } from "./lib.js";

const { values } = parseArgs({
  options: {
    agents: { type: "string" },
    window: { type: "string" },
    "renew-ms": { type: "string" },
    turns: { type: "string" },
    mib: { type: "string" },
    reps: { type: "string" },
  },
});
const agents = intOption("agents", values.agents, 10_000);
const windowS = intOption("window", values.window, 10);
const renewEveryMs = intOption("renew-ms", values["renew-ms"], 1000);
const turns = intOption("turns", values.turns, 200);
const mib = intOption("mib", values.mib, 48);
const reps = intOption("reps", values.reps, 3);
const MB = 1e6;

const record = (id: string): AgentRecord => ({
  formatVersion: RECORD_FORMAT_VERSION,
  id,
  role: "support",
  systemPrompt: "You are customer support.",
  sampling: {},
  history: [{ role: "user", content: `hello from ${id}` }],
  createdAt: 1,
  updatedAt: 1,
});

const turn = (n: number) => ({
  messages: [
    { role: "user" as const, content: `Question ${n}: what is the status of my order?` },
    { role: "assistant" as const, content: `Answer ${n}: your order ships tomorrow.` },
  ],
  updatedAt: 2_000_000 + n,
});

async function timeAppends(store: StateStore, id: string): Promise<number[]> {
  const samples: number[] = [];
  for (let n = 0; n < turns; n++) {
    const start = performance.now();
    await store.appendTurn(id, turn(n));
    samples.push(performance.now() - start);
  }
  return samples;
}

const cluster = await NatsCluster.start();
const work = await mkdtemp(join(tmpdir(), "agentrt-bench-cluster-"));
const nc = await connect({ servers: cluster.urls });
const nc2 = await connect({ servers: cluster.urls });
try {
  const prefix = "bench";
  const lease = { ttlMs: renewEveryMs * 3, renewEveryMs, maxClockSkewMs: 500 };
  const node = await NatsStore.create({ connection: nc, node: "owner", prefix, cacheDir: join(work, "owner"), lease });
  const other = await NatsStore.create({ connection: nc2, node: "other", prefix, cacheDir: join(work, "other"), lease });
  await node.open();

  // ---- heartbeat traffic while owning `agents` agents --------------------------------------------
  progress(`creating ${agents} agents owned by one node…`);
  let next = 0;
  const created = performance.now();
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (next < agents) {
        const n = next++;
        await node.write(record(`agent/${String(n).padStart(5, "0")}`));
        if ((n + 1) % 2000 === 0) progress(`  ${n + 1} agents`);
      }
    }),
  );
  const createS = (performance.now() - created) / 1000;
  const jsm = await jetstreamManager(nc);
  const seqs = async () => {
    const out: Record<string, number> = {};
    for (const bucket of ["members", "heads", "data"]) out[bucket] = (await jsm.streams.info(`KV_${prefix}-${bucket}`)).state.last_seq;
    return out;
  };
  progress(`idle for ${windowS} s, counting KV writes on the servers…`);
  const before = await seqs();
  const renewalsBefore = node.stats.renewals;
  await new Promise((resolve) => setTimeout(resolve, windowS * 1000));
  const after = await seqs();
  const heartbeat = {
    agentsOwned: agents,
    windowS,
    renewEveryMs,
    membersWritesPerS: (after.members! - before.members!) / windowS,
    headsWritesPerS: (after.heads! - before.heads!) / windowS,
    dataWritesPerS: (after.data! - before.data!) / windowS,
    renewalsSent: node.stats.renewals - renewalsBefore,
    /** What leases renewed per agent would write at the same interval. */
    perAgentLeaseWritesPerS: agents / (renewEveryMs / 1000),
    createAgentsPerS: agents / createS,
  };
  const kvOpsPerS = heartbeat.membersWritesPerS + heartbeat.headsWritesPerS + heartbeat.dataWritesPerS;

  // ---- turn commits: NatsStore vs DirectoryStore --------------------------------------------------
  progress(`${turns} appendTurn on each store…`);
  await node.write(record("latency/nats"));
  const dir = await DirectoryStore.open(join(work, "dir"));
  await dir.write(record("latency/dir"));
  const natsAppend = await timeAppends(node, "latency/nats");
  const dirAppend = await timeAppends(dir, "latency/dir");
  await dir.dispose();

  // ---- saved caches: object store vs local disk ---------------------------------------------------
  progress(`${reps} × ${mib} MiB through the object store and the local disk…`);
  const bytes = randomFillSync(Buffer.allocUnsafe(mib * 1024 * 1024));
  await node.write(record("cache/x"));
  const samples = { localPassivate: [] as number[], localRehydrate: [] as number[], objectPut: [] as number[], objectGet: [] as number[] };
  for (let rep = 0; rep < reps; rep++) {
    bytes[rep] = (bytes[rep]! + 1) & 0xff; // a new file (and object) each time
    let start = performance.now();
    const staged = await node.stageKv("cache/x", ".bin");
    await writeFile(staged.path, bytes);
    const committed = await staged.commit();
    samples.localPassivate.push(bytes.length / MB / ((performance.now() - start) / 1000));
    const kv: KvDescriptor = { ...committed, tokens: 1, fingerprint: "f".repeat(64), engine: "llama.cpp", historyLength: 1 };
    start = performance.now();
    await sha256File(join(work, "owner", "cache%2Fx", kv.file));
    samples.localRehydrate.push(bytes.length / MB / ((performance.now() - start) / 1000));
    start = performance.now();
    await node.setKv("cache/x", kv, 3);
    await node.settled();
    samples.objectPut.push(bytes.length / MB / ((performance.now() - start) / 1000));
    start = performance.now();
    await other.openKv("cache/x", kv);
    samples.objectGet.push(bytes.length / MB / ((performance.now() - start) / 1000));
    await rm(join(work, "other"), { recursive: true, force: true });
  }

  const rows = [
    {
      measure: `KV writes/s, node owning ${agents} agents, idle`,
      value: kvOpsPerS,
      note: `membership ${heartbeat.membersWritesPerS.toFixed(2)}/s (renewal every ${renewEveryMs} ms); per-agent leases would be ${heartbeat.perAgentLeaseWritesPerS}/s`,
    },
    { measure: "agents created/s (write + head create, 64 in flight)", value: heartbeat.createAgentsPerS, note: "" },
    { measure: "appendTurn p50 ms, NatsStore (R3)", value: median(natsAppend), note: `p99 ${percentile(natsAppend, 99).toFixed(2)} ms` },
    { measure: "appendTurn p50 ms, DirectoryStore (fsync)", value: median(dirAppend), note: `p99 ${percentile(dirAppend, 99).toFixed(2)} ms` },
    { measure: `${mib} MiB local passivation MB/s`, value: median(samples.localPassivate), note: "write + fsync + sha256 + rename" },
    { measure: `${mib} MiB local rehydration check MB/s`, value: median(samples.localRehydrate), note: "sha256 from the page cache" },
    { measure: `${mib} MiB object store put MB/s`, value: median(samples.objectPut), note: "behind the passivation, off its critical path" },
    { measure: `${mib} MiB object store get MB/s (other node)`, value: median(samples.objectGet), note: "download + sha256" },
  ];
  process.stdout.write(`${formatTable(rows)}\n`);
  const path = await writeResult("cluster.json", {
    date: new Date().toISOString(),
    cores: CORES,
    natsServer: "nats-server 2.9.10 ×3, loopback, R3 file storage",
    heartbeat: { ...heartbeat, kvWritesPerS: kvOpsPerS },
    appendTurnMs: {
      nats: { p50: median(natsAppend), p99: percentile(natsAppend, 99) },
      directory: { p50: median(dirAppend), p99: percentile(dirAppend, 99) },
    },
    savedCacheMBps: Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, { median: median(v), samples: v }])),
    mib,
  });
  progress(`wrote ${path}`);
  await other.dispose();
  await node.dispose();
} finally {
  await nc.close().catch(() => {});
  await nc2.close().catch(() => {});
  await cluster.stop();
  await rm(work, { recursive: true, force: true });
}
