import { existsSync } from "node:fs";
import { dirname, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { AgentRuntimeError } from "../errors.js";

/** The default model's file name: a small TinyStories model (see ../shared/models/README.md). */
export const DEFAULT_MODEL_FILE = "stories260K.gguf";

/** The package root (works from src/ via tsx and from dist/ when built). */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(resolve(dir, "package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return dir;
}

/**
 * Where the default model is looked for, in order: `../shared/models/` beside a checkout of this
 * repository, then `models/` and `../shared/models/` from the working directory (a project that
 * installed agentrt from npm has no shared folder beside the package).
 */
export function defaultModelCandidates(cwd = process.cwd()): string[] {
  const root = packageRoot();
  const installed = root.split(sep).includes("node_modules");
  const candidates = [
    ...(installed ? [] : [resolve(root, "../shared/models", DEFAULT_MODEL_FILE)]),
    resolve(cwd, "models", DEFAULT_MODEL_FILE),
    resolve(cwd, "../shared/models", DEFAULT_MODEL_FILE),
  ];
  return [...new Set(candidates)];
}

/** The model to use when `--model` is not given: `$AGENTRT_MODEL`, else the first candidate that exists. */
export function defaultModel(): string {
  const fromEnv = process.env.AGENTRT_MODEL;
  if (fromEnv) return fromEnv;
  const candidates = defaultModelCandidates();
  const found = candidates.find((candidate) => existsSync(candidate));
  if (found) return found;
  throw new AgentRuntimeError(
    "ERR_MODEL_NOT_FOUND",
    `No model given, and no ${DEFAULT_MODEL_FILE} in ${candidates.map((c) => dirname(c)).join(" or ")}: ` +
      "pass --model <file.gguf | hf:user/repo:quant | mlx-community folder>, or set AGENTRT_MODEL",
    { details: { candidates } },
  );
}
