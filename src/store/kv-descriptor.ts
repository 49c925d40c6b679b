import type { ModelInfo } from "../engines/engine.js";
import { AgentRuntimeError } from "../errors.js";
import { DIGEST_HEX_LENGTH, isChecksumAlgorithm } from "./checksum.js";
import type { KvChecksum, KvDescriptor } from "./state-store.js";

/** Slack over the per-token estimate: file headers, token lists, fixed-size (recurrent) state. */
const FIXED_SLACK_BYTES = 64 * 1024 * 1024;
/** Per-token bytes a state file may add beyond the KV cells themselves (token id, position, flags). */
const PER_TOKEN_SLACK_BYTES = 64;

/**
 * The largest KV state file a model with this context could write, doubled for headroom. A record that
 * names a larger file is refused before the file is hashed or loaded: a forged size would otherwise make
 * the store read gigabytes (or the engine allocate them) before noticing.
 */
export function kvSizeLimit(info: Pick<ModelInfo, "contextSize" | "kvBytesPerToken">): number {
  return 2 * info.contextSize * (info.kvBytesPerToken + PER_TOKEN_SLACK_BYTES) + FIXED_SLACK_BYTES;
}

const isHex = (value: unknown, length: number): boolean => typeof value === "string" && value.length === length && /^[0-9a-f]+$/.test(value);

/**
 * The checksum a descriptor vouches for its file with: `checksum` when present (it must then be
 * well-formed), else the `sha256` of descriptors written before checksums named their algorithm.
 * Undefined when neither is usable.
 */
export function kvChecksum(kv: Pick<KvDescriptor, "checksum" | "sha256">): KvChecksum | undefined {
  const c = kv.checksum as unknown;
  if (c !== undefined) {
    const { algorithm, value } = (c ?? {}) as Partial<KvChecksum>;
    return typeof c === "object" && isChecksumAlgorithm(algorithm) && isHex(value, DIGEST_HEX_LENGTH[algorithm])
      ? { algorithm, value: value! }
      : undefined;
  }
  return isHex(kv.sha256, 64) ? { algorithm: "sha256", value: kv.sha256! } : undefined;
}

const isCount = (value: unknown): value is number => typeof value === "number" && Number.isSafeInteger(value) && value >= 0;

/**
 * Checks a saved cache's descriptor against the loaded model before the store or engine touch its file:
 * ERR_STATE_CORRUPT when the descriptor is malformed or vouches for an impossible size, ERR_STATE_FOREIGN
 * when it was written by another model, engine or a larger context.
 */
export function checkKvDescriptor(id: string, kv: unknown, info: ModelInfo): asserts kv is KvDescriptor {
  const d = kv as KvDescriptor;
  const wellFormed =
    typeof kv === "object" &&
    kv !== null &&
    typeof d.file === "string" &&
    isCount(d.bytes) &&
    d.bytes > 0 &&
    kvChecksum(d) !== undefined &&
    isCount(d.tokens) &&
    typeof d.fingerprint === "string" &&
    typeof d.engine === "string" &&
    isCount(d.historyLength);
  if (!wellFormed) {
    throw new AgentRuntimeError("ERR_STATE_CORRUPT", `The saved cache descriptor of ${id} is malformed`, { details: { id } });
  }
  if (d.fingerprint !== info.fingerprint || d.engine !== info.engine) {
    throw new AgentRuntimeError("ERR_STATE_FOREIGN", `The saved cache of ${id} was made by another model or engine`, {
      details: { id, fingerprint: d.fingerprint, expected: info.fingerprint },
    });
  }
  if (d.tokens > info.contextSize) {
    throw new AgentRuntimeError("ERR_STATE_FOREIGN", `The saved cache of ${id} holds ${d.tokens} tokens; this context holds ${info.contextSize}`, {
      details: { id, tokens: d.tokens, contextSize: info.contextSize },
    });
  }
  const limit = kvSizeLimit(info);
  if (d.bytes > limit) {
    throw new AgentRuntimeError("ERR_STATE_CORRUPT", `The saved cache of ${id} claims ${d.bytes} bytes; at most ${limit} are possible`, {
      details: { id, bytes: d.bytes, limit },
    });
  }
}
