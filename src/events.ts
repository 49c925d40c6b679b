import type { AgentRuntimeError } from "./errors.js";
import type { StopReason } from "./engines/engine.js";

/** Timings and token counts of one turn, as reported by the engine. */
export interface TurnTimings {
  /** Tokens of the full rendered prompt. */
  promptTokens: number;
  /** Prompt tokens served from the agent's KV cache. */
  reusedTokens: number;
  /** Prompt tokens the engine evaluated this turn. */
  evaluatedTokens: number;
  generatedTokens: number;
  /** Tokens in the agent's cache after the turn. */
  cacheTokens: number;
  /** Time to first token, from when the engine started this turn (queueing excluded). */
  ttftMs: number;
  /** Time waiting in the mailbox and for a resident slot (includes any rehydration). */
  queueMs: number;
  /** Generated tokens per second after the first token. */
  tokensPerSecond: number;
  totalMs: number;
  stopReason: StopReason;
  /** History messages before the agent's window after this turn (see docs/context.md). */
  windowStart?: number;
  /** Whole turns that left the window before this turn (a slide); absent when it did not move. */
  slidTurns?: number;
  /** Cached tokens the engine moved instead of re-evaluating (the "shift" policy); absent when none. */
  shiftedTokens?: number;
  /** Tokens evaluated by the behaviour's fold of the leaving turns (summarizing); absent when none. */
  foldEvaluatedTokens?: number;
  /** The cluster node that ran the turn (its owner); absent outside a cluster. */
  node?: string;
}

export interface TurnResult {
  id: string;
  turnId: number;
  reply: string;
  timings: TurnTimings;
}

/** Runtime events. Names are namespaced; every payload names its agent. */
export interface RuntimeEvents {
  "agent:spawned": [
    event: {
      id: string;
      role: string;
      /** System prompt tokens loaded from the shared prompt cache instead of evaluated. */
      sharedPrefixTokens: number;
      /** Tokens evaluated to prepare the agent. */
      evaluatedTokens: number;
    },
  ];
  "agent:turn-start": [event: { id: string; turnId: number; text: string }];
  "agent:token": [event: { id: string; turnId: number; text: string }];
  "agent:turn-end": [event: TurnResult];
  "agent:passivated": [event: { id: string; tokens: number; bytes: number; ms: number }];
  "agent:rehydrated": [event: { id: string; tokens: number; ms: number; source: "state" | "history" }];
  "agent:removed": [event: { id: string }];
  "agent:error": [event: { id?: string | undefined; error: AgentRuntimeError }];
  "worker:restarted": [event: { reason: string; ms: number }];
}

export type RuntimeEventName = keyof RuntimeEvents;

/** Emits one runtime event; what the runtime hands to the rooms below it instead of its emitter. */
export type EmitEvent = <E extends RuntimeEventName>(event: E, ...args: RuntimeEvents[E]) => void;
