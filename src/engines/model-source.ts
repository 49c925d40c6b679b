import { open, stat } from "node:fs/promises";
import { resolve } from "node:path";
import { AgentRuntimeError } from "../errors.js";

const GGUF_MAGIC = "GGUF";

/** Whether `spec` names a remote model (node-llama-cpp URI schemes) rather than a local path. */
export function isRemoteModel(spec: string): boolean {
  return /^(hf:|huggingface:|https?:\/\/)/.test(spec);
}

/** Checks a local GGUF before any engine touches it: llama.cpp aborts the process on some bad files. */
export async function assertGgufFile(filePath: string): Promise<void> {
  let size: number;
  try {
    const info = await stat(filePath);
    if (!info.isFile()) throw new AgentRuntimeError("ERR_MODEL_INVALID", `Model path is not a file: ${filePath}`);
    size = info.size;
  } catch (error) {
    if (error instanceof AgentRuntimeError) throw error;
    throw new AgentRuntimeError("ERR_MODEL_NOT_FOUND", `Model file not found: ${filePath}`, { cause: error });
  }
  const handle = await open(filePath, "r");
  try {
    const header = Buffer.alloc(8);
    await handle.read(header, 0, 8, 0);
    if (size < 8 || header.subarray(0, 4).toString("latin1") !== GGUF_MAGIC) {
      throw new AgentRuntimeError("ERR_MODEL_INVALID", `Not a GGUF file (bad magic): ${filePath}`);
    }
    const version = header.readUInt32LE(4);
    if (version < 2 || version > 3) {
      throw new AgentRuntimeError("ERR_MODEL_INVALID", `Unsupported GGUF version ${version}: ${filePath}`);
    }
  } finally {
    await handle.close();
  }
}

/**
 * Resolves a llama.cpp model spec to a local GGUF: a path, or an `hf:` URI downloaded (once) into
 * `cacheDir` by node-llama-cpp. Offline downloads fail with ERR_MODEL_NOT_FOUND saying so.
 */
export async function resolveGgufModel(spec: string, cacheDir?: string): Promise<string> {
  if (!isRemoteModel(spec)) {
    const filePath = resolve(spec);
    await assertGgufFile(filePath);
    return filePath;
  }
  const { resolveModelFile } = await import("node-llama-cpp");
  try {
    const filePath = await resolveModelFile(spec, { ...(cacheDir ? { directory: cacheDir } : {}), cli: false });
    await assertGgufFile(filePath);
    return filePath;
  } catch (error) {
    if (error instanceof AgentRuntimeError) throw error;
    throw new AgentRuntimeError(
      "ERR_MODEL_NOT_FOUND",
      `Could not resolve model ${spec}: ${(error as Error).message}. ` +
        "Downloading needs network access to the model host; offline, pass a local GGUF path instead.",
      { cause: error, details: { model: spec } },
    );
  }
}
