/**
 * The soak: many agents, few resident slots, concurrent senders posting random messages. Each agent's
 * sends are numbered in the order send() was called; every one must be acknowledged (none lost) and the
 * stored history must hold them in exactly that order (none reordered). Agents that reach `turnsPerAgent`
 * are checked against the store, removed and replaced by a new agent (churn), so the live history stays
 * bounded and memory should stay flat. The resident count is sampled all along and must never exceed
 * `maxAgents`.
 */
import { expect } from "vitest";
import { AgentRuntime, DirectoryStore, type AgentRuntimeOptions } from "../../src/index.js";
import { FakeEngine } from "../../src/testing/index.js";
import { random } from "./fuzz.js";
import { gcFunction, REAL, rssMiB } from "./helpers.js";

const heapMiB = () => Math.round((process.memoryUsage().heapUsed / 1024 / 1024) * 10) / 10;

export interface SoakOptions {
  stateDir: string;
  engine: "fake" | "real";
  /** Agents alive at any time. */
  agents: number;
  maxAgents: number;
  /** Messages sent in all. */
  messages: number;
  /** Concurrent senders. */
  senders: number;
  /** Turns after which an agent is checked, removed and replaced. */
  turnsPerAgent: number;
  seed?: number;
  log?: (line: string) => void;
}

export interface SoakFigures {
  engine: string;
  agentsAlive: number;
  agentsCreated: number;
  maxAgents: number;
  messagesAcknowledged: number;
  lost: number;
  reordered: number;
  maxResidentSeen: number;
  passivations: number;
  rehydrations: number;
  /** RSS (MiB) after a full GC: before any agent, at each tenth of the messages, and at the end. */
  rss: { before: number; checkpoints: number[]; after: number };
  /** V8 heap in use (MiB) at the same checkpoints: a leak of JS objects shows here first. */
  heapCheckpoints: number[];
  /** Heap growth from the first checkpoint to the last, in MiB. */
  heapDriftMiB: number;
  /** RSS growth from the first checkpoint (steady state) to the end, in MiB. */
  rssDriftMiB: number;
  seconds: number;
  messagesPerSecond: number;
}

interface Live {
  id: string;
  /** Texts in send() order, each marked once settled. */
  sends: Array<{ text: string; ok?: boolean }>;
  inFlight: number;
  retiring: boolean;
}

