/**
 * Runs work one at a time per key (an agent's writes never interleave), different keys concurrently.
 * A failed task does not stop the ones queued after it.
 */
export class KeyedQueue {
  readonly #tails = new Map<string, Promise<void>>();

  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const run = (this.#tails.get(key) ?? Promise.resolve()).then(work);
    const tail = run.then(
      () => {},
      () => {},
    );
    this.#tails.set(key, tail);
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return run;
  }

  /** Resolves once every task queued so far has settled. */
  async settled(): Promise<void> {
    await Promise.all(this.#tails.values());
  }
}
