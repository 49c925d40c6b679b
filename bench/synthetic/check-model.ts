/**
 * Loads a (synthetic) GGUF model with node-llama-cpp on the CPU, checks that it works, and measures
 * prompt evaluation and decode speed.
 *
 *   tsx bench/synthetic/check-model.ts models/smollm2-135m-f16.gguf [--threads 1,2] [--prompt 256] [--decode 64]
 *
 * Always passes an explicit thread count: node-llama-cpp's default is far too many on a 2-core machine.
 * Prints one JSON line per thread count on stdout; notes go to stderr.
 */
import { parseArgs } from "node:util";
import { getLlama, LlamaLogLevel, resolveChatWrapper, type LlamaModel, type Token } from "node-llama-cpp";
import { TRAINING_TEXT } from "./tokenizer.js";

export interface SpeedResult {
  model: string;
  threads: number;
  promptTokens: number;
  promptSeconds: number;
  promptTokensPerSecond: number;
  decodeTokens: number;
  decodeSeconds: number;
  decodeTokensPerSecond: number;
}

/** Prompt tokens: the built-in English text, repeated as needed, cut to `n` tokens. */
function promptTokens(model: LlamaModel, n: number): Token[] {
  const one = model.tokenize(TRAINING_TEXT);
  const out: Token[] = [];
  while (out.length < n) out.push(...one);
  return out.slice(0, n);
}

export async function measureSpeed(
  model: LlamaModel,
  options: { threads: number; prompt: number; decode: number; label?: string },
): Promise<SpeedResult> {
  const contextSize = Math.max(512, options.prompt + options.decode + 16);
  const context = await model.createContext({ contextSize, threads: options.threads, batchSize: Math.min(512, contextSize) });
  try {
    const sequence = context.getSequence();
    const tokens = promptTokens(model, options.prompt);
    // Warm-up, then start clean.
    await sequence.evaluateWithoutGeneratingNewTokens(tokens.slice(0, 8));
    await sequence.clearHistory();

    let t0 = performance.now();
    await sequence.evaluateWithoutGeneratingNewTokens(tokens.slice(0, -1));
    const promptSeconds = (performance.now() - t0) / 1000;

    // Decode: the last prompt token, then one token per step (greedy).
    let generated = 0;
    t0 = performance.now();
    for await (const _token of sequence.evaluate(tokens.slice(-1))) {
      generated++;
      if (generated >= options.decode) break;
    }
    const decodeSeconds = (performance.now() - t0) / 1000;
    return {
      model: options.label ?? model.filename ?? "model",
      threads: options.threads,
      promptTokens: tokens.length - 1,
      promptSeconds,
      promptTokensPerSecond: (tokens.length - 1) / promptSeconds,
      decodeTokens: generated,
      decodeSeconds,
      decodeTokensPerSecond: generated / decodeSeconds,
    };
  } finally {
    await context.dispose();
  }
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      threads: { type: "string", default: "1,2" },
      prompt: { type: "string", default: "256" },
      decode: { type: "string", default: "64" },
    },
  });
  const modelPath = positionals[0];
  if (modelPath === undefined) throw new Error("usage: tsx bench/synthetic/check-model.ts MODEL.gguf [--threads 1,2]");
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  let t0 = performance.now();
  const model = await llama.loadModel({ modelPath });
  process.stderr.write(`loaded in ${((performance.now() - t0) / 1000).toFixed(2)} s: ${model.fileInfo.metadata.general.name}\n`);

  const hello = model.tokenize("Hello world");
  const roundTrip = model.detokenize(hello);
  const wrapper = resolveChatWrapper(model);
  process.stderr.write(
    `tokenize("Hello world") = ${JSON.stringify(hello.map((t) => model.detokenize([t])))}; ` +
      `round trip ${roundTrip === "Hello world" ? "ok" : "FAILED"}; chat wrapper ${wrapper?.wrapperName ?? "none"}\n`,
  );

  {
    const context = await model.createContext({ contextSize: 512, threads: 1 });
    const sequence = context.getSequence();
    let finite = true;
    const picked: Token[] = [];
    for await (const out of sequence.evaluateWithMetadata(hello, { probabilities: true })) {
      for (const p of out.probabilities.values()) if (!Number.isFinite(p)) finite = false;
      picked.push(out.token);
      if (picked.length >= 5) break;
    }
    process.stderr.write(`generated 5 tokens ${JSON.stringify(model.detokenize(picked))}; probabilities finite: ${finite}\n`);
    await context.dispose();
  }

  for (const threads of values.threads.split(",").map(Number)) {
    t0 = performance.now();
    const r = await measureSpeed(model, {
      threads,
      prompt: Number(values.prompt),
      decode: Number(values.decode),
      label: modelPath,
    });
    process.stdout.write(`${JSON.stringify(r)}\n`);
  }
  await model.dispose();
  await llama.dispose();
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
