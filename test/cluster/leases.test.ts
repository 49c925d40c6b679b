/**
 * Membership and per-agent leases on a real 3-server cluster, in one process: take, renew, expire and
 * take over by compare-and-set, and the fencing of a stale owner's commit. Time is injected: a node
 * whose clock is frozen believes its lease still holds (a paused process), one whose clock runs ahead
 * believes the other's has expired.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Clock } from "../../src/clock.js";
import { encodeHead, type Head } from "../../src/cluster/head.js";
import { keys } from "../../src/cluster/keys.js";
import { Membership } from "../../src/cluster/membership.js";
import { openClusterBuckets } from "../../src/cluster/buckets.js";
import { isWrongLastSequence } from "../../src/cluster/nats-errors.js";
import type { NatsStore } from "../../src/cluster/nats-store.js";
import { populationRecord } from "../store/populate.js";
import { checkHistory, type Attempt } from "./history-checker.js";
import { startClusterFixture, type ClusterFixture } from "./cluster-fixture.js";

let fixture: ClusterFixture;
beforeAll(async () => {
  fixture = await startClusterFixture();
});
afterAll(async () => {
  await fixture?.close();
});

/** The system clock shifted by `offsetMs`, or frozen at `frozenAt` (timers still real). */
function clock(options: { offsetMs?: number; frozenAt?: number } = {}): Clock {
  return {
    now: () => options.frozenAt ?? Date.now() + (options.offsetMs ?? 0),
    setTimeout: (callback, ms) => setTimeout(callback, ms),
    clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
  };
}

const turn = (text: string, at = 1) => ({
  messages: [
    { role: "user" as const, content: text },
    { role: "assistant" as const, content: `re: ${text}` },
  ],
  updatedAt: at,
});

const lease = { ttlMs: 1000, renewEveryMs: 250, maxClockSkewMs: 100 };

describe("compare-and-set under racing writers", () => {
  it("of six writers on one revision (two per server), exactly one wins, every round (nats-server < 2.9.21 lets several through a plain kv.update)", async () => {
    const { connect } = await import("@nats-io/transport-node");
    const prefix = fixture.prefix();
    const conns = await Promise.all([...fixture.cluster.urls, ...fixture.cluster.urls].map((url) => connect({ servers: [url] })));
    try {
      const all = [];
      for (const nc of conns) all.push(await openClusterBuckets(nc, { prefix }));
      const { heads } = all[0]!;
      await heads.put("h.k", Buffer.from("0"));
      for (let round = 0; round < 100; round++) {
        const current = (await heads.get("h.k"))!;
        const revision = current.revision;
        const before = Buffer.from(current.value).toString();
        const results = await Promise.allSettled(all.map((b, i) => b.headsCas.put("h.k", Buffer.from(`${round}-${i}`), revision)));
        const won = results.flatMap((r, i) => (r.status === "fulfilled" ? [i] : []));
        // A timeout on a loaded machine is an unknown outcome, not a loss: the value tells who won.
        const unknown = results.flatMap((r, i) => (r.status === "rejected" && !isWrongLastSequence(r.reason) ? [i] : []));
        const value = Buffer.from((await heads.get("h.k"))!.value).toString();
        expect(won.length, `round ${round}: ${won.length} writers won`).toBeLessThanOrEqual(1);
        if (won.length === 1) expect(value).toBe(`${round}-${won[0]}`);
        else expect([before, ...unknown.map((i) => `${round}-${i}`)], `round ${round}: no winner, value ${value}`).toContain(value);
      }
    } finally {
      for (const nc of conns) await nc.close();
    }
  });
});

