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

/** An error after which the request may or may not have been applied (timeouts, a connection lost mid-request). */
export function isAmbiguous(error: unknown): boolean {
  return !(error instanceof JetStreamApiError) && !(error instanceof CasConflict);
}
