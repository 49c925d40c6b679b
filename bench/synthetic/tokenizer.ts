/**
 * A GPT-2-style byte-level BPE vocabulary for synthetic models.
 *
 * - 256 byte tokens in GPT-2's byte-to-unicode alphabet (space is "Ġ", newline "Ċ"), typed NORMAL as
 *   llama.cpp's own converter types them;
 * - merges learned from a small built-in English text, so that common words ("Hello", " world", " the")
 *   become single tokens;
 * - then synthetic merges (concatenations of existing tokens, each a valid merge) until the vocabulary
 *   has the requested size, so the token and merge tables have realistic sizes;
 * - ChatML special tokens typed CONTROL.
 */

/** llama.cpp token types (tokenizer.ggml.token_type). */
export enum TokenType {
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6,
}

export const SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] as const;

/** ChatML, as SmolLM2-Instruct and Qwen2.5-Instruct use it (without tools). */
export const CHATML_TEMPLATE =
  "{% for message in messages %}" +
  "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant.<|im_end|>\\n' }}{% endif %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** Original text, written for this file: merges are learned from it. */
export const TRAINING_TEXT = `Hello world! Hello, world. Hello there, and welcome to the world of small language models.
The model reads the text one token at a time, and the tokens are pieces of words. Common words like the, and,
of, to, in, is, that, for, it, with, as, was, on, are, be, this, by, at, from, or, have, an, they, which, one,
you, were, all, we, there, can, has, more, their, if, will, about, what, so, when, who, would, make, like,
time, just, him, know, take, people, into, year, your, good, some, could, them, see, other, than, then, now,
look, only, come, its, over, think, also, back, after, use, two, how, our, work, first, well, way, even, new,
want, because, any, these, give, day, most, us, is, are, was and were appear again and again in the text.
The agent keeps its memory in a cache. The cache holds the keys and values of every token the model has seen,
so the next question does not need to read the whole conversation again. When the agent sleeps, the runtime
saves the cache to a file on the disk; when a new message arrives, the runtime loads the file and the agent
wakes up where it left off. This is the state of the agent, and the state is what we want to keep.
A user asks a question and the assistant gives an answer. The system message tells the assistant who it is.
The user says: Hello! Can you help me with my work today? The assistant says: Of course. What would you like
to do first? The user says: I want to write a short story about a robot who learns to paint. The assistant
says: That sounds like a good story. Here is the first part. Once upon a time there was a small robot in a
quiet town. Every day the robot watched the people walk to work, and every night it looked at the stars.
One morning the robot found an old box of paint in the street, and it began to paint the world it saw.
The people of the town came to look at the pictures, and they were happy, because the robot had painted them.
Numbers are part of text too: 1, 2, 3, 10, 20, 100, 2024, 3.14, and 42 are written with digits.
Questions end with a question mark? Lists use commas, and sentences end with a full stop. "Quotes" and
(brackets) and the colon: appear in code and in prose. The quick brown fox jumps over the lazy dog.
In the morning the weather was cold, and in the evening it was warm. The children played in the garden,
the birds sang in the trees, and the old man read the newspaper at the table by the window.
Thank you for your help! You are welcome. Have a nice day, and good luck with the rest of the work.
`;

/** GPT-2's reversible byte-to-unicode map: printable bytes map to themselves, the rest to U+0100 onward. */
export function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const map: string[] = new Array<string>(256);
  for (const b of printable) map[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (map[b] === undefined) {
      map[b] = String.fromCodePoint(256 + n);
      n++;
    }
  }
  return map;
}

/** GPT-2 pre-tokenizer split (the pattern llama.cpp uses for "gpt-2" / "smollm"). */
const PRETOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

export interface BpeVocab {
  tokens: string[];
  tokenTypes: number[];
  /** "left right", in rank order. */
  merges: string[];
  /** id of each special token by text. */
  specialIds: Record<(typeof SPECIAL_TOKENS)[number], number>;
  /** How many merges came from the built-in text (the rest are synthetic padding). */
  learnedMerges: number;
}