describe("membership", () => {
  it("one live incarnation per node name: a second gets ERR_STATE_LOCKED; after leave() a new incarnation joins", async () => {
    const { members, membersCas } = await openClusterBuckets(await fixture.connect(), { prefix: fixture.prefix() });
    const first = await Membership.join(members, membersCas, { node: "n1", ...lease });
    await expect(Membership.join(members, membersCas, { node: "n1", ...lease })).rejects.toMatchObject({ code: "ERR_STATE_LOCKED" });
    await first.leave();
    const second = await Membership.join(members, membersCas, { node: "n1", ...lease });
    expect(second.incarnation).not.toBe(first.incarnation);
    expect(await second.isAlive(first.self)).toBe(false);
    await second.leave();
    await expect(Membership.join(members, membersCas, { node: "Bad Name" })).rejects.toThrow(TypeError);
  });

  it("renewal is one write per interval, however many agents the node owns", async () => {
    const store = await fixture.store("busy", fixture.prefix(), { lease });
    await store.open();
    for (let n = 0; n < 200; n++) await store.write(populationRecord(`agent-${n}`, 0));
    const before = store.stats.renewals;
    await new Promise((resolve) => setTimeout(resolve, 1300));
    const renewals = store.stats.renewals - before;
    // 1300 ms at one renewal per 250 ms: 5 (± timer slack), not 5 × 200.
    expect(renewals).toBeGreaterThanOrEqual(3);
    expect(renewals).toBeLessThanOrEqual(6);
    expect(store.membership?.isValid()).toBe(true);
    expect(store.holds("agent-199")).toBe(true);
  });

  it("a membership record replaced by another process is lost for good: commits fail ERR_LEASE_LOST", async () => {
    const prefix = fixture.prefix();
    const store = await fixture.store("victim", prefix, { lease });
    await store.open();
    await store.write(populationRecord("a", 0));
    const { members } = await openClusterBuckets(await fixture.connect(), { prefix });
    await members.put(keys.member("victim"), Buffer.from("not a membership record"));
    await store.membership!.renew();
    expect(store.membership!.lost).toMatch(/replaced/);
    await expect(store.appendTurn("a", turn("x"))).rejects.toMatchObject({ code: "ERR_LEASE_LOST" });
  });
});

