import { Worker } from "node:worker_threads";
import { EventEmitter } from "eventemitter3";
import type { EngineLoadOptions, ModelInfo } from "../engines/engine.js";
import { validateLoadOptions } from "../engines/load-options.js";
import { AgentRuntimeError, deserializeError } from "../errors.js";
import {
  assertNever,
  PROTOCOL_VERSION,
  type LogLevel,
  type RequestMap,
  type RequestType,
  type WorkerMessage,
  type WorkerRequest,
} from "./protocol.js";

interface PendingRequest {
  resolve(result: unknown): void;
  reject(error: Error): void;
  onChunk?: ((text: string) => void) | undefined;
}

export interface GenerationWorkerEvents {
  /** The worker thread ended; `expected` is false for crashes. */
  exit: [info: { code: number; expected: boolean; error?: Error }];
  log: [record: { level: LogLevel; msg: string; data?: Record<string, unknown> }];
}

export interface RequestOptions {
  signal?: AbortSignal | undefined;
  onChunk?: ((text: string) => void) | undefined;
}

export interface StartOptions {
  signal?: AbortSignal | undefined;
  onLog?: ((record: GenerationWorkerEvents["log"][0]) => void) | undefined;
  /**
   * The module the thread runs. Default: `generation-worker` beside this file. Another module must
   * run `runWorkerLoop(parentPort)` (instrumented workers: fault injection, profiling). A `.ts`
   * module runs through tsx.
   */
  entry?: URL | undefined;
  /** Extra data for an instrumented entry module (merged into the thread's workerData). */
  workerData?: Record<string, unknown> | undefined;
}

/** Resolves the worker module: the compiled .js next to this file, or the .ts source through tsx. */
function workerEntry(entry: URL | undefined): { url: URL; workerData: { entry?: string } } {
  const self = new URL(import.meta.url);
  const module = entry ?? new URL(self.pathname.endsWith(".ts") ? "./generation-worker.ts" : "./generation-worker.js", self);
  if (module.pathname.endsWith(".ts")) return { url: new URL("./ts-bootstrap.mjs", self), workerData: { entry: module.href } };
  return { url: module, workerData: {} };
}

/**
 * Main-thread handle on the generation worker. Requests are typed by {@link RequestMap}; when the
 * thread dies every pending request rejects with ERR_WORKER_CRASHED instead of hanging.
 */
export class GenerationWorker extends EventEmitter<GenerationWorkerEvents> {
  readonly #worker: Worker;
  readonly #pending = new Map<number, PendingRequest>();
  #nextId = 1;
  #exited = false;
  #stopping = false;
  #info: ModelInfo | undefined;

  private constructor(worker: Worker) {
    super();
    this.#worker = worker;
  }

  get info(): ModelInfo {
    if (!this.#info) throw new AgentRuntimeError("ERR_ENGINE_CLOSED", "The worker has not loaded a model");
    return this.#info;
  }

  get alive(): boolean {
    return !this.#exited;
  }

  /** Starts the thread, checks the protocol version, and loads the model. */
  static async start(options: EngineLoadOptions, startOptions: StartOptions = {}): Promise<GenerationWorker> {
    const { signal, onLog } = startOptions;
    signal?.throwIfAborted();
    // Bad options fail here, as TypeError/RangeError, before a thread starts (across it they would arrive as plain Errors).
    validateLoadOptions(options);
    const entry = workerEntry(startOptions.entry);
    if (options.engine === "mlx" && process.env.OPENBLAS_NUM_THREADS === undefined) {
      // OpenBLAS (under MLX) reads its thread count from the process environment once, when loaded; a
      // worker's env option never reaches native code, so it is set here, process-wide, before the load.
      process.env.OPENBLAS_NUM_THREADS = String(options.threads);
    }
    const workerData = { ...startOptions.workerData, ...entry.workerData };
    const worker = new Worker(entry.url, { workerData, stdout: false, stderr: false });
    const client = new GenerationWorker(worker);
    if (onLog) client.on("log", onLog);
    const ready = new Promise<void>((resolve, reject) => {
      client.#onReady = (version) =>
        version === PROTOCOL_VERSION
          ? resolve()
          : reject(new AgentRuntimeError("ERR_WORKER_PROTOCOL", `Worker protocol ${version}, runtime ${PROTOCOL_VERSION}`));
      client.once("exit", ({ error }) => reject(error ?? new AgentRuntimeError("ERR_WORKER_CRASHED")));
    });
    worker.on("message", (message: WorkerMessage) => client.#onMessage(message));
    worker.on("error", (error) => client.#onExit(1, error));
    worker.on("exit", (code) => client.#onExit(code));
    try {
      await ready;
      client.#info = await client.request("init", { options }, { signal });
    } catch (error) {
      await client.terminate();
      throw error;
    }
    return client;
  }

  #onReady: (version: number) => void = () => {};

  #onMessage(message: WorkerMessage): void {
    switch (message.type) {
      case "ready":
        this.#onReady(message.protocolVersion);
        return;
      case "chunks":
        for (const { id, text } of message.chunks) this.#pending.get(id)?.onChunk?.(text);
        return;
      case "result": {
        const pending = this.#pending.get(message.id);
        this.#pending.delete(message.id);
        pending?.resolve(message.result);
        return;
      }
      case "error": {
        const pending = this.#pending.get(message.id);
        this.#pending.delete(message.id);
        pending?.reject(deserializeError(message.error));
        return;
      }
      case "log":
        this.emit("log", message);
        return;
      default:
        assertNever(message);
    }
  }

  #onExit(code: number, cause?: Error): void {
    if (this.#exited) return;
    this.#exited = true;
    const expected = this.#stopping;
    const error = new AgentRuntimeError(
      "ERR_WORKER_CRASHED",
      expected ? "The generation worker was stopped" : `The generation worker exited (code ${code})`,
      { cause, details: { exitCode: code } },
    );
    for (const pending of this.#pending.values()) pending.reject(error);
    this.#pending.clear();
    this.emit("exit", { code, expected, ...(expected ? {} : { error }) });
  }

  /** Sends one request; `signal` cancels it inside the worker (the thread is never killed for a cancel). */
  request<K extends RequestType>(type: K, payload: RequestMap[K]["payload"], options: RequestOptions = {}): Promise<RequestMap[K]["result"]> {
    const { signal, onChunk } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#exited) return Promise.reject(new AgentRuntimeError("ERR_WORKER_CRASHED", "The generation worker is not running"));
    const id = this.#nextId++;
    return new Promise<RequestMap[K]["result"]>((resolve, reject) => {
      const onAbort = () => this.#worker.postMessage({ type: "cancel", id: this.#nextId++, target: id } satisfies WorkerRequest);
      signal?.addEventListener("abort", onAbort, { once: true });
      const cleanup = () => signal?.removeEventListener("abort", onAbort);
      this.#pending.set(id, {
        resolve: (result) => {
          cleanup();
          resolve(result as RequestMap[K]["result"]);
        },
        reject: (error) => {
          cleanup();
          reject(error);
        },
        onChunk,
      });
      this.#worker.postMessage({ type, id, ...payload } as WorkerRequest);
    });
  }

  /** Disposes the engine, then ends the thread. Idempotent. */
  async stop(): Promise<void> {
    if (this.#exited) return;
    try {
      await this.request("shutdown", {});
    } catch {
      // A worker that cannot shut down cleanly is terminated below all the same.
    }
    await this.terminate();
  }

  async terminate(): Promise<void> {
    if (this.#exited) return;
    this.#stopping = true;
    await this.#worker.terminate();
    this.#onExit(0);
  }
}
