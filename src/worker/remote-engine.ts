import type {
  ChatMessage,
  EngineLoadOptions,
  EvaluationCounts,
  GenerateInput,
  GenerateOutput,
  HostedEngine,
  ModelInfo,
  SavedState,
  SequenceStats,
} from "../engines/engine.js";
import { GenerationWorker, type StartOptions } from "./generation-worker-client.js";
import type { LogLevel } from "./protocol.js";

export type WorkerLogSink = (record: { level: LogLevel; msg: string; data?: Record<string, unknown> }) => void;

/** The engine as seen from the main thread: every call is a protocol request to the generation worker. */
export class RemoteEngine implements HostedEngine {
  readonly concurrent = true;
  readonly #worker: GenerationWorker;

  private constructor(worker: GenerationWorker) {
    this.#worker = worker;
  }

  static async start(options: EngineLoadOptions, log?: WorkerLogSink, startOptions: Omit<StartOptions, "onLog"> = {}): Promise<RemoteEngine> {
    const worker = await GenerationWorker.start(options, { ...startOptions, onLog: log });
    return new RemoteEngine(worker);
  }

  get info(): ModelInfo {
    return this.#worker.info;
  }

  onCrash(listener: (error: Error) => void): () => void {
    const onExit = ({ expected, error }: { expected: boolean; error?: Error }) => {
      if (!expected) listener(error ?? new Error("worker exited"));
    };
    this.#worker.on("exit", onExit);
    return () => this.#worker.off("exit", onExit);
  }

  async openSequence(key: string): Promise<void> {
    await this.#worker.request("open", { key });
  }

  async closeSequence(key: string): Promise<void> {
    await this.#worker.request("close", { key });
  }

  prefill(key: string, messages: ChatMessage[], signal: AbortSignal): Promise<EvaluationCounts> {
    return this.#worker.request("prefill", { key, messages }, { signal });
  }

  generate(key: string, input: GenerateInput): Promise<GenerateOutput> {
    const { messages, maxTokens, sampling, signal, onText, contextShift } = input;
    const payload = { key, messages, maxTokens, sampling, ...(contextShift !== undefined ? { contextShift } : {}) };
    return this.#worker.request("generate", payload, { signal, onChunk: onText });
  }

  countTokens(messages: ChatMessage[]): Promise<number> {
    return this.#worker.request("count", { messages });
  }

  saveState(key: string, path: string): Promise<SavedState> {
    return this.#worker.request("save", { key, path });
  }

  loadState(key: string, path: string): Promise<{ tokens: number }> {
    return this.#worker.request("load", { key, path });
  }

  stats(keys: string[]): Promise<Record<string, SequenceStats>> {
    return this.#worker.request("stats", { keys });
  }

  dispose(): Promise<void> {
    return this.#worker.stop();
  }
}
