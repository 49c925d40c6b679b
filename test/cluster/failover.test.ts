/**
 * Faults of agentrt nodes injected from outside, as in life, on real processes: a node SIGSTOPped past
 * its lease while another takes over, a node SIGKILLed while appending. What clients saw acknowledged is
 * recorded and the final history checked with `checkHistory`. (NATS server faults: server-faults.test.ts.)
 */
import { connect } from "@nats-io/transport-node";
import { existsSync } from "node:fs";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NatsStore } from "../../src/cluster/nats-store.js";
import { NatsCluster } from "../../src/testing/nats-cluster.js";
import { startFixture } from "../helpers/child.js";

const FIXTURES = new URL("./fixtures/", import.meta.url);
import { startClusterFixture, type ClusterFixture } from "./cluster-fixture.js";
import { checkHistory, type Attempt } from "./history-checker.js";

let fixture: ClusterFixture;
beforeAll(async () => {
  fixture = await startClusterFixture();
});
afterAll(async () => {
  await fixture?.close();
});

const lease = { ttlMs: 1500, renewEveryMs: 300, maxClockSkewMs: 200 };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `acquire` until the owner's membership has expired (ERR_NOT_OWNER until then). */
async function takeOver(store: NatsStore, id: string, since: number): Promise<void> {
  for (;;) {
    try {
      await store.acquire(id);
      return;
    } catch (error) {
      if ((error as { code?: string }).code !== "ERR_NOT_OWNER" || Date.now() - since > 15_000) throw error;
      await sleep(100);
    }
  }
}

/** What a child node attempted, from its lines. */
function childAttempts(lines: Record<string, unknown>[], writer: string): Attempt[] {
  return lines
    .filter((line) => line.ev === "attempt")
    .map((line) => ({
      turn: String(line.turn),
      writer,
      epoch: Number(line.epoch),
      acked: lines.some((l) => l.ev === "ack" && l.turn === line.turn),
    }));
}

const userTurns = (history: { role: string; content: string }[]): string[] => history.filter((m) => m.role === "user").map((m) => m.content);

describe("the test cluster itself", () => {
  it("stop() ends every server process and deletes the stores; restart() keeps a server's data", async () => {
    const single = await NatsCluster.start({ servers: 1 });
    const pid = single.pid(0)!;
    try {
      const nc = await connect({ servers: single.urls });
      const jsm = await jetstreamManager(nc);
      await jsm.streams.add({ name: "KEEP", subjects: ["keep"] });
      await jetstream(nc).publish("keep", "x");
      await nc.close();
      await single.kill(0, "SIGKILL");
      await single.restart(0);
      const again = await connect({ servers: single.urls });
      expect((await (await jetstreamManager(again)).streams.info("KEEP")).state.messages).toBe(1);
      await again.close();
    } finally {
      await single.stop();
    }
    expect(() => process.kill(single.pid(0) ?? pid, 0)).toThrow();
    expect(existsSync(single.dir)).toBe(false);
  });

  it("runs three JetStream servers on loopback ports other than 4222, and R3 streams span all three", async () => {
    const { cluster } = fixture;
    expect(cluster.urls).toHaveLength(3);
    for (const url of cluster.urls) expect(url).toMatch(/^nats:\/\/127\.0\.0\.1:(?!4222$)\d+$/);
    const nc = await fixture.connect();
    const jsm = await jetstreamManager(nc);
    const si = await jsm.streams.add({ name: "HARNESS_PROBE", subjects: ["harness.probe"], num_replicas: 3 });
    expect([si.cluster?.leader, ...(si.cluster?.replicas ?? []).map((r) => r.name)].sort()).toEqual(cluster.names);
    await jsm.streams.delete("HARNESS_PROBE");
  });
});

describe("a node paused past its lease (SIGSTOP)", () => {
  it("another node takes over and answers; the resumed node's commit is refused; no turn lost, none twice, epochs never overlap", async () => {
    const prefix = fixture.prefix();
    const id = "support/paused";
    const child = startFixture(
      "node.ts",
      [
        JSON.stringify({
          urls: fixture.cluster.urls,
          dir: fixture.cluster.dir,
          prefix,
          node: "node-a",
          id,
          create: true,
          lease,
          pauseMs: 20,
          maxTurns: 10_000,
        }),
      ],
      FIXTURES,
    );
    try {
      await child.next("ready");
      for (let n = 0; n < 5; n++) await child.next("ack");
      child.process.kill("SIGSTOP");
      const stoppedAt = Date.now();

      const b = await fixture.store("node-b", prefix, { lease });
      await b.open();
      await takeOver(b, id, stoppedAt);
      // Taken only once A's membership had expired (its last renewal at most renewEveryMs before the stop).
      expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(lease.ttlMs - lease.renewEveryMs);
      const epochB = (await b.owner(id))!.epoch;
      const attemptsB: Attempt[] = [];
      for (let n = 0; n < 5; n++) {
        const turn = `node-b-${n}`;
        await b.appendTurn(id, {
          messages: [
            { role: "user", content: turn },
            { role: "assistant", content: `re ${turn}` },
          ],
          updatedAt: Date.now(),
        });
        attemptsB.push({ turn, writer: "node-b", epoch: epochB, acked: true });
      }

      child.process.kill("SIGCONT");
      const refused = await child.next("error");
      expect(refused.code).toBe("ERR_LEASE_LOST");
      await child.exited;

      const attemptsA = childAttempts(child.lines, "node-a");
      expect(attemptsA.every((a) => a.epoch < epochB)).toBe(true);
      const history = userTurns((await b.read(id))!.history);
      expect(checkHistory(history, [...attemptsA, ...attemptsB])).toEqual([]);
      // The new owner's turns are the last word, and the refused turn is nowhere.
      expect(history.slice(-5)).toEqual(attemptsB.map((a) => a.turn));
      expect(history).not.toContain(refused.turn);
      // The resumed node's error was a lease loss detected by fencing or by its own membership check.
      expect(String(refused.message)).toMatch(/lease/);
    } finally {
      child.process.kill("SIGCONT");
      child.process.kill("SIGKILL");
    }
  });
});

describe("a node SIGKILLed while appending", () => {
  it("another node takes the agent over once the membership expires; every acknowledged turn survives, once", async () => {
    const prefix = fixture.prefix();
    const id = "support/killed";
    const child = startFixture(
      "node.ts",
      [
        JSON.stringify({
          urls: fixture.cluster.urls,
          dir: fixture.cluster.dir,
          prefix,
          node: "node-a",
          id,
          create: true,
          lease,
          pauseMs: 0,
          maxTurns: 10_000,
        }),
      ],
      FIXTURES,
    );
    try {
      await child.next("ready");
      for (let n = 0; n < 20; n++) await child.next("ack");
      child.process.kill("SIGKILL");
      const killedAt = Date.now();
      await child.exited;
      const b = await fixture.store("node-b", prefix, { lease });
      await b.open();
      await takeOver(b, id, killedAt);
      const epochB = (await b.owner(id))!.epoch;
      await b.appendTurn(id, { messages: [{ role: "user", content: "node-b-0" }], updatedAt: Date.now() });
      const history = userTurns((await b.read(id))!.history);
      const attempts = [...childAttempts(child.lines, "node-a"), { turn: "node-b-0", writer: "node-b", epoch: epochB, acked: true }];
      expect(checkHistory(history, attempts)).toEqual([]);
      expect(history.at(-1)).toBe("node-b-0");
    } finally {
      child.process.kill("SIGKILL");
    }
  });
});
