import { mkdir, writeFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
export const RESULTS_DIR = resolve(BENCH_DIR, "results");

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

export async function writeResult(name: string, data: unknown): Promise<string> {
  await mkdir(RESULTS_DIR, { recursive: true });
  const path = resolve(RESULTS_DIR, name);
  await writeFile(path, JSON.stringify(data, null, 2) + "\n");
  return path;
}

/** Progress on stderr, so stdout stays the table. */
export function progress(message: string): void {
  process.stderr.write(`[bench] ${message}\n`);
}

/** Filler conversation text: varied English so tokenizers behave as on real chats. */
const SENTENCES = [
  "The robot walked through the quiet garden and counted the flowers one by one.",
  "Our team shipped the new scheduler last week, and latency dropped by a third.",
  "Customers asked for cheaper plans, so the business analyst drew up three options.",
  "At night the lighthouse keeper wrote letters to a friend across the sea.",
  "The coordinator split the work into small tasks and assigned each to an owner.",
  "A cache keeps what was already computed, so nothing is paid for twice.",
  "She opened the old map and traced the river to the mountains in the north.",
  "The engineers measured every change and kept only what made things faster.",
];

export function fillerText(index: number, sentences: number): string {
  return Array.from({ length: sentences }, (_, i) => SENTENCES[(index + i) % SENTENCES.length]).join(" ");
}