/** Deterministic 32-bit PRNG (mulberry32). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** Learns up to `maxMerges` BPE merges (pairs seen at least twice) from `text`, byte-level. */
export function learnMerges(text: string, maxMerges: number): Array<[string, string]> {
  const byteMap = bytesToUnicode();
  const wordCounts = new Map<string, number>();
  const count = (word: string, n: number): void => {
    const piece = Array.from(Buffer.from(word, "utf8"), (b) => byteMap[b] as string).join("");
    wordCounts.set(piece, (wordCounts.get(piece) ?? 0) + n);
  };
  for (const match of text.matchAll(PRETOKENIZE)) {
    const word = match[0];
    count(word, 1);
    // A word seen in one form counts (once) in its other forms too: with and without a leading space,
    // lower case and capitalized. So "Hello", " hello" and " Hello" all become tokens when "hello" is common.
    const bare = /^ ?(\p{L}+)$/u.exec(word)?.[1];
    if (bare !== undefined) {
      const lower = bare.toLowerCase();
      const upper = lower.charAt(0).toUpperCase() + lower.slice(1);
      for (const form of new Set([lower, upper, ` ${lower}`, ` ${upper}`])) if (form !== word) count(form, 1);
    }
  }
  const words: Array<{ symbols: string[]; count: number }> = [];
  for (const [w, count] of wordCounts) words.push({ symbols: Array.from(w), count });

  const merges: Array<[string, string]> = [];
  while (merges.length < maxMerges) {
    const pairCounts = new Map<string, number>();
    for (const { symbols, count } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]} ${symbols[i + 1]}`;
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + count);
      }
    }
    let best: string | undefined;
    let bestCount = 1;
    for (const [key, count] of pairCounts) {
      // Highest count wins; ties go to the lexicographically smallest pair, so the result is deterministic.
      if (count > bestCount || (count === bestCount && best !== undefined && key < best)) {
        best = key;
        bestCount = count;
      }
    }
    if (best === undefined) break;
    const [left, right] = best.split(" ") as [string, string];
    merges.push([left, right]);
    const merged = left + right;
    for (const word of words) {
      const s = word.symbols;
      const out: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === left && s[i + 1] === right) {
          out.push(merged);
          i++;
        } else {
          out.push(s[i] as string);
        }
      }
      word.symbols = out;
    }
  }
  return merges;
}

/**
 * Builds a vocabulary of exactly `vocabSize` tokens: special tokens first (ids 0..2, as in SmolLM2),
 * then the 256 byte tokens, learned merges, and synthetic merges.
 */
export function buildBpeVocab(vocabSize: number, seed = 1234): BpeVocab {
  const minSize = SPECIAL_TOKENS.length + 256;
  if (vocabSize < minSize) throw new Error(`vocab size must be at least ${minSize}`);
  const tokens: string[] = [];
  const tokenTypes: number[] = [];
  const index = new Map<string, number>();
  const add = (text: string, type: TokenType): number => {
    if (index.has(text)) throw new Error(`duplicate token ${JSON.stringify(text)}`);
    index.set(text, tokens.length);
    tokens.push(text);
    tokenTypes.push(type);
    return tokens.length - 1;
  };
  const specialIds = {} as Record<(typeof SPECIAL_TOKENS)[number], number>;
  for (const s of SPECIAL_TOKENS) specialIds[s] = add(s, TokenType.CONTROL);
  for (const ch of bytesToUnicode()) add(ch, TokenType.NORMAL);

  const merges: string[] = [];
  const budget = vocabSize - tokens.length;
  for (const [l, r] of learnMerges(TRAINING_TEXT, budget)) {
    add(l + r, TokenType.NORMAL);
    merges.push(`${l} ${r}`);
  }
  const learnedMerges = merges.length;

  // Pad with synthetic merges: left = any token, right = a byte token or learned token that does not start
  // a new word, so every token still looks like something a byte-level BPE could have learned, and the
  // average token length grows slowly (at most 16 characters).
  const rand = mulberry32(seed);
  const firstMergeable = SPECIAL_TOKENS.length;
  const rights = tokens.slice(firstMergeable).filter((t) => !t.startsWith("Ġ"));
  let attempts = 0;
  while (tokens.length < vocabSize) {
    if (++attempts > vocabSize * 100) throw new Error("could not pad the vocabulary");
    const left = tokens[firstMergeable + (rand() % (tokens.length - firstMergeable))] as string;
    const right = rights[rand() % rights.length] as string;
    const merged = left + right;
    if (merged.length > 16 || index.has(merged)) continue;
    add(merged, TokenType.NORMAL);
    merges.push(`${left} ${right}`);
  }
  return { tokens, tokenTypes, merges, specialIds, learnedMerges };
}
