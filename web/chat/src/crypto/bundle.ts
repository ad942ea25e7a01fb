/**
 * Public key formats: identity, prekeys and the claimed prekey bundle
 * (client/parley/crypto/bundle.py; docs/crypto.md "Public key formats").
 *
 * All binary values are base64url without padding; all signatures are Ed25519
 * by the device's identity signing key over `label ‖ fields`:
 *
 *   identity         "parley-v1/identity-dh" ‖ dh_key
 *   signed prekey    "parley-v1/signed-prekey" ‖ u32_be(id) ‖ key
 *   KEM one-time     "parley-v1/kem-prekey/one-time" ‖ u32_be(id) ‖ key
 *   KEM last resort  "parley-v1/kem-prekey/last-resort" ‖ u32_be(id) ‖ key
 *
 * `fromJson` functions verify every signature before returning, so an object
 * obtained from JSON is always verified. Unknown JSON members are ignored
 * (no signature covers them).
 *
 * Verified signatures are remembered (the last VERIFIED_CACHE_SIZE exact (key, signature,
 * signed bytes) triples), as in Python: a contact's identity and signed-prekey
 * signatures recur in every bundle, initial message and restored session.
 */

import { b64decode, b64encode, checkU32, concat, u32, utf8 } from './encoding.ts';
import { MalformedBundle } from './errors.ts';
import {
  ED25519_KEY_LEN,
  ED25519_SIG_LEN,
  MLKEM768_EK_LEN,
  X25519_KEY_LEN,
  type Ed25519KeyPair,
  ed25519Verify,
} from './primitives.ts';

export const LABEL_IDENTITY_DH = utf8('parley-v1/identity-dh');
export const LABEL_SIGNED_PREKEY = utf8('parley-v1/signed-prekey');
export const LABEL_KEM_ONE_TIME = utf8('parley-v1/kem-prekey/one-time');
export const LABEL_KEM_LAST_RESORT = utf8('parley-v1/kem-prekey/last-resort');

// As in Python (bundle.py): a room's key distribution checks each member device's bundle
// (identity, signed prekey, ML-KEM prekey) when it is claimed and again when its session
// starts, and each member's device list when it is read and again with the claim: four
// signatures a member, up to a thousand members apart (at most ~12 MB).
export const VERIFIED_CACHE_SIZE = 8192;
const verified = new Map<string, true>();

function latin1(data: Uint8Array): string {
  let out = '';
  for (let i = 0; i < data.length; i += 8192) {
    out += String.fromCharCode(...data.subarray(i, i + 8192));
  }
  return out;
}

/**
 * `ed25519Verify` with a memory of successes: a triple that verified before
 * (byte for byte) is accepted without verifying again. Sound because Ed25519
 * verification is a deterministic function of exactly these bytes and only
 * successes are stored.
 */
export async function verifyRemembered(signingKey: Uint8Array, signature: Uint8Array, message: Uint8Array): Promise<void> {
  const entry =
    signingKey instanceof Uint8Array && signature instanceof Uint8Array && message instanceof Uint8Array
      ? `${signingKey.length}.${signature.length}.${latin1(signingKey)}${latin1(signature)}${latin1(message)}`
      : null;
  if (entry !== null && verified.has(entry)) {
    verified.delete(entry); // move to the most recently used end
    verified.set(entry, true);
    return;
  }
  await ed25519Verify(signingKey, signature, message);
  if (entry !== null) {
    verified.set(entry, true);
    while (verified.size > VERIFIED_CACHE_SIZE) {
      const oldest = verified.keys().next().value as string;
      verified.delete(oldest);
    }
  }
}

/** Empty the memory of {@link verifyRemembered} (tests, benchmarks). */
export function forgetVerifiedSignatures(): void {
  verified.clear();
}

export function kemPrekeyLabel(lastResort: boolean): Uint8Array {
  return lastResort ? LABEL_KEM_LAST_RESORT : LABEL_KEM_ONE_TIME;
}

export function signIdentityDh(signing: Ed25519KeyPair, dhKey: Uint8Array): Promise<Uint8Array> {
  return signing.sign(concat(LABEL_IDENTITY_DH, dhKey));
}

export function signSignedPrekey(signing: Ed25519KeyPair, id: number, key: Uint8Array): Promise<Uint8Array> {
  return signing.sign(concat(LABEL_SIGNED_PREKEY, u32(id), key));
}

export function signKemPrekey(
  signing: Ed25519KeyPair,
  id: number,
  key: Uint8Array,
  lastResort: boolean,
): Promise<Uint8Array> {
  return signing.sign(concat(kemPrekeyLabel(lastResort), u32(id), key));
}

type JsonObject = Record<string, unknown>;

