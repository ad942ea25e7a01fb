import { hkdf } from '@noble/hashes/hkdf.js';
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { describe, expect, it } from 'vitest';

import { DecryptionFailed, InvalidKey, InvalidKeyLength, InvalidSignature } from '../src/crypto/errors.ts';
import { PublicIdentity } from '../src/crypto/bundle.ts';
import { b64encode, concat, fromHex, utf8 } from '../src/crypto/encoding.ts';
import {
  Ed25519KeyPair,
  MLKEM768KeyPair,
  X25519KeyPair,
  aeadDecrypt,
  aeadEncrypt,
  chainKeyStep,
  deriveMessageKeys,
  ed25519Verify,
  hkdfSha256,
  hmacSha256,
  mlkem768Encapsulate,
  requireBytes,
} from '../src/crypto/primitives.ts';

const random = (n: number): Uint8Array => crypto.getRandomValues(new Uint8Array(n));

describe('HMAC and HKDF over WebCrypto equal an independent implementation (@noble/hashes)', () => {
  it('HMAC-SHA256 for keys of 0..130 bytes (the empty key included)', async () => {
    for (const n of [0, 1, 31, 32, 33, 64, 65, 130]) {
      const key = random(n);
      const data = random(n * 3);
      expect(await hmacSha256(key, data)).toEqual(hmac(sha256, key, data));
    }
  });

  it('KDF_CK and the message keys', async () => {
    for (let i = 0; i < 5; i++) {
      const ck = random(32);
      const [mk, next] = await chainKeyStep(ck);
      expect(mk).toEqual(hmac(sha256, ck, new Uint8Array([1])));
      expect(next).toEqual(hmac(sha256, ck, new Uint8Array([2])));
      const info = random(20);
      const [key, nonce] = await deriveMessageKeys(mk, info);
      const okm = hkdf(sha256, mk, new Uint8Array(32), info, 44);
      expect(key).toEqual(okm.subarray(0, 32));
      expect(nonce).toEqual(okm.subarray(32));
    }
  });

  it('HKDF lengths 1..8160 only', async () => {
    const ikm = random(32);
    expect((await hkdfSha256(ikm, { salt: new Uint8Array(0), info: new Uint8Array(0), length: 8160 })).length).toBe(8160);
    await expect(hkdfSha256(ikm, { salt: new Uint8Array(0), info: new Uint8Array(0), length: 0 })).rejects.toThrow(RangeError);
    await expect(hkdfSha256(ikm, { salt: new Uint8Array(0), info: new Uint8Array(0), length: 8161 })).rejects.toThrow(RangeError);
  });
});

describe('AES-256-GCM', () => {
  it('refuses any changed byte of ciphertext, tag, nonce or associated data', async () => {
    const key = random(32);
    const nonce = random(12);
    const ad = random(40);
    const sealed = await aeadEncrypt(key, nonce, random(50), ad);
    for (const at of [0, 25, 49, 50, 65]) {
      const changed = sealed.slice();
      changed[at] = (changed[at] as number) ^ 0x80;
      await expect(aeadDecrypt(key, nonce, changed, ad)).rejects.toThrow(DecryptionFailed);
    }
    const otherAd = ad.slice();
    otherAd[0] = (otherAd[0] as number) ^ 1;
    await expect(aeadDecrypt(key, nonce, sealed, otherAd)).rejects.toThrow(DecryptionFailed);
    await expect(aeadDecrypt(key, random(12), sealed, ad)).rejects.toThrow(DecryptionFailed);
    await expect(aeadDecrypt(key, nonce, sealed.subarray(0, 15), ad)).rejects.toThrow(DecryptionFailed);
  });

  it('checks key and nonce lengths', async () => {
    await expect(aeadEncrypt(random(16), random(12), random(1), random(1))).rejects.toThrow(InvalidKeyLength);
    await expect(aeadEncrypt(random(32), random(16), random(1), random(1))).rejects.toThrow(InvalidKeyLength);
  });
});

