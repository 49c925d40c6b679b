import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import { checkKvDescriptor } from "../../src/store/kv-descriptor.js";
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
    await expect(restarted.openKv("a", { ...kv, checksum: { algorithm: "xxh3-64", value: "0".repeat(16) } })).rejects.toMatchObject({
      code: "ERR_STATE_CORRUPT",
    });
  });

  it("new files are checksummed with XXH3-64 and named after it", async () => {
    const kv = await commitKv(new DirectoryStore(root), Buffer.alloc(4096, 7));
    expect(kv.checksum).toEqual({ algorithm: "xxh3-64", value: expect.stringMatching(/^[0-9a-f]{16}$/) });
    expect(kv.file).toBe(`kv-${kv.checksum!.value}.bin`);
    expect(kv.sha256).toBeUndefined();
  });

  it("after a restart, every single bit flipped anywhere in the file is caught", async () => {
    const bytes = Buffer.from(Array.from({ length: 96 }, (_, i) => (i * 37) & 0xff));
    const kv = await commitKv(new DirectoryStore(root), bytes);
    const path = await new DirectoryStore(root).openKv("a", kv);
    for (let bit = 0; bit < bytes.length * 8; bit++) {
      const flipped = Buffer.from(bytes);
      flipped[bit >> 3]! ^= 1 << (bit & 7);
      await writeFile(path, flipped);
      await expect(new DirectoryStore(root).openKv("a", kv), `bit ${bit} flipped`).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    }
    await writeFile(path, bytes);
    await expect(new DirectoryStore(root).openKv("a", kv)).resolves.toBe(path);
  });

  it("a descriptor written before checksums named their algorithm (sha256 only) still opens, and is still checked", async () => {
    const bytes = Buffer.alloc(8192, 3);
    const kv = await commitKv(new DirectoryStore(root), bytes);
    const legacy: KvDescriptor = { ...kv, checksum: undefined, sha256: createHash("sha256").update(bytes).digest("hex") };
    delete legacy.checksum;
    await expect(new DirectoryStore(root).openKv("a", legacy)).resolves.toContain(kv.file);
    await expect(new DirectoryStore(root).openKv("a", { ...legacy, sha256: "0".repeat(64) })).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
  });

  it("a descriptor whose checksum is malformed or of an unknown algorithm is refused as corrupt", async () => {
    const kv = await commitKv(new DirectoryStore(root), Buffer.alloc(64, 1));
    const info = { fingerprint: kv.fingerprint, engine: kv.engine, contextSize: 1024, kvBytesPerToken: 1024 } as Parameters<
      typeof checkKvDescriptor
    >[2];
    expect(() => checkKvDescriptor("a", kv, info)).not.toThrow();
    for (const checksum of [
      { algorithm: "md5", value: kv.checksum!.value },
      { algorithm: "xxh3-64", value: "abc" },
      { algorithm: "sha256", value: kv.checksum!.value },
      null,
      "x",
    ]) {
      const bad = { ...kv, checksum } as unknown as KvDescriptor;
      expect(() => checkKvDescriptor("a", bad, info), JSON.stringify(checksum)).toThrow(expect.objectContaining({ code: "ERR_STATE_CORRUPT" }));
      await expect(new DirectoryStore(root).openKv("a", bad)).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    }
  });
});
