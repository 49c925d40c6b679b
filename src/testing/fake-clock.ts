import type { Clock } from "../clock.js";

/**
 * A clock that moves only when told: LRU order and timeouts become exact in tests. Timers fire, in
 * due order, when `advance` passes their time.
 */
export class FakeClock implements Clock {
  #now: number;
  #timers: Array<{ at: number; callback: () => void; handle: number }> = [];
  #nextHandle = 1;

  constructor(start = 0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const handle = this.#nextHandle++;
    this.#timers.push({ at: this.#now + Math.max(0, ms), callback, handle });
    return handle;
  }

  clearTimeout(handle: unknown): void {
    this.#timers = this.#timers.filter((timer) => timer.handle !== handle);
  }

  /** Timers waiting to fire. */
  get pending(): number {
    return this.#timers.length;
  }

  /** Moves time forward by `ms`, firing the timers that fall due, oldest first. */
  advance(ms: number): void {
    const target = this.#now + ms;
    for (;;) {
      const due = this.#timers.filter((timer) => timer.at <= target).sort((a, b) => a.at - b.at || a.handle - b.handle)[0];
      if (!due) break;
      this.#timers = this.#timers.filter((timer) => timer !== due);
      this.#now = due.at;
      due.callback();
    }
    this.#now = target;
  }
}
