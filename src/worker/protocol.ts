/**
 * The one message protocol between the runtime (main thread) and the generation worker. Both sides
 * import these types; every request carries an id, and every request ends in exactly one `result` or
 * `error` message (a `generate` may send text in `chunks` messages before that). Text is coalesced per
 * event-loop turn of the worker: one `chunks` message carries what every running generation decoded since the
 * last one (batched sequences decode together), instead of one message per token.
 */
import type {
  ChatMessage,
  EngineLoadOptions,
  EvaluationCounts,
  GenerateOutput,
  ModelInfo,
  SamplingOptions,
  SavedState,
  SequenceStats,
} from "../engines/engine.js";
import type { SerializedError } from "../errors.js";

export const PROTOCOL_VERSION = 3;

/** Request payloads and result types, by request type. */
export interface RequestMap {
  init: { payload: { options: EngineLoadOptions }; result: ModelInfo };
  open: { payload: { key: string }; result: null };
  close: { payload: { key: string }; result: null };
  prefill: { payload: { key: string; messages: ChatMessage[] }; result: EvaluationCounts };
  generate: {
    payload: { key: string; messages: ChatMessage[]; maxTokens: number; sampling: SamplingOptions; contextShift?: boolean };
    result: GenerateOutput;
  };
  /** Tokens of the prompt `generate` would render for `messages` (tokenization only). */
  count: { payload: { messages: ChatMessage[] }; result: number };
  save: { payload: { key: string; path: string }; result: SavedState };
  load: { payload: { key: string; path: string }; result: { tokens: number } };
  stats: { payload: { keys: string[] }; result: Record<string, SequenceStats> };
  shutdown: { payload: Record<string, never>; result: null };
}

export type RequestType = keyof RequestMap;

export type WorkerRequest =
  | { [K in RequestType]: { type: K; id: number } & RequestMap[K]["payload"] }[RequestType]
  /** Cancels request `target` (a generate or prefill); it then ends with its partial result. */
  | { type: "cancel"; id: number; target: number };

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error" | "fatal";

export type WorkerMessage =
  | { type: "ready"; protocolVersion: number }
  | { type: "result"; id: number; result: RequestMap[RequestType]["result"] }
  /** Text decoded since the last `chunks` message, at most one entry per request, in the order they began. */
  | { type: "chunks"; chunks: { id: number; text: string }[] }
  | { type: "error"; id: number; error: SerializedError }
  | { type: "log"; level: LogLevel; msg: string; data?: Record<string, unknown> };

/** Data the worker is started with. */
export interface WorkerData {
  /** Absolute URL of the worker module (lets a .ts source run through the tsx bootstrap). */
  entry?: string;
}

export function assertNever(value: never): never {
  throw new TypeError(`Unhandled protocol message: ${JSON.stringify(value)}`);
}
