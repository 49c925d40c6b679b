/**
 * Checksums of saved state files. They detect corruption (a torn write, bit rot, a truncated copy), not
 * tampering: whoever can rewrite a state file can rewrite the record that vouches for it, so a keyed or
 * cryptographic hash would add cost and no protection. New files get XXH3-64 (@node-rs/xxhash, ~5 GB/s
 * here, so the check runs near the speed of the read itself); files written before it carry sha256 and
 * are still checked with sha256. bench/README.md (bench:state, "Choosing the checksum") has the numbers.
 */
import { createHash } from "node:crypto";
import { open } from "node:fs/promises";
import { xxh3 } from "@node-rs/xxhash";

export type ChecksumAlgorithm = "xxh3-64" | "sha256";

/** The algorithm new state files are checksummed with. */
export const CHECKSUM_ALGORITHM: ChecksumAlgorithm = "xxh3-64";

/** Hex digest length per algorithm (what a well-formed descriptor must carry). */
export const DIGEST_HEX_LENGTH: Record<ChecksumAlgorithm, number> = { "xxh3-64": 16, sha256: 64 };

export function isChecksumAlgorithm(value: unknown): value is ChecksumAlgorithm {
  return value === "xxh3-64" || value === "sha256";
}

interface Hasher {
  update(chunk: Uint8Array): void;
  digest(): string;
}

function hasher(algorithm: ChecksumAlgorithm): Hasher {
  if (algorithm === "sha256") {
    const hash = createHash("sha256");
    return { update: (chunk) => void hash.update(chunk), digest: () => hash.digest("hex") };
  }
  const hash = xxh3.Xxh3.withSeed();
  return { update: (chunk) => void hash.update(chunk), digest: () => hash.digest().toString(16).padStart(16, "0") };
}

/**
 * 1 MiB reads: the chunk stays in the CPU's L2 cache between the read and the hash (8 MiB chunks ran at
 * 69 % of a plain read, 1 MiB at 91 %). Buffers are reused, at most `KEPT_BUFFERS` kept between calls,
 * so a rehydration allocates nothing that grows with the file.
 */
const CHUNK_BYTES = 1 << 20;
const KEPT_BUFFERS = 2;
const spare: Buffer[] = [];

/** Digest of the bytes `data` in memory. */
export function checksumBytes(data: Uint8Array, algorithm: ChecksumAlgorithm = CHECKSUM_ALGORITHM): string {
  const hash = hasher(algorithm);
  hash.update(data);
  return hash.digest();
}

/** Digest of a file, read in 1 MiB chunks into a reused buffer. */
export async function checksumFile(path: string, algorithm: ChecksumAlgorithm = CHECKSUM_ALGORITHM): Promise<string> {
  const hash = hasher(algorithm);
  const buffer = spare.pop() ?? Buffer.allocUnsafeSlow(CHUNK_BYTES);
  const handle = await open(path, "r");
  try {
    for (let position = 0; ;) {
      const { bytesRead } = await handle.read(buffer, 0, CHUNK_BYTES, position);
      if (bytesRead === 0) break;
      hash.update(bytesRead === CHUNK_BYTES ? buffer : buffer.subarray(0, bytesRead));
      position += bytesRead;
    }
  } finally {
    await handle.close();
    if (spare.length < KEPT_BUFFERS) spare.push(buffer);
  }
  return hash.digest();
}

/** sha256 of a file (state files written before XXH3, and benchmarks). */
export function sha256File(path: string): Promise<string> {
  return checksumFile(path, "sha256");
}
