/**
 * A seeded fuzzer for the library API: thousands of generated calls (valid and hostile ids, messages,
 * options and call orders, many in flight at once) against a runtime on the fake engine. It records what
 * every call ended with and which turns were acknowledged, so the caller can check that only typed errors
 * came out and that every acknowledged turn is stored, in order.
 */
import { AgentRuntime, ERROR_CODES, isAgentRuntimeError, type AgentRuntimeOptions } from "../../src/index.js";
import { FakeEngine } from "../../src/testing/index.js";

/** Deterministic PRNG (mulberry32): a failing seed replays exactly. */
export function random(seed: number) {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;
  return { next, int, pick, chance: (p: number) => next() < p };
}
type Random = ReturnType<typeof random>;

const GOOD_IDS = ["a", "b", "c", "d", "team/x", "team/y", "z9", "q.r_s-t"];
const HOSTILE_IDS: unknown[] = ["", "..", "../a", "a/..", "A", "a\0", "ａ", "а", "a b", "/a", "a/", "x".repeat(200), 7, null, undefined, {}, ["a"]];
const ID_ALPHABET = [..."abcz09/._-%\\ ", "\0", "é", "🤖", "\u200b", "\u202e", "A", ".."];
const TEXT_ALPHABET = [..."abc xyz.,!?\n\t", "\0", "é", "🤖", "\ud800", "\u202e", "\\", '"', "{", "}"];

function randomString(rng: Random, alphabet: readonly string[], maxLength: number): string {
  let out = "";
  const length = rng.int(maxLength + 1);
  for (let i = 0; i < length; i++) out += rng.pick(alphabet);
  return out;
}

function anyId(rng: Random): unknown {
  const roll = rng.next();
  if (roll < 0.75) return rng.pick(GOOD_IDS);
  if (roll < 0.9) return rng.pick(HOSTILE_IDS);
  return randomString(rng, ID_ALPHABET, 12);
}

function anyText(rng: Random, maxChars: number): unknown {
  const roll = rng.next();
  if (roll < 0.7) return `${randomString(rng, TEXT_ALPHABET, 24)}#${rng.int(1e6)}`;
  if (roll < 0.76) return "";
  if (roll < 0.8) return " \n\t ";
  if (roll < 0.86) return "w".repeat(maxChars + 1 + rng.int(1000));
  if (roll < 0.9) return "v".repeat(maxChars - rng.int(10)); // fits the char limit, may overflow the context
  return rng.pick([null, undefined, 42, {}, ["hi"], Symbol.iterator, () => "hi"]);
}

function anySampling(rng: Random): unknown {
  const roll = rng.next();
  if (roll < 0.5) return undefined;
  if (roll < 0.7) return { temperature: rng.pick([0, 0.7, 1, 2]), seed: rng.int(1000) };
  return rng.pick([{ temperature: -1 }, { temperature: Number.NaN }, { topK: 2.5 }, { topP: 0 }, { seed: -3 }, { hot: true }, "greedy", null, []]);
}

function anySendOptions(rng: Random): unknown {
  const roll = rng.next();
  if (roll < 0.55) return undefined;
  if (roll < 0.7) return { maxTokens: rng.pick([1, 4, 100, 1_000_000]) };
  if (roll < 0.8) {
    const controller = new AbortController();
    if (rng.chance(0.5)) controller.abort();
    else setTimeout(() => controller.abort(), rng.int(3));
    return { signal: controller.signal };
  }
  return rng.pick([null, "fast", { maxTokens: 0 }, { maxTokens: -1 }, { maxTokens: 1.5 }, { maxTokens: "3" }, { signal: "stop" }, { signal: {} }]);
}

interface Entry {
  text: string;
  ok?: boolean;
  /** For sendConversation: the user messages before the last one (they replace the history). */
  earlier?: string[];
}

