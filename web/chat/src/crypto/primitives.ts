/**
 * Thin, strict wrappers over WebCrypto (`globalThis.crypto.subtle`) and
 * `@noble/post-quantum` (ML-KEM-768): client/parley/crypto/primitives.py.
 *
 * Nothing here knows about Parley's protocols; the protocol modules build on
 * these functions only. Inputs are checked for type and length; failures
 * raise the narrow errors of `errors.ts`.
 *
 * | primitive            | implementation                                              |
 * |----------------------|-------------------------------------------------------------|
 * | X25519 (RFC 7748)    | WebCrypto `X25519` (private keys imported as PKCS#8)        |
 * | Ed25519 (RFC 8032)   | WebCrypto `Ed25519` (private keys imported as PKCS#8)       |
 * | HKDF-SHA256          | WebCrypto `HKDF`                                            |
 * | HMAC-SHA256          | WebCrypto `HMAC`                                            |
 * | AES-256-GCM          | WebCrypto `AES-GCM` (12-byte nonce, 16-byte tag)            |
 * | SHA-256, SHA-512     | WebCrypto `digest`                                          |
 * | ML-KEM-768 (FIPS 203)| `@noble/post-quantum` `ml_kem768` (WebCrypto has no ML-KEM) |
 *
 * Layer: primitives. The only module that touches `crypto.subtle` or `@noble/*`
 * (test/layers.test.ts checks it).
 */

import { ml_kem768 } from '@noble/post-quantum/ml-kem.js';

import { concat, fromHex, requireUint8Array } from './encoding.ts';
import { DecryptionFailed, InvalidKey, InvalidKeyLength, InvalidSignature } from './errors.ts';

export const X25519_KEY_LEN = 32;
export const ED25519_KEY_LEN = 32;
export const ED25519_SIG_LEN = 64;
export const AES_KEY_LEN = 32;
export const GCM_NONCE_LEN = 12;
export const GCM_TAG_LEN = 16;
export const MLKEM768_EK_LEN = 1184;
export const MLKEM768_CT_LEN = 1088;
export const MLKEM768_SEED_LEN = 64;
export const MLKEM768_SS_LEN = 32;
const HASH_LEN = 32;

/** Where randomness comes from: `rng(n)` returns `n` fresh random bytes (synchronously). */
export type RandomSource = (n: number) => Uint8Array;

/** `crypto.getRandomValues` (a CSPRNG in browsers and in Node). */
export const systemRandom: RandomSource = (n: number): Uint8Array => {
  const out = new Uint8Array(n);
  for (let at = 0; at < n; at += 65536) {
    globalThis.crypto.getRandomValues(out.subarray(at, Math.min(n, at + 65536)));
  }
  return out;
};

type Buf = Uint8Array<ArrayBuffer>;

/** WebCrypto wants ArrayBuffer-backed views; every Uint8Array we make is one. */
function buf(data: Uint8Array): Buf {
  return data as Buf;
}

/**
 * An error that means "this runtime cannot do it" (no X25519/Ed25519 in an old browser, a
 * programming error), which must not be reported as a bad key or a bad signature.
 */
function isUnsupported(error: unknown): boolean {
  return error instanceof TypeError || (error instanceof Error && error.name === 'NotSupportedError');
}

function subtle(): SubtleCrypto {
  const s = globalThis.crypto?.subtle;
  if (s === undefined) {
    throw new Error('WebCrypto (crypto.subtle) is not available: a secure context is required');
  }
  return s;
}

/**
 * `value` if it is a Uint8Array of the given length. TypeError for a
 * non-Uint8Array (a programming error), InvalidKeyLength for a wrong length.
 */
export function requireBytes(name: string, value: unknown, length?: number): Uint8Array {
  requireUint8Array(name, value);
  const bytes = value as Uint8Array;
  if (length !== undefined && bytes.length !== length) {
    throw new InvalidKeyLength(`${name} must be ${length} bytes, got ${bytes.length}`);
  }
  return bytes;
}