describe("leases", () => {
  it("a new agent is owned by its writer; another live node gets ERR_NOT_OWNER naming the owner", async () => {
    const prefix = fixture.prefix();
    const a = await fixture.store("node-a", prefix, { lease });
    const b = await fixture.store("node-b", prefix, { lease });
    await a.open();
    await b.open();
    await a.write(populationRecord("support/1", 1));
    expect((await b.owner("support/1"))?.node).toBe("node-a");
    await expect(b.acquire("support/1")).rejects.toMatchObject({ code: "ERR_NOT_OWNER", details: { owner: "node-a" } });
    await expect(b.appendTurn("support/1", turn("b"))).rejects.toMatchObject({ code: "ERR_NOT_OWNER" });
    await expect(b.write(populationRecord("support/1", 0))).rejects.toMatchObject({ code: "ERR_NOT_OWNER" });
    await expect(b.acquire("nobody")).rejects.toMatchObject({ code: "ERR_AGENT_NOT_FOUND" });
    // Reads need no lease.
    expect((await b.read("support/1"))?.history).toHaveLength(2);
  });

  it("release() hands the agent over at once, with a higher epoch", async () => {
    const prefix = fixture.prefix();
    const a = await fixture.store("node-a", prefix, { lease });
    const b = await fixture.store("node-b", prefix, { lease });
    await a.open();
    await b.open();
    await a.write(populationRecord("x", 0));
    const before = (await a.owner("x"))!.epoch;
    await a.release("x");
    await b.acquire("x");
    const after = (await b.owner("x"))!;
    expect(after.node).toBe("node-b");
    expect(after.epoch).toBeGreaterThan(before);
    await expect(a.appendTurn("x", turn("late"))).rejects.toMatchObject({ code: "ERR_NOT_OWNER" });
  });

  it("after the owner's membership expires another node takes over; the stale owner's commit is refused (fencing) and its turn never appears", async () => {
    const prefix = fixture.prefix();
    const start = Date.now();
    // A: paused in its own eyes — its clock stands still, so its local check keeps passing.
    const a = await fixture.store("node-a", prefix, { lease, clock: clock({ frozenAt: start }) });
    await a.open();
    await a.write(populationRecord("agent", 0));
    await a.appendTurn("agent", turn("a1"));
    a.membership!.halt(); // stops renewing, like a SIGSTOPped process
    const epochA = (await a.owner("agent"))!.epoch;
    // B: its clock is past A's expiry.
    const b = await fixture.store("node-b", prefix, { lease, clock: clock({ offsetMs: 2 * lease.ttlMs }), compaction: { maxEntries: 4 } });
    await b.open();
    await b.acquire("agent");
    const epochB = (await b.owner("agent"))!.epoch;
    expect(epochB).toBeGreaterThan(epochA);
    await b.appendTurn("agent", turn("b1"));
    // A still thinks it owns the agent: the refusal comes from the head's compare-and-set.
    expect(a.holds("agent")).toBe(true);
    await expect(a.appendTurn("agent", turn("a2"))).rejects.toMatchObject({ code: "ERR_LEASE_LOST" });
    expect(a.holds("agent")).toBe(false);
    await expect(a.appendTurn("agent", turn("a3"))).rejects.toMatchObject({ code: "ERR_LEASE_LOST" });
    await expect(a.write(populationRecord("agent", 5))).rejects.toMatchObject({ code: expect.stringMatching(/ERR_LEASE_LOST|ERR_NOT_OWNER/) });
    await expect(a.setKv("agent", undefined, 9)).rejects.toMatchObject({ code: "ERR_LEASE_LOST" });
    await expect(a.remove("agent")).rejects.toMatchObject({ code: "ERR_LEASE_LOST" });
    expect(a.stats.fenced).toBeGreaterThanOrEqual(1);
    const history = (await b.read("agent"))!.history.map((m) => m.content);
    expect(history).toEqual(["a1", "re: a1", "b1", "re: b1"]);
    // B goes on; compaction sweeps A's orphaned entry (never named by any head).
    for (let n = 2; n < 6; n++) await b.appendTurn("agent", turn(`b${n}`));
    expect((await a.read("agent"))!.history.filter((m) => m.role === "user").map((m) => m.content)).toEqual(["a1", "b1", "b2", "b3", "b4", "b5"]);
    expect(b.stats.compactions).toBeGreaterThanOrEqual(1);
    const left: string[] = [];
    for (const filter of keys.dataFilters("agent")) for await (const key of await b.buckets.data.keys(filter)) left.push(key);
    expect(left.filter((key) => key.endsWith(`.${epochA}`) && key.startsWith("j."))).toEqual([]);
  });

  it("a restarted node (new incarnation, same name) takes its old agents back at once, with a new epoch", async () => {
    const prefix = fixture.prefix();
    const old = await fixture.store("node-a", prefix, { lease });
    await old.open();
    await old.write(populationRecord("mine", 0));
    const epoch = (await old.owner("mine"))!.epoch;
    await old.dispose(); // leaves: its membership record is deleted
    const restarted = await fixture.store("node-a", prefix, { lease });
    await restarted.open();
    await restarted.acquire("mine");
    expect((await restarted.owner("mine"))!.epoch).toBeGreaterThan(epoch);
    await restarted.appendTurn("mine", turn("again"));
  });

  it("a head replaced by a value that is not ours: the owner's commit is ERR_LEASE_LOST, readers get ERR_STATE_FOREIGN/CORRUPT, list skips nothing valid and crashes on nothing", async () => {
    const prefix = fixture.prefix();
    const a = await fixture.store("node-a", prefix, { lease });
    await a.open();
    await a.write(populationRecord("good", 0));
    await a.write(populationRecord("victim", 0));
    const { heads } = await openClusterBuckets(await fixture.connect(), { prefix });
    await heads.put(keys.head("victim"), Buffer.from(JSON.stringify({ owner: "mallory", epoch: 1e9 })));
    await expect(a.appendTurn("victim", turn("x"))).rejects.toMatchObject({ code: "ERR_LEASE_LOST" });
    await expect(a.read("victim")).rejects.toMatchObject({ code: "ERR_STATE_FOREIGN" });
    const b = await fixture.store("node-b", prefix, { lease });
    await b.open();
    await expect(b.acquire("victim")).rejects.toMatchObject({ code: "ERR_STATE_FOREIGN" });
    // A well-formed head whose checksum does not match, and keys no valid agent id could produce.
    const forged: Head = {
      id: "good",
      owner: { node: "mallory", incarnation: "x" },
      epoch: 1,
      gen: 1,
      record: { epoch: 1, nonce: "00", chunks: 1, bytes: 1, sha256: "0".repeat(64) },
      journal: [],
      journalBytes: 0,
      kv: null,
      kvObject: null,
      updatedAt: 0,
      op: "x",
    };
    const envelope = JSON.parse(Buffer.from(encodeHead(forged)).toString()) as { sha256: string };
    envelope.sha256 = "f".repeat(64);
    await heads.put(keys.head("other"), Buffer.from(JSON.stringify(envelope)));
    await heads.put("h.UPPER", Buffer.from("x"));
    await heads.put("h.-x/y", Buffer.from("x"));
    await expect(b.read("other")).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    expect((await b.list()).ids).toEqual(["good", "other", "victim"]);
    await expect(b.acquire("Not An Id")).rejects.toMatchObject({ code: "ERR_INVALID_AGENT_ID" });
    expect((await b.read("good"))?.id).toBe("good");
  });

  it("a node cut off from every NATS server stops committing on its own once its membership lapses, and resumes after if no one took over", async () => {
    const prefix = fixture.prefix();
    const a = await fixture.store("node-a", prefix, { lease });
    await a.open();
    await a.write(populationRecord("cut", 0));
    for (let i = 0; i < 3; i++) await fixture.cluster.kill(i, "SIGSTOP");
    try {
      await new Promise((resolve) => setTimeout(resolve, lease.ttlMs + 200));
      expect(a.membership!.isValid()).toBe(false);
      // Refused locally, before any I/O: no request to a cluster it cannot reach.
      const started = Date.now();
      await expect(a.appendTurn("cut", turn("while cut off"))).rejects.toMatchObject({ code: "ERR_LEASE_LOST" });
      expect(Date.now() - started).toBeLessThan(200);
    } finally {
      for (let i = 0; i < 3; i++) await fixture.cluster.kill(i, "SIGCONT");
    }
    await fixture.cluster.waitReady();
    for (let attempt = 0; !a.membership!.isValid() && attempt < 100; attempt++) await new Promise((resolve) => setTimeout(resolve, 100));
    await a.appendTurn("cut", turn("back"));
    expect((await a.read("cut"))!.history.map((m) => m.content)).toEqual(["back", "re: back"]);
  });

  it("random takeovers under concurrent appends (30 rounds): every acknowledged turn once, epochs never interleave", async () => {
    const prefix = fixture.prefix();
    const a = await fixture.store("node-a", prefix, { lease, compaction: { maxEntries: 7 } });
    const b = await fixture.store("node-b", prefix, { lease, compaction: { maxEntries: 5 } });
    // The thief's clock is an hour ahead: to it every other membership has expired, so it can take the
    // agent from a live owner who still believes it holds it — the stale owner that fencing must stop.
    const thief = await fixture.store("thief", prefix, { lease, clock: clock({ offsetMs: 3_600_000 }) });
    for (const store of [a, b, thief]) await store.open();
    const id = "contended";
    await a.write(populationRecord(id, 0));
    const attempts: Attempt[] = [];
    let counter = 0;
    const append = async (store: NatsStore, name: string): Promise<void> => {
      const epoch = store.heldEpoch(id);
      if (epoch === undefined) return;
      const attempt: Attempt = { turn: `${name}-${counter++}`, writer: name, epoch, acked: false };
      attempts.push(attempt);
      try {
        await store.appendTurn(id, { messages: [{ role: "user", content: attempt.turn }], updatedAt: counter });
        attempt.acked = true;
      } catch (error) {
        expect((error as { code?: string }).code).toMatch(/ERR_LEASE_LOST|ERR_NOT_OWNER/);
      }
    };
    let owner: NatsStore = a;
    for (let round = 0; round < 30; round++) {
      const victim = owner;
      const name = victim === a ? "a" : "b";
      // The owner appends while the thief takes over and appends too.
      await Promise.all([
        (async () => {
          for (let i = 0; i < 4; i++) await append(victim, name);
        })(),
        (async () => {
          await new Promise((resolve) => setTimeout(resolve, Math.random() * 15));
          await thief.acquire(id);
          for (let i = 0; i < 2; i++) await append(thief, "thief");
        })(),
      ]);
      // Its next append is refused, by the head's compare-and-set (it still believed it held the lease).
      await append(victim, name);
      expect(victim.holds(id)).toBe(false);
      await thief.release(id);
      owner = Math.random() < 0.5 ? a : b;
      await owner.acquire(id);
    }
    const history = (await a.read(id))!.history.map((m) => m.content);
    expect(checkHistory(history, attempts)).toEqual([]);
    expect(attempts.filter((x) => x.acked).length).toBeGreaterThan(60);
    expect(a.stats.fenced + b.stats.fenced).toBeGreaterThanOrEqual(1);
  });

  it("two nodes spawning the same new id at once: exactly one owns it, the other gets ERR_NOT_OWNER, the record is whole", async () => {
    const prefix = fixture.prefix();
    const a = await fixture.store("node-a", prefix, { lease });
    const b = await fixture.store("node-b", prefix, { lease });
    await a.open();
    await b.open();
    for (let round = 0; round < 5; round++) {
      const id = `race-${round}`;
      const results = await Promise.allSettled([a.write(populationRecord(id, 1)), b.write(populationRecord(id, 2))]);
      const won = results.filter((r) => r.status === "fulfilled");
      expect(won).toHaveLength(1);
      expect((results.find((r) => r.status === "rejected") as PromiseRejectedResult).reason).toMatchObject({ code: "ERR_NOT_OWNER" });
      const winner = results[0]!.status === "fulfilled" ? 1 : 2;
      expect((await a.read(id))?.history).toHaveLength(2 * winner);
    }
  });
});