/** A conversation for sendConversation: mostly well formed, sometimes not. */
function anyConversation(rng: Random, maxChars: number): unknown {
  const roll = rng.next();
  if (roll < 0.15)
    return rng.pick([[], null, "hi", [null], [{ role: "user" }], [{ role: "system", content: "x" }], [{ role: "assistant", content: "x" }]]);
  const turns = rng.int(3);
  const messages: Array<{ role: string; content: unknown }> = [];
  for (let i = 0; i < turns; i++) {
    messages.push({ role: "user", content: `earlier#${rng.int(1e6)}` });
    messages.push({ role: rng.chance(0.95) ? "assistant" : "system", content: `reply#${rng.int(1e6)}` });
  }
  messages.push({ role: "user", content: rng.chance(0.9) ? `conv#${rng.int(1e6)}` : anyText(rng, maxChars) });
  return messages;
}

export interface FuzzReport {
  calls: number;
  outcomes: Record<string, number>;
  /** Errors that were not AgentRuntimeError / TypeError / RangeError from validation / an abort reason. */
  untyped: string[];
  /** Acknowledged user texts of each agent alive at the end, in send order. */
  acked: Map<string, string[]>;
}

/** JavaScript's own TypeErrors (a crash in our code), as opposed to ones our validation throws. */
const ACCIDENTAL = /Cannot (read|set) propert|is not a function|is not iterable|is not a constructor|undefined|null/;

function classify(error: unknown): { kind: string; typed: boolean } {
  if (isAgentRuntimeError(error)) return { kind: error.code, typed: error.code in ERROR_CODES };
  if (error instanceof DOMException && error.name === "AbortError") return { kind: "AbortError", typed: true };
  if (error instanceof RangeError || error instanceof TypeError) {
    return { kind: error.name, typed: !ACCIDENTAL.test(error.message) };
  }
  return { kind: (error as Error)?.name ?? typeof error, typed: false };
}

