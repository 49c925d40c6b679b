import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DirectoryStore } from "../../src/store/directory-store.js";
import type { KvDescriptor } from "../../src/store/state-store.js";

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "agentrt-store-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function commitKv(store: DirectoryStore, bytes: Buffer): Promise<KvDescriptor> {
  const staged = await store.stageKv("a", ".bin");
  await writeFile(staged.path, bytes);
  const committed = await staged.commit();
  return { ...committed, tokens: 1, fingerprint: "f".repeat(64), engine: "llama.cpp", historyLength: 0 };
}

describe("DirectoryStore KV verification", () => {
  it("opens a file it committed, and refuses it once its bytes change in place, even in the same process", async () => {
    const store = new DirectoryStore(root);
    const kv = await commitKv(store, Buffer.alloc(4096, 7));
    const path = await store.openKv("a", kv);
    await expect(store.openKv("a", kv)).resolves.toBe(path);
    const bytes = await readFile(path);
    bytes[100] = bytes[100]! ^ 1; // same size: only the content (and so the ctime) changes
    await writeFile(path, bytes);
    await expect(store.openKv("a", kv)).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
  });

  it("a new store instance (a restart) hashes the file in full and refuses a swapped one", async () => {
    const kv = await commitKv(new DirectoryStore(root), Buffer.alloc(4096, 7));
    const restarted = new DirectoryStore(root);
    await expect(restarted.openKv("a", kv)).resolves.toContain(kv.file);
    await expect(restarted.openKv("a", { ...kv, sha256: "0".repeat(64) })).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
  });
});
