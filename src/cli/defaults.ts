import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

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

/** The default model: `$AGENTRT_MODEL`, else the small test model in `../shared/models/` beside the package. */
export function defaultModel(): string {
  return process.env.AGENTRT_MODEL ?? resolve(packageRoot(), "../shared/models/aidreams260K.gguf");
}
