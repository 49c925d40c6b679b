import { AgentRuntimeError, isAgentRuntimeError } from "../errors.js";

/** A failed save as ERR_STATE_WRITE_FAILED, keeping the errno (custom stores and engines throw plain errors). */
export function writeFailure(error: unknown, message: string, id: string): AgentRuntimeError {
  if (isAgentRuntimeError(error, "ERR_STATE_WRITE_FAILED")) return error;
  // A cluster store's refusals keep their meaning: nothing was written, another node owns the agent.
  if (isAgentRuntimeError(error, "ERR_LEASE_LOST") || isAgentRuntimeError(error, "ERR_NOT_OWNER")) return error;
  const errno = (error as NodeJS.ErrnoException | undefined)?.code;
  return new AgentRuntimeError("ERR_STATE_WRITE_FAILED", `${message}: ${(error as Error | undefined)?.message ?? String(error)}`, {
    cause: error,
    details: { id, ...(typeof errno === "string" ? { errno } : {}) },
  });
}