function object(value: unknown, field: string): JsonObject {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new MalformedBundle(`${field}: expected a JSON object`);
  }
  return value as JsonObject;
}

function member(obj: JsonObject, name: string, field: string): unknown {
  if (!Object.prototype.hasOwnProperty.call(obj, name)) throw new MalformedBundle(`${field}.${name}: missing`);
  return obj[name];
}

export interface IdentityJson {
  signing_key: string;
  dh_key: string;
  dh_sig: string;
}

/** A device's public identity: Ed25519 signing key + X25519 DH key signed by it. */
export class PublicIdentity {
  constructor(
    readonly signingKey: Uint8Array,
    readonly dhKey: Uint8Array,
    readonly dhSig: Uint8Array,
  ) {}

  /** InvalidSignature unless `dhSig` signs `dhKey` (lengths checked too). */
  async verify(): Promise<void> {
    if (this.dhKey.length !== X25519_KEY_LEN) throw new MalformedBundle('identity.dh_key: expected 32 bytes');
    await verifyRemembered(this.signingKey, this.dhSig, concat(LABEL_IDENTITY_DH, this.dhKey));
  }

  /** `signing_key ‖ dh_key` (64 bytes): the identity's part of the AD. */
  encode(): Uint8Array {
    return concat(this.signingKey, this.dhKey);
  }

  toJson(): IdentityJson {
    return {
      signing_key: b64encode(this.signingKey),
      dh_key: b64encode(this.dhKey),
      dh_sig: b64encode(this.dhSig),
    };
  }

  static async fromJson(value: unknown, field = 'identity'): Promise<PublicIdentity> {
    const obj = object(value, field);
    const identity = new PublicIdentity(
      b64decode(member(obj, 'signing_key', field), { field: `${field}.signing_key`, length: ED25519_KEY_LEN }),
      b64decode(member(obj, 'dh_key', field), { field: `${field}.dh_key`, length: X25519_KEY_LEN }),
      b64decode(member(obj, 'dh_sig', field), { field: `${field}.dh_sig`, length: ED25519_SIG_LEN }),
    );
    await identity.verify();
    return identity;
  }
}

export interface SignedPrekeyJson {
  id: number;
  key: string;
  sig: string;
}

export class SignedPrekey {
  constructor(
    readonly id: number,
    readonly key: Uint8Array,
    readonly sig: Uint8Array,
  ) {}

  async verify(signingKey: Uint8Array): Promise<void> {
    checkU32(this.id, 'signed_prekey.id');
    if (this.key.length !== X25519_KEY_LEN) throw new MalformedBundle('signed_prekey.key: expected 32 bytes');
    await verifyRemembered(signingKey, this.sig, concat(LABEL_SIGNED_PREKEY, u32(this.id), this.key));
  }

  toJson(): SignedPrekeyJson {
    return { id: this.id, key: b64encode(this.key), sig: b64encode(this.sig) };
  }

  static async fromJson(value: unknown, signingKey: Uint8Array, field = 'signed_prekey'): Promise<SignedPrekey> {
    const obj = object(value, field);
    const prekey = new SignedPrekey(
      checkU32(member(obj, 'id', field), `${field}.id`),
      b64decode(member(obj, 'key', field), { field: `${field}.key`, length: X25519_KEY_LEN }),
      b64decode(member(obj, 'sig', field), { field: `${field}.sig`, length: ED25519_SIG_LEN }),
    );
    await prekey.verify(signingKey);
    return prekey;
  }
}

export interface OneTimePrekeyJson {
  id: number;
  key: string;
}

/** An unsigned one-time X25519 prekey (as in Signal). */
export class OneTimePrekey {
  constructor(
    readonly id: number,
    readonly key: Uint8Array,
  ) {}

  toJson(): OneTimePrekeyJson {
    return { id: this.id, key: b64encode(this.key) };
  }

  static fromJson(value: unknown, field = 'one_time_prekey'): OneTimePrekey {
    const obj = object(value, field);
    return new OneTimePrekey(
      checkU32(member(obj, 'id', field), `${field}.id`),
      b64decode(member(obj, 'key', field), { field: `${field}.key`, length: X25519_KEY_LEN }),
    );
  }
}

export interface KemPrekeyJson {
  id: number;
  key: string;
  sig: string;
  last_resort?: boolean;
}

/** A signed ML-KEM-768 prekey; `lastResort` selects the signature label. */
export class KemPrekey {
  constructor(
    readonly id: number,
    readonly key: Uint8Array,
    readonly sig: Uint8Array,
    readonly lastResort: boolean,
  ) {}

