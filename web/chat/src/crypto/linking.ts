/**
 * Linking a new device: the link code and the sealed provisioning blob
 * (docs/devices.md "Linking a new device"; Python: client/parley/crypto/linking.py,
 * being written alongside).
 *
 *   link code = base64url(link_id (8) ‖ E_pub (32))                   54 characters
 *   K         = HKDF-SHA256(ikm = X25519(F, E_pub), salt = link_id, info = "parley-v1/link", L = 32)
 *   AD        = link_id ‖ E_pub ‖ F_pub ‖ the new device's identity signing key   (104 bytes)
 *   sealed    = F_pub (32) ‖ nonce (12) ‖ AES-256-GCM(K, nonce, payload, AD)     (≥ 60 bytes)
 *
 * `E` is the new device's ephemeral X25519 key pair ({@link LinkRequest}), `F`
 * a fresh one per seal. The payload is opaque here (the app puts the account
 * key's seed in it).
 */

import { b64decode, b64encode, concat, utf8 } from './encoding.ts';
import { InvalidKey, MalformedBundle, MalformedLinkCode, MalformedMessage } from './errors.ts';
import {
  AES_KEY_LEN,
  ED25519_KEY_LEN,
  GCM_NONCE_LEN,
  GCM_TAG_LEN,
  type RandomSource,
  X25519KeyPair,
  X25519_KEY_LEN,
  aeadDecrypt,
  aeadEncrypt,
  hkdfSha256,
  requireBytes,
  systemRandom,
} from './primitives.ts';

export const LINK_ID_LEN = 8;
/** Characters of a link code: 40 bytes in unpadded base64url. */
export const LINK_CODE_LEN = 54;
export const LINK_INFO = utf8('parley-v1/link');
/** The shortest sealed blob (an empty payload): 60 bytes. */
export const SEALED_MIN_LEN = X25519_KEY_LEN + GCM_NONCE_LEN + GCM_TAG_LEN;

/** `base64url(link_id ‖ E_pub)` without padding: 54 characters. */
export function linkCode(linkId: Uint8Array, ePub: Uint8Array): string {
  requireBytes('link_id', linkId, LINK_ID_LEN);
  requireBytes('E_pub', ePub, X25519_KEY_LEN);
  return b64encode(concat(linkId, ePub));
}

/** `[linkId, ePub]` of a link code; MalformedLinkCode unless exactly 54 characters of canonical base64url. */
export function parseLinkCode(code: string): [Uint8Array, Uint8Array] {
  if (typeof code !== 'string') throw new TypeError('a link code is a string');
  if (code.length !== LINK_CODE_LEN) {
    throw new MalformedLinkCode(`a link code has ${LINK_CODE_LEN} characters, not ${code.length}`);
  }
  let raw: Uint8Array;
  try {
    raw = b64decode(code, { field: 'link code', length: LINK_ID_LEN + X25519_KEY_LEN });
  } catch (error) {
    if (error instanceof MalformedBundle) throw new MalformedLinkCode(error.message);
    throw error;
  }
  return [raw.slice(0, LINK_ID_LEN), raw.slice(LINK_ID_LEN)];
}

/** `K = HKDF-SHA256(ikm = shared secret, salt = link_id, info = "parley-v1/link", L = 32)`. */
export function linkKey(sharedSecret: Uint8Array, linkId: Uint8Array): Promise<Uint8Array> {
  return hkdfSha256(sharedSecret, { salt: linkId, info: LINK_INFO, length: AES_KEY_LEN });
}

/** `link_id ‖ E_pub ‖ F_pub ‖ signing key`: 104 bytes. */
export function linkAssociatedData(
  linkId: Uint8Array,
  ePub: Uint8Array,
  fPub: Uint8Array,
  newDeviceSigningKey: Uint8Array,
): Uint8Array {
  return concat(
    requireBytes('link_id', linkId, LINK_ID_LEN),
    requireBytes('E_pub', ePub, X25519_KEY_LEN),
    requireBytes('F_pub', fPub, X25519_KEY_LEN),
    requireBytes('new device signing key', newDeviceSigningKey, ED25519_KEY_LEN),
  );
}

/**
 * `F_pub ‖ nonce ‖ ciphertext` of `payload` for the holder of `E` (the approver's
 * side). Draws F's private key (32), then the nonce (12). A low-order `ePub` is InvalidKey.
 */
