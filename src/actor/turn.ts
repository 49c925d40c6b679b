import type { TurnResult } from "../events.js";

/**
 * A message in flight: iterate it for tokens as they are produced, or await `result` for the reply.
 * Tokens are kept until read (a turn is bounded by `maxTokens`, so is its buffer).
 */
export class Turn implements AsyncIterable<string> {
  readonly result: Promise<TurnResult>;
  /**
   * Resolves once the message is in the agent's mailbox; rejects, as `result` does, when it is refused
   * before that (unknown agent, invalid input, full mailbox). A front can answer such a refusal as an
   * error instead of opening a stream.
   */
  readonly accepted: Promise<void>;
  readonly #chunks: string[] = [];
  #done = false;
  #error: unknown;
  #waiting: Array<() => void> = [];

  /** @internal */
  constructor(run: (push: (text: string) => void, accept: () => void) => Promise<TurnResult>) {
    let accept!: () => void;
    let refuse!: (error: unknown) => void;
    this.accepted = new Promise<void>((resolve, reject) => {
      accept = resolve;
      refuse = reject;
    });
    this.accepted.catch(() => {});
    this.result = run((text) => {
      this.#chunks.push(text);
      this.#signal();
    }, accept).then(
      (result) => {
        this.#done = true;
        this.#signal();
        return result;
      },
      (error: unknown) => {
        refuse(error); // no-op once accepted
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
