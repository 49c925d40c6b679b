/** Recognising the NATS client's errors without depending on their classes' identity. */
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";

/** A compare-and-set lost: the key's last revision was not the one expected. */
export function isWrongLastSequence(error: unknown): boolean {
  return (
    error instanceof JetStreamApiError &&
    (error.code === JetStreamApiCodes.StreamWrongLastSequence || error.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

/** An error after which the request may or may not have been applied (timeouts, a connection lost mid-request). */
export function isAmbiguous(error: unknown): boolean {
  return !(error instanceof JetStreamApiError);
}