// PKCS#8 (RFC 8410) wrappers of a raw 32-byte private key: the only private-key import
// format both Node's and Chromium's WebCrypto accept for X25519 and Ed25519.
const PKCS8_X25519 = new Uint8Array([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
]);
const PKCS8_ED25519 = new Uint8Array([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
]);

function fromB64url(text: string): Uint8Array {
  // JWK members are base64url without padding (RFC 7515); a tiny local decoder keeps this
  // module free of protocol encodings.
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const out: number[] = [];
  let acc = 0;
  let bits = 0;
  for (const ch of text) {
    const v = alphabet.indexOf(ch);
    if (v < 0) throw new InvalidKey('bad JWK encoding');
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >>> bits) & 0xff);
    }
  }
  return new Uint8Array(out);
}

/** Import a raw private key (PKCS#8) and read its public key back (JWK `x`). */
async function importPrivate(
  prefix: Uint8Array,
  raw: Uint8Array,
  algorithm: 'X25519' | 'Ed25519',
  usages: KeyUsage[],
): Promise<{ key: CryptoKey; publicKey: Uint8Array }> {
  const s = subtle();
  const key = await s.importKey('pkcs8', buf(concat(prefix, raw)), { name: algorithm }, true, usages);
  const jwk = await s.exportKey('jwk', key);
  if (typeof jwk.x !== 'string') throw new InvalidKey(`${algorithm}: no public key in JWK export`);
  const publicKey = fromB64url(jwk.x);
  if (publicKey.length !== 32) throw new InvalidKey(`${algorithm}: bad public key length`);
  return { key, publicKey };
}

// --------------------------------------------------------------------------- X25519

/** An X25519 private key and its 32-byte public key. */
export class X25519KeyPair {
  readonly #private: Uint8Array;
  readonly #key: CryptoKey;
  readonly public: Uint8Array;

  private constructor(raw: Uint8Array, key: CryptoKey, publicKey: Uint8Array) {
    this.#private = raw;
    this.#key = key;
    this.public = publicKey;
  }

  /** The key pair of a raw 32-byte private key (used as given; clamping happens inside X25519). */
  static async fromPrivateBytes(raw: Uint8Array): Promise<X25519KeyPair> {
    requireBytes('X25519 private key', raw, X25519_KEY_LEN);
    const copy = raw.slice();
    const { key, publicKey } = await importPrivate(PKCS8_X25519, copy, 'X25519', ['deriveBits']);
    return new X25519KeyPair(copy, key, publicKey);
  }

  /** A new key pair from 32 bytes of `rng`. */
  static async generate(rng: RandomSource = systemRandom): Promise<X25519KeyPair> {
    return X25519KeyPair.fromPrivateBytes(rng(X25519_KEY_LEN));
  }

  privateBytes(): Uint8Array {
    return this.#private.slice();
  }

