/** The demo's agents: each tells its own story, and each user turn gives the first words of a sentence. */
export interface DemoStory {
  id: string;
  role: string;
  /** The system prompt: the story's opening, which a completion model continues. */
  opening: string;
  /** The user's turns, in order. */
  cues: readonly string[];
}

// Turns end with a comma: the model goes on with a word, and each reply is a sentence of its own.
// Chosen for what a 260K-parameter TinyStories model tells well with greedy decoding.
const CUES = ["One day,", "The next day,"] as const;

export const DEMO_STORIES: readonly DemoStory[] = [
  { id: "garden", role: "fable", opening: "Once upon a time, there was a kind old man who had a big garden.", cues: CUES },
  { id: "lily", role: "adventure", opening: "Once upon a time, there was a little girl named Lily. She loved to play outside.", cues: CUES },
  { id: "jack", role: "mystery", opening: "Once upon a time, in a small town, there lived a little boy named Jack.", cues: CUES },
];

/** The agent whose arrival sends the least recently used storyteller to disk. */
export const FOURTH_STORY: DemoStory = {
  id: "max",
  role: "friendship",
  opening: "Tim and his dog Max liked to play in the garden.",
  cues: ["One day,"],
};

/** The turn that brings the passivated storyteller back. */
export const REHYDRATION_CUE = "At the end of the day,";

/**
 * The text up to its last complete sentence (a full stop, `!` or `?`, with a closing quote if any, and
 * no quotation left open), or the whole text when it has none. With `final: false` the text is still
 * growing: a sentence end counts only once whitespace follows it, so later text cannot undo it.
 */
export function completeSentences(text: string, { final = true }: { final?: boolean } = {}): string {
  const end = final ? /[.!?]["”]?(?=\s|$)/gu : /[.!?]["”]?(?=\s)/gu;
  let last = -1;
  for (const match of text.matchAll(end)) {
    const upTo = match.index + match[0].length;
    const quotes = text.slice(0, upTo).match(/["“”]/gu)?.length ?? 0;
    if (quotes % 2 === 0) last = upTo;
  }
  if (last >= 0) return text.slice(0, last);
  return final ? text : "";
}
