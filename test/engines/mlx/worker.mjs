// Runs the MLX engine inside a worker_threads worker, as agentrt's generation worker does.
import { parentPort, workerData } from "node:worker_threads";
import { register } from "tsx/esm/api";

register();
try {
  const { MlxEngine } = await import(workerData.entry);
  const engine = await MlxEngine.load({ engine: "mlx", model: workerData.model, contextSize: 256, sequences: 1, threads: 1 });
  await engine.openSequence("w");
  const out = await engine.generate("w", {
    messages: workerData.messages,
    maxTokens: workerData.maxTokens,
    sampling: { temperature: 0 },
    signal: new AbortController().signal,
    onText: () => {},
  });
  await engine.dispose();
  parentPort.postMessage({ ok: true, text: out.text, generatedTokens: out.generatedTokens });
} catch (error) {
  parentPort.postMessage({ ok: false, message: String(error?.stack ?? error) });
}
