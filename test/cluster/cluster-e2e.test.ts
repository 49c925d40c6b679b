/**
 * End to end: 3 nats-server processes and 3 agentrt nodes, each its own process running
 * `agentrt serve --cluster …` on the real stories260K model, driven over HTTP like any client.
 * Faults come from outside, as in life: SIGKILL and SIGSTOP of a node, SIGKILL of a NATS server, a drain
 * under traffic, hostile bytes on the cluster's subjects. Every acknowledged reply is checked against the
 * stored history (present once, in order) and, for the greedy conversations, against what a single-node
 * runtime answers.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeHead } from "../../src/cluster/head.js";
import { AgentRuntime } from "../../src/index.js";
import { NatsCluster } from "../../src/testing/nats-cluster.js";
import { startFixture, type Child } from "../helpers/child.js";
import { MODELS } from "../helpers/model.js";
import { serveNodeArgv } from "./fixtures/serve-node-argv.js";

const PREFIX = "e2e";
const LEASE_TTL_MS = 3000;
const MAX_TOKENS = 10;
const fixtures = new URL("./fixtures/", import.meta.url);

interface Node {
  name: string;
  url: string;
  child: Child;
}

let cluster: NatsCluster;
let root: string;
let nc: NatsConnection;
const nodes = new Map<string, Node>();

async function startNode(name: string): Promise<Node> {
  const argv = serveNodeArgv({
    model: MODELS.stories,
    urls: cluster.urls,
    name,
    prefix: PREFIX,
    stateDir: join(root, name),
    leaseTtlMs: LEASE_TTL_MS,
  });
  const child = startFixture("serve-node.ts", [JSON.stringify(argv)], fixtures);
  const ready = await child.next("ready");
  const node = { name, url: String(ready.url), child };
  nodes.set(name, node);
  return node;
}

async function http(node: Node, method: string, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  // Bounded: a node left stopped by a failed test must fail the next one, not hang the suite.
  const response = await fetch(`${node.url}${path}`, {
    signal: AbortSignal.timeout(120_000),
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

/** Sends `text` to agent `id` through `node`; the reply and the node that ran the turn, or the error body. */
async function send(node: Node, id: string, text: string) {
  const { status, json } = await http(node, "POST", `/agents/${id}/messages`, { text, maxTokens: MAX_TOKENS });
  if (status !== 200) {
    const error = (json.error ?? json) as { code?: string; message?: string };
    return { ok: false as const, status, code: String(error.code), message: error.message };
  }
  return { ok: true as const, reply: String(json.reply), node: String((json.timings as { node: string }).node) };
}

/** Every message of agent `id`'s history, read through `node`. */
async function history(node: Node, id: string): Promise<string[]> {
  const messages: string[] = [];
  let before: number | undefined;
  for (;;) {
    const { json } = await http(node, "GET", `/agents/${id}/history?limit=200${before !== undefined ? `&before=${before}` : ""}`);
    const page = json as unknown as { messages: Array<{ content: string }>; start: number };
    messages.unshift(...page.messages.map((m) => m.content));
    if (page.start === 0) return messages;
    before = page.start;
  }
}

const live = (): Node[] => [...nodes.values()];
const pick = <T>(list: T[], i: number): T => list[i % list.length]!;

/** Acknowledged turns of one agent, in the order they were acknowledged. */
const acked = new Map<string, Array<{ text: string; reply: string }>>();
function ack(id: string, text: string, reply: string): void {
  if (!acked.has(id)) acked.set(id, []);
  acked.get(id)!.push({ text, reply });
}

/** The stored history holds every acknowledged turn once, in order, and no turn twice. */
async function checkHistory(id: string, via: Node): Promise<void> {
  const stored = await history(via, id);
  const turns = Array.from({ length: stored.length / 2 }, (_, i) => ({ text: stored[2 * i]!, reply: stored[2 * i + 1]! }));
  const texts = turns.map((t) => t.text);
  expect(new Set(texts).size, `a turn of ${id} appears twice`).toBe(texts.length);
  let at = -1;
  for (const turn of acked.get(id) ?? []) {
    const index = texts.indexOf(turn.text);
    expect(index, `acknowledged turn ${turn.text} of ${id} lost`).toBeGreaterThan(-1);
    expect(index, `turn ${turn.text} of ${id} out of order`).toBeGreaterThan(at);
    expect(turns[index]!.reply).toBe(turn.reply);
    at = index;
  }
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "agentrt-e2e-"));
  cluster = await NatsCluster.start();
  nc = await connect({ servers: cluster.urls, pingInterval: 1000, maxPingOut: 2, maxReconnectAttempts: -1 });
  await Promise.all(["a", "b", "c"].map((name) => startNode(name)));
}, 120_000);

