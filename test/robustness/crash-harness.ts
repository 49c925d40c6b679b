/**
 * The crash harness: runs the runtime in a child process (fixtures/crash-child.ts) on the real model,
 * SIGKILLs it at chosen moments — a random time, the start of a KV save, the start of a record write,
 * just after an acknowledgement — and restarts it over the same state dir, many times. At every restart
 * it checks, through the store as the runtime reads it:
 *
 * - every acknowledged turn is present, in order, with the reply that was acknowledged;
 * - nothing that was durable before disappears (each agent's stored history only grows, until a reset
 *   the child acknowledged);
 * - no agent is lost or damaged, every saved cache named by a record passes its checksum;
 * - the stored history contains only messages that were sent;
 * - no agent:error of ERR_STATE_CORRUPT / ERR_STATE_FOREIGN was ever reported (a half-written file read).
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { DirectoryStore } from "../../src/index.js";
import { random } from "./fuzz.js";
import { MODEL_PATH, ROOT } from "./helpers.js";

const FIXTURE = join(ROOT, "test/robustness/fixtures/crash-child.ts");

type ChildEvent =
  | { ev: "ready"; agents: Array<{ id: string; status: string; turns: number; error?: string }> }
  | { ev: "send"; id: string; text: string }
  | { ev: "ack"; id: string; text: string; reply: string }
  | { ev: "fail"; id: string; text: string; code: string }
  | { ev: "spawned" | "reset-begin" | "reset" | "passivated" | "save-begin" | "write-begin"; id: string }
  | { ev: "agent-error"; id?: string; code: string; message: string }
  | { ev: "closed" };

/** How a life ends: killed by one of these triggers, or told to quit. */
const STRATEGIES = ["random time", "KV save begins", "record write begins", "just after an ack"] as const;
type Strategy = (typeof STRATEGIES)[number];

export interface CrashFigures {
  kills: number;
  killsBy: Record<Strategy, number>;
  /** What the child was last seen doing when it was killed. */
  killedDuring: Record<string, number>;
  lives: number;
  acknowledgedTurns: number;
  passivations: number;
  resets: number;
  /** Staging or temp files left by kills and not yet swept at the end (never read by the runtime). */
  leftoverTempFiles: number;
  seconds: number;
}

interface AgentModel {
  sent: Set<string>;
  /** Acknowledged since the last verification: must be in the store, in this order, with these replies. */
  acked: Array<{ text: string; reply: string }>;
  /** The stored user messages at the last verification: the store may only add to them. */
  durable: string[];
  /** Spawn acknowledged and no reset acknowledged since: the agent must exist. */
  mustExist: boolean;
}

class Life {
  readonly child: ChildProcessWithoutNullStreams;
  readonly events: ChildEvent[] = [];
  readonly exited: Promise<number | null>;
  #listeners = new Set<(event: ChildEvent) => void>();
  stderr = "";

  constructor(stateDir: string, seed: number, agents: number, maxAgents: number) {
    this.child = spawn(process.execPath, ["--import", "tsx", FIXTURE, stateDir, MODEL_PATH, String(seed), String(agents), String(maxAgents)], {
      cwd: ROOT,
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.child.stderr.on("data", (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString()).slice(-4000);
    });
    this.exited = new Promise((resolve) => this.child.on("exit", (code) => resolve(code)));
    createInterface({ input: this.child.stdout }).on("line", (line) => {
      let event: ChildEvent;
      try {
        event = JSON.parse(line) as ChildEvent;
      } catch {
        return; // stray output (a library warning)
      }
      this.events.push(event);
      for (const listener of this.#listeners) listener(event);
    });
  }

  /** Resolves with the first event (from now on) that `match` accepts; rejects if the child exits first. */
  next(match: (event: ChildEvent) => boolean, timeoutMs = 60_000): Promise<ChildEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`no matching event from the child in ${timeoutMs} ms; stderr: ${this.stderr}`)), timeoutMs);
      const listener = (event: ChildEvent) => {
        if (match(event)) finish(undefined, event);
      };
      const finish = (error?: Error, event?: ChildEvent) => {
        clearTimeout(timer);
        this.#listeners.delete(listener);
        if (error) reject(error);
        else resolve(event!);
      };
      this.#listeners.add(listener);
      void this.exited.then((code) => finish(new Error(`the child exited (code ${code}) while waiting; stderr: ${this.stderr}`)));
    });
  }

  send(command: string): void {
    this.child.stdin.write(`${command}\n`);
  }

  async kill(): Promise<void> {
    this.child.kill("SIGKILL");
    await this.exited;
  }
}

