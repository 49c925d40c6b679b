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

/** Parses an integer option; the error names the flag. */
export function integer(name: string, value: string | boolean | undefined, min = 1): number | undefined {
  if (value === undefined) return undefined;
  const parsed = Number(value);
  if (typeof value !== "string" || !Number.isInteger(parsed) || parsed < min) {
    throw new RangeError(`--${name} must be an integer ≥ ${min}, got ${String(value)}`);
  }
  return parsed;
}

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
};

/** Parses a byte count: an integer with an optional unit (`KB`, `MB`, `GB` are powers of 1000; `KiB`, `MiB`, `GiB` of 1024). */
export function byteSize(name: string, value: string | boolean | undefined): number | undefined {
  if (value === undefined) return undefined;
  const match = typeof value === "string" ? /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(value) : null;
  const unit = match ? SIZE_UNITS[match[2]!.toLowerCase()] : undefined;
  const bytes = match && unit !== undefined ? Math.floor(Number(match[1]) * unit) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 1) {
    throw new RangeError(`--${name} must be a positive byte count (e.g. 536870912, 512MiB, 2GB), got ${String(value)}`);
  }
  return bytes;
}

/** Parses the options every command shares; returns the rest for the command. */
export function parseCommon(
  argv: string[],
  defaults: { stateDir: string },
  extra: Record<string, { type: "string" | "boolean"; short?: string }> = {},
) {
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
    // `--help` must work where no default model can be found (a project that installed agentrt).
    model: (values.model as string | undefined) ?? ((values as Record<string, unknown>).help === true ? "" : defaultModel()),
    engine: engine as EngineName | undefined,
    stateDir: (values["state-dir"] as string | undefined) ?? defaults.stateDir,
    threads: integer("threads", values.threads as string | undefined),
    contextSize: integer("context-size", values["context-size"] as string | undefined),
    maxAgents: integer("max-agents", values["max-agents"] as string | undefined),
    verbose: Boolean(values.verbose),
  };
  return { common, values: values as Record<string, string | boolean | undefined> };
}
