import type { Logger } from "pino";
import type { Clock } from "../clock.js";
import type { ChatMessage, GenerateOutput, HostedEngine, SamplingOptions } from "../engines/engine.js";
import { AgentRuntimeError, isAgentRuntimeError } from "../errors.js";
import type { EmitEvent, TurnResult, TurnTimings } from "../events.js";
import { RECORD_FORMAT_VERSION, type AgentRecord, type KvDescriptor, type StateStore } from "../store/state-store.js";
import { contextOf, type AgentBehaviour, type AgentView } from "./behaviour.js";
import {
  DEFAULT_CONTEXT_POLICY,
  DEFAULT_SLIDE_TO,
  modelFor,
  planWindow,
  restoredWindow,
  windowAfterReplace,
  type ContextPolicy,
  type ContextWindow,
  type WindowPlan,
} from "./context-window.js";
import { Mailbox } from "./mailbox.js";
import { writeFailure } from "../store/write-failure.js";

/** Where an agent is. `failed` agents have a record that cannot be used; they answer with its error. */
export type AgentStatus =
  | { state: "resident" }
  | { state: "passivating" }
  | { state: "passivated" }
  | { state: "rehydrating" }
  | { state: "failed"; error: AgentRuntimeError };

type State = AgentStatus["state"];

/** The moves an agent's status may make; anything else is a bug in the caller. */
const TRANSITIONS: Record<State, readonly State[]> = {
  passivated: ["rehydrating"],
  rehydrating: ["resident", "passivated"],
  resident: ["passivating", "passivated"],
  passivating: ["passivated", "resident"],
  failed: [],
};

/** A read-only snapshot of an agent, as returned by `get` and `list`. */
export interface AgentInfo {
  id: string;
  role: string;
  behaviour: string;
  status: State;
  systemPrompt: string;
  sampling: SamplingOptions;
  /** Messages in the history (user + assistant). */
  historyLength: number;
  turns: number;
  /** Messages waiting in the mailbox (not counting the one running). */
  queued: number;
  busy: boolean;
  createdAt: number;
  lastUsed: number;
  lastTurn?: TurnTimings | undefined;
  error?: { code: string; message: string } | undefined;
  /** What the agent does when its conversation outgrows the context. */
  contextPolicy: ContextPolicy;
  /** History messages before the window (no longer rendered; still stored). 0 until the first slide. */
  windowStart: number;
  /** The behaviour's note about the turns that left the window (summarizing), if any. */
  memoryNote?: string | undefined;
}

/** What a turn needs from the runtime around the agent. */
export interface TurnContext {
  readonly engine: HostedEngine;
  readonly store: StateStore;
  readonly clock: Clock;
  readonly emit: EmitEvent;
  /** The cluster node running the turn, reported in its timings; absent outside a cluster. */
  readonly node?: string | undefined;
}

export interface TurnRequest {
  text: string;
  turnId: number;
  maxTokens: number;
  signal: AbortSignal | undefined;
  /** Clock time the message was posted (for `queueMs`). */
  queuedAt: number;
  /** Receives each piece of the reply as it is decoded. */
  push(text: string): void;
}

export interface AgentInit {
  id: string;
  role: string;
  systemPrompt: string;
  sampling: SamplingOptions;
  behaviour: AgentBehaviour;
  history: ChatMessage[];
  kv?: KvDescriptor | undefined;
  createdAt: number;
  lastUsed: number;
  mailboxCapacity: number;
  log: Logger;
  /** A stored agent that cannot be used: it answers every message with this error. */
  failure?: AgentRuntimeError | undefined;
  /** What the agent does when its next turn would not fit the context. Default `"slide"`. */
  contextPolicy?: ContextPolicy | undefined;
  /** Fraction of the context a slide shrinks the prompt to. Default 0.5. */
  slideTo?: number | undefined;
  /** Index in `history` of the window's first message (from the record). Default 0. */
  windowStart?: number | undefined;
  /** The behaviour's memory note (from the record). */
  memoryNote?: string | undefined;
}

const never = new AbortController().signal;

/** Tokens a chat template may add once per prompt (a default system preamble, a date line), for the size bound. */
const PREAMBLE_TOKENS = 256;

/**
 * An actor: identity, conversation, mailbox and status. Its mailbox runs one message at a time; its
 * status moves only along {@link TRANSITIONS}; its turn renders through its behaviour, generates, and
 * makes the new history durable before the turn is acknowledged.
 */
