import { parseArgs } from "node:util";
import type { EngineName } from "../engines/engine.js";
import { defaultModel } from "./defaults.js";

export interface CommonArgs {
  model: string;
  engine: EngineName | undefined;
  stateDir: string;
  threads: number | undefined;
  contextSize: number | undefined;
  maxAgents: number | undefined;
  verbose: boolean;
}

function integer(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 1) throw new RangeError(`--${name} must be a positive integer, got ${value}`);
  return parsed;
}

/** Parses the options every command shares; returns the rest for the command. */
export function parseCommon(argv: string[], defaults: { stateDir: string }, extra: Record<string, { type: "string" | "boolean" }> = {}) {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: "string" },
      engine: { type: "string" },
      "state-dir": { type: "string" },
      threads: { type: "string" },
      "context-size": { type: "string" },
      "max-agents": { type: "string" },
      verbose: { type: "boolean", short: "v" },
      ...extra,
    },
    allowPositionals: false,
  });
  const engine = values.engine as string | undefined;
  if (engine !== undefined && engine !== "llama.cpp" && engine !== "mlx") {
    throw new RangeError(`--engine must be "llama.cpp" or "mlx", got ${engine}`);
  }
  const common: CommonArgs = {
    model: (values.model as string | undefined) ?? defaultModel(),
    engine: engine as EngineName | undefined,
    stateDir: (values["state-dir"] as string | undefined) ?? defaults.stateDir,
    threads: integer("threads", values.threads as string | undefined),
    contextSize: integer("context-size", values["context-size"] as string | undefined),
    maxAgents: integer("max-agents", values["max-agents"] as string | undefined),
    verbose: Boolean(values.verbose),
  };
  return { common, values: values as Record<string, string | boolean | undefined> };
}
