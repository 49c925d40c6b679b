import { checksumBytes, CHECKSUM_ALGORITHM } from "../../src/store/checksum.js";
import { DirectoryStore } from "../../src/store/directory-store.js";
/** Helpers that damage stored agents the way disks, people and other programs do. */
import { createHash } from "node:crypto";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";

export function agentDir(stateDir: string, id: string): string {
  return join(stateDir, "agents", encodeURIComponent(id));
}

export function recordPath(stateDir: string, id: string): string {
  return join(agentDir(stateDir, id), "agent.json");
}

export async function kvPath(stateDir: string, id: string): Promise<string> {
  const dir = agentDir(stateDir, id);
  const name = (await readdir(dir)).find((file) => /^kv-[0-9a-f]{16}\.[a-z0-9]+$/.test(file));
  if (!name) throw new Error(`${id} has no KV file in ${dir}`);
  return join(dir, name);
}

export const sha256 = (data: string | Uint8Array) => createHash("sha256").update(data).digest("hex");

/** The checksum field a forger writes into a KV descriptor (or prefix entry) to vouch for `data`. */
export const forgedChecksum = (data: string | Uint8Array) => ({
  checksum: { algorithm: CHECKSUM_ALGORITHM, value: checksumBytes(typeof data === "string" ? Buffer.from(data) : data) },
});

/**
 * Rewrites a record's body through `mutate` and re-seals the envelope with a matching checksum: what a
 * buggy tool (or a person with an editor) would leave behind. The checksum cannot catch this; the
 * record's own validation must.
 */
/**
 * Folds the agent's journal into its record (what a compaction does), so that the record alone holds
 * the whole state and damage to it is damage to everything: the damage helpers below start from here.
 */
export async function compact(stateDir: string, id: string): Promise<void> {
  const store = new DirectoryStore(stateDir);
  const record = await store.read(id);
  if (record) await store.write(record);
}

export async function rewriteRecord(stateDir: string, id: string, mutate: (body: Record<string, any>) => unknown): Promise<void> {
  await compact(stateDir, id);
  const path = recordPath(stateDir, id);
  const envelope = JSON.parse(await readFile(path, "utf8")) as { format: string; sha256: string; body: string };
  const body = JSON.parse(envelope.body) as Record<string, any>;
  const replaced = mutate(body);
  const text = JSON.stringify(replaced === undefined ? body : replaced);
  await writeFile(path, JSON.stringify({ ...envelope, sha256: sha256(text), body: text }));
}

export async function readRecordBody(stateDir: string, id: string): Promise<Record<string, any>> {
  await compact(stateDir, id);
  const envelope = JSON.parse(await readFile(recordPath(stateDir, id), "utf8")) as { body: string };
  return JSON.parse(envelope.body) as Record<string, any>;
}

export function flipBit(data: Uint8Array, bit: number): Uint8Array {
  const copy = Uint8Array.from(data);
  copy[bit >> 3]! ^= 1 << (bit & 7);
  return copy;
}