export class Agent {
  readonly id: string;
  readonly role: string;
  readonly systemPrompt: string;
  readonly sampling: SamplingOptions;
  readonly behaviour: AgentBehaviour;
  readonly mailbox: Mailbox;
  readonly log: Logger;
  readonly createdAt: number;
  /** The saved KV cache the store holds for this agent, if any. */
  kv: KvDescriptor | undefined;
  /** > 0 while a message (or spawn, or rehydration) uses the agent: it must not be passivated. */
  pins = 0;
  lastUsed: number;
  lastTurn: TurnTimings | undefined;
  /** How the last load from history went: tokens served by the shared prompt cache, tokens evaluated. */
  lastLoad = { sharedPrefixTokens: 0, evaluatedTokens: 0 };
  readonly contextPolicy: ContextPolicy;
  readonly #slideTo: number;
  #history: ChatMessage[];
  /** The history was replaced (a stateless client's conversation): the next commit rewrites the record. */
  #rewritten = false;
  /** The tail of the history the behaviour renders; the cache holds (at most) this. */
  #window: ContextWindow;
  #status: AgentStatus;
  #removed = false;

  constructor(init: AgentInit) {
    this.id = init.id;
    this.role = init.role;
    this.systemPrompt = init.systemPrompt;
    this.sampling = init.sampling;
    this.behaviour = init.behaviour;
    this.#history = init.history;
    this.contextPolicy = init.contextPolicy ?? DEFAULT_CONTEXT_POLICY;
    this.#slideTo = init.slideTo ?? DEFAULT_SLIDE_TO;
    this.#window = restoredWindow(init.history, init.windowStart ?? 0, init.memoryNote);
    this.#status = init.failure ? { state: "failed", error: init.failure } : { state: "passivated" };
    this.kv = init.kv;
    this.createdAt = init.createdAt;
    this.lastUsed = init.lastUsed;
    this.mailbox = new Mailbox(init.mailboxCapacity);
    this.log = init.log;
  }

  get status(): AgentStatus {
    return this.#status;
  }

  /** The whole history, as stored (the window is its tail from {@link windowStart}). */
  get history(): readonly ChatMessage[] {
    return this.#history;
  }

  /** Index in the history of the first message the behaviour renders. */
  get windowStart(): number {
    return this.#window.start;
  }

  get memoryNote(): string | undefined {
    return this.#window.memory;
  }

