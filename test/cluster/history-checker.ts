/**
 * A small checker over what clients saw (Jepsen-style, per agent): every acknowledged turn is in the
 * final history exactly once, nothing appears that no one attempted, each writer's turns keep their
 * order, and the epochs along the history never go back — no two epochs committed overlapping turns.
 */
export interface Attempt {
  /** The turn's text (unique per attempt). */
  turn: string;
  writer: string;
  /** The epoch the writer held (believed it held) when it attempted the turn. */
  epoch: number;
  acked: boolean;
}

export function checkHistory(history: readonly string[], attempts: readonly Attempt[]): string[] {
  const problems: string[] = [];
  const byTurn = new Map(attempts.map((a) => [a.turn, a]));
  const seen = new Set<string>();
  for (const turn of history) {
    if (seen.has(turn)) problems.push(`turn ${turn} appears twice`);
    seen.add(turn);
    if (!byTurn.has(turn)) problems.push(`turn ${turn} was never attempted`);
  }
  for (const attempt of attempts)
    if (attempt.acked && !seen.has(attempt.turn))
      problems.push(`acknowledged turn ${attempt.turn} (${attempt.writer}, epoch ${attempt.epoch}) is lost`);
  // Per writer, the history keeps the order of its attempts.
  const writers = new Set(attempts.map((a) => a.writer));
  for (const writer of writers) {
    const order = attempts.filter((a) => a.writer === writer).map((a) => a.turn);
    const inHistory = history.filter((turn) => byTurn.get(turn)?.writer === writer);
    const positions = inHistory.map((turn) => order.indexOf(turn));
    if (positions.some((p, i) => i > 0 && p < positions[i - 1]!)) problems.push(`${writer}'s turns are out of order: ${inHistory.join(", ")}`);
  }
  // Epochs along the history: non-decreasing, so each epoch's turns form one block.
  let last = -Infinity;
  for (const turn of history) {
    const epoch = byTurn.get(turn)?.epoch;
    if (epoch === undefined) continue;
    if (epoch < last) problems.push(`turn ${turn} of epoch ${epoch} was committed after a turn of epoch ${last}`);
    last = Math.max(last, epoch);
  }
  return problems;
}
