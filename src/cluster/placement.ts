/**
 * Where a new or unowned agent goes: to the live, non-draining node with the most free resident slots
 * (its `maxAgents` minus its residents, as advertised at its last renewal), preferring a node that
 * already holds the agent's shared system-prompt state when one has room. Advertisements are up to one
 * renewal old, so a burst of placements between renewals would all pick the same node: ties and
 * near-ties are broken by a hash of (agent, node) — rendezvous hashing — which spreads a burst evenly
 * and sends one agent to the same node from every node that asks.
 */
import { createHash } from "node:crypto";
import type { MemberRecord } from "./membership.js";

export interface PlacementRequest {
  id: string;
  /** The key of the agent's shared system-prompt state (`PrefixCache.key`), when known. */
  prefix?: string | undefined;
}

/** A number in [0, 1) from the agent and node names, the same on every node. */
function rendezvous(id: string, node: string): number {
  return createHash("sha256").update(id).update("\0").update(node).digest().readUInt32BE(0) / 2 ** 32;
}

/** The free fraction of a node's resident slots; 0 for a node that advertises nothing. */
function freeShare(member: MemberRecord): number {
  const info = member.info;
  if (!info || info.maxAgents === 0) return 0;
  return Math.max(0, info.maxAgents - info.resident) / info.maxAgents;
}

/**
 * The node for `request` among `members` (live records, see `Membership.members`), or undefined when
 * none can take it (every node draining, or none advertising). Nodes with free slots are scored by
 * their free share, bucketed to quarters so that small differences give way to the hash.
 */
export function choosePlacement(request: PlacementRequest, members: readonly MemberRecord[]): string | undefined {
  const candidates = members.filter((member) => member.info && !member.info.draining);
  if (candidates.length === 0) return undefined;
  const score = (member: MemberRecord): number => {
    const free = freeShare(member);
    const prefixBonus = request.prefix && free > 0 && member.info!.prefixes.includes(request.prefix) ? 1 : 0;
    return prefixBonus * 10 + Math.ceil(free * 4) + rendezvous(request.id, member.node);
  };
  let best = candidates[0]!;
  let bestScore = score(best);
  for (const member of candidates.slice(1)) {
    const value = score(member);
    if (value > bestScore) [best, bestScore] = [member, value];
  }
  return best.node;
}
