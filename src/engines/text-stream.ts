/**
 * Turns generated token ids into streamed text (both engines). Text is re-decoded from all reply tokens each step (tokenizers
 * merge bytes and spaces across tokens, so per-token decoding is wrong for multi-byte characters), and text is
 * held back while it could still become a stop string or ends in an incomplete UTF-8 sequence (U+FFFD).
 */
export class TextStream {
  readonly #tokens: number[] = [];
  #emitted = "";
  #text = "";
  readonly #longestStop: number;
  readonly #decode: (tokens: readonly number[]) => string;
  readonly #stopStrings: readonly string[];
  readonly #onText: (text: string) => void;

  constructor(decode: (tokens: readonly number[]) => string, stopStrings: readonly string[], onText: (text: string) => void) {
    this.#decode = decode;
    this.#stopStrings = stopStrings;
    this.#onText = onText;
    this.#longestStop = stopStrings.reduce((m, s) => Math.max(m, s.length), 0);
  }

  /** Adds a token; returns true when a stop string appeared (the reply then ends before it). */
  push(token: number): boolean {
    this.#tokens.push(token);
    const full = this.#decode(this.#tokens);
    const stable = full.replace(/\uFFFD+$/u, "");
    const searchFrom = Math.max(0, this.#emitted.length - this.#longestStop);
    let stopAt = -1;
    for (const stop of this.#stopStrings) {
      const at = stable.indexOf(stop, searchFrom);
      if (at !== -1 && (stopAt === -1 || at < stopAt)) stopAt = at;
    }
    if (stopAt !== -1) {
      this.#text = stable.slice(0, stopAt);
      this.#emitUpTo(this.#text);
      return true;
    }
    this.#text = full;
    this.#emitUpTo(stable.slice(0, stable.length - this.#heldBack(stable)));
    return false;
  }

  /** Flushes what was held back (no stop string came) and returns the reply text. */
  finish(): string {
    this.#emitUpTo(this.#text);
    return this.#text;
  }

  get tokenCount(): number {
    return this.#tokens.length;
  }

  /** Length of the longest suffix of `text` that is a proper prefix of a stop string. */
  #heldBack(text: string): number {
    let hold = 0;
    for (const stop of this.#stopStrings) {
      for (let n = Math.min(stop.length - 1, text.length); n > hold; n--) {
        if (text.endsWith(stop.slice(0, n))) {
          hold = n;
          break;
        }
      }
    }
    return hold;
  }

  #emitUpTo(target: string): void {
    // Decoding more tokens can in rare cases rewrite earlier text; the stream cannot take text back, so it goes on
    // from the same length (the returned reply text is always the exact decode).
    if (target.length > this.#emitted.length) {
      const piece = target.slice(this.#emitted.length);
      this.#emitted = target;
      this.#onText(piece);
    }
  }
}
