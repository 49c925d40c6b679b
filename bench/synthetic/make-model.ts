/**
 * CLI: writes a random-weight GGUF model with a real model's shape.
 *
 *   tsx bench/synthetic/make-model.ts --preset smollm2-135m --type f16 [--out models/smollm2-135m-f16.gguf]
 *   tsx bench/synthetic/make-model.ts --preset qwen2.5-0.5b --type q8_0 --layers 4
 *
 * Without --out the file goes to `models/<preset>[-overrides]-<type>.gguf` at the repository root.
 * A sidecar `<file>.params.json` records the parameters; an existing file with the same parameters is kept.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import {
  DEFAULT_MODELS_DIR,
  PRESETS,
  defaultFileName,
  generateSyntheticModel,
  isPresetName,
  presetParams,
  type ShapeOverrides,
  type WeightType,
} from "./synthetic-model.js";

export { ensureSyntheticModel, PRESETS, type PresetName, type WeightType } from "./synthetic-model.js";

const USAGE = `usage: tsx bench/synthetic/make-model.ts --preset <${Object.keys(PRESETS).join("|")}> [options]
  --type f16|q8_0        weight type (default f16); norms are always F32
  --out FILE             output file (default: models/<preset>[-overrides]-<type>.gguf)
  --dir DIR              output folder when --out is not given (default: <repo>/models)
  --layers N --hidden N --heads N --kv-heads N --ffn N --vocab N --ctx N --rope-theta X
  --arch llama|qwen2     override the architecture (qwen2 adds q/k/v biases)
  --untied               write a separate output.weight instead of tying it to token_embd
  --seed N               random seed (default 1)
  --force                regenerate even if an up-to-date file exists`;

function int(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} needs a positive integer, got ${v}`);
  return n;
}

function formatBytes(n: number): string {
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : `${(n / (1 << 20)).toFixed(1)} MiB`;
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      preset: { type: "string" },
      type: { type: "string", default: "f16" },
      out: { type: "string" },
      dir: { type: "string" },
      layers: { type: "string" },
      hidden: { type: "string" },
      heads: { type: "string" },
      "kv-heads": { type: "string" },
      ffn: { type: "string" },
      vocab: { type: "string" },
      ctx: { type: "string" },
      "rope-theta": { type: "string" },
      arch: { type: "string" },
      untied: { type: "boolean", default: false },
      seed: { type: "string" },
      force: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help || values.preset === undefined) {
    process.stderr.write(`${USAGE}\n`);
    if (!values.help) process.exitCode = 2;
    return;
  }
  if (!isPresetName(values.preset)) throw new Error(`unknown preset ${values.preset}\n${USAGE}`);
  const type = values.type;
  if (type !== "f16" && type !== "q8_0") throw new Error(`--type must be f16 or q8_0, got ${type}`);
  const arch = values.arch;
  if (arch !== undefined && arch !== "llama" && arch !== "qwen2") throw new Error(`--arch must be llama or qwen2`);
  const ropeTheta = values["rope-theta"] === undefined ? undefined : Number(values["rope-theta"]);
  if (ropeTheta !== undefined && !(ropeTheta > 0)) throw new Error("--rope-theta needs a positive number");

  const overrides: ShapeOverrides = {};
  const set = <K extends keyof ShapeOverrides>(k: K, v: ShapeOverrides[K] | undefined): void => {
    if (v !== undefined) overrides[k] = v;
  };
  set("layers", int("layers", values.layers));
  set("hiddenSize", int("hidden", values.hidden));
  set("heads", int("heads", values.heads));
  set("kvHeads", int("kv-heads", values["kv-heads"]));
  set("ffnSize", int("ffn", values.ffn));
  set("vocabSize", int("vocab", values.vocab));
  set("contextLength", int("ctx", values.ctx));
  set("ropeTheta", ropeTheta);
  set("architecture", arch);
  if (values.untied) overrides.tiedEmbeddings = false;
  const seed = values.seed === undefined ? 1 : Number(values.seed);
  if (!Number.isInteger(seed)) throw new Error("--seed needs an integer");

  const params = presetParams(values.preset, type as WeightType, overrides, seed);
  const out =
    values.out !== undefined
      ? resolve(values.out)
      : resolve(values.dir ?? DEFAULT_MODELS_DIR, defaultFileName(values.preset, type as WeightType, overrides));

  let lastReport = 0;
  const result = await generateSyntheticModel(out, params, {
    force: values.force,
    onProgress: ({ bytesWritten, totalBytes, tensor }) => {
      const now = Date.now();
      if (now - lastReport < 500 && bytesWritten < totalBytes) return;
      lastReport = now;
      const pct = ((bytesWritten / totalBytes) * 100).toFixed(1).padStart(5);
      process.stderr.write(`\r${pct}%  ${formatBytes(bytesWritten)} / ${formatBytes(totalBytes)}  ${tensor.padEnd(28)}`);
    },
  });
  if (result.skipped) {
    process.stderr.write(`up to date: ${result.path} (${formatBytes(result.bytes)}, same parameters)\n`);
  } else {
    process.stderr.write(
      `\nwrote ${result.path}: ${formatBytes(result.bytes)} (${result.bytes} bytes), ` +
        `${(result.parameters / 1e6).toFixed(1)}M parameters, ${result.seconds.toFixed(1)} s\n`,
    );
  }
  process.stdout.write(`${result.path}\n`);
}

const invokedPath = process.argv[1];
if (invokedPath !== undefined && import.meta.url === pathToFileURL(resolve(invokedPath)).href) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
