import { randomUUID } from "node:crypto";
import { BroadcastChannel } from "node:worker_threads";
import { detectEngine } from "../engines/create-engine.js";
import type { EngineLoadOptions, EngineName } from "../engines/engine.js";
import { RemoteEngine } from "../worker/remote-engine.js";
import type { EngineFactory } from "../worker/engine-host.js";

const ENTRY = new URL(import.meta.url.endsWith(".ts") ? "./crashable-worker.ts" : "./crashable-worker.js", import.meta.url);

export interface CrashableWorker {
  /** Pass as the runtime's `engineFactory`: every (re)start runs a real generation worker that can be crashed. */
  readonly factory: EngineFactory;
  /** Ends the current worker thread with `exitCode` as a native fault would; resolves once it is gone. */
  crash(exitCode?: number): Promise<void>;
}

/**
 * A real generation worker (real model, real thread) with fault injection: what tests of crash
 * handling use instead of a hook in the production worker. `sequences` must equal the runtime's
 * `maxAgents` and `contextSize` its context size.
 */
export function crashableWorker(options: Omit<EngineLoadOptions, "engine"> & { engine?: EngineName }): CrashableWorker {
  let current: { engine: RemoteEngine; channel: string } | undefined;
  return {
    factory: async () => {
      const channel = `agentrt:crash:${randomUUID()}`;
      const engine = await RemoteEngine.start({ ...options, engine: options.engine ?? (await detectEngine(options.model)) }, undefined, {
        entry: ENTRY,
        workerData: { crashChannel: channel },
      });
      current = { engine, channel };
      return engine;
    },
    crash: async (exitCode = 70) => {
      if (!current) throw new Error("crash(): no worker has been started");
      const { engine, channel } = current;
      const gone = new Promise<void>((resolve) => engine.onCrash(() => resolve()));
      const port = new BroadcastChannel(channel);
      port.postMessage({ exitCode });
      port.close();
      await gone;
    },
  };
}
