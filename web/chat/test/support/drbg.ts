/**
 * The test DRBG of client/vectors/README.md, for vectors only:
 *
 *   block_i = HMAC-SHA256(key = seed, msg = "parley-test-drbg" ‖ u64_be(i))   i = 0, 1, 2, ...
 *   stream  = block_0 ‖ block_1 ‖ ...
 *
 * Each draw takes the next n bytes of the stream. A RandomSource must be
 * synchronous and WebCrypto's HMAC is not, so this uses @noble/hashes (a dev
 * dependency, test code only; the library itself never imports it).
 */

import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';

import { concat, fromHex, u64, utf8 } from '../../src/crypto/encoding.ts';
import type { RandomSource } from '../../src/crypto/primitives.ts';

const LABEL = utf8('parley-test-drbg');

export function deterministicRandom(seed: Uint8Array | string): RandomSource {
  const key = typeof seed === 'string' ? fromHex(seed) : seed.slice();
  let counter = 0n;
  let buffer: Uint8Array = new Uint8Array(0);
  return (n: number): Uint8Array => {
    while (buffer.length < n) {
      buffer = concat(buffer, hmac(sha256, key, concat(LABEL, u64(counter))));
      counter += 1n;
    }
    const out = buffer.slice(0, n);
    buffer = buffer.slice(n);
    return out;
  };
}

/** A DRBG seeded with the UTF-8 bytes of a label, as scripts/gen_vectors.py's `seed(label)`. */
export function labelledRandom(label: string): RandomSource {
  return deterministicRandom(utf8(label));
}
