/**
 * `npm run bench:gpu`: the llama.cpp benchmarks on an NVIDIA GPU through node-llama-cpp's prebuilt CUDA binaries
 * (`@node-llama-cpp/linux-x64-cuda`, an optional dependency of node-llama-cpp), when there is one. Without a GPU it
 * says so plainly and exits 0 having measured nothing; no test depends on it.
 *
 * 1. Detection: `nvidia-smi` must list a GPU; then a child process loads node-llama-cpp with `gpu: "cuda"` and
 *    `build: "never"` (never compiling; a child, because a failing native backend can end its process) and
 *    reports the devices and VRAM it sees.
 * 2. The suite, each benchmark in its own process on the SmolLM2-135M and Qwen2.5-0.5B shapes: overhead, cache,
 *    batching, quant. agentrt's llama.cpp engine asks for `gpu: "auto"`, which picks CUDA where it loads and
 *    offloads every layer that fits, so the benchmarks need no GPU option of their own.
 *
 *   npm run bench:gpu
 *   npm run bench:gpu -- --only overhead,quant --preset qwen2.5-0.5b
 */
import { execFile, spawn } from "node:child_process";
import { resolve } from "node:path";
import { parseArgs, promisify } from "node:util";
import { BENCH_DIR, progress, writeResult } from "./lib.js";

const { values } = parseArgs({
  options: {
    only: { type: "string" },
    preset: { type: "string", multiple: true },
    probe: { type: "boolean", default: false },
  },
});

interface Probe {
  gpu: string | false;
  devices: string[];
  vramBytes?: number;
  error?: string;
}

if (values.probe) {
  // Child side: load the CUDA backend and describe it on stdout.
  let probe: Probe;
  try {
    const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
    const llama = await getLlama({ gpu: "cuda", build: "never", logLevel: LlamaLogLevel.error });
    const vram = await llama.getVramState();
    probe = { gpu: llama.gpu, devices: await llama.getGpuDeviceNames(), vramBytes: vram.total };
    await llama.dispose();
  } catch (error) {
    probe = { gpu: false, devices: [], error: (error as Error).message };
  }
  process.stdout.write(JSON.stringify(probe));
  process.exit(0);
}

const run = promisify(execFile);

async function nvidiaSmi(): Promise<{ gpus: string[]; reason?: string }> {
  try {
    const { stdout } = await run("nvidia-smi", ["--query-gpu=name,memory.total", "--format=csv,noheader"], { timeout: 20_000 });
    const gpus = stdout
      .split("\n")
      .map((line) => line.trim())
      .filter(Boolean);
    return gpus.length > 0 ? { gpus } : { gpus, reason: "nvidia-smi lists no GPU" };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return {
      gpus: [],
      reason: code === "ENOENT" ? "nvidia-smi is not installed (no NVIDIA driver)" : `nvidia-smi failed: ${(error as Error).message.split("\n")[0]}`,
    };
  }
}

async function probeCuda(): Promise<Probe> {
  try {
    const { stdout } = await run(process.execPath, ["--import", "tsx", resolve(BENCH_DIR, "gpu.ts"), "--probe"], { timeout: 120_000 });
    return JSON.parse(stdout) as Probe;
  } catch (error) {
    return { gpu: false, devices: [], error: `the CUDA probe process failed: ${(error as Error).message.split("\n")[0]}` };
  }
}

function bench(name: string, args: string[]): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", resolve(BENCH_DIR, `${name}.ts`), ...args], {
      stdio: ["ignore", "inherit", "inherit"],
    });
    child.on("error", reject);
    child.on("exit", (code) => resolvePromise(code ?? 1));
  });
}

const smi = await nvidiaSmi();
if (smi.gpus.length === 0) {
  const message = `bench:gpu: no NVIDIA GPU here (${smi.reason}); nothing was measured.`;
  console.log(message);
  await writeResult("gpu.json", { gpu: null, reason: smi.reason });
  process.exit(0);
}
progress(`nvidia-smi: ${smi.gpus.join("; ")}`);
const probe = await probeCuda();
if (probe.gpu !== "cuda") {
  const reason = `node-llama-cpp's prebuilt CUDA backend did not load (${probe.error ?? `it chose ${String(probe.gpu)}`})`;
  console.log(`bench:gpu: an NVIDIA GPU is present (${smi.gpus.join("; ")}) but ${reason}; nothing was measured.`);
  await writeResult("gpu.json", { gpu: null, nvidiaSmi: smi.gpus, reason });
  process.exit(0);
}
console.log(
  `bench:gpu: CUDA through node-llama-cpp's prebuilt binaries on ${probe.devices.join(", ")} (${((probe.vramBytes ?? 0) / 2 ** 30).toFixed(1)} GiB VRAM)`,
);

const presets = values.preset ?? ["smollm2-135m", "qwen2.5-0.5b"];
const PLAN = (preset: string): { name: string; args: string[] }[] => [
  { name: "overhead", args: ["--preset", preset, "--tokens", "128", "--reps", "7"] },
  { name: "cache", args: ["--preset", preset, "--lengths", "256,2048", "--reps", "3"] },
  { name: "batching", args: ["--preset", preset, "--tokens", "64", "--reps", "5"] },
  { name: "quant", args: ["--preset", preset, "--reps", "5"] },
];
const only = values.only?.split(",").map((s) => s.trim());
const steps: { preset: string; name: string; code: number; seconds: number }[] = [];
for (const preset of presets) {
  for (const step of PLAN(preset).filter((s) => !only || only.includes(s.name))) {
    progress(`── bench:${step.name} ${step.args.join(" ")} (CUDA)`);
    const started = performance.now();
    const code = await bench(step.name, step.args);
    steps.push({ preset, name: step.name, code, seconds: (performance.now() - started) / 1000 });
    console.log();
  }
}
const failed = steps.filter((s) => s.code !== 0);
console.log(
  `bench:gpu: ${steps.length - failed.length} of ${steps.length} benchmarks ran on CUDA${failed.length ? `; failed: ${failed.map((s) => `${s.name} (${s.preset})`).join(", ")}` : ""}`,
);
await writeResult("gpu.json", { gpu: "cuda", devices: probe.devices, vramBytes: probe.vramBytes, nvidiaSmi: smi.gpus, steps });
process.exitCode = failed.length > 0 ? 1 : 0;