afterAll(async () => {
  for (const node of nodes.values()) node.child.process.kill("SIGKILL");
  await Promise.all([...nodes.values()].map((node) => node.child.exited));
  await nc?.close();
  await cluster?.stop();
  await rm(root, { recursive: true, force: true });
}, 60_000);

describe("a 3-node agentrt cluster on 3 NATS servers (separate processes, real model)", () => {
  const ids = Array.from({ length: 30 }, (_, i) => `agent-${i}`);
  const prompt = (i: number) => `Once upon a time there was a ${["cat", "dog", "bird"][i % 3]} named ${["Tom", "Sue", "Max", "Lily", "Ben"][i % 5]}.`;
  const rounds = [["Once upon a time"], ["The little"], ["One day"]];

  it("30 agents through random nodes, one node drained under traffic: zero failed messages, replies equal a single node's", async () => {
    for (const [i, id] of ids.entries()) {
      const { status, json } = await http(pick(live(), i * 7 + 1), "POST", "/agents", { id, systemPrompt: prompt(i) });
      expect(status, JSON.stringify(json)).toBe(201);
    }
    const status = (await http(nodes.get("a")!, "GET", "/cluster")).json as { enabled: boolean; nodes: Array<{ node: string }> };
    expect(status.enabled).toBe(true);
    expect(status.nodes.map((n) => n.node)).toEqual(["a", "b", "c"]);

    const ran = new Map<string, Set<string>>();
    const round = async (r: number) => {
      const failures: unknown[] = [];
      // Agents in parallel, each agent's messages in order, each through a random node.
      await Promise.all(
        ids.map(async (id, i) => {
          for (const text of rounds[r]!) {
            const message = `${text} (${r})`;
            const result = await send(pick(live(), Math.floor(Math.random() * 3) + i), id, message);
            if (!result.ok) failures.push({ id, text: message, ...result });
            else {
              ack(id, message, result.reply);
              if (!ran.has(id)) ran.set(id, new Set());
              ran.get(id)!.add(result.node);
            }
          }
        }),
      );
      return failures;
    };
    expect(await round(0)).toEqual([]);
    // Node c drains while round 1 runs: its agents move to a and b, and no message fails.
    const [failures, drained] = await Promise.all([round(1), http(nodes.get("c")!, "POST", "/cluster/drain")]);
    expect(drained.status).toBe(200);
    expect(failures).toEqual([]);
    expect(await round(2)).toEqual([]);
    const moved = [...ran.values()].filter((set) => set.size > 1).length;
    expect(moved, "some agents moved from c to another node").toBeGreaterThan(0);
    for (const id of ids) expect(acked.get(id), id).toHaveLength(rounds.length);
    const after = (await http(nodes.get("a")!, "GET", "/cluster")).json as { nodes: Array<{ node: string; owned: number; draining: boolean }> };
    expect(after.nodes.find((n) => n.node === "c")!.draining).toBe(true);

    // The same conversations on one node without a cluster, greedy: the same replies.
    const single = await AgentRuntime.create({
      model: MODELS.stories,
      engine: "llama.cpp",
      threads: 1,
      contextSize: 512,
      maxAgents: 4,
      stateDir: join(root, "single"),
    });
    try {
      for (const [i, id] of ids.entries()) {
        await single.spawn({ id, systemPrompt: prompt(i) });
        for (const turn of acked.get(id)!)
          expect((await single.ask(id, turn.text, { maxTokens: MAX_TOKENS })).reply, `${id}: ${turn.text}`).toBe(turn.reply);
      }
    } finally {
      await single.close();
    }
    for (const id of ids) await checkHistory(id, pick(live(), id.length));

    // c restarts (rolling restart): SIGTERM, then a new process under the same name.
    nodes.get("c")!.child.process.kill("SIGTERM");
    await nodes.get("c")!.child.next("stopped");
    nodes.delete("c");
    await startNode("c");
  }, 600_000);

  it("SIGKILL of the node owning an agent mid-turn: later messages through the others are answered, no acknowledged turn lost", async () => {
    const id = "agent-0";
    const first = await send(nodes.get("a")!, id, "Before the crash");
    expect(first.ok).toBe(true);
    if (!first.ok) return;
    ack(id, "Before the crash", first.reply);
    const owner = nodes.get(first.node)!;
    const others = live().filter((node) => node !== owner);
    // A turn streaming through another node: its owner dies after the first token, mid-turn.
    const response = await fetch(`${others[0]!.url}/agents/${id}/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({ text: "During the crash", maxTokens: 200 }),
      signal: AbortSignal.timeout(120_000),
    });
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    let stream = "";
    while (!stream.includes("event: token")) {
      const { value, done } = await reader.read();
      if (done) break;
      stream += value;
    }
    expect(stream).toContain("event: token");
    owner.child.process.kill("SIGKILL");
    const killedAt = Date.now();
    nodes.delete(owner.name);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      stream += value;
    }
    // Either it had finished (done) or it fails with a coded, retryable error: never silently cut.
    const outcome = /event: (done|error)\ndata: (.*)\n/.exec(stream);
    expect(outcome, stream.slice(-500)).not.toBeNull();
    if (outcome![1] === "done") ack(id, "During the crash", (JSON.parse(outcome![2]!) as { reply: string }).reply);
    else expect(["ERR_NODE_UNAVAILABLE", "ERR_LEASE_LOST"]).toContain((JSON.parse(outcome![2]!) as { error: { code: string } }).error.code);
    let answered: Awaited<ReturnType<typeof send>> | undefined;
    for (let n = 0; n < 3; n++) {
      const result = await send(pick(others, n), id, `After the crash ${n}`);
      expect(result.ok, JSON.stringify(result)).toBe(true);
      if (result.ok) ack(id, `After the crash ${n}`, result.reply);
      answered ??= result;
    }
    const takeoverMs = Date.now() - killedAt;
    console.log(`takeover after SIGKILL of ${owner.name}: first answer ${takeoverMs} ms after the kill (lease TTL ${LEASE_TTL_MS} ms)`);
    expect(takeoverMs).toBeLessThan(LEASE_TTL_MS + 30_000);
    await checkHistory(id, others[1]!);
    await startNode(owner.name);
  }, 180_000);

  it("SIGSTOP of an owner past its lease: another node takes over; after SIGCONT the old owner's turn is refused, the history is the new owner's", async () => {
    const id = "agent-1";
    const first = await send(nodes.get("b")!, id, "Before the pause");
    expect(first.ok).toBe(true);
    if (!first.ok) return;
    ack(id, "Before the pause", first.reply);
    const owner = nodes.get(first.node)!;
    const others = live().filter((node) => node !== owner);
    owner.child.process.kill("SIGSTOP");
    let stale: ReturnType<typeof send>;
    try {
      // Sent to the paused owner directly: it reads it only after SIGCONT, when its lease is gone.
      stale = send(owner, id, "Sent to the paused owner");
      await new Promise((resolve) => setTimeout(resolve, LEASE_TTL_MS + 1500));
      const taken = await send(others[0]!, id, "While the owner sleeps");
      expect(taken.ok, JSON.stringify(taken)).toBe(true);
      if (taken.ok) {
        ack(id, "While the owner sleeps", taken.reply);
        expect(taken.node).not.toBe(owner.name);
      }
    } finally {
      owner.child.process.kill("SIGCONT");
    }
    const refused = await stale;
    // Refused (lease lost) or forwarded to the new owner after all: never committed by the stale owner.
    if (refused.ok) {
      expect(refused.node).not.toBe(owner.name);
      ack(id, "Sent to the paused owner", refused.reply);
    } else expect(["ERR_LEASE_LOST", "ERR_NOT_OWNER", "ERR_NODE_UNAVAILABLE"]).toContain(refused.code);
    const next = await send(owner, id, "After the pause");
    expect(next.ok, JSON.stringify(next)).toBe(true);
    if (next.ok) {
      ack(id, "After the pause", next.reply);
      expect(next.node).not.toBe(owner.name);
    }
    await checkHistory(id, owner);
    // The head says which epoch wrote each journal entry: runs of one epoch each, epochs only growing —
    // no two owners' turns interleave, and the paused owner's epoch, if it wrote at all, came first.
    const heads = await new Kvm(nc).open(`${PREFIX}-heads`);
    const head = decodeHead(id, (await heads.get(`h.${id}`))!.value);
    const epochs = head.journal.map(([epoch]) => epoch);
    expect(epochs, JSON.stringify(head.journal)).toEqual([...epochs].sort((x, y) => x - y));
    expect(new Set(epochs).size).toBe(epochs.length);
    expect(head.owner?.node).not.toBe(owner.name);
    expect(epochs.at(-1)).toBe(head.epoch);
  }, 120_000);

  it("SIGKILL of one of the three NATS servers during traffic: service continues, nothing acknowledged lost", async () => {
    const agents = ids.slice(2, 8);
    let stop = false;
    const errors: string[] = [];
    let okAfterRestart = 0;
    let restarted = false;
    const traffic = agents.map(async (id, i) => {
      for (let n = 0; !stop; n++) {
        const text = `Traffic ${n}`;
        const result = await send(pick(live(), n + i), id, text);
        if (result.ok) {
          ack(id, text, result.reply);
          if (restarted) okAfterRestart++;
        } else errors.push(`${result.code}: ${result.message}`);
      }
    });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await cluster.kill(0, "SIGKILL");
    await new Promise((resolve) => setTimeout(resolve, 12_000));
    await cluster.restart(0);
    restarted = true;
    await new Promise((resolve) => setTimeout(resolve, 3000));
    stop = true;
    await Promise.all(traffic);
    // A stream whose leader died stalls for an election (seconds): commits then fail with a retryable code.
    for (const error of errors) expect(["ERR_STATE_WRITE_FAILED", "ERR_NODE_UNAVAILABLE", "ERR_LEASE_LOST"], error).toContain(error.split(":")[0]);
    expect(okAfterRestart).toBeGreaterThan(0);
    for (const id of agents) await checkHistory(id, pick(live(), 1));
  }, 180_000);

  it("hostile cluster input: garbage on the node subjects, a foreign head, an invalid id over NATS: coded errors, nothing crashes", async () => {
    const target = nodes.get("a") ?? live()[0]!;
    const subject = `${PREFIX}.rpc.${target.name}`;
    for (const kind of ["turn", "call", "abort"]) {
      nc.publish(`${subject}.${kind}`, new TextEncoder().encode("not json at all"));
      nc.publish(`${subject}.${kind}`, new TextEncoder().encode(JSON.stringify({ id: 7, request: { id: "../../etc" } })));
      const reply = await nc.request(`${subject}.${kind}`, new TextEncoder().encode("{]"), { timeout: 5000 }).catch((error: unknown) => error);
      if (kind !== "abort") expect(new TextDecoder().decode((reply as { data: Uint8Array }).data)).toContain("ERR_INVALID_REQUEST");
    }
    // An invalid agent id, routed: answered with its code by every node.
    for (const node of live()) {
      const { status, json } = await http(node, "POST", "/agents/Not%20An%20Id/messages", { text: "hi" });
      expect(status).toBe(400);
      expect(JSON.stringify(json)).toContain("ERR_INVALID_AGENT_ID");
    }
    // A head that is not an agentrt head (someone else's value in our bucket): a coded error, not a crash.
    const heads = await new Kvm(nc).open(`${PREFIX}-heads`);
    await heads.put("h.agent-29", new TextEncoder().encode(JSON.stringify({ owner: { node: "mallory", incarnation: "x" } })));
    const foreign = await send(target, "agent-29", "hello");
    expect(foreign.ok).toBe(false);
    if (!foreign.ok) expect(["ERR_STATE_FOREIGN", "ERR_STATE_CORRUPT"]).toContain(foreign.code);
    // Every node still answers.
    for (const node of live()) {
      const result = await send(node, "agent-10", `still alive via ${node.name}`);
      expect(result.ok, JSON.stringify(result)).toBe(true);
    }
  }, 120_000);
});
