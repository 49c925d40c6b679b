/** Recognising the NATS client's errors without depending on their classes' identity. */
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";

/** A compare-and-set lost to another write at the same revision (see `cas.ts`). */
export class CasConflict extends Error {
  override readonly name = "CasConflict";
}

/** A compare-and-set lost: the key's last revision was not the one expected, or another write on it came first. */
export function isWrongLastSequence(error: unknown): boolean {
  return (
    error instanceof CasConflict ||
    (error instanceof JetStreamApiError &&
      (error.code === JetStreamApiCodes.StreamWrongLastSequence || error.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown))
  );
}

/**
 * Retries a read (or an idempotent write) while the cluster fails over: timeouts, a connection lost
 * mid-request, "JetStream system temporarily unavailable" (503, a stream without a leader yet). Other
 * errors, and the last attempt's, are thrown.
 */
export async function retryTransient<T>(work: () => Promise<T>, options: { attempts?: number; withinMs?: number } = {}): Promise<T> {
  // A stream electing a leader answers 503 at once for a few seconds (up to ~10 s on 2.9): worth waiting
  // out. A timeout already cost its full request timeout, so the time bound stops those after one retry.
  const { attempts = 10, withinMs = 10_000 } = options;
  const started = Date.now();
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (error) {
      // Bounded in time too: a request that timed out already waited its full timeout.
      if (attempt >= attempts || Date.now() - started > withinMs || !isTransient(error)) throw error;
      await new Promise((resolve) => setTimeout(resolve, Math.min(1000, 250 * attempt)));
    }
  }
}

/** A failure that may pass by itself: no reply, or a stream that has no leader for a moment. */
export function isTransient(error: unknown): boolean {
  if (error instanceof CasConflict) return false;
  if (error instanceof JetStreamApiError) return error.status === 503;
  return true;
}

/** An error after which the request may or may not have been applied (timeouts, a connection lost mid-request). */
export function isAmbiguous(error: unknown): boolean {
  return !(error instanceof JetStreamApiError) && !(error instanceof CasConflict);
}