export async function runSoak(options: SoakOptions): Promise<{ figures: SoakFigures; failures: string[] }> {
  const started = Date.now();
  const gc = gcFunction();
  const rng = random(options.seed ?? 11);
  const failures: string[] = [];
  const fail = (message: string) => {
    if (failures.length < 20) failures.push(message);
  };
  gc();
  const before = rssMiB();

  const engines: FakeEngine[] = [];
  const common: Partial<AgentRuntimeOptions> = {
    stateDir: options.stateDir,
    maxAgents: options.maxAgents,
    mailboxCapacity: options.senders + 1,
  };
  const runtime =
    options.engine === "fake"
      ? await AgentRuntime.create({
          ...common,
          engineFactory: async () => {
            const engine = new FakeEngine({ sequences: options.maxAgents, contextSize: 1 << 20 });
            engines.push(engine);
            return engine;
          },
        })
      : await AgentRuntime.create({ ...REAL, ...common, contextSize: 1024, maxTokens: 4 });
  const store = new DirectoryStore(options.stateDir);

  let passivations = 0;
  let rehydrations = 0;
  let maxResidentSeen = 0;
  const sample = async () => {
    const resident =
      options.engine === "fake"
        ? engines.at(-1)!.openKeys().length
        : (await runtime.memory()).agents.filter((a) => a.status === "resident" || a.status === "rehydrating" || a.status === "passivating").length;
    maxResidentSeen = Math.max(maxResidentSeen, resident);
    if (resident > options.maxAgents) fail(`${resident} agents resident, over maxAgents ${options.maxAgents}`);
  };
  runtime.subscribe("agent:passivated", () => passivations++);
  runtime.subscribe("agent:rehydrated", () => {
    rehydrations++;
    if (options.engine === "fake") void sample();
  });
  runtime.subscribe("agent:error", ({ id, error }) => fail(`agent:error for ${id}: ${error.code} ${error.message}`));

  let created = 0;
  const live: Live[] = [];
  const spawn = async (): Promise<Live> => {
    const id = `soak/${created++}`;
    await runtime.spawn({ id, systemPrompt: `You are agent ${id}.` });
    const agent: Live = { id, sends: [], inFlight: 0, retiring: false };
    live.push(agent);
    return agent;
  };
  // Spawned in parallel batches: each spawn passivates another agent once the slots are full.
  for (let i = 0; i < options.agents; i += 32) {
    await Promise.all(Array.from({ length: Math.min(32, options.agents - i) }, () => spawn()));
  }
  options.log?.(`${options.agents} agents spawned in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  let lost = 0;
  let reordered = 0;
  /** Stored user messages must be exactly the acknowledged sends, in send order. */
  const check = async (agent: Live) => {
    const expected = agent.sends.filter((s) => s.ok).map((s) => s.text);
    lost += agent.sends.length - expected.length;
    const record = await store.read(agent.id);
    const stored = (record?.history ?? []).filter((m) => m.role === "user").map((m) => m.content);
    if (JSON.stringify(stored) !== JSON.stringify(expected)) {
      const missing = expected.filter((text) => !stored.includes(text)).length;
      lost += missing;
      if (missing === 0) reordered++;
      fail(`${agent.id}: stored ${JSON.stringify(stored)}, sent ${JSON.stringify(expected)}`);
    }
  };
  const retire = async (agent: Live) => {
    agent.retiring = true;
    await check(agent);
    await runtime.remove(agent.id);
    live.splice(live.indexOf(agent), 1);
    await spawn();
  };

  const checkpoints: number[] = [];
  const heapCheckpoints: number[] = [];
  let sent = 0;
  let acknowledged = 0;
  let nextCheckpoint = Math.ceil(options.messages / 10);
  const retirements = new Set<Promise<void>>();
  const sender = async (n: number) => {
    while (sent < options.messages) {
      const agent = live[rng.int(live.length)]!;
      if (!agent || agent.retiring) {
        await new Promise((resolve) => setImmediate(resolve));
        continue;
      }
      const entry: { text: string; ok?: boolean } = { text: `m${sent++} s${n} ${rng.int(1e6).toString(36)}` };
      agent.sends.push(entry);
      agent.inFlight++;
      try {
        await runtime.ask(agent.id, entry.text);
        entry.ok = true;
        acknowledged++;
      } catch (error) {
        entry.ok = false;
        fail(`${agent.id}: ${entry.text} refused: ${String(error)}`);
      }
      agent.inFlight--;
      if (acknowledged % 200 === 0) await sample();
      if (acknowledged >= nextCheckpoint) {
        nextCheckpoint += Math.ceil(options.messages / 10);
        gc();
        checkpoints.push(rssMiB());
        heapCheckpoints.push(heapMiB());
        options.log?.(
          `${acknowledged}/${options.messages} acknowledged, RSS ${checkpoints.at(-1)} MiB, heap ${heapCheckpoints.at(-1)} MiB, ${passivations} passivations`,
        );
      }
      if (!agent.retiring && agent.inFlight === 0 && agent.sends.length >= options.turnsPerAgent) {
        const retirement = retire(agent).catch((error: unknown) => fail(`retiring ${agent.id}: ${String(error)}`));
        retirements.add(retirement);
        void retirement.finally(() => retirements.delete(retirement));
      }
    }
  };
  await Promise.all(Array.from({ length: options.senders }, (_, n) => sender(n)));
  await Promise.all(retirements);
  await sample();
  await runtime.close();
  for (const agent of live) await check(agent);
  gc();
  const after = rssMiB();
  const seconds = (Date.now() - started) / 1000;
  const figures: SoakFigures = {
    engine: options.engine,
    agentsAlive: live.length,
    agentsCreated: created,
    maxAgents: options.maxAgents,
    messagesAcknowledged: acknowledged,
    lost,
    reordered,
    maxResidentSeen,
    passivations,
    rehydrations,
    rss: { before, checkpoints, after },
    rssDriftMiB: Math.round(((checkpoints.at(-1) ?? after) - (checkpoints[0] ?? before)) * 10) / 10,
    heapCheckpoints,
    heapDriftMiB: Math.round(((heapCheckpoints.at(-1) ?? 0) - (heapCheckpoints[0] ?? 0)) * 10) / 10,
    seconds: Math.round(seconds * 10) / 10,
    messagesPerSecond: Math.round(acknowledged / seconds),
  };
  return { figures, failures };
}

/** Runs a soak, prints its figures and asserts the promise: nothing lost or reordered, never over maxAgents. */
export async function soakAndCheck(options: Omit<SoakOptions, "stateDir">, stateDir: string): Promise<SoakFigures> {
  const { figures, failures } = await runSoak({ ...options, stateDir, log: (line) => console.log(`[soak] ${line}`) });
  console.log(`[figures] soak: ${JSON.stringify(figures)}`);
  expect(failures).toEqual([]);
  expect(figures.lost).toBe(0);
  expect(figures.reordered).toBe(0);
  expect(figures.messagesAcknowledged).toBe(options.messages);
  expect(figures.maxResidentSeen).toBeLessThanOrEqual(options.maxAgents);
  // The sampling saw the slots full at least once (it watches what it claims to watch).
  expect(figures.maxResidentSeen).toBe(options.maxAgents);
  return figures;
}