  async verify(signingKey: Uint8Array): Promise<void> {
    checkU32(this.id, 'kem_prekey.id');
    if (this.key.length !== MLKEM768_EK_LEN) throw new MalformedBundle('kem_prekey.key: expected 1184 bytes');
    const message = concat(kemPrekeyLabel(this.lastResort), u32(this.id), this.key);
    // A one-time prekey's signature recurs once: checked when it is claimed and again when
    // its session starts.
    await verifyRemembered(signingKey, this.sig, message);
  }

  /** Upload form (`withFlag = false`) or claimed-bundle form (with `last_resort`). */
  toJson(withFlag = true): KemPrekeyJson {
    const out: KemPrekeyJson = { id: this.id, key: b64encode(this.key), sig: b64encode(this.sig) };
    if (withFlag) out.last_resort = this.lastResort;
    return out;
  }

  /** Parse and verify; `lastResort` comes from the JSON unless given. */
  static async fromJson(
    value: unknown,
    signingKey: Uint8Array,
    options: { lastResort?: boolean; field?: string } = {},
  ): Promise<KemPrekey> {
    const field = options.field ?? 'kem_prekey';
    const obj = object(value, field);
    let lastResort = options.lastResort;
    if (lastResort === undefined) {
      const flag = member(obj, 'last_resort', field);
      if (typeof flag !== 'boolean') throw new MalformedBundle(`${field}.last_resort: expected true or false`);
      lastResort = flag;
    }
    const prekey = new KemPrekey(
      checkU32(member(obj, 'id', field), `${field}.id`),
      b64decode(member(obj, 'key', field), { field: `${field}.key`, length: MLKEM768_EK_LEN }),
      b64decode(member(obj, 'sig', field), { field: `${field}.sig`, length: ED25519_SIG_LEN }),
      lastResort,
    );
    await prekey.verify(signingKey);
    return prekey;
  }
}

export interface PrekeyBundleJson {
  user_id: string;
  device_id: number;
  identity: IdentityJson;
  signed_prekey: SignedPrekeyJson;
  one_time_prekey: OneTimePrekeyJson | null;
  kem_prekey: KemPrekeyJson;
}

/** What the key directory hands an initiator for one device of a contact. */
export class PrekeyBundle {
  constructor(
    readonly userId: string,
    readonly deviceId: number,
    readonly identity: PublicIdentity,
    readonly signedPrekey: SignedPrekey,
    readonly oneTimePrekey: OneTimePrekey | null,
    readonly kemPrekey: KemPrekey,
  ) {}

  /** Verify every signature (identity, signed prekey, KEM prekey). */
  async verify(): Promise<void> {
    if (typeof this.userId !== 'string' || this.userId === '') {
      throw new MalformedBundle('user_id: expected a non-empty string');
    }
    checkU32(this.deviceId, 'device_id');
    await this.identity.verify();
    await this.signedPrekey.verify(this.identity.signingKey);
    await this.kemPrekey.verify(this.identity.signingKey);
    if (this.oneTimePrekey !== null) {
      checkU32(this.oneTimePrekey.id, 'one_time_prekey.id');
      if (this.oneTimePrekey.key.length !== X25519_KEY_LEN) {
        throw new MalformedBundle('one_time_prekey.key: expected 32 bytes');
      }
    }
  }

  toJson(): PrekeyBundleJson {
    return {
      user_id: this.userId,
      device_id: this.deviceId,
      identity: this.identity.toJson(),
      signed_prekey: this.signedPrekey.toJson(),
      one_time_prekey: this.oneTimePrekey === null ? null : this.oneTimePrekey.toJson(),
      kem_prekey: this.kemPrekey.toJson(true),
    };
  }

  /**
   * Parse a claimed bundle and verify all its signatures: MalformedBundle for
   * shape/encoding errors, InvalidSignature for any bad signature; nothing from
   * the bundle is used before then.
   */
  static async fromJson(value: unknown): Promise<PrekeyBundle> {
    const obj = object(value, 'bundle');
    const userId = member(obj, 'user_id', 'bundle');
    if (typeof userId !== 'string' || userId === '') throw new MalformedBundle('user_id: expected a non-empty string');
    const deviceId = checkU32(member(obj, 'device_id', 'bundle'), 'device_id');
    const identity = await PublicIdentity.fromJson(member(obj, 'identity', 'bundle'));
    const signed = await SignedPrekey.fromJson(member(obj, 'signed_prekey', 'bundle'), identity.signingKey);
    const otpJson = obj['one_time_prekey'];
    const oneTime = otpJson === undefined || otpJson === null ? null : OneTimePrekey.fromJson(otpJson);
    const kem = await KemPrekey.fromJson(member(obj, 'kem_prekey', 'bundle'), identity.signingKey);
    return new PrekeyBundle(userId, deviceId, identity, signed, oneTime, kem);
  }
}
