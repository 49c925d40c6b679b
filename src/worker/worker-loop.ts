/**
 * The generation worker's request loop: owns the engine inside the worker thread and answers the
 * protocol in ./protocol.ts. `generation-worker.ts` runs it on the thread's parent port.
 */
import { createEngine } from "../engines/create-engine.js";
import type { Engine } from "../engines/engine.js";
import { AgentRuntimeError, serializeError } from "../errors.js";
import {
  assertNever,
  PROTOCOL_VERSION,
  type LogLevel,
  type RequestMap,
  type RequestType,
  type WorkerMessage,
  type WorkerRequest,
} from "./protocol.js";

export interface WorkerLoop {
  /**
   * Cancels every running request (they end with `reason`) and waits, up to `graceMs`, for them to
   * settle. Native evaluations still running while the thread exits make the addon throw during
   * teardown, which ends the whole process: whatever ends the thread (shutdown, an embedder's
   * watchdog, an instrumented worker) stops them first.
   */
  stopRunning(reason: Error, graceMs?: number): Promise<void>;
}

/** The side of the thread's channel the loop needs (the worker's `parentPort`, or a wrapper of it). */
export interface WorkerPort {
  postMessage(message: WorkerMessage): void;
  on(event: "message", listener: (request: WorkerRequest) => void): unknown;
}

/** Serves the protocol on `port` until the thread ends. */
export function runWorkerLoop(port: WorkerPort): WorkerLoop {
  let engine: Engine | undefined;
  /** Run requests one at a time: engines that cannot interleave, or batching turned off. */
  let serialize = false;
  /** Serializes engine calls for engines that cannot interleave work (MLX). */
  let serial: Promise<unknown> = Promise.resolve();
  const cancellations = new Map<number, AbortController>();
  const inFlight = new Set<Promise<unknown>>();
  const inFlightById = new Map<number, Promise<unknown>>();
  function post(message: WorkerMessage): void {
    port.postMessage(message);
  }

  /** Text not yet posted, by request id: flushed once per event-loop turn, and before a request's result. */
  const pendingText = new Map<number, string>();
  let flushScheduled = false;

  function queueText(id: number, text: string): void {
    pendingText.set(id, (pendingText.get(id) ?? "") + text);
    if (!flushScheduled) {
      flushScheduled = true;
      // After every sequence's continuation of this turn has run: one message for all their tokens.
      setImmediate(flushText);
    }
  }

  function flushText(): void {
    flushScheduled = false;
    if (pendingText.size === 0) return;
    const chunks = [...pendingText].map(([id, text]) => ({ id, text }));
    pendingText.clear();
    post({ type: "chunks", chunks });
  }

  function log(level: LogLevel, msg: string, data?: Record<string, unknown>): void {
    post({ type: "log", level, msg, ...(data ? { data } : {}) });
  }

  function requireEngine(): Engine {
    if (!engine) throw new AgentRuntimeError("ERR_ENGINE_CLOSED", "The engine is not loaded");
    return engine;
  }

  /** Cancels the running requests but `except` (the one asking), and waits for them to settle. */
  async function stopRunning(reason: Error, graceMs = 2000, except?: number): Promise<void> {
    const others = [...cancellations].filter(([id]) => id !== except);
    for (const [, controller] of others) controller.abort(reason);
    const running = [...inFlight].filter((task) => task !== inFlightById.get(except ?? -1));
    await Promise.race([Promise.allSettled(running), new Promise((resolve) => setTimeout(resolve, graceMs))]);
  }

  async function handle(request: Exclude<WorkerRequest, { type: "cancel" }>, signal: AbortSignal): Promise<RequestMap[RequestType]["result"]> {
    switch (request.type) {
      case "init": {
        const started = performance.now();
        log("info", "loading model", { model: request.options.model, engine: request.options.engine });
        engine = await createEngine(request.options, (level, msg) => log(level, msg));
        serialize = !engine.concurrent || request.options.batching === false;
        log("info", "model loaded", { ms: Math.round(performance.now() - started), modelBytes: engine.info.modelBytes });
        return engine.info;
      }
      case "open":
        await requireEngine().openSequence(request.key);
        return null;
      case "close":
        await requireEngine().closeSequence(request.key);
        return null;
      case "prefill":
        return requireEngine().prefill(request.key, request.messages, signal);
      case "generate":
        return requireEngine().generate(request.key, {
          messages: request.messages,
          maxTokens: request.maxTokens,
          sampling: request.sampling,
          ...(request.contextShift !== undefined ? { contextShift: request.contextShift } : {}),
          signal,
          onText: (text) => queueText(request.id, text),
        });
      case "count":
        return requireEngine().countTokens(request.messages);
      case "save":
        return requireEngine().saveState(request.key, request.path);
      case "load":
        return requireEngine().loadState(request.key, request.path);
      case "stats": {
        const current = requireEngine();
        return Object.fromEntries(request.keys.map((key) => [key, current.stats(key)]));
      }
      case "shutdown":
        // Running evaluations end before the engine is disposed under them.
        await stopRunning(new AgentRuntimeError("ERR_ENGINE_CLOSED"), 2000, request.id);
        await engine?.dispose();
        engine = undefined;
        return null;
      default:
        return assertNever(request);
    }
  }

  port.on("message", (request: WorkerRequest) => {
    if (request.type === "cancel") {
      cancellations.get(request.target)?.abort(new AgentRuntimeError("ERR_ABORTED"));
      return;
    }
    const controller = new AbortController();
    cancellations.set(request.id, controller);
    const run = () => handle(request, controller.signal);
    // stats and count only read (count tokenizes): they need not wait behind a generation.
    const task = serialize && request.type !== "stats" && request.type !== "count" ? (serial = serial.then(run, run)) : run();
    inFlight.add(task);
    inFlightById.set(request.id, task);
    void task
      .finally(() => {
        inFlight.delete(task);
        inFlightById.delete(request.id);
      })
      .catch(() => {});
    // A request's text always arrives before its end.
    task
      .then(
        (result) => {
          flushText();
          post({ type: "result", id: request.id, result });
        },
        (error: unknown) => {
          flushText();
          post({ type: "error", id: request.id, error: serializeError(error) });
        },
      )
      .finally(() => cancellations.delete(request.id));
  });

  post({ type: "ready", protocolVersion: PROTOCOL_VERSION });
  return { stopRunning };
}
