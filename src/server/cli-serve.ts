import { AgentRuntimeError } from "../errors.js";

/** Placeholder until the HTTP server lands. */
export async function serveCommand(_argv: string[]): Promise<void> {
  throw new AgentRuntimeError("ERR_ENGINE_UNAVAILABLE", "agentrt serve is not built yet");
}