describe('X25519', () => {
  // The small-order points of Curve25519 (and their non-canonical encodings), as listed by libsodium.
  const lowOrder = [
    '0000000000000000000000000000000000000000000000000000000000000000',
    '0100000000000000000000000000000000000000000000000000000000000000',
    'e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800',
    '5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157',
    'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  ];
  it.each(lowOrder)('a low-order peer key %s is InvalidKey', async (point) => {
    const pair = await X25519KeyPair.generate();
    await expect(pair.dh(fromHex(point))).rejects.toThrow(InvalidKey);
  });

  it('checks lengths and types', async () => {
    await expect(X25519KeyPair.fromPrivateBytes(random(31))).rejects.toThrow(InvalidKeyLength);
    const pair = await X25519KeyPair.generate();
    await expect(pair.dh(random(33))).rejects.toThrow(InvalidKeyLength);
    expect(() => requireBytes('x', 'not bytes')).toThrow(TypeError);
    expect(String(pair)).not.toContain(Buffer.from(pair.privateBytes()).toString('hex'));
  });
});

describe('Ed25519', () => {
  it('a public key that is not a point, or a wrong length, fails as the Python side does', async () => {
    const pair = await Ed25519KeyPair.generate();
    const signature = await pair.sign(new Uint8Array([1, 2, 3]));
    await ed25519Verify(pair.public, signature, new Uint8Array([1, 2, 3]));
    await expect(ed25519Verify(new Uint8Array(32).fill(0xff), signature, new Uint8Array([1, 2, 3]))).rejects.toThrow(
      InvalidSignature,
    );
    await expect(ed25519Verify(pair.public, signature.subarray(0, 63), new Uint8Array(3))).rejects.toThrow(InvalidKeyLength);
  });
});

describe('Ed25519 public keys of small order (as tests/crypto/test_crypto_primitives.py)', () => {
  // y = 0, 1, p - 1, the two order-8 y, and the non-canonical p and p + 1; sign bit clear and set.
  const P = 2n ** 255n - 19n;
  const ys = [
    0n,
    1n,
    P - 1n,
    0x05fc536d880238b13933c6d305acdfd5f098eff289f4c345b027b2c28f95e826n,
    0x7a03ac9277fdc74ec6cc392cfa53202a0f67100d760b3cba4fd84d3d706a17c7n,
    P,
    P + 1n,
  ];
  const le = (n: bigint): Uint8Array => Uint8Array.from({ length: 32 }, (_, i) => Number((n >> BigInt(8 * i)) & 0xffn));
  const keys = ys.flatMap((y) => [le(y), le(y | (1n << 255n))]);
  // R = the identity point, S = 0: WebCrypto accepts it for every message under the identity point.
  const identitySignature = concat(le(1n), new Uint8Array(32));

  it('are refused whatever the message, and ordinary keys are not', async () => {
    expect(new Set(keys.map((k) => Buffer.from(k).toString('hex'))).size).toBe(14);
    for (const key of keys) {
      for (const message of [new Uint8Array(0), utf8('any message'), concat(utf8('parley-v1/identity-dh'), new Uint8Array(32))]) {
        await expect(ed25519Verify(key, identitySignature, message)).rejects.toThrow(InvalidSignature);
      }
    }
    for (const dhKey of [Uint8Array.from({ length: 32 }, (_, i) => i), (await X25519KeyPair.generate()).public]) {
      await expect(
        PublicIdentity.fromJson({ signing_key: b64encode(keys[2] as Uint8Array), dh_key: b64encode(dhKey), dh_sig: b64encode(identitySignature) }),
      ).rejects.toThrow(InvalidSignature);
    }
    const pair = await Ed25519KeyPair.generate();
    await ed25519Verify(pair.public, await pair.sign(utf8('m')), utf8('m'));
  });
});

describe('ML-KEM-768', () => {
  it('round trip, implicit rejection, lengths and the FIPS 203 modulus check', () => {
    const pair = MLKEM768KeyPair.generate();
    expect(pair.seed().length).toBe(64);
    expect(MLKEM768KeyPair.fromSeed(pair.seed()).public).toEqual(pair.public);
    const [shared, ct] = mlkem768Encapsulate(pair.public);
    expect(pair.decapsulate(ct)).toEqual(shared);
    expect(() => pair.decapsulate(ct.subarray(1))).toThrow(InvalidKeyLength);
    expect(() => mlkem768Encapsulate(pair.public.subarray(1))).toThrow(InvalidKeyLength);
    expect(() => mlkem768Encapsulate(new Uint8Array(1184).fill(0xff))).toThrow(InvalidKey);
    expect(() => MLKEM768KeyPair.fromSeed(random(32))).toThrow(InvalidKeyLength);
  });
});
