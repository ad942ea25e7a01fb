/**
 * Message franking: commitments that make abuse reports verifiable
 * (client/parley/crypto/franking.py; docs/crypto.md "Message franking").
 *
 * - for every message the sender draws a fresh 32-byte franking key `fk`;
 * - `commitment = HMAC-SHA256(fk, "parley-v1/franking\x00" ‖ plaintext)`;
 * - `fk` travels inside the encrypted payload (`payload = fk ‖ plaintext`), the
 *   commitment in the clear at bytes [2:34] of every Parley ciphertext, inside
 *   the AEAD associated data (and the group signature);
 * - a report reveals `plaintext` and `fk`; {@link verifyReport} checks them.
 */

import { concat, constantTimeEqual, utf8 } from './encoding.ts';
import { FrankingMismatch, MalformedMessage, UnsupportedVersion } from './errors.ts';
import { hmacSha256, requireBytes } from './primitives.ts';

export const FRANKING_KEY_LEN = 32;
export const COMMITMENT_LEN = 32;
/** Domain-separation prefix hashed in front of the plaintext. */
export const CONTEXT = utf8('parley-v1/franking\x00');
/** Every Parley ciphertext starts with version (1 byte), type (1 byte), commitment. */
export const COMMITMENT_OFFSET = 2;
const COMMITMENT_END = COMMITMENT_OFFSET + COMMITMENT_LEN;
const SUPPORTED_VERSIONS = new Set([1]);

/** The 32-byte commitment to `plaintext` under `frankingKey` (InvalidKeyLength unless 32 bytes). */
export async function commit(plaintext: Uint8Array, frankingKey: Uint8Array): Promise<Uint8Array> {
  requireBytes('plaintext', plaintext);
  requireBytes('franking_key', frankingKey, FRANKING_KEY_LEN);
  return hmacSha256(frankingKey, concat(CONTEXT, plaintext));
}

/**
 * Check a report: resolves if genuine, rejects with FrankingMismatch if not (a
 * franking key or commitment of the wrong length cannot open it either).
 */
export async function verifyReport(
  plaintext: Uint8Array,
  frankingKey: Uint8Array,
  commitment: Uint8Array,
): Promise<void> {
  requireBytes('plaintext', plaintext);
  requireBytes('franking_key', frankingKey);
  requireBytes('commitment', commitment);
  if (frankingKey.length !== FRANKING_KEY_LEN) {
    throw new FrankingMismatch(`franking_key must be ${FRANKING_KEY_LEN} bytes`);
  }
  if (commitment.length !== COMMITMENT_LEN) throw new FrankingMismatch(`commitment must be ${COMMITMENT_LEN} bytes`);
  const expected = await hmacSha256(frankingKey, concat(CONTEXT, plaintext));
  if (!constantTimeEqual(expected, commitment)) {
    throw new FrankingMismatch('the plaintext and franking key do not match the commitment');
  }
}

/**
 * The clear-text commitment of a Parley ciphertext (any message type), for the
 * send frame. MalformedMessage if too short, UnsupportedVersion for an unknown version.
 */
export function commitmentFromMessage(message: Uint8Array): Uint8Array {
  requireBytes('message', message);
  if (message.length < COMMITMENT_END) throw new MalformedMessage('message too short to carry a franking commitment');
  if (!SUPPORTED_VERSIONS.has(message[0] as number)) {
    throw new UnsupportedVersion(`unsupported message version ${message[0]}`);
  }
  return message.slice(COMMITMENT_OFFSET, COMMITMENT_END);
}
