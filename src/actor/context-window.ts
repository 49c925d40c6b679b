import type { ChatMessage, HostedEngine } from "../engines/engine.js";
import { AgentRuntimeError } from "../errors.js";
import type { AgentModel } from "./behaviour.js";

/**
 * What an agent does when its next turn would not fit its context (see docs/context.md):
 * - `"error"`: nothing; the engine refuses the prompt with ERR_CONTEXT_FULL (or cuts the reply short).
 * - `"slide"`: drop the oldest whole turns from the window the behaviour renders, down to `slideTo` of
 *   the context; the kept window is evaluated exactly as a fresh agent holding it would evaluate it.
 * - `"shift"`: the same window, but the engine erases the dropped turns from the cache and moves the
 *   kept ones down instead of re-evaluating them: cheaper, approximate.
 */
import type { ContextPolicy } from "../store/state-store.js";

export type { ContextPolicy };

export const CONTEXT_POLICIES: readonly ContextPolicy[] = ["error", "slide", "shift"];

/** Default policy of agents. */
export const DEFAULT_CONTEXT_POLICY: ContextPolicy = "slide";
/** Default fraction of the context a slide shrinks the prompt to: it slides rarely, not every turn. */
export const DEFAULT_SLIDE_TO = 0.5;

/** The part of an agent's history its behaviour renders, and the note kept for what left it. */
export interface ContextWindow {
  /** Index in the history of the window's first message (a user message, or the history's length). */
  readonly start: number;
  /** The behaviour's memory note about the messages before `start`, if it keeps one. */
  readonly memory: string | undefined;
}

/** What choosing the window for one turn did. */
export interface WindowPlan {
  window: ContextWindow;
  /** Whole turns (user messages) that left the window this turn; 0 when it did not move. */
  slidTurns: number;
  /** Prompt tokens evaluated by the behaviour's `fold` (its memory note), through the agent's model. */
  foldEvaluatedTokens: number;
}

export interface PlanInput {
  history: readonly ChatMessage[];
  window: ContextWindow;
  /** The prompt the behaviour renders for the new message with `window`. */
  render(window: ContextWindow): ChatMessage[];
  /**
   * Folds `leaving` into a new note (the behaviour's `fold`) and says what that evaluated; undefined
   * when the behaviour keeps no note.
   */
  fold: ((window: ContextWindow, leaving: readonly ChatMessage[]) => Promise<{ memory: string | undefined; evaluatedTokens: number }>) | undefined;
  countTokens(messages: ChatMessage[]): Promise<number>;
  contextSize: number;
  maxTokens: number;
  slideTo: number;
}

/** A fold may write a note longer than the turns it replaced: refit, at most this many times. */
const MAX_FOLDS = 3;

/**
 * Chooses the window for the next turn. While the prompt and a full reply fit (prompt + maxTokens <
 * contextSize), the window stays. Otherwise the oldest whole turns leave it, the fewest that bring the
 * prompt to `slideTo × contextSize` (or, when even that is impossible, just under the fit limit); the
 * system prompt never leaves. When the new message does not fit with no turn kept at all, the turn is
 * refused with ERR_CONTEXT_FULL and nothing changes. Each probe is one `countTokens`; the search is binary.
 */
export async function planWindow(input: PlanInput): Promise<WindowPlan> {
  const { history, contextSize, maxTokens } = input;
  const fitLimit = contextSize - maxTokens - 1;
  const target = Math.min(Math.floor(input.slideTo * contextSize), fitLimit);
  let window = input.window;
  let foldEvaluatedTokens = 0;
  for (let folds = 0; ; folds++) {
    const count = (start: number) => input.countTokens(input.render({ start, memory: window.memory }));
    const tokens = await count(window.start);
    if (tokens <= fitLimit) return { window, slidTurns: turnsBetween(history, input.window.start, window.start), foldEvaluatedTokens };
    const starts = turnStarts(history, window.start);
    const start = (await smallest(starts, count, target)) ?? (await smallest(starts, count, fitLimit)) ?? history.length;
    if (start === history.length) {
      // Only the system prompt (and note) and the new message: the reply may still be cut short by
      // the engine (stopReason "contextFull"), but the prompt itself must fit.
      const alone = await count(start);
      if (alone >= contextSize) throw tooBig(alone, contextSize);
    }
    if (!input.fold || folds >= MAX_FOLDS) {
      window = { start, memory: window.memory };
      return { window, slidTurns: turnsBetween(history, input.window.start, start), foldEvaluatedTokens };
    }
    const before = window;
    const folded = await input.fold(before, history.slice(before.start, start));
    foldEvaluatedTokens += folded.evaluatedTokens;
    window = { start, memory: folded.memory ?? before.memory };
  }
}

