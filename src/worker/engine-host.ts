import { EventEmitter } from "eventemitter3";
import type { Logger } from "pino";
import type { Clock } from "../clock.js";
import type { EngineLoadOptions, HostedEngine, ModelInfo } from "../engines/engine.js";
import { AgentRuntimeError } from "../errors.js";
import { RemoteEngine } from "./remote-engine.js";

/** Starts an engine: the generation worker by default, a fake or instrumented one in tests. */
export type EngineFactory = () => Promise<HostedEngine>;

export interface EngineHostEvents {
  /** The engine's host died: every resident cache is gone. A restart is already under way. */
  crashed: [error: AgentRuntimeError];
  /** A new engine is loaded after a crash. */
  restarted: [event: { reason: string; ms: number }];
}

/** The default factory: the model in a generation worker thread, its log records sent to `log`. */
export function workerEngineFactory(options: EngineLoadOptions, log: Logger, signal?: AbortSignal): EngineFactory {
  return () => RemoteEngine.start(options, (record) => log[record.level](record.data ?? {}, record.msg), { signal });
}

/**
 * Owns the engine for the runtime: starts it, watches it, and when its host crashes starts a new one.
 * Callers ask for `engine()` each time they need it, so a call during a restart waits for the new one.
 */
export class EngineHost {
  readonly #start: EngineFactory;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #events = new EventEmitter<EngineHostEvents>();
  #engine: Promise<HostedEngine>;
  #info: ModelInfo;
  #disposed = false;

  private constructor(start: EngineFactory, engine: HostedEngine, clock: Clock, log: Logger) {
    this.#start = start;
    this.#clock = clock;
    this.#log = log;
    this.#engine = Promise.resolve(engine);
    this.#info = engine.info;
    this.#watch(engine);
  }

  static async start(start: EngineFactory, options: { clock: Clock; log: Logger }): Promise<EngineHost> {
    const engine = await start();
    return new EngineHost(start, engine, options.clock, options.log);
  }

  /** The loaded model (after a restart, the new engine's). */
  get info(): ModelInfo {
    return this.#info;
  }

  /** The current engine; during a restart, the one being started. */
  engine(): Promise<HostedEngine> {
    return this.#engine;
  }

  on<E extends keyof EngineHostEvents>(event: E, listener: (...args: EngineHostEvents[E]) => void): () => void {
    this.#events.on(event, listener as never);
    return () => this.#events.off(event, listener as never);
  }

  #watch(engine: HostedEngine): void {
    engine.onCrash((cause) => {
      if (this.#disposed) return;
      const started = this.#clock.now();
      this.#log.error({ err: cause }, "generation worker crashed; restarting");
      this.#engine = this.#start().then((fresh) => {
        this.#info = fresh.info;
        this.#watch(fresh);
        this.#events.emit("restarted", { reason: cause.message, ms: this.#clock.now() - started });
        return fresh;
      });
      this.#engine.catch((error: unknown) => this.#log.error({ err: error }, "worker restart failed"));
      this.#events.emit("crashed", new AgentRuntimeError("ERR_WORKER_CRASHED", cause.message, { cause }));
    });
  }

  /** Stops the engine (and its thread). Idempotent. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    const engine = await this.#engine.catch(() => undefined);
    await engine?.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