export async function runFuzz(options: {
  stateDir: string;
  inputs: number;
  seed: number;
  runtimeOptions?: Partial<AgentRuntimeOptions>;
}): Promise<{ runtime: AgentRuntime; report: FuzzReport }> {
  const rng = random(options.seed);
  const maxAgents = 3;
  const maxMessageChars = 300;
  const runtime = await AgentRuntime.create({
    stateDir: options.stateDir,
    maxAgents,
    mailboxCapacity: 4,
    maxMessageChars,
    engineFactory: async () => new FakeEngine({ sequences: maxAgents, contextSize: 1500 }),
    ...options.runtimeOptions,
  });
  const report: FuzzReport = { calls: 0, outcomes: {}, untyped: [], acked: new Map() };
  /**
   * Per live agent: its sends in call order (the mailbox's order), each settled to true (acknowledged)
   * or false. A conversation send replaces the history with `earlier` (its user messages) + its text.
   */
  const incarnations = new Map<string, Entry[]>();
  const inFlight = new Set<Promise<unknown>>();

  const record = (name: string, error?: unknown) => {
    report.calls++;
    const kind = error === undefined ? "ok" : classify(error).kind;
    report.outcomes[`${name}:${kind}`] = (report.outcomes[`${name}:${kind}`] ?? 0) + 1;
    if (error !== undefined && !classify(error).typed) report.untyped.push(`${name}: ${String((error as Error)?.stack ?? error)}`);
  };
  const call = async (name: string, fn: () => unknown): Promise<boolean> => {
    try {
      await fn();
      record(name);
      return true;
    } catch (error) {
      record(name, error);
      return false;
    }
  };
  const send = (id: unknown, text: unknown, sendOptions: unknown, conversation?: unknown) => {
    const sends = typeof id === "string" ? incarnations.get(id) : undefined;
    const entry: Entry = { text: String(text) };
    if (conversation !== undefined) {
      entry.earlier = Array.isArray(conversation)
        ? conversation.slice(0, -1).flatMap((m: { role?: unknown; content?: unknown }) => (m?.role === "user" ? [String(m.content)] : []))
        : [];
    }
    sends?.push(entry);
    let turn: ReturnType<AgentRuntime["send"]>;
    try {
      turn =
        conversation === undefined
          ? runtime.send(id as string, text as string, sendOptions as never)
          : runtime.sendConversation(id as string, conversation as never, sendOptions as never);
    } catch (error) {
      // send() itself must never throw: every failure arrives through the turn.
      record("send(sync)", error);
      report.untyped.push(`send threw synchronously: ${String(error)}`);
      entry.ok = false;
      return Promise.resolve();
    }
    const settled = turn.result.then(
      () => {
        entry.ok = true;
        record("send");
      },
      (error: unknown) => {
        entry.ok = false;
        record("send", error);
      },
    );
    inFlight.add(settled);
    void settled.finally(() => inFlight.delete(settled));
    return settled;
  };

  for (let i = 0; i < options.inputs; i++) {
    const roll = rng.next();
    if (roll < 0.12) {
      const id = anyId(rng);
      const spec = rng.chance(0.05)
        ? rng.pick([null, "spec", 3, { id }])
        : {
            id,
            systemPrompt: rng.chance(0.9) ? `You are ${String(id)}.` : rng.pick([7, null, "s".repeat(maxMessageChars + 1)]),
            ...(rng.chance(0.3) ? { role: rng.pick(["planner", 9, "r".repeat(maxMessageChars + 1)]) } : {}),
            sampling: anySampling(rng),
            ...(rng.chance(0.05) ? { behaviour: rng.pick([{}, null, { name: "x", prompt: 1, record: 2 }]) } : {}),
          };
      // Sometimes several spawns of one id race; they are awaited together.
      const copies = rng.chance(0.2) ? 2 + rng.int(3) : 1;
      const results = await Promise.all(Array.from({ length: copies }, () => call("spawn", () => runtime.spawn(spec as never))));
      const wins = results.filter(Boolean).length;
      if (wins > 1) report.untyped.push(`${wins} concurrent spawns of ${String(id)} all succeeded`);
      if (wins === 1) incarnations.set(id as string, []);
    } else if (roll < 0.56) {
      void send(anyId(rng), anyText(rng, maxMessageChars), anySendOptions(rng));
      if (rng.chance(0.3)) await Promise.race([...inFlight, Promise.resolve()]);
    } else if (roll < 0.62) {
      const conversation = anyConversation(rng, maxMessageChars);
      const last = Array.isArray(conversation) ? (conversation.at(-1) as { content?: unknown } | undefined)?.content : undefined;
      void send(anyId(rng), last, anySendOptions(rng), conversation);
      if (rng.chance(0.3)) await Promise.race([...inFlight, Promise.resolve()]);
    } else if (roll < 0.72) {
      // A burst to one agent: more than its mailbox holds.
      const id = rng.pick(GOOD_IDS);
      await Promise.all(Array.from({ length: 1 + rng.int(7) }, () => send(id, `burst#${rng.int(1e6)}`, undefined)));
    } else if (roll < 0.8) {
      const id = anyId(rng);
      await call("get", () => runtime.get(id as string));
    } else if (roll < 0.86) {
      const id = anyId(rng);
      await call("passivate", () => runtime.passivate(id as string));
    } else if (roll < 0.9) {
      const id = anyId(rng);
      if (await call("remove", () => runtime.remove(id as string))) incarnations.delete(id as string);
    } else if (roll < 0.93) {
      await call("memory", () => runtime.memory());
    } else if (roll < 0.96) {
      await call("list", async () => (await runtime.list()).agents);
    } else {
      await Promise.all(inFlight);
    }
    const resident = (await runtime.list()).agents.filter(
      (a) => a.status === "resident" || a.status === "rehydrating" || a.status === "passivating",
    ).length;
    if (resident > maxAgents) report.untyped.push(`${resident} agents resident at input ${i}, over maxAgents ${maxAgents}`);
  }
  await Promise.all(inFlight);
  for (const [id, sends] of incarnations) {
    let history: string[] = [];
    for (const entry of sends) {
      if (!entry.ok) continue;
      history = entry.earlier ? [...entry.earlier, entry.text] : [...history, entry.text];
    }
    report.acked.set(id, history);
  }
  return { runtime, report };
}