function fail(message: string): never {
  throw new Error(`crash harness: ${message}`);
}

/** Checks the store against everything the previous lives acknowledged, then adopts it as the new baseline. */
async function verify(stateDir: string, ready: Extract<ChildEvent, { ev: "ready" }>, model: Map<string, AgentModel>, lifeNo: number): Promise<void> {
  const store = new DirectoryStore(stateDir);
  const listed = new Map(ready.agents.map((a) => [a.id, a]));
  for (const agent of ready.agents) {
    if (agent.status === "failed") fail(`life ${lifeNo}: agent ${agent.id} restored as failed (${agent.error})`);
  }
  for (const [id, expected] of model) {
    const shown = listed.get(id);
    if (expected.mustExist && !shown) fail(`life ${lifeNo}: agent ${id} was lost`);
    const record = await store.read(id);
    if (!shown) {
      if (record) fail(`life ${lifeNo}: ${id} has a record but the runtime did not list it`);
      expected.durable = [];
      continue;
    }
    if (!record) fail(`life ${lifeNo}: ${id} is listed but has no record`);
    if (record.kv) await store.openKv(id, record.kv); // the named cache is whole: size and checksum match
    const history = record.history;
    const stored = history.filter((m) => m.role === "user").map((m) => m.content);
    if (shown.turns !== stored.length) fail(`life ${lifeNo}: ${id} shows ${shown.turns} turns, the store holds ${stored.length}`);
    for (const [index, text] of expected.durable.entries()) {
      if (stored[index] !== text)
        fail(`life ${lifeNo}: ${id} lost durable turn ${index} (${JSON.stringify(text)}); stored ${JSON.stringify(stored)}`);
    }
    for (const text of stored)
      if (!expected.sent.has(text)) fail(`life ${lifeNo}: ${id} stores a message that was never sent: ${JSON.stringify(text)}`);
    let cursor = 0;
    for (const { text, reply } of expected.acked) {
      while (cursor < history.length && !(history[cursor]!.role === "user" && history[cursor]!.content === text)) cursor++;
      if (cursor >= history.length) fail(`life ${lifeNo}: acknowledged turn ${JSON.stringify(text)} of ${id} is missing or out of order`);
      const answer = history[cursor + 1];
      if (answer?.role !== "assistant" || answer.content !== reply) {
        fail(
          `life ${lifeNo}: ${id}'s acknowledged reply to ${JSON.stringify(text)} was ${JSON.stringify(reply)}, stored ${JSON.stringify(answer?.content)}`,
        );
      }
      cursor += 2;
    }
    expected.durable = stored;
    expected.acked = [];
  }
}

function apply(event: ChildEvent, model: Map<string, AgentModel>, figures: CrashFigures): void {
  const agent = (id: string) => {
    let entry = model.get(id);
    if (!entry) model.set(id, (entry = { sent: new Set(), acked: [], durable: [], mustExist: false }));
    return entry;
  };
  switch (event.ev) {
    case "send":
      agent(event.id).sent.add(event.text);
      return;
    case "ack":
      agent(event.id).acked.push({ text: event.text, reply: event.reply });
      figures.acknowledgedTurns++;
      return;
    case "spawned":
      agent(event.id).mustExist = true;
      return;
    case "reset-begin":
      // From here the agent may vanish at any moment (its removal is durable before it is acknowledged).
      Object.assign(agent(event.id), { mustExist: false, acked: [], durable: [] });
      return;
    case "reset":
      figures.resets++;
      return;
    case "passivated":
      figures.passivations++;
      return;
    case "agent-error":
      if (event.code === "ERR_STATE_CORRUPT" || event.code === "ERR_STATE_FOREIGN") {
        fail(`the runtime reported ${event.code} for ${event.id}: a damaged file was read (${event.message})`);
      }
      return;
    default:
      return;
  }
}

/** What was under way when the child died: a passivation (KV save + record), a turn, or nothing. */
function inFlight(events: readonly ChildEvent[]): string {
  const saving = new Set<string>();
  const turns = new Set<string>();
  let writing = false;
  for (const event of events) {
    if (event.ev === "save-begin") saving.add(event.id);
    else if (event.ev === "passivated") saving.delete(event.id);
    else if (event.ev === "send") turns.add(event.text);
    else if (event.ev === "ack" || event.ev === "fail") turns.delete(event.text);
    writing = event.ev === "write-begin";
  }
  if (saving.size > 0) return writing ? "passivation (record write)" : "passivation (KV save)";
  if (writing) return "turn (record write)";
  if (turns.size > 0) return "turn (generating)";
  return "idle";
}

