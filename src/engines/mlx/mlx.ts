/**
 * Lazy access to the MLX native binding (@frost-beta/mlx).
 *
 * The binding is imported dynamically so that agentrt (and its llama.cpp engine) keeps working on machines
 * where MLX cannot load. On Linux the shipped binary links against OpenBLAS and LAPACK; when those shared
 * libraries are missing, loading fails with ERR_DLOPEN_FAILED, which we turn into ERR_ENGINE_UNAVAILABLE.
 */
import { isMainThread } from "node:worker_threads";
import { AgentRuntimeError } from "../../errors.js";
import type { Mx, MxArray } from "./mlx-types.js";

export type { Mx, MxArray, MxDtype } from "./mlx-types.js";

let loading: Promise<Mx> | undefined;

/**
 * Loads the binding once per thread. `threads` is applied through OPENBLAS_NUM_THREADS, which OpenBLAS reads when
 * the library is first loaded into the process. Node only forwards `process.env` writes to the native environment
 * on the main thread, so inside a worker the parent must set the variable before the worker starts (see README of
 * the engine in index.ts); we report what is in force.
 */
export function loadMlx(threads: number): Promise<Mx> {
  if (!loading) {
    loading = (async () => {
      if (isMainThread && process.env["OPENBLAS_NUM_THREADS"] === undefined) {
        process.env["OPENBLAS_NUM_THREADS"] = String(threads);
      }
      let mod: { core?: Mx; default?: { core?: Mx } };
      try {
        // A non-literal specifier keeps TypeScript from type-checking the package's .ts sources (see mlx-types.ts).
        const specifier: string = "@frost-beta/mlx";
        mod = (await import(specifier)) as typeof mod;
      } catch (error) {
        loading = undefined;
        throw unavailable(error);
      }
      const mx = mod.core ?? mod.default?.core;
      if (!mx) {
        loading = undefined;
        throw new AgentRuntimeError("ERR_ENGINE_UNAVAILABLE", "@frost-beta/mlx loaded but exposes no `core` module");
      }
      // There is no GPU backend on Linux; be explicit so a GPU build never picks a device we did not test.
      mx.setDefaultDevice(mx.cpu);
      return mx;
    })();
  }
  return loading;
}

/** Maps a failure to import the binding to ERR_ENGINE_UNAVAILABLE, naming the Debian packages when a library is missing. */
export function unavailable(error: unknown): AgentRuntimeError {
  const code = (error as { code?: unknown }).code;
  const message = error instanceof Error ? error.message : String(error);
  if (code === "ERR_DLOPEN_FAILED" || /cannot open shared object|dlopen/i.test(message)) {
    return new AgentRuntimeError(
      "ERR_ENGINE_UNAVAILABLE",
      "The MLX engine cannot load its native library: install the Debian packages libopenblas0-pthread and liblapack3 " +
        `(apt-get install libopenblas0-pthread liblapack3). Loader said: ${message}`,
      { cause: error, details: { missing: ["libopenblas0-pthread", "liblapack3"] } },
    );
  }
  if (code === "ERR_MODULE_NOT_FOUND" || code === "MODULE_NOT_FOUND") {
    return new AgentRuntimeError("ERR_ENGINE_UNAVAILABLE", "The MLX engine needs the optional package @frost-beta/mlx: npm i @frost-beta/mlx@0.0.7", {
      cause: error,
    });
  }
  return new AgentRuntimeError("ERR_ENGINE_UNAVAILABLE", `The MLX engine could not be loaded: ${message}`, { cause: error });
}

/**
 * `mx.load` returns a name → array map for safetensors and GGUF files although the typings say `array`.
 * Callers must have checked the file (dtypes, sizes) before: a malformed tensor can abort the process natively.
 */
export function loadArrays(mx: Mx, filePath: string): Record<string, MxArray> {
  const result = mx.load(filePath) as unknown;
  if (result === null || typeof result !== "object" || result instanceof (mx.array as unknown as new () => MxArray)) {
    throw new AgentRuntimeError("ERR_MODEL_INVALID", `mx.load did not return named tensors for ${filePath}`);
  }
  return result as Record<string, MxArray>;
}

/**
 * The binding takes quantizedMatmul(x, w, scales, biases, transpose, groupSize, bits): its typings name the first
 * two arguments the other way round (measured: passing w first fails with "weight matrix should be uint32").
 */
export function quantizedMatmul(mx: Mx, x: MxArray, w: MxArray, scales: MxArray, biases: MxArray, groupSize: number, bits: number): MxArray {
  return mx.quantizedMatmul(x, w, scales, biases, true, groupSize, bits);
}

/** An int32 array from plain numbers (the binding rejects typed arrays; token ids fit in int32). */
export function int32Array(mx: Mx, values: readonly number[]): MxArray {
  return mx.array(values as number[], mx.int32);
}