  /** What the behaviour sees: identity, the window of the history, the memory note. */
  view(window: ContextWindow = this.#window): AgentView {
    return { id: this.id, role: this.role, systemPrompt: this.systemPrompt, history: this.#history.slice(window.start), memoryNote: window.memory };
  }

  get turns(): number {
    return this.#history.filter((message) => message.role === "user").length;
  }

  /** Set once removed: queued work must not bring it back. */
  #goneError: AgentRuntimeError | undefined;

  get removed(): boolean {
    return this.#removed;
  }

  /**
   * What the cache holds between turns, rendered by the behaviour from the window (rehydration evaluates
   * this, so an agent rebuilt from its history gets the window it had, not the whole history).
   */
  context(): ChatMessage[] {
    return contextOf(this.behaviour, this.view());
  }

  /** Moves the status along an allowed edge; any other move is a bug and throws. */
  moveTo(state: Exclude<State, "failed">): void {
    if (this.#status.state === state) return;
    if (!TRANSITIONS[this.#status.state].includes(state)) {
      throw new Error(`Agent ${this.id}: status cannot move from ${this.#status.state} to ${state}`);
    }
    this.#status = { state } as AgentStatus;
  }

  /** Its cache is gone without a save (worker crash, failed load): back to passivated from anywhere. */
  lostCache(): void {
    if (this.#status.state !== "failed") this.#status = { state: "passivated" };
  }

  /**
   * Marks the agent removed and rejects its waiting messages — with `error` when it is not deleted but
   * gone from this process (cluster: another node owns it now).
   */
  markRemoved(error?: AgentRuntimeError): void {
    this.#removed = true;
    this.#goneError = error;
    this.mailbox.rejectPending(this.removedError());
  }

  /** Why the agent left this process when it was not deleted (see markRemoved). */
  get goneError(): AgentRuntimeError | undefined {
    return this.#goneError;
  }

  removedError(): AgentRuntimeError {
    return this.#goneError ?? new AgentRuntimeError("ERR_AGENT_REMOVED", undefined, { details: { id: this.id } });
  }

  /**
   * Runs `work` with `history` in place of the agent's history; the replacement stays only if `work`
   * resolves (a conversation sent by a stateless client that diverged from what the agent holds).
   */
  async withHistory<T>(history: ChatMessage[], work: () => Promise<T>): Promise<T> {
    const kept = this.#history;
    const keptWindow = this.#window;
    this.#window = windowAfterReplace(kept, history, keptWindow);
    this.#history = history;
    this.#rewritten = true;
    try {
      return await work();
    } catch (error) {
      this.#history = kept;
      this.#rewritten = false;
      this.#window = keptWindow;
      throw error;
    }
  }

  /**
   * One turn: generate from the behaviour's prompt, append what the behaviour records, and write the
   * record. Resolves (acknowledges) only once the new history is durable; otherwise the history is left
   * as it was. The caller has made the agent resident.
   */
  async turn(context: TurnContext, request: TurnRequest): Promise<TurnResult> {
    const { engine, store, clock, emit } = context;
    const { text, turnId, signal } = request;
    const started = clock.now();
    emit("agent:turn-start", { id: this.id, turnId, text });
    let output: GenerateOutput;
    let plan: WindowPlan = { window: this.#window, slidTurns: 0, foldEvaluatedTokens: 0 };
    try {
      plan = await this.#planWindow(engine, text, request.maxTokens, signal ?? never);
      const view = this.view(plan.window);
      output = await engine.generate(this.id, {
        messages: this.behaviour.prompt(view, text),
        maxTokens: request.maxTokens,
        sampling: this.sampling,
        signal: signal ?? never,
        onText: (chunk) => {
          if (chunk.length === 0) return;
          request.push(chunk);
          emit("agent:token", { id: this.id, turnId, text: chunk });
        },
        ...(this.#shifts(plan) ? { contextShift: true } : {}),
      });
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      throw this.#engineFailure(error, emit);
    }
    if (output.stopReason === "aborted") throw signal?.reason ?? new AgentRuntimeError("ERR_ABORTED");
    const previous = this.#history;
    const previousWindow = this.#window;
    const added = this.behaviour.record(this.view(plan.window), text, output.text);
    this.#history = [...previous, ...added];
    this.#window = plan.window;
    try {
      // One journal entry per turn (bytes independent of the history's length); a replaced history is
      // rewritten whole.
      if (this.#rewritten) await store.write(this.toRecord(clock.now()));
      else {
        const moved = plan.window.start !== previousWindow.start || plan.window.memory !== previousWindow.memory;
        const window = moved ? { windowStart: plan.window.start, memoryNote: plan.window.memory } : undefined;
        await store.appendTurn(this.id, { messages: added, updatedAt: clock.now(), ...(window ? { window } : {}) });
      }
      this.#rewritten = false;
    } catch (error) {
      // Not durable, so not acknowledged: the history stays as it was (the cache is rewound next turn).
      this.#history = previous;
      this.#window = previousWindow;
      throw writeFailure(error, `Saving the turn of ${this.id} failed`, this.id);
    }
    const timings = turnTimings(output, started - request.queuedAt, clock.now() - started, plan);
    if (context.node !== undefined) timings.node = context.node;
    this.lastTurn = timings;
    const result: TurnResult = { id: this.id, turnId, reply: output.text, timings };
    this.log.debug({ turnId, ...timings }, "turn end");
    emit("agent:turn-end", result);
    return result;
  }

  /**
   * The window for this turn under the agent's context policy (see context-window.ts). Nothing moves
   * under `"error"`.
   */
  async #planWindow(engine: HostedEngine, text: string, maxTokens: number, signal: AbortSignal): Promise<WindowPlan> {
    const unchanged: WindowPlan = { window: this.#window, slidTurns: 0, foldEvaluatedTokens: 0 };
    if (this.contextPolicy === "error") return unchanged;
    // Most turns fit with room to spare: when the last turn's cache plus a bound on the new message's
    // tokens (at most one per UTF-8 byte, doubled, plus the template's) fits, the count (a round trip
    // to the worker before every turn) is skipped. The bound only skips turns a count would not slide.
    // Before the agent's first turn in memory (a spawn, a read from the store, a replaced history) the
    // cache size is unknown: the same bound over every message of the prompt, plus room for a template's
    // preamble, skips the count for conversations far from the limit (measured: 1-7 ms a turn here).
    const cached = this.#rewritten ? undefined : this.lastTurn?.cacheTokens;
    const bound =
      cached === undefined
        ? this.behaviour.prompt(this.view(), text).reduce((sum, message) => sum + 2 * Buffer.byteLength(message.content) + 32, PREAMBLE_TOKENS) +
          maxTokens
        : cached + 2 * Buffer.byteLength(text) + 32 + maxTokens;
    if (bound < engine.info.contextSize - 1) return unchanged;
    const countTokens = (messages: ChatMessage[]) => engine.countTokens(messages);
    const fold = this.behaviour.fold?.bind(this.behaviour);
    return planWindow({
      history: this.#history,
      window: this.#window,
      render: (window) => this.behaviour.prompt(this.view(window), text),
      fold:
        fold &&
        (async (window, leaving) => {
          const { model, evaluatedTokens } = modelFor(engine, this.id, countTokens, signal);
          const memory = await fold(this.view(window), leaving, model);
          return { memory, evaluatedTokens: evaluatedTokens() };
        }),
      countTokens,
      contextSize: engine.info.contextSize,
      maxTokens,
      slideTo: this.#slideTo,
    });
  }

  /**
   * Whether this turn asks the engine to shift: under `"shift"`, when the window moved and nothing else
   * did, so that the cache holds P + dropped + kept and the prompt is P + kept + new. A new memory note
   * changes P itself (and its fold already rewound the cache): nothing is left to move.
   */
  #shifts(plan: WindowPlan): boolean {
    return this.contextPolicy === "shift" && plan.window.start !== this.#window.start && plan.window.memory === this.#window.memory;
  }

  /**
   * Refusals (context full, crash) leave the cache usable or already gone and pass through. Anything
   * else may have left the sequence broken (a saved cache that loads but cannot be evaluated, measured):
   * it becomes ERR_ENGINE_FAILED with `dropCache`, so that the next turn rebuilds from the history.
   */
  #engineFailure(error: unknown, emit: EmitEvent): unknown {
    if (isAgentRuntimeError(error) && error.code !== "ERR_ENGINE_FAILED") return error;
    const failure = new AgentRuntimeError("ERR_ENGINE_FAILED", `The engine failed on a turn of ${this.id}: ${(error as Error)?.message}`, {
      cause: error,
      details: { id: this.id },
    });
    this.log.error({ err: failure }, "engine failed mid-turn; the cache is dropped and rebuilt from history next turn");
    emit("agent:error", { id: this.id, error: failure });
    return failure;
  }

  toRecord(now: number): AgentRecord {
    return {
      formatVersion: RECORD_FORMAT_VERSION,
      id: this.id,
      role: this.role,
      behaviour: this.behaviour.name,
      systemPrompt: this.systemPrompt,
      sampling: this.sampling,
      history: this.#history,
      createdAt: this.createdAt,
      updatedAt: now,
      kv: this.kv,
      contextPolicy: this.contextPolicy,
      ...(this.#window.start > 0 ? { windowStart: this.#window.start } : {}),
      ...(this.#window.memory !== undefined ? { memoryNote: this.#window.memory } : {}),
    };
  }

  info(): AgentInfo {
    return {
      id: this.id,
      role: this.role,
      behaviour: this.behaviour.name,
      status: this.#status.state,
      systemPrompt: this.systemPrompt,
      sampling: this.sampling,
      historyLength: this.#history.length,
      turns: this.turns,
      queued: this.mailbox.pending,
      busy: this.mailbox.busy,
      createdAt: this.createdAt,
      lastUsed: this.lastUsed,
      lastTurn: this.lastTurn,
      contextPolicy: this.contextPolicy,
      windowStart: this.#window.start,
      ...(this.#window.memory !== undefined ? { memoryNote: this.#window.memory } : {}),
      ...(this.#status.state === "failed" ? { error: { code: this.#status.error.code, message: this.#status.error.message } } : {}),
    };
  }
}

function turnTimings(output: GenerateOutput, queueMs: number, totalMs: number, plan: WindowPlan): TurnTimings {
  return {
    promptTokens: output.promptTokens,
    reusedTokens: output.reusedTokens,
    evaluatedTokens: output.evaluatedTokens,
    generatedTokens: output.generatedTokens,
    cacheTokens: output.cacheTokens,
    ttftMs: output.ttftMs,
    queueMs,
    tokensPerSecond: output.generatedTokens > 1 && output.decodeMs > 0 ? ((output.generatedTokens - 1) * 1000) / output.decodeMs : 0,
    totalMs,
    stopReason: output.stopReason,
    windowStart: plan.window.start,
    ...(plan.slidTurns > 0 ? { slidTurns: plan.slidTurns } : {}),
    ...(output.shiftedTokens ? { shiftedTokens: output.shiftedTokens } : {}),
    ...(plan.foldEvaluatedTokens > 0 ? { foldEvaluatedTokens: plan.foldEvaluatedTokens } : {}),
  };
}
