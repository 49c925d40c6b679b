/**
 * Finding a context shift. The runtime's "shift" policy drops whole turns D between the system prompt P and the
 * turns it keeps S, so the cache holds P + D + S (+ a stale tail X: the last reply as generated, which the new
 * rendering may tokenize differently) and the new prompt is P + S + N. Rewinding to the common prefix P would
 * evaluate S again; a shift removes D from the cache, moves S down to follow P and evaluates only N.
 *
 * The kept keys were computed while D was in view; after the shift they attend as if it never was, which is the
 * approximation every context shift makes (llama.cpp's context shift included): greedy replies after a shift
 * need not equal those of a cache evaluated from scratch.
 */

/** A shift that keeps fewer tokens saves little and is likely a chance match (e.g. a follow-up's stale tail). */
export const MIN_SHIFT_KEEP = 8;

export interface ContextShift {
  /** Tokens of the common prefix P, kept in place. */
  prefix: number;
  /** Tokens removed after the prefix: D. */
  removed: number;
  /** Tokens after D that the prompt continues with, kept and moved down by `removed`: S. */
  kept: number;
}

/**
 * The shift that keeps the longest S (the smallest D among equals), or undefined when no S of at least
 * {@link MIN_SHIFT_KEEP} tokens exists. `prefix` is the common prefix length of `cached` and `prompt`; `maxKeep`
 * bounds S (engines keep at least the prompt's last token to evaluate, whose logits pick the first reply token).
 * Unknown cached ids (`undefined`) never match.
 */
export function findContextShift(
  cached: readonly (number | undefined)[],
  prompt: readonly number[],
  prefix: number,
  maxKeep = prompt.length - prefix - 1,
): ContextShift | undefined {
  let best: ContextShift | undefined;
  for (let removed = 1; prefix + removed < cached.length; removed++) {
    // The bound only shrinks as D grows: once it cannot beat the best, nothing later can.
    const limit = Math.min(cached.length - prefix - removed, maxKeep);
    if (limit < MIN_SHIFT_KEEP || (best && limit <= best.kept)) break;
    let kept = 0;
    while (kept < limit && cached[prefix + removed + kept] !== undefined && cached[prefix + removed + kept] === prompt[prefix + kept]) kept++;
    if (kept >= MIN_SHIFT_KEEP && kept > (best?.kept ?? 0)) best = { prefix, removed, kept };
  }
  return best;
}
