import type { TurnResult } from "../events.js";

/**
 * A message in flight: iterate it for tokens as they are produced, or await `result` for the reply.
 * Tokens are kept until read (a turn is bounded by `maxTokens`, so is its buffer).
 */
export class Turn implements AsyncIterable<string> {
  readonly result: Promise<TurnResult>;
  readonly #chunks: string[] = [];
  #done = false;
  #error: unknown;
  #waiting: Array<() => void> = [];

  /** @internal */
  constructor(run: (push: (text: string) => void) => Promise<TurnResult>) {
    this.result = run((text) => {
      this.#chunks.push(text);
      this.#signal();
    }).then(
      (result) => {
        this.#done = true;
        this.#signal();
        return result;
      },
      (error: unknown) => {
        this.#done = true;
        this.#error = error;
        this.#signal();
        throw error;
      },
    );
    // Consumers that only iterate still see the error; this keeps it from also being "unhandled".
    this.result.catch(() => {});
  }

  #signal(): void {
    for (const wake of this.#waiting.splice(0)) wake();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    let index = 0;
    while (true) {
      if (index < this.#chunks.length) {
        yield this.#chunks[index++]!;
        continue;
      }
      if (this.#done) {
        if (this.#error !== undefined) throw this.#error;
        return;
      }
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    }
  }
}
