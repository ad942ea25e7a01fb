/**
 * PQXDH key agreement (Signal's PQXDH, X25519 + ML-KEM-768) with Olm-style
 * identities (client/parley/crypto/pqxdh.py; docs/crypto.md "PQXDH"):
 *
 *   DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)
 *   DH4 = DH(EK_A, OPK_B)   (only with a one-time prekey)
 *   (SS, CT) = ML-KEM-768.Encaps(PQPK_B)
 *   SK = HKDF-SHA256(salt = 32 zero bytes,
 *                    ikm  = 32 × 0xFF ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4] ‖ SS,
 *                    info = "Parley_PQXDH_CURVE25519_SHA-256_ML-KEM-768", L = 32)
 *   AD = signing_key_A ‖ dh_key_A ‖ signing_key_B ‖ dh_key_B
 *        ‖ ids(user_A, device_A) ‖ ids(user_B, device_B)
 *   ids(user, device) = u16be(len(utf8(user))) ‖ utf8(user) ‖ u32be(device)
 *
 * The ids bind each device to the account it speaks for ({@link Binding}): without
 * them an account could list another user's device keys (public, self-signed) as a
 * device of its own, and a server lying about device lists could relabel what one
 * user sends as another's (unknown key-share; docs/crypto.md). Sessions begun before
 * the ids were bound keep the 128-byte AD they were made with (it is stored with them).
 *
 * The caller verifies the bundle's signatures first (`PrekeyBundle.fromJson`
 * does); the responder verifies the initiator's `dh_sig` before `respond`.
 */

import type { PrekeyBundle, PublicIdentity } from './bundle.ts';
import { checkU32, concat, hasLoneSurrogate, u16, u32, utf8 } from './encoding.ts';
import { InvalidKeyLength, MalformedBundle } from './errors.ts';
import {
  MLKEM768_CT_LEN,
  MLKEM768_SS_LEN,
  type MLKEM768KeyPair,
  type RandomSource,
  X25519KeyPair,
  hkdfSha256,
} from './primitives.ts';
import { PrekeySection } from './wire.ts';

export const INFO = utf8('Parley_PQXDH_CURVE25519_SHA-256_ML-KEM-768');
const F = new Uint8Array(32).fill(0xff);
const SALT = new Uint8Array(32);

/** `encapsulate(encapsulationKey) -> [sharedSecret, ciphertext]`. */
export type Encapsulate = (encapsulationKey: Uint8Array) => [Uint8Array, Uint8Array];

/**
 * Who a handshake is between: the account (user) and device ids of both sides. The
 * initiator gives its own ids and the ones it asked the key directory for; the
 * responder, the sender ids on the envelope (stamped by the server) and its own. When
 * the two do not agree, the first message does not decrypt.
 */
export interface Binding {
  initiatorUser: string;
  initiatorDevice: number;
  responderUser: string;
  responderDevice: number;
}

const MAX_USER = 0xffff;

function ids(user: unknown, device: unknown, side: string): Uint8Array {
  if (typeof user !== 'string' || user === '') throw new MalformedBundle(`${side}User: expected a non-empty string`);
  // TextEncoder would write U+FFFD for a lone surrogate where Python refuses to encode.
  if (hasLoneSurrogate(user)) throw new MalformedBundle(`${side}User: not encodable as UTF-8`);
  const raw = utf8(user);
  if (raw.length > MAX_USER) throw new MalformedBundle(`${side}User: longer than ${MAX_USER} bytes`);
  return concat(u16(raw.length), raw, u32(checkU32(device, `${side}Device`)));
}

/** `ids(initiator) ‖ ids(responder)`; MalformedBundle for an empty user, one over
 * 65,535 UTF-8 bytes, or a device id that is not a u32. */
export function encodeBinding(b: Binding): Uint8Array {
  if (typeof b !== 'object' || b === null) throw new TypeError('binding must be an object');
  return concat(ids(b.initiatorUser, b.initiatorDevice, 'initiator'), ids(b.responderUser, b.responderDevice, 'responder'));
}

export function associatedData(initiator: PublicIdentity, responder: PublicIdentity, binding: Binding): Uint8Array {
  return concat(initiator.encode(), responder.encode(), encodeBinding(binding));
}

export function deriveSecret(
  dh1: Uint8Array,
  dh2: Uint8Array,
  dh3: Uint8Array,
  dh4: Uint8Array | null,
  kemSecret: Uint8Array,
): Promise<Uint8Array> {
  const ikm = concat(F, dh1, dh2, dh3, dh4 ?? new Uint8Array(0), kemSecret);
  return hkdfSha256(ikm, { salt: SALT, info: INFO, length: 32 });
}

export interface InitiatorHandshake {
  secret: Uint8Array;
  associatedData: Uint8Array;
  section: PrekeySection;
}

/**
 * The initiator side on an already verified bundle (`binding`: see {@link Binding};
 * checked before any key is used or randomness drawn). The ephemeral private key
 * exists only inside this function: only its public half leaves (in the section).
 */
export async function initiate(
  identityDh: X25519KeyPair,
  localIdentity: PublicIdentity,
  bundle: PrekeyBundle,
  rng: RandomSource,
  encapsulate: Encapsulate,
  binding: Binding,
): Promise<InitiatorHandshake> {
  const ad = associatedData(localIdentity, bundle.identity, binding);
  const ephemeral = await X25519KeyPair.generate(rng);
  const spk = bundle.signedPrekey;
  const otp = bundle.oneTimePrekey;
  const [dh1, dh2, dh3, dh4] = await Promise.all([
    identityDh.dh(spk.key),
    ephemeral.dh(bundle.identity.dhKey),
    ephemeral.dh(spk.key),
    otp === null ? Promise.resolve(null) : ephemeral.dh(otp.key),
  ]);
  const ephemeralPublic = ephemeral.public;
  const [kemSecret, kemCiphertext] = encapsulate(bundle.kemPrekey.key);
  if (kemSecret.length !== MLKEM768_SS_LEN || kemCiphertext.length !== MLKEM768_CT_LEN) {
    throw new InvalidKeyLength('ML-KEM-768 encapsulation returned wrong lengths');
  }
  const secret = await deriveSecret(dh1, dh2, dh3, dh4, kemSecret);
  const section = new PrekeySection(
    localIdentity,
    ephemeralPublic,
    spk.id,
    otp === null ? null : otp.id,
    bundle.kemPrekey.id,
    kemCiphertext,
  );
  return { secret, associatedData: ad, section };
}

/** The responder side; returns `[SK, AD]`. The caller has verified `section.identity`. */
export async function respond(
  identityDh: X25519KeyPair,
  localIdentity: PublicIdentity,
  section: PrekeySection,
  signedPrekey: X25519KeyPair,
  oneTimePrekey: X25519KeyPair | null,
  kemPrekey: MLKEM768KeyPair,
  binding: Binding,
): Promise<[Uint8Array, Uint8Array]> {
  const ad = associatedData(section.identity, localIdentity, binding);
  const ek = section.ephemeralKey;
  const [dh1, dh2, dh3, dh4] = await Promise.all([
    signedPrekey.dh(section.identity.dhKey),
    identityDh.dh(ek),
    signedPrekey.dh(ek),
    oneTimePrekey === null ? Promise.resolve(null) : oneTimePrekey.dh(ek),
  ]);
  const kemSecret = kemPrekey.decapsulate(section.kemCiphertext);
  const secret = await deriveSecret(dh1, dh2, dh3, dh4, kemSecret);
  return [secret, ad];
}
