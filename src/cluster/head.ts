/**
 * The agent's head: the one key per agent that every commit compare-and-sets. It names the owner (node,
 * incarnation) and its epoch, and points at the committed state: the record chunks of generation
 * `gen`, the journal entries since, and the saved KV cache. Data keys are written first, each under the
 * writer's epoch; a change exists once the head names it. Stored as a checksummed envelope, like the
 * record file, so a damaged or foreign value is refused with a coded error before anything trusts it.
 */
import { createHash, randomBytes } from "node:crypto";
import { AgentRuntimeError } from "../errors.js";
import type { KvDescriptor } from "../store/state-store.js";
import type { NodeIncarnation } from "./membership.js";

/** A head larger than this is refused before parsing. */
export const MAX_HEAD_BYTES = 64 * 1024;

export interface Head {
  id: string;
  /** Who may commit; null after a release. */
  owner: NodeIncarnation | null;
  /** The owner's fencing token: above every earlier owner's (it is the revision it took the lease at, + 1). */
  epoch: number;
  /** Generation of the record; journal entries extend it. */
  gen: number;
  /** The record as of generation `gen`: `chunks` keys written under `epoch` and `nonce`, `bytes` long, with this sha256. */
  record: { epoch: number; nonce: string; chunks: number; bytes: number; sha256: string };
  /** Journal entries 1..n extending `gen`, as runs `[epoch that wrote them, last seq of the run]`. */
  journal: Array<[number, number]>;
  journalBytes: number;
  kv: KvDescriptor | null;
  /** The object holding the saved cache (`<agent>/<epoch>/<nonce>-<file>`, unique per upload); null without one. */
  kvObject: string | null;
  updatedAt: number;
  /** Random id of the commit that wrote this head: tells whether a commit whose reply was lost landed. */
  op: string;
}

interface HeadEnvelope {
  format: "agentrt-head";
  v: 1;
  sha256: string;
  body: string;
}

export const newOp = (): string => randomBytes(8).toString("hex");

/** Number of journal entries the head names. */
export function journalLength(head: Pick<Head, "journal">): number {
  return head.journal.length === 0 ? 0 : head.journal[head.journal.length - 1]![1];
}

/** The epoch that wrote journal entry `seq` (1-based), from the head's runs. */
export function entryEpoch(head: Pick<Head, "journal">, seq: number): number {
  for (const [epoch, last] of head.journal) if (seq <= last) return epoch;
  throw new RangeError(`the journal has no entry ${seq}`);
}

/** The head's runs with one more entry written under `epoch`. */
export function appendRun(journal: Head["journal"], epoch: number): Head["journal"] {
  const last = journal[journal.length - 1];
  const next = (last?.[1] ?? 0) + 1;
  if (last && last[0] === epoch) return [...journal.slice(0, -1), [epoch, next]];
  return [...journal, [epoch, next]];
}

export function encodeHead(head: Head): Uint8Array {
  const body = JSON.stringify(head);
  const envelope: HeadEnvelope = { format: "agentrt-head", v: 1, sha256: createHash("sha256").update(body).digest("hex"), body };
  return Buffer.from(JSON.stringify(envelope));
}

const isCount = (value: unknown): value is number => typeof value === "number" && Number.isSafeInteger(value) && value >= 0;

/**
 * The head of `id` from its stored bytes. ERR_STATE_FOREIGN when it is not an agentrt head (or a newer
 * version), ERR_STATE_CORRUPT when its checksum or fields are wrong or it names another agent.
 */
export function decodeHead(id: string, value: Uint8Array): Head {
  const corrupt = (why: string, cause?: unknown): never => {
    throw new AgentRuntimeError("ERR_STATE_CORRUPT", `The cluster head of ${id} is unreadable: ${why}`, { cause, details: { id } });
  };
  if (value.length > MAX_HEAD_BYTES) corrupt(`${value.length} bytes, over the ${MAX_HEAD_BYTES} limit`);
  let envelope: HeadEnvelope;
  try {
    envelope = JSON.parse(Buffer.from(value).toString("utf8")) as HeadEnvelope;
  } catch (error) {
    throw new AgentRuntimeError("ERR_STATE_FOREIGN", `The cluster head of ${id} is not an agentrt head`, { cause: error, details: { id } });
  }
  if (envelope?.format !== "agentrt-head" || envelope.v !== 1 || typeof envelope.body !== "string") {
    throw new AgentRuntimeError("ERR_STATE_FOREIGN", `The cluster head of ${id} is not an agentrt head (version 1)`, { details: { id } });
  }
  if (createHash("sha256").update(envelope.body).digest("hex") !== envelope.sha256) corrupt("checksum mismatch");
  let head: Head;
  try {
    head = JSON.parse(envelope.body) as Head;
  } catch (error) {
    return corrupt("body is not valid JSON", error);
  }
  if (typeof head !== "object" || head === null) corrupt("body is not an object");
  if (head.id !== id) corrupt(`it belongs to ${JSON.stringify(head.id)}`);
  const ownerValid =
    head.owner === null || (typeof head.owner === "object" && typeof head.owner.node === "string" && typeof head.owner.incarnation === "string");
  const record = head.record;
  const recordValid =
    typeof record === "object" &&
    record !== null &&
    isCount(record.epoch) &&
    /^[0-9a-f]{1,32}$/.test(String(record.nonce)) &&
    isCount(record.chunks) &&
    record.chunks >= 1 &&
    isCount(record.bytes) &&
    /^[0-9a-f]{64}$/.test(String(record.sha256));
  let previous = 0;
  const journalValid =
    Array.isArray(head.journal) &&
    head.journal.every((run) => {
      const ok = Array.isArray(run) && run.length === 2 && isCount(run[0]) && isCount(run[1]) && run[1] > previous;
      previous = ok ? run[1] : previous;
      return ok;
    });
  if (!ownerValid || !isCount(head.epoch) || !isCount(head.gen) || head.gen < 1 || !recordValid || !journalValid) corrupt("invalid fields");
  if (
    !isCount(head.journalBytes) ||
    !(head.kvObject === null || typeof head.kvObject === "string") ||
    !Number.isFinite(head.updatedAt) ||
    typeof head.op !== "string"
  )
    corrupt("invalid fields");
  if (head.kv !== null && (typeof head.kv !== "object" || typeof head.kv.file !== "string" || typeof head.kvObject !== "string"))
    corrupt("invalid KV descriptor");
  return head;
}

export function sameOwner(a: Pick<Head, "owner" | "epoch">, b: Pick<Head, "owner" | "epoch">): boolean {
  return a.epoch === b.epoch && a.owner?.node === b.owner?.node && a.owner?.incarnation === b.owner?.incarnation;
}
