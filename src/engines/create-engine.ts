import { stat } from "node:fs/promises";
import type { Engine, EngineLoadOptions, EngineName } from "./engine.js";
import { isRemoteModel } from "./model-source.js";

/** Picks the engine a model spec implies: GGUF files and `hf:` URIs → llama.cpp, mlx-community folders → mlx. */
export async function detectEngine(model: string): Promise<EngineName> {
  if (isRemoteModel(model)) return "llama.cpp";
  try {
    if ((await stat(model)).isDirectory()) return "mlx";
  } catch {
    // Missing paths are reported by the engine that tries to load them.
  }
  return "llama.cpp";
}

export type EngineLogger = (level: "warn" | "info", msg: string) => void;

/** Loads the requested engine; engine modules are imported lazily so one missing backend never breaks the other. */
export async function createEngine(options: EngineLoadOptions, log?: EngineLogger): Promise<Engine> {
  switch (options.engine) {
    case "llama.cpp": {
      const { LlamaCppEngine } = await import("./llama-cpp/llama-cpp-engine.js");
      return LlamaCppEngine.load(options, log);
    }
    case "mlx": {
      const { MlxEngine } = await import("./mlx/index.js");
      return MlxEngine.load(options);
    }
    default:
      throw new TypeError(`engine must be "llama.cpp" or "mlx", got ${JSON.stringify(options.engine)}`);
  }
}
