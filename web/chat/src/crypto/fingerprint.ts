/**
 * Safety numbers: Signal's numeric fingerprint, version 0
 * (client/parley/crypto/fingerprint.py; docs/crypto.md "Safety numbers").
 *
 * For each party `h = u16_be(0) ‖ signing_key ‖ user_id_utf8`, then 5200 times
 * `h = SHA-512(h ‖ signing_key)`; the first 30 bytes as six 5-byte big-endian
 * numbers mod 100000 give 30 digits. The safety number is the two halves in
 * sorted order (60 digits), shown as 12 groups of 5.
 */

import { concat, u16, utf8 } from './encoding.ts';
import { InvalidSafetyNumber } from './errors.ts';
import { ED25519_KEY_LEN, requireBytes, sha512 } from './primitives.ts';

export const FINGERPRINT_VERSION = 0;
export const FINGERPRINT_ITERATIONS = 5200;

/** One party's 30 digits. */
export async function fingerprintDigits(signingKey: Uint8Array, userId: string): Promise<string> {
  requireBytes('signing_key', signingKey, ED25519_KEY_LEN);
  if (typeof userId !== 'string') throw new TypeError('user_id must be a string');
  let digest = concat(u16(FINGERPRINT_VERSION), signingKey, utf8(userId));
  const buffer = new Uint8Array(64 + ED25519_KEY_LEN);
  buffer.set(signingKey, 64);
  for (let i = 0; i < FINGERPRINT_ITERATIONS; i++) {
    if (i === 0) {
      digest = await sha512(concat(digest, signingKey));
    } else {
      buffer.set(digest, 0);
      digest = await sha512(buffer);
    }
  }
  let out = '';
  for (let at = 0; at < 30; at += 5) {
    let value = 0;
    for (let j = 0; j < 5; j++) value = value * 256 + (digest[at + j] as number); // < 2^40: exact
    out += String(value % 100000).padStart(5, '0');
  }
  return out;
}

/** The 60-digit safety number; identical on both sides. */
export async function safetyNumber(
  localSigningKey: Uint8Array,
  localUserId: string,
  remoteSigningKey: Uint8Array,
  remoteUserId: string,
): Promise<string> {
  const [local, remote] = await Promise.all([
    fingerprintDigits(localSigningKey, localUserId),
    fingerprintDigits(remoteSigningKey, remoteUserId),
  ]);
  return local <= remote ? local + remote : remote + local;
}

/** `'12345 67890 ...'`: 12 groups of 5 digits; InvalidSafetyNumber unless 60 digits. */
export function formatSafetyNumber(number: string): string {
  if (typeof number !== 'string') throw new TypeError('safety number must be a string');
  if (!/^[0-9]{60}$/.test(number)) throw new InvalidSafetyNumber('a safety number has exactly 60 digits');
  const groups: string[] = [];
  for (let i = 0; i < 60; i += 5) groups.push(number.slice(i, i + 5));
  return groups.join(' ');
}