  /** X25519(self, peer); InvalidKey for a low-order peer point (all-zero output). */
  async dh(peerPublic: Uint8Array): Promise<Uint8Array> {
    requireBytes('X25519 public key', peerPublic, X25519_KEY_LEN);
    const s = subtle();
    let out: Uint8Array;
    try {
      const peer = await s.importKey('raw', buf(peerPublic), { name: 'X25519' }, true, []);
      out = new Uint8Array(await s.deriveBits({ name: 'X25519', public: peer }, this.#key, 256));
    } catch (error) {
      // WebCrypto refuses an all-zero shared secret with an OperationError.
      if (isUnsupported(error)) throw error;
      throw new InvalidKey(`X25519 exchange with a low-order public key (${String(error)})`);
    }
    let acc = 0;
    for (const b of out) acc |= b;
    if (acc === 0) throw new InvalidKey('X25519 exchange with a low-order public key');
    return out;
  }

  toString(): string {
    return 'X25519KeyPair(...)';
  }
}

// --------------------------------------------------------------------------- Ed25519

/** An Ed25519 signing key (from a 32-byte seed) and its 32-byte public key. */
export class Ed25519KeyPair {
  readonly #seed: Uint8Array;
  readonly #key: CryptoKey;
  readonly public: Uint8Array;

  private constructor(seed: Uint8Array, key: CryptoKey, publicKey: Uint8Array) {
    this.#seed = seed;
    this.#key = key;
    this.public = publicKey;
  }

  static async fromSeed(seed: Uint8Array): Promise<Ed25519KeyPair> {
    requireBytes('Ed25519 seed', seed, ED25519_KEY_LEN);
    const copy = seed.slice();
    const { key, publicKey } = await importPrivate(PKCS8_ED25519, copy, 'Ed25519', ['sign']);
    return new Ed25519KeyPair(copy, key, publicKey);
  }

  static async generate(rng: RandomSource = systemRandom): Promise<Ed25519KeyPair> {
    return Ed25519KeyPair.fromSeed(rng(ED25519_KEY_LEN));
  }

  seed(): Uint8Array {
    return this.#seed.slice();
  }

  /** Pure Ed25519 (deterministic, no context). */
  async sign(message: Uint8Array): Promise<Uint8Array> {
    requireBytes('message', message);
    return new Uint8Array(await subtle().sign({ name: 'Ed25519' }, this.#key, buf(message)));
  }

  toString(): string {
    return 'Ed25519KeyPair(...)';
  }
}

/**
 * The encodings of the 8 points of small order (orders 1, 2, 4 and 8), sign bit
 * cleared: y = 0, 1, p - 1, the two y of the order-8 points, and the
 * non-canonical y = p and p + 1 (libsodium's `has_small_order` blocklist). With
 * such a public key [h]A takes at most 8 values, so a signature can be made
 * without any private key (R = identity, S = 0 verifies every message under the
 * identity point in WebCrypto and OpenSSL); `ed25519Verify` refuses them, sign
 * bit set or not. As primitives.py.
 */
const ED25519_SMALL_ORDER: readonly string[] = [
  '0000000000000000000000000000000000000000000000000000000000000000',
  '0100000000000000000000000000000000000000000000000000000000000000',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a',
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
];
const ED25519_SMALL_ORDER_BYTES: readonly Uint8Array[] = ED25519_SMALL_ORDER.map(fromHex);

/** Whether a 32-byte Ed25519 public key encodes a point of small order. */
export function ed25519SmallOrder(publicKey: Uint8Array): boolean {
  if (publicKey.length !== ED25519_KEY_LEN) return false;
  const masked = publicKey.slice();
  masked[ED25519_KEY_LEN - 1] = (publicKey[ED25519_KEY_LEN - 1] as number) & 0x7f;
  return ED25519_SMALL_ORDER_BYTES.some((bad) => bad.every((byte, i) => masked[i] === byte));
}

/** Verify or raise InvalidSignature (bad lengths raise InvalidKeyLength). A
 * public key of small order is refused whatever the signature. */
export async function ed25519Verify(
  publicKey: Uint8Array,
  signature: Uint8Array,
  message: Uint8Array,
): Promise<void> {
  requireBytes('Ed25519 public key', publicKey, ED25519_KEY_LEN);
  requireBytes('Ed25519 signature', signature, ED25519_SIG_LEN);
  requireBytes('message', message);
  if (ed25519SmallOrder(publicKey)) throw new InvalidSignature('Ed25519 public key is of small order');
  const s = subtle();
  let ok: boolean;
  try {
    const key = await s.importKey('raw', buf(publicKey), { name: 'Ed25519' }, true, ['verify']);
    ok = await s.verify({ name: 'Ed25519' }, key, buf(signature), buf(message));
  } catch (error) {
    if (isUnsupported(error)) throw error;
    throw new InvalidSignature('Ed25519 public key is not a valid point');
  }
  if (!ok) throw new InvalidSignature('Ed25519 signature does not verify');
}

// --------------------------------------------------------------------------- hashes, HKDF, HMAC

export async function sha256(data: Uint8Array): Promise<Uint8Array> {
  requireBytes('data', data);
  return new Uint8Array(await subtle().digest('SHA-256', buf(data)));
}

export async function sha512(data: Uint8Array): Promise<Uint8Array> {
  requireBytes('data', data);
  return new Uint8Array(await subtle().digest('SHA-512', buf(data)));
}

/** HKDF-SHA256 (RFC 5869) extract-then-expand; RangeError unless 0 < length <= 8160. */
export async function hkdfSha256(
  ikm: Uint8Array,
  params: { salt: Uint8Array; info: Uint8Array; length: number },
): Promise<Uint8Array> {
  requireBytes('ikm', ikm);
  requireBytes('salt', params.salt);
  requireBytes('info', params.info);
  const { length } = params;
  if (!Number.isInteger(length) || length <= 0 || length > 255 * HASH_LEN) {
    throw new RangeError('HKDF output length out of range');
  }
  const s = subtle();
  const key = await s.importKey('raw', buf(ikm), 'HKDF', false, ['deriveBits']);
  const bits = await s.deriveBits(
    { name: 'HKDF', hash: 'SHA-256', salt: buf(params.salt), info: buf(params.info) },
    key,
    length * 8,
  );
  return new Uint8Array(bits);
}

const ZERO_BLOCK = new Uint8Array(64);

async function hmacKey(key: Uint8Array): Promise<CryptoKey> {
  // WebCrypto refuses a zero-length HMAC key; RFC 2104 pads the key with zeros to
  // the block size, so HMAC(empty key) = HMAC(64 zero bytes).
  const raw = key.length === 0 ? ZERO_BLOCK : key;
  return subtle().importKey('raw', buf(raw), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
}

/** HMAC-SHA256 (RFC 2104). */
export async function hmacSha256(key: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
  requireBytes('HMAC key', key);
  requireBytes('HMAC data', data);
  const k = await hmacKey(key);
  return new Uint8Array(await subtle().sign('HMAC', k, buf(data)));
}

const ONE = new Uint8Array([0x01]);
const TWO = new Uint8Array([0x02]);

/** Double Ratchet `KDF_CK`: `[HMAC(ck, 0x01), HMAC(ck, 0x02)]` = [message key, next chain key]. */
export async function chainKeyStep(chainKey: Uint8Array): Promise<[Uint8Array, Uint8Array]> {
  if (chainKey.length !== HASH_LEN) throw new InvalidKeyLength('chain key must be 32 bytes');
  const s = subtle();
  const k = await hmacKey(chainKey);
  const [mk, next] = await Promise.all([s.sign('HMAC', k, ONE), s.sign('HMAC', k, TWO)]);
  return [new Uint8Array(mk), new Uint8Array(next)];
}

const ZERO_SALT = new Uint8Array(HASH_LEN);

/**
 * `HKDF-SHA256(salt = 32 zero bytes, ikm = mk, info, L = 44)` -> [AES key (32), nonce (12)]:
 * the per-message keys of the Double Ratchet and of sender keys.
 */
export async function deriveMessageKeys(
  messageKey: Uint8Array,
  info: Uint8Array,
): Promise<[Uint8Array, Uint8Array]> {
  if (messageKey.length !== HASH_LEN) throw new InvalidKeyLength('message key must be 32 bytes');
  const out = await hkdfSha256(messageKey, { salt: ZERO_SALT, info, length: AES_KEY_LEN + GCM_NONCE_LEN });
  return [out.subarray(0, AES_KEY_LEN), out.subarray(AES_KEY_LEN)];
}

// --------------------------------------------------------------------------- AES-256-GCM

function checkAead(key: Uint8Array, nonce: Uint8Array): void {
  requireBytes('AES-256-GCM key', key);
  requireBytes('AES-GCM nonce', nonce);
  if (key.length !== AES_KEY_LEN) throw new InvalidKeyLength('AES-256-GCM key must be 32 bytes');
  if (nonce.length !== GCM_NONCE_LEN) throw new InvalidKeyLength('AES-GCM nonce must be 12 bytes');
}

/** AES-256-GCM; returns ciphertext ‖ 16-byte tag. */
export async function aeadEncrypt(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  associatedData: Uint8Array,
): Promise<Uint8Array> {
  checkAead(key, nonce);
  requireBytes('plaintext', plaintext);
  requireBytes('associated data', associatedData);
  const s = subtle();
  const k = await s.importKey('raw', buf(key), 'AES-GCM', false, ['encrypt']);
  return new Uint8Array(
    await s.encrypt({ name: 'AES-GCM', iv: buf(nonce), additionalData: buf(associatedData) }, k, buf(plaintext)),
  );
}

/** AES-256-GCM open; DecryptionFailed on a bad tag. */
export async function aeadDecrypt(
  key: Uint8Array,
  nonce: Uint8Array,
  ciphertext: Uint8Array,
  associatedData: Uint8Array,
): Promise<Uint8Array> {
  checkAead(key, nonce);
  requireBytes('ciphertext', ciphertext);
  requireBytes('associated data', associatedData);
  if (ciphertext.length < GCM_TAG_LEN) throw new DecryptionFailed('ciphertext shorter than the GCM tag');
  const s = subtle();
  const k = await s.importKey('raw', buf(key), 'AES-GCM', false, ['decrypt']);
  try {
    return new Uint8Array(
      await s.decrypt({ name: 'AES-GCM', iv: buf(nonce), additionalData: buf(associatedData) }, k, buf(ciphertext)),
    );
  } catch (error) {
    if (isUnsupported(error)) throw error;
    throw new DecryptionFailed('AES-GCM tag does not verify');
  }
}

// --------------------------------------------------------------------------- ML-KEM-768

/** An ML-KEM-768 decapsulation key, kept as its 64-byte seed (d ‖ z), FIPS 203 keygen. */
export class MLKEM768KeyPair {
  readonly #seed: Uint8Array;
  readonly #secretKey: Uint8Array;
  readonly public: Uint8Array;

  private constructor(seed: Uint8Array, secretKey: Uint8Array, publicKey: Uint8Array) {
    this.#seed = seed;
    this.#secretKey = secretKey;
    this.public = publicKey;
  }

  /** ML-KEM.KeyGen_internal(d, z) with `seed = d ‖ z` (deterministic). */
  static fromSeed(seed: Uint8Array): MLKEM768KeyPair {
    requireBytes('ML-KEM-768 seed', seed, MLKEM768_SEED_LEN);
    const copy = seed.slice();
    const { publicKey, secretKey } = ml_kem768.keygen(copy.slice());
    return new MLKEM768KeyPair(copy, secretKey, publicKey);
  }

  static generate(rng: RandomSource = systemRandom): MLKEM768KeyPair {
    return MLKEM768KeyPair.fromSeed(rng(MLKEM768_SEED_LEN));
  }

  seed(): Uint8Array {
    return this.#seed.slice();
  }

  /**
   * The 32-byte shared secret. ML-KEM has implicit rejection: a wrong ciphertext
   * yields a pseudo-random secret, caught later by the AEAD.
   */
  decapsulate(ciphertext: Uint8Array): Uint8Array {
    requireBytes('ML-KEM-768 ciphertext', ciphertext, MLKEM768_CT_LEN);
    return ml_kem768.decapsulate(ciphertext, this.#secretKey);
  }

  toString(): string {
    return 'MLKEM768KeyPair(...)';
  }
}

/**
 * Encapsulate to a 1184-byte key; returns `[sharedSecret, ciphertext]` (the order of
 * Python's `mlkem768_encapsulate`). `m` (32 bytes) is the FIPS 203 encapsulation
 * randomness, for known-answer tests only; by default it is fresh randomness.
 * InvalidKey if the key fails the FIPS 203 modulus check.
 */
export function mlkem768Encapsulate(
  encapsulationKey: Uint8Array,
  m?: Uint8Array,
): [Uint8Array, Uint8Array] {
  requireBytes('ML-KEM-768 encapsulation key', encapsulationKey, MLKEM768_EK_LEN);
  if (m !== undefined) requireBytes('ML-KEM-768 randomness m', m, 32);
  let result: { cipherText: Uint8Array; sharedSecret: Uint8Array };
  try {
    result = ml_kem768.encapsulate(encapsulationKey, m?.slice());
  } catch (error) {
    throw new InvalidKey(`ML-KEM-768 encapsulation key is not well formed (${String(error)})`);
  }
  return [result.sharedSecret, result.cipherText];
}