export async function sealForNewDevice(
  ePub: Uint8Array,
  linkId: Uint8Array,
  newDeviceSigningKey: Uint8Array,
  payload: Uint8Array,
  rng: RandomSource = systemRandom,
): Promise<Uint8Array> {
  // Every input checked before anything is drawn.
  requireBytes('link_id', linkId, LINK_ID_LEN);
  requireBytes('E_pub', ePub, X25519_KEY_LEN);
  requireBytes('new device signing key', newDeviceSigningKey, ED25519_KEY_LEN);
  requireBytes('payload', payload);
  const f = await X25519KeyPair.generate(rng);
  const key = await linkKey(await f.dh(ePub), linkId);
  const nonce = rng(GCM_NONCE_LEN);
  const ad = linkAssociatedData(linkId, ePub, f.public, newDeviceSigningKey);
  return concat(f.public, nonce, await aeadEncrypt(key, nonce, payload, ad));
}

/**
 * The payload sealed by {@link sealForNewDevice} (the new device's side).
 * MalformedMessage for a blob shorter than 60 bytes or with a low-order F_pub;
 * DecryptionFailed if not sealed to this E, link id and signing key, or changed.
 */
export async function openOnNewDevice(
  ePriv: Uint8Array,
  linkId: Uint8Array,
  ownSigningKey: Uint8Array,
  sealed: Uint8Array,
): Promise<Uint8Array> {
  const e = await X25519KeyPair.fromPrivateBytes(requireBytes('E private key', ePriv, X25519_KEY_LEN));
  requireBytes('sealed', sealed);
  if (sealed.length < SEALED_MIN_LEN) throw new MalformedMessage(`a sealed link blob has at least ${SEALED_MIN_LEN} bytes`);
  const fPub = sealed.subarray(0, X25519_KEY_LEN);
  const nonce = sealed.subarray(X25519_KEY_LEN, X25519_KEY_LEN + GCM_NONCE_LEN);
  const ad = linkAssociatedData(linkId, e.public, fPub, ownSigningKey);
  let shared: Uint8Array;
  try {
    shared = await e.dh(fPub);
  } catch (error) {
    if (error instanceof InvalidKey) throw new MalformedMessage("the sealed blob's F_pub is a low-order point");
    throw error;
  }
  const key = await linkKey(shared, linkId);
  return aeadDecrypt(key, nonce, sealed.subarray(X25519_KEY_LEN + GCM_NONCE_LEN), ad);
}

/**
 * The new device's side of a link: `linkId` and the ephemeral key pair `E`.
 * Show {@link code}, post {@link linkId} to the directory, then {@link open} the
 * approval; forget the object afterwards (`E` must not outlive the link).
 */
export class LinkRequest {
  readonly linkId: Uint8Array;
  readonly #e: X25519KeyPair;

  private constructor(linkId: Uint8Array, e: X25519KeyPair) {
    this.linkId = requireBytes('link_id', linkId, LINK_ID_LEN).slice();
    this.#e = e;
  }

  /** Draws the link id (8) then E's private key (32). */
  static async generate(rng: RandomSource = systemRandom): Promise<LinkRequest> {
    const linkId = rng(LINK_ID_LEN);
    return new LinkRequest(linkId, await X25519KeyPair.generate(rng));
  }

  static async fromPrivate(linkId: Uint8Array, ePriv: Uint8Array): Promise<LinkRequest> {
    return new LinkRequest(linkId, await X25519KeyPair.fromPrivateBytes(ePriv));
  }

  /** E's private key (secret; only to keep a pending link across restarts). */
  privateBytes(): Uint8Array {
    return this.#e.privateBytes();
  }

  get ePublic(): Uint8Array {
    return this.#e.public;
  }

  get code(): string {
    return linkCode(this.linkId, this.#e.public);
  }

  /** {@link openOnNewDevice} with this request's E and link id. */
  open(ownSigningKey: Uint8Array, sealed: Uint8Array): Promise<Uint8Array> {
    return openOnNewDevice(this.#e.privateBytes(), this.linkId, ownSigningKey, sealed);
  }

  toString(): string {
    return `LinkRequest(link_id=${b64encode(this.linkId)})`;
  }
}
