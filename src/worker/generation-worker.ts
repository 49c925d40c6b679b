/**
 * The generation worker: one thread that owns the model and the inference context and runs every
 * evaluation for every agent. It only speaks the protocol in ./protocol.ts.
 */
import { parentPort } from "node:worker_threads";
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

if (!parentPort) throw new Error("generation-worker must run in a worker thread");
const port = parentPort;

let engine: Engine | undefined;
/** Run requests one at a time: engines that cannot interleave, or batching turned off. */
let serialize = false;
/** Serializes engine calls for engines that cannot interleave work (MLX). */
let serial: Promise<unknown> = Promise.resolve();
const cancellations = new Map<number, AbortController>();
const inFlight = new Set<Promise<unknown>>();
/** Once set, nothing more is answered: pending requests end as the exit rejects them. */
let crashing = false;

function post(message: WorkerMessage): void {
  if (!crashing) port.postMessage(message);
}

function log(level: LogLevel, msg: string, data?: Record<string, unknown>): void {
  post({ type: "log", level, msg, ...(data ? { data } : {}) });
}

function requireEngine(): Engine {
  if (!engine) throw new AgentRuntimeError("ERR_ENGINE_FAILED", "The engine is not loaded");
  return engine;
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
        onText: (text) => post({ type: "chunk", id: request.id, text }),
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
    case "crash": {
      crashing = true;
      // Simulates the thread dying. Native evaluations still running while a worker exits make the
      // addon throw during teardown, which terminates the whole process, so stop them first.
      for (const [id, controller] of cancellations) if (id !== request.id) controller.abort(new AgentRuntimeError("ERR_WORKER_CRASHED"));
      await Promise.race([Promise.allSettled(inFlight), new Promise((resolve) => setTimeout(resolve, 2000))]);
      process.exit(request.exitCode);
    }
    case "shutdown":
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
  const task = serialize && request.type !== "stats" && request.type !== "count" && request.type !== "crash" ? (serial = serial.then(run, run)) : run();
  if (request.type !== "crash") {
    inFlight.add(task);
    void task.finally(() => inFlight.delete(task)).catch(() => {});
  }
  task.then(
    (result) => post({ type: "result", id: request.id, result }),
    (error: unknown) => post({ type: "error", id: request.id, error: serializeError(error) }),
  ).finally(() => cancellations.delete(request.id));
});

post({ type: "ready", protocolVersion: PROTOCOL_VERSION });
