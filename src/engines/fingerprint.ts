import { createHash } from "node:crypto";
import { open, stat, readdir } from "node:fs/promises";
import { join } from "node:path";

/** Bytes read from each end of every weight file: enough to tell models apart without hashing gigabytes. */
const SAMPLE_BYTES = 4 * 1024 * 1024;

async function hashFileSample(hash: ReturnType<typeof createHash>, filePath: string): Promise<number> {
  const { size } = await stat(filePath);
  hash.update(`${size}\0`);
  const handle = await open(filePath, "r");
  try {
    const head = Buffer.alloc(Math.min(SAMPLE_BYTES, size));
    await handle.read(head, 0, head.length, 0);
    hash.update(head);
    if (size > SAMPLE_BYTES) {
      const tail = Buffer.alloc(Math.min(SAMPLE_BYTES, size - SAMPLE_BYTES));
      await handle.read(tail, 0, tail.length, size - tail.length);
      hash.update(tail);
    }
  } finally {
    await handle.close();
  }
  return size;
}

/**
 * A model fingerprint: sha256 over the size and the first and last 4 MiB of each model file (every file
 * of a folder, in name order), plus `extra` (engine name, KV cache type, format version). A state file
 * records it and is never loaded under another fingerprint.
 */
export async function modelFingerprint(modelPath: string, extra: string[]): Promise<string> {
  const hash = createHash("sha256");
  const info = await stat(modelPath);
  if (info.isDirectory()) {
    const names = (await readdir(modelPath)).filter((name) => /\.(safetensors|json|gguf)$/.test(name)).sort();
    for (const name of names) {
      hash.update(`${name}\0`);
      await hashFileSample(hash, join(modelPath, name));
    }
  } else {
    await hashFileSample(hash, modelPath);
  }
  for (const item of extra) hash.update(`\0${item}`);
  return hash.digest("hex");
}