export async function runCrashHarness(options: {
  stateDir: string;
  kills: number;
  seed?: number;
  agents?: number;
  maxAgents?: number;
  log?: (line: string) => void;
}): Promise<CrashFigures> {
  const started = Date.now();
  const { stateDir, kills } = options;
  const agents = options.agents ?? 5;
  const maxAgents = options.maxAgents ?? 2;
  const rng = random(options.seed ?? 7);
  const model = new Map<string, AgentModel>();
  const figures: CrashFigures = {
    kills: 0,
    killsBy: Object.fromEntries(STRATEGIES.map((s) => [s, 0])) as Record<Strategy, number>,
    killedDuring: {},
    lives: 0,
    acknowledgedTurns: 0,
    passivations: 0,
    resets: 0,
    leftoverTempFiles: 0,
    seconds: 0,
  };

  for (let lifeNo = 0; lifeNo <= kills; lifeNo++) {
    const life = new Life(stateDir, lifeNo + 1, agents, maxAgents);
    figures.lives++;
    try {
      const ready = (await life.next((e) => e.ev === "ready")) as Extract<ChildEvent, { ev: "ready" }>;
      await verify(stateDir, ready, model, lifeNo);
      life.next(() => false, 600_000).catch(() => {}); // keeps exit errors from going unhandled
      const seen = life.events.length;
      let applied = seen;
      let broken: unknown;
      /** Applies the child's events to the model; a broken promise (say, a corrupt file read) is rethrown below. */
      const drain = () => {
        try {
          for (; applied < life.events.length; applied++) apply(life.events[applied]!, model, figures);
        } catch (error) {
          broken ??= error;
          applied = life.events.length;
        }
        if (broken) throw broken;
      };
      const tryDrain = () => {
        try {
          drain();
        } catch {
          // Reported by the next drain() outside the timer.
        }
      };
      const tracker = setInterval(tryDrain, 5);
      life.send("go");
      if (lifeNo === kills) {
        // The last life ends cleanly: close() must leave everything acknowledged in the store.
        await new Promise((resolve) => setTimeout(resolve, 400));
        life.send("quit");
        await life.next((e) => e.ev === "closed");
        const code = await life.exited;
        clearInterval(tracker);
        drain();
        if (code !== 0) fail(`the last child exited with code ${code}; stderr: ${life.stderr}`);
        break;
      }
      const strategy = STRATEGIES[lifeNo % STRATEGIES.length]!;
      const nth = 1 + rng.int(4);
      let count = 0;
      const trigger = (type: ChildEvent["ev"]) => (e: ChildEvent) => e.ev === type && ++count >= nth;
      switch (strategy) {
        case "random time":
          await new Promise((resolve) => setTimeout(resolve, 50 + rng.int(500)));
          break;
        case "KV save begins":
          await life.next(trigger("save-begin"), 20_000);
          break;
        case "record write begins":
          await life.next(trigger("write-begin"), 20_000);
          break;
        case "just after an ack":
          await life.next(trigger("ack"), 20_000);
          break;
      }
      // A little jitter so the kill lands anywhere inside the step, not always at its first instruction.
      if (strategy !== "random time" && rng.chance(0.7)) await new Promise((resolve) => setTimeout(resolve, rng.int(4)));
      await life.kill();
      clearInterval(tracker);
      drain();
      const during = inFlight(life.events);
      figures.kills++;
      figures.killsBy[strategy]++;
      figures.killedDuring[during] = (figures.killedDuring[during] ?? 0) + 1;
      options.log?.(`kill ${figures.kills}/${kills}: ${strategy}, during ${during}; ${figures.acknowledgedTurns} turns acknowledged so far`);
    } catch (error) {
      await life.kill().catch(() => {});
      throw error;
    }
  }

  // Final check over the cleanly closed state: a fresh read of every agent.
  const final = new Life(stateDir, 9999, agents, maxAgents);
  try {
    const ready = (await final.next((e) => e.ev === "ready")) as Extract<ChildEvent, { ev: "ready" }>;
    await verify(stateDir, ready, model, kills + 1);
  } finally {
    await final.kill();
  }
  for (const name of await readdir(join(stateDir, "agents"))) {
    const files = await readdir(join(stateDir, "agents", name));
    figures.leftoverTempFiles += files.filter((file) => file.includes(".tmp") || file.startsWith("staging-")).length;
  }
  figures.seconds = Math.round((Date.now() - started) / 100) / 10;
  return figures;
}
