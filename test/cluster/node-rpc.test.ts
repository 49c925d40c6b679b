/**
 * Requests between nodes over core NATS (src/cluster/node-rpc.ts), on a real 3-server cluster: the
 * server and the client on different servers, so every request crosses a route. Process faults (a
 * server SIGSTOPped or SIGKILLed mid-turn) on a server in a child process (fixtures/rpc-server.ts).
 */
import { connect, createInbox, type Msg, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RpcClient } from "../../src/cluster/rpc-client.js";
import { RpcServer, type RpcServerOptions } from "../../src/cluster/rpc-server.js";
import { rpcSubjects, type RpcHandlers } from "../../src/cluster/rpc-wire.js";
import { AgentRuntimeError } from "../../src/errors.js";
import { NatsCluster } from "../../src/testing/nats-cluster.js";
import { startFixture, type Child } from "../helpers/child.js";

const FIXTURES = new URL("./fixtures/", import.meta.url);
const PREFIX = `rpc${process.pid}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let cluster: NatsCluster;
let serverNc: NatsConnection;
let clientNc: NatsConnection;
let client: RpcClient;
const servers: RpcServer[] = [];
const connections: NatsConnection[] = [];

/** Pings every second: a hung server is noticed in ~3 s (see docs/cluster.md). */
async function connectTo(url: string): Promise<NatsConnection> {
  const nc = await connect({ servers: [url], maxReconnectAttempts: -1, reconnectTimeWait: 100, pingInterval: 1000, maxPingOut: 2 });
  connections.push(nc);
  return nc;
}

beforeAll(async () => {
  cluster = await NatsCluster.start();
  serverNc = await connectTo(cluster.urls[0]!);
  clientNc = await connectTo(cluster.urls[1]!);
  client = new RpcClient(clientNc, { prefix: PREFIX });
});

afterAll(async () => {
  try {
    await client?.close();
    for (const server of servers) await server.dispose();
    for (const nc of connections) await nc.close().catch(() => {});
  } finally {
    await cluster?.stop();
  }
});

let nodes = 0;
const notUsed = async (): Promise<never> => {
  throw new Error("not used by this test");
};

/** Waits until `node` answers from the client's server (subscriptions reach the other servers over routes). */
async function reachable(node: string, via = client): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await via.call(node, "ping", null);
      return;
    } catch (error) {
      const unreachable = (error as AgentRuntimeError).code === "ERR_NODE_UNAVAILABLE" && (error as AgentRuntimeError).details?.accepted === false;
      if (!unreachable) return; // it answered, with an error
      if (Date.now() > deadline) throw error;
      await sleep(20);
    }
  }
}

/** An RpcServer as a fresh node on the server connection, reachable from the client. */
async function serve(handlers: Partial<RpcHandlers>, options: Partial<RpcServerOptions> = {}): Promise<{ node: string; server: RpcServer }> {
  const node = `node-${nodes++}`;
  const server = await RpcServer.start(serverNc, {
    node,
    prefix: PREFIX,
    handlers: { turn: notUsed, call: async (method) => (method === "ping" ? "pong" : notUsed()), ...handlers },
    ...options,
  });
  servers.push(server);
  await reachable(node);
  return { node, server };
}

/** Sends raw bytes to a subject with a reply inbox and collects what comes back until `done`/`error` (or `quietMs` of silence). */
async function raw(subject: string, data: string | Uint8Array, quietMs = 1500): Promise<Record<string, unknown>[]> {
  const inbox = createInbox();
  const replies: Record<string, unknown>[] = [];
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  let timer = setTimeout(finish, quietMs);
  const sub = clientNc.subscribe(inbox, {
    callback: (_error, msg: Msg) => {
      const reply = msg.headers?.code ? { status: msg.headers.code } : (JSON.parse(msg.string()) as Record<string, unknown>);
      replies.push(reply);
      clearTimeout(timer);
      if (reply.t === "done" || reply.t === "error" || "status" in reply) finish();
      else timer = setTimeout(finish, quietMs);
    },
  });
  await clientNc.flush();
  clientNc.publish(subject, data, { reply: inbox });
  await finished;
  clearTimeout(timer);
  sub.unsubscribe();
  return replies;
}

describe("node RPC over core NATS", () => {
  it("streams a turn's tokens in order, after `accepted`, then its result; calls answer", async () => {
    const { node } = await serve({
      async turn(request, sink) {
        sink.accepted();
        for (const word of (request as { words: string[] }).words) {
          await sleep(2);
          sink.token(word);
        }
        return { count: (request as { words: string[] }).words.length };
      },
      async call(method, params) {
        return method === "ping" ? "pong" : { method, params };
      },
    });
    const seen: string[] = [];
    const words = Array.from({ length: 30 }, (_, i) => `w${i} `);
    const result = await client.turn(node, { words }, { onAccepted: () => seen.push("<accepted>"), onToken: (text) => seen.push(text) });
    expect(result).toEqual({ count: 30 });
    expect(seen[0], "accepted comes before the first token").toBe("<accepted>");
    expect(seen.slice(1).join("")).toBe(words.join(""));
    await expect(client.call(node, "get", { id: "a/1" })).resolves.toEqual({ method: "get", params: { id: "a/1" } });
    expect(client.pending).toBe(0);
  });

  it("sends the tokens produced within one turn of the event loop as one message", async () => {
    const { node } = await serve({
      async turn(_request, sink) {
        sink.accepted();
        for (let i = 0; i < 100; i++) sink.token(`${i},`);
        await sleep(10);
        for (let i = 100; i < 200; i++) sink.token(`${i},`);
        return "ok";
      },
    });
    const expected = Array.from({ length: 200 }, (_, i) => `${i},`).join("");
    const replies = await raw(rpcSubjects(PREFIX, node).turn, JSON.stringify({ id: "batch-1", request: null }));
    expect(
      replies.map((r) => r.s),
      "replies are numbered from 0",
    ).toEqual(replies.map((_, i) => i));
    expect(replies[0]).toEqual({ t: "accepted", s: 0 });
    const tokens = replies.filter((r) => r.t === "token");
    expect(tokens.length, "200 tokens in two ticks: two messages").toBe(2);
    expect(tokens.map((r) => r.text).join("")).toBe(expected);
    expect(replies.at(-1)).toMatchObject({ t: "done", result: "ok" });

    const batches: string[] = [];
    await client.turn(node, null, { onToken: (text) => batches.push(text) });
    expect(batches).toHaveLength(2);
    expect(batches.join("")).toBe(expected);
  });

  it("keeps an AgentRuntimeError's code, message and details across the wire, naming the node; other errors are coded too", async () => {
    const { node } = await serve({
      async turn(request, sink) {
        sink.accepted();
        sink.token("partial");
        const kind = (request as { kind: string }).kind;
        if (kind === "coded") throw new AgentRuntimeError("ERR_MAILBOX_FULL", "mailbox of a/1 is full", { details: { id: "a/1", capacity: 8 } });
        if (kind === "range") throw new RangeError("maxTokens must be positive, got -1");
        throw new Error("secret internal path /var/lib/x");
      },
      async call(method) {
        if (method === "ping") return "pong";
        throw new AgentRuntimeError("ERR_AGENT_NOT_FOUND", "No agent b/2", { details: { id: "b/2" } });
      },
    });
    const coded = await client.turn(node, { kind: "coded" }).catch((error: unknown) => error);
    expect(coded).toBeInstanceOf(AgentRuntimeError);
    expect(coded).toMatchObject({ code: "ERR_MAILBOX_FULL", message: "mailbox of a/1 is full", details: { id: "a/1", capacity: 8, node } });
    await expect(client.call(node, "get", { id: "b/2" })).rejects.toMatchObject({
      code: "ERR_AGENT_NOT_FOUND",
      message: "No agent b/2",
      details: { id: "b/2", node },
    });
    await expect(client.turn(node, { kind: "range" })).rejects.toMatchObject({
      code: "ERR_INVALID_REQUEST",
      message: "maxTokens must be positive, got -1",
    });
    const internal = (await client.turn(node, { kind: "plain" }).catch((error: unknown) => error)) as AgentRuntimeError;
    expect(internal).toMatchObject({ code: "ERR_NODE_FAILED", details: { node, name: "Error" } });
    expect(internal.message, "an uncoded error's message stays in the server's log").not.toContain("secret");
  });

  it("a caller's abort reaches the handler's signal; the client rejects with the signal's reason", async () => {
    let observed: unknown;
    const { node, server } = await serve({
      async turn(_request, sink, signal) {
        sink.accepted();
        await new Promise((_resolve, reject) => signal.addEventListener("abort", () => reject((observed = signal.reason))));
      },
    });
    const controller = new AbortController();
    const reason = new Error("the user went away");
    const turn = client.turn(node, null, { signal: controller.signal, onAccepted: () => controller.abort(reason) });
    await expect(turn).rejects.toBe(reason);
    for (let i = 0; i < 100 && observed === undefined; i++) await sleep(20);
    expect(observed, "the handler's signal aborted").toMatchObject({ code: "ERR_ABORTED" });
    for (let i = 0; i < 100 && server.inFlight > 0; i++) await sleep(20);
    expect(server.inFlight).toBe(0);

    // Aborted before: nothing is sent.
    await expect(client.turn(node, null, { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    // A call's timeout aborts it the same way (TimeoutError, as AbortSignal.timeout).
    const slow = await serve({
      call: async (method, _params, signal) =>
        method === "ping" ? "pong" : new Promise((_r, reject) => signal.addEventListener("abort", () => reject(signal.reason))),
    });
    await expect(client.call(slow.node, "slow", null, { timeoutMs: 200 })).rejects.toMatchObject({ name: "TimeoutError" });
  });

  it("a caller whose connection goes away mid-turn: the handler's signal aborts", async () => {
    let observed: unknown;
    const { node } = await serve(
      {
        async turn(_request, sink, signal) {
          sink.accepted();
          await new Promise((_resolve, reject) => signal.addEventListener("abort", () => reject((observed = signal.reason))));
        },
      },
      { keepaliveMs: 200 },
    );
    const nc = await connectTo(cluster.urls[2]!);
    const leaving = new RpcClient(nc, { prefix: PREFIX });
    await reachable(node, leaving);
    const turn = leaving.turn(node, null, { onAccepted: () => void nc.close() });
    await expect(turn).rejects.toMatchObject({
      code: "ERR_NODE_UNAVAILABLE",
      details: { reason: "connection-closed", accepted: true, acknowledged: true },
    });
    for (let i = 0; i < 250 && observed === undefined; i++) await sleep(20);
    expect(observed, "the server heard 'no responders' on a keepalive and aborted the handler").toMatchObject({
      code: "ERR_ABORTED",
      message: "The caller went away",
    });
  });

  it("a node no one serves: ERR_NODE_UNAVAILABLE with accepted: false, well before stallMs", async () => {
    const started = Date.now();
    await expect(client.turn("nobody", null)).rejects.toMatchObject({
      code: "ERR_NODE_UNAVAILABLE",
      details: { node: "nobody", accepted: false, delivered: false, reason: "no-responders" },
    });
    await expect(client.call("nobody", "get", null)).rejects.toMatchObject({ code: "ERR_NODE_UNAVAILABLE", details: { accepted: false } });
    expect(Date.now() - started, "no-responders is immediate, not a stall (5 s)").toBeLessThan(2500);
    await expect(client.turn("Not A Node", null), "an invalid node name").rejects.toThrow(TypeError);
  });

  describe("a server process that stops answering mid-turn", () => {
    const stallMs = 1500;
    let child: Child | undefined;
    const startServer = async (node: string): Promise<Child> => {
      child = startFixture("rpc-server.ts", [JSON.stringify({ urls: [cluster.urls[0]], node, prefix: PREFIX, keepaliveMs: 300 })], FIXTURES);
      await child.next("ready");
      await reachable(node);
      return child;
    };
    afterAll(() => {
      if (child && child.process.exitCode === null) {
        child.process.kill("SIGCONT");
        child.process.kill("SIGKILL");
      }
    });

    for (const signal of ["SIGSTOP", "SIGKILL"] as const) {
      it(`${signal}: the caller fails ERR_NODE_UNAVAILABLE with accepted: true after about stallMs`, async () => {
        const node = `child-${signal.toLowerCase()}`;
        const server = await startServer(node);
        const stalling = new RpcClient(clientNc, { prefix: PREFIX, stallMs });
        let stoppedAt = 0;
        const tokens: string[] = [];
        try {
          const turn = stalling.turn(
            node,
            { tokens: 10_000, everyMs: 20 },
            {
              onToken: (text) => {
                tokens.push(text);
                if (tokens.length === 3) {
                  stoppedAt = Date.now();
                  server.process.kill(signal);
                }
              },
            },
          );
          const error = (await turn.catch((e: unknown) => e)) as AgentRuntimeError;
          const waited = Date.now() - stoppedAt;
          expect(error).toMatchObject({
            code: "ERR_NODE_UNAVAILABLE",
            details: { node, accepted: true, delivered: true, acknowledged: true, reason: "stalled" },
          });
          expect(waited, "failed after about stallMs, not at once and not much later").toBeGreaterThan(stallMs - 600);
          expect(waited).toBeLessThan(stallMs + 5000);
        } finally {
          server.process.kill("SIGCONT");
          server.process.kill("SIGKILL");
          await server.exited;
          await stalling.close();
        }
      });
    }
  });

  it("survives hostile bytes on its subjects, answers them with coded errors, and keeps serving", async () => {
    const { node, server } = await serve(
      {
        async turn(request, sink) {
          sink.accepted();
          sink.token(String(request));
          return "fine";
        },
      },
      { maxRequestBytes: 1024 * 1024 },
    );
    const subjects = rpcSubjects(PREFIX, node);
    const invalid = { t: "error", s: 0, error: expect.objectContaining({ code: "ERR_INVALID_REQUEST" }) };
    const hostile: Array<[string, string | Uint8Array]> = [
      [subjects.turn, "not json {"],
      [subjects.turn, new Uint8Array([0xff, 0xfe, 0x00, 0x80])],
      [subjects.turn, ""],
      [subjects.turn, "[1,2,3]"],
      [subjects.turn, "null"],
      [subjects.turn, JSON.stringify({ request: "no id" })],
      [subjects.turn, JSON.stringify({ id: 42, request: "numeric id" })],
      [subjects.turn, JSON.stringify({ id: "a.b.c", request: "dots" })],
      [subjects.turn, JSON.stringify({ id: "x".repeat(65) })],
      [subjects.call, JSON.stringify({ id: "c1" })],
      [subjects.call, JSON.stringify({ id: "c2", method: { evil: true } })],
      [subjects.call, JSON.stringify({ id: "c3", method: "m".repeat(1000) })],
      [subjects.turn, JSON.stringify({ id: "big", request: "x".repeat(2 * 1024 * 1024) })],
      [subjects.call, "y".repeat(2 * 1024 * 1024)],
    ];
    for (const [subject, data] of hostile) {
      const replies = await raw(subject, data);
      expect(replies, `${subject} ← ${String(data).slice(0, 40)}`).toEqual([invalid]);
    }
    // No reply subject, a wildcard one, and garbage aborts: dropped (nothing to answer to), nothing breaks.
    serverNc.publish(subjects.turn, "no reply subject");
    clientNc.publish(subjects.turn, JSON.stringify({ id: "noreply", request: 1 }));
    for (const reply of [">", "a.*.b", "_INBOX.x.>"]) clientNc.publish(subjects.turn, JSON.stringify({ id: "wild", request: 1 }), { reply });
    clientNc.publish(subjects.abort, "garbage");
    clientNc.publish(subjects.abort, JSON.stringify({ id: { $ne: null } }));
    clientNc.publish(subjects.abort, JSON.stringify({ id: "unknown-id" }));
    await clientNc.flush();
    await sleep(100);
    const tokens: string[] = [];
    await expect(client.turn(node, "still here", { onToken: (text) => tokens.push(text) })).resolves.toBe("fine");
    expect(tokens).toEqual(["still here"]);
    expect(server.inFlight).toBe(0);
  });

  it("a reply that is not the protocol's is a coded error on the client, not a crash", async () => {
    const node = `fake-${nodes++}`;
    const answers = [
      "garbage",
      "[]",
      JSON.stringify({ t: "accepted" }),
      JSON.stringify({ t: "nonsense", s: 0 }),
      JSON.stringify({ t: "token", s: 0, text: 42 }),
      JSON.stringify({ t: "error", s: 0, error: "not an object" }),
      JSON.stringify({ t: "accepted", s: 7 }),
    ];
    let next = 0;
    const fake = serverNc.subscribe(rpcSubjects(PREFIX, node).turn, {
      callback: (_error, msg) => {
        msg.respond(answers[next++]);
      },
    });
    const unknownCode = serverNc.subscribe(rpcSubjects(PREFIX, node).call, {
      callback: (_error, msg) =>
        void msg.respond(JSON.stringify({ t: "error", s: 0, error: { code: "ERR_FROM_THE_FUTURE", message: "new", details: { x: 1 } } })),
    });
    await serverNc.flush();
    try {
      await reachable(node);
      for (let i = 0; i < answers.length - 1; i++) {
        await expect(client.turn(node, null), `answer ${i}`).rejects.toMatchObject({ code: "ERR_NODE_PROTOCOL", details: { node } });
      }
      await expect(client.turn(node, null), "a skipped number: a lost message").rejects.toMatchObject({
        code: "ERR_NODE_UNAVAILABLE",
        details: { reason: "lost-messages", accepted: true },
      });
      await expect(client.call(node, "x", null)).rejects.toMatchObject({
        code: "ERR_NODE_FAILED",
        message: "new",
        details: { code: "ERR_FROM_THE_FUTURE", x: 1, node },
      });
    } finally {
      fake.unsubscribe();
      unknownCode.unsubscribe();
    }
  });

  it("dispose() stops taking requests but waits for a turn in flight to finish streaming", async () => {
    const events: string[] = [];
    const { node, server } = await serve({
      async turn(_request, sink) {
        sink.accepted();
        for (let i = 0; i < 10; i++) {
          await sleep(30);
          sink.token(`${i}`);
        }
        events.push("handler returned");
        return "complete";
      },
    });
    let disposed: Promise<void> | undefined;
    const tokens: string[] = [];
    const turn = client.turn(node, null, {
      onAccepted: () => {
        disposed = server.dispose().then(() => void events.push(`disposed with ${server.inFlight} in flight`));
      },
      onToken: (text) => tokens.push(text),
    });
    // The final reply crosses a route to reach the client, so it may land just before or just after dispose() resolves.
    await expect(turn).resolves.toBe("complete");
    await disposed;
    expect(tokens.join(""), "every token reached the caller").toBe("0123456789");
    expect(events, "dispose resolved once the handler had returned").toEqual(["handler returned", "disposed with 0 in flight"]);
    // Afterwards: no one serves the node (the unsubscription reaches the other servers over routes).
    let last: unknown;
    for (let i = 0; i < 100; i++) {
      last = await client.call(node, "ping", null).catch((error: unknown) => error);
      if ((last as AgentRuntimeError).details?.accepted === false) break;
      await sleep(20);
    }
    expect(last).toMatchObject({ code: "ERR_NODE_UNAVAILABLE", details: { accepted: false } });
  });
});
