import { AgentRuntimeError } from "../errors.js";

interface Letter {
  task(): Promise<unknown>;
  resolve(value: unknown): void;
  reject(error: unknown): void;
  /** Removes the abort listener of a waiting letter. */
  detach(): void;
}

export interface PostOptions {
  /** Aborting while the message waits takes it out of the mailbox (rejecting with `signal.reason`). */
  signal?: AbortSignal | undefined;
  /** Facts for the ERR_MAILBOX_FULL error (the agent id). */
  details?: Record<string, unknown>;
  /** Called once the message is in the mailbox (not when it is refused). */
  onQueued?: () => void;
}

/**
 * An agent's mailbox: tasks run strictly one at a time, in the order posted. Bounded: posting to a
 * full mailbox fails at once with ERR_MAILBOX_FULL, so a flood never grows memory without limit.
 */
export class Mailbox {
  readonly capacity: number;
  readonly #queue: Letter[] = [];
  #running = false;
  #idle: Array<() => void> = [];

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError("mailboxCapacity must be an integer ≥ 1");
    this.capacity = capacity;
  }

  /** Messages waiting, not counting the one running. */
  get pending(): number {
    return this.#queue.length;
  }

  get busy(): boolean {
    return this.#running;
  }

  post<T>(task: () => Promise<T>, options: PostOptions = {}): Promise<T> {
    const { signal, details } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#queue.length >= this.capacity) {
      return Promise.reject(
        new AgentRuntimeError("ERR_MAILBOX_FULL", `The mailbox holds ${this.capacity} messages already`, {
          ...(details ? { details } : {}),
        }),
      );
    }
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        const index = this.#queue.indexOf(letter);
        if (index < 0) return; // already running: the task itself sees the signal
        this.#queue.splice(index, 1);
        reject(signal!.reason);
        if (!this.#running && this.#queue.length === 0) this.#wakeIdle();
      };
      const letter: Letter = {
        task,
        resolve: resolve as (value: unknown) => void,
        reject,
        detach: () => signal?.removeEventListener("abort", onAbort),
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(letter);
      options.onQueued?.();
      this.#pump();
    });
  }

  #wakeIdle(): void {
    for (const wake of this.#idle.splice(0)) wake();
  }

  #pump(): void {
    if (this.#running) return;
    const letter = this.#queue.shift();
    if (!letter) {
      this.#wakeIdle();
      return;
    }
    letter.detach();
    this.#running = true;
    // The mailbox is marked idle (or busy with the next letter) before the poster's continuation runs.
    const settle = (outcome: () => void) => {
      this.#running = false;
      this.#pump();
      outcome();
    };
    letter.task().then(
      (value) => settle(() => letter.resolve(value)),
      (error: unknown) => settle(() => letter.reject(error)),
    );
  }

  /** Resolves once nothing is running or waiting. */
  drain(): Promise<void> {
    if (!this.#running && this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Rejects every waiting message (the running one finishes). */
  rejectPending(error: Error): void {
    for (const letter of this.#queue.splice(0)) {
      letter.detach();
      letter.reject(error);
    }
  }
}