/**
 * The agent's own model, as a behaviour's `fold` sees it: greedy completions on the agent's sequence.
 * `evaluatedTokens()` says what its completions evaluated so far.
 */
export function modelFor(
  engine: HostedEngine,
  key: string,
  countTokens: (messages: ChatMessage[]) => Promise<number>,
  signal: AbortSignal,
): { model: AgentModel; evaluatedTokens(): number } {
  let evaluated = 0;
  const model: AgentModel = {
    contextSize: engine.info.contextSize,
    countTokens,
    async complete(messages, maxTokens) {
      // On the agent's own sequence: its cache is rewound to what the two prompts share, and the turn
      // that follows re-evaluates its window (a slide re-evaluates past the system prompt anyway).
      const output = await engine.generate(key, { messages, maxTokens, sampling: {}, signal, onText: () => {} });
      if (output.stopReason === "aborted") signal.throwIfAborted();
      evaluated += output.evaluatedTokens;
      return output.text;
    },
  };
  return { model, evaluatedTokens: () => evaluated };
}

/** The smallest start in `starts` whose prompt has at most `limit` tokens (prompts shrink as starts grow). */
async function smallest(starts: readonly number[], count: (start: number) => Promise<number>, limit: number): Promise<number | undefined> {
  let lo = 0;
  let hi = starts.length - 1;
  let found: number | undefined;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if ((await count(starts[mid]!)) <= limit) {
      found = starts[mid];
      hi = mid - 1;
    } else {
      lo = mid + 1;
    }
  }
  return found;
}

/** Where the window may start after `from`: each later user message (a whole turn), then the end. */
function turnStarts(history: readonly ChatMessage[], from: number): number[] {
  const starts: number[] = [];
  for (let i = from + 1; i < history.length; i++) if (history[i]!.role === "user") starts.push(i);
  starts.push(history.length);
  return starts;
}

function turnsBetween(history: readonly ChatMessage[], from: number, to: number): number {
  let turns = 0;
  for (let i = from; i < to; i++) if (history[i]!.role === "user") turns++;
  return turns;
}

function tooBig(tokens: number, contextSize: number): AgentRuntimeError {
  return new AgentRuntimeError(
    "ERR_CONTEXT_FULL",
    `The message needs ${tokens} tokens with the system prompt alone; the context holds ${contextSize}`,
    { details: { promptTokens: tokens, contextSize } },
  );
}

/**
 * A stored window, checked against its history: a start that is not a turn boundary inside the history
 * (a hand-edited or older record) becomes 0, the whole history, which the next turn slides again.
 */
export function restoredWindow(history: readonly ChatMessage[], start: unknown, memory: unknown): ContextWindow {
  const valid =
    typeof start === "number" &&
    Number.isInteger(start) &&
    start >= 0 &&
    start <= history.length &&
    (start === history.length || history[start]!.role === "user");
  return { start: valid ? start : 0, memory: typeof memory === "string" && memory.length > 0 ? memory : undefined };
}

/**
 * The window to keep when a stateless client replaces the history (sendConversation): the same one
 * while the messages before it are unchanged, otherwise the whole new history (the next turn slides).
 */
export function windowAfterReplace(previous: readonly ChatMessage[], next: readonly ChatMessage[], window: ContextWindow): ContextWindow {
  const kept =
    window.start <= next.length && previous.slice(0, window.start).every((m, i) => next[i]!.role === m.role && next[i]!.content === m.content);
  return kept ? restoredWindow(next, window.start, window.memory) : { start: 0, memory: undefined };
}

/** A stored record's policy, or undefined when absent or not a policy (the runtime's default then applies). */
export function storedContextPolicy(value: unknown): ContextPolicy | undefined {
  return CONTEXT_POLICIES.includes(value as ContextPolicy) ? (value as ContextPolicy) : undefined;
}

/** Checks a `contextPolicy` option. */
export function checkContextPolicy(value: unknown, name = "contextPolicy"): ContextPolicy | undefined {
  if (value === undefined) return undefined;
  if (!CONTEXT_POLICIES.includes(value as ContextPolicy)) {
    throw new TypeError(`${name} must be one of ${CONTEXT_POLICIES.map((p) => JSON.stringify(p)).join(", ")}, got ${JSON.stringify(value)}`);
  }
  return value as ContextPolicy;
}

/** Checks a `slideTo` option: a fraction of the context in (0, 1). */
export function checkSlideTo(value: unknown): number {
  if (value === undefined) return DEFAULT_SLIDE_TO;
  if (typeof value !== "number" || !(value > 0 && value < 1)) throw new RangeError(`slideTo must be a number in (0, 1), got ${String(value)}`);
  return value;
}
