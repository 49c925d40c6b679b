import { AgentRuntimeError } from "../../errors.js";
import type { Engine, EngineLoadOptions } from "../engine.js";

/** Placeholder until the MLX engine lands; replaced by the real implementation. */
export async function createMlxEngine(_options: EngineLoadOptions): Promise<Engine> {
  throw new AgentRuntimeError("ERR_ENGINE_UNAVAILABLE", "The MLX engine is not built yet");
}
