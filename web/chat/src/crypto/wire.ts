/**
 * Binary wire encoding of Parley ciphertexts, version 1 (client/parley/crypto/wire.py).
 *
 * Every message starts with `version (1) | type (1) | commitment (32)`, so the
 * franking commitment is always bytes [2:34]. Integers are unsigned big-endian.
 *
 *   type 0x01 message:  [34] ratchet key (32) | PN u32 | N u32 | [74] AES-GCM ct ‖ tag
 *   type 0x02 initial:  [34] signing key (32) | DH key (32) | dh_sig (64) | EK_A (32) |
 *                       SPK id u32 | one-time flag u8 | one-time id u32 | KEM id u32 |
 *                       KEM ciphertext (1088) | [1295] header (40) | [1335] ct ‖ tag
 *   type 0x03 group:    [34] chain id u32 | iteration u32 | [42] ct ‖ tag | Ed25519 sig (64)
 *   type 0x04 sender key distribution (inside a pairwise payload, no commitment):
 *                       [2] chain id u32 | iteration u32 | chain key (32) | signing key (32) |
 *                       group id length u16 | group id (UTF-8)
 *
 * AEAD associated data: types 1 and 2 `session AD ‖ every byte before the
 * ciphertext`; type 3 `group AD ‖ bytes[0:42]`.
 */

import { PublicIdentity } from './bundle.ts';
import { concat, fromUtf8, readU16, readU32, u16, u32, utf8 } from './encoding.ts';
import { MalformedMessage, UnsupportedVersion } from './errors.ts';
import { COMMITMENT_LEN } from './franking.ts';
import { GCM_TAG_LEN, MLKEM768_CT_LEN, requireBytes } from './primitives.ts';

export const VERSION = 1;
export const TYPE_MESSAGE = 0x01;
export const TYPE_INITIAL = 0x02;
export const TYPE_GROUP = 0x03;
export const TYPE_SENDER_KEY_DISTRIBUTION = 0x04;

const START = 2 + COMMITMENT_LEN; // 34
export const HEADER_LEN = 40;
export const PREKEY_SECTION_LEN = 32 + 32 + 64 + 32 + 4 + 1 + 4 + 4 + MLKEM768_CT_LEN; // 1261
export const MESSAGE_PREFIX_LEN = START + HEADER_LEN; // 74
export const INITIAL_PREFIX_LEN = START + PREKEY_SECTION_LEN + HEADER_LEN; // 1335
export const GROUP_PREFIX_LEN = START + 8; // 42
export const SIGNATURE_LEN = 64;
export const SKDM_FIXED_LEN = 76;

/** Check version (and type, if given); return the type byte. */
export function checkPrefix(data: Uint8Array, expectedType?: number): number {
  requireBytes('message', data);
  if (data.length < 2) throw new MalformedMessage('message too short');
  if (data[0] !== VERSION) throw new UnsupportedVersion(`unsupported message version ${data[0]}`);
  if (expectedType !== undefined && data[1] !== expectedType) {
    throw new MalformedMessage(`expected message type ${expectedType}, got ${data[1]}`);
  }
  return data[1] as number;
}

/** The PQXDH fields of an initial message. */
export class PrekeySection {
  constructor(
    readonly identity: PublicIdentity,
    readonly ephemeralKey: Uint8Array,
    readonly signedPrekeyId: number,
    readonly oneTimePrekeyId: number | null,
    readonly kemPrekeyId: number,
    readonly kemCiphertext: Uint8Array,
  ) {}

  encode(): Uint8Array {
    const ids = new Uint8Array(13);
    const view = new DataView(ids.buffer);
    view.setUint32(0, this.signedPrekeyId, false);
    ids[4] = this.oneTimePrekeyId === null ? 0 : 1;
    view.setUint32(5, this.oneTimePrekeyId ?? 0, false);
    view.setUint32(9, this.kemPrekeyId, false);
    const out = concat(
      this.identity.signingKey,
      this.identity.dhKey,
      this.identity.dhSig,
      this.ephemeralKey,
      ids,
      this.kemCiphertext,
    );
    if (out.length !== PREKEY_SECTION_LEN) throw new MalformedMessage('prekey section has wrong field lengths');
    return out;
  }

  static decode(raw: Uint8Array): PrekeySection {
    if (raw.length !== PREKEY_SECTION_LEN) throw new MalformedMessage('prekey section has the wrong length');
    const spkId = readU32(raw, 160);
    const flag = raw[164] as number;
    const otpId = readU32(raw, 165);
    const kemId = readU32(raw, 169);
    if ((flag !== 0 && flag !== 1) || (flag === 0 && otpId !== 0)) {
      throw new MalformedMessage('bad one-time prekey flag');
    }
    return new PrekeySection(
      new PublicIdentity(raw.slice(0, 32), raw.slice(32, 64), raw.slice(64, 128)),
      raw.slice(128, 160),
      spkId,
      flag === 1 ? otpId : null,
      kemId,
      raw.slice(173),
    );
  }
}

/** A parsed type 0x01 or 0x02 message (views of the original bytes). */
export interface PairwiseMessage {
  type: number;
  commitment: Uint8Array;
  prekeyRaw: Uint8Array | null;
  ratchetKey: Uint8Array;
  previousChainLength: number;
  messageNumber: number;
  /** Every byte before the ciphertext (goes into the AEAD AD). */
  associated: Uint8Array;
  ciphertext: Uint8Array;
}

export function parsePairwise(data: Uint8Array): PairwiseMessage {
  const kind = checkPrefix(data);
  let headerAt: number;
  let prekeyRaw: Uint8Array | null;
  if (kind === TYPE_MESSAGE) {
    headerAt = START;
    prekeyRaw = null;
  } else if (kind === TYPE_INITIAL) {
    headerAt = START + PREKEY_SECTION_LEN;
    if (data.length < headerAt) throw new MalformedMessage('message too short');
    prekeyRaw = data.subarray(START, headerAt);
  } else {
    throw new MalformedMessage(`not a pairwise message (type ${kind})`);
  }
  const bodyAt = headerAt + HEADER_LEN;
  if (data.length < bodyAt + GCM_TAG_LEN) throw new MalformedMessage('message too short');
  return {
    type: kind,
    commitment: data.subarray(2, START),
    prekeyRaw,
    ratchetKey: data.subarray(headerAt, headerAt + 32),
    previousChainLength: readU32(data, headerAt + 32),
    messageNumber: readU32(data, headerAt + 36),
    associated: data.subarray(0, bodyAt),
    ciphertext: data.subarray(bodyAt),
  };
}

export function encodeHeader(ratchetKey: Uint8Array, pn: number, n: number): Uint8Array {
  return concat(ratchetKey, u32(pn), u32(n));
}

export interface GroupMessage {
  commitment: Uint8Array;
  chainId: number;
  iteration: number;
  /** Bytes [0:42], authenticated by the AEAD. */
  associated: Uint8Array;
  ciphertext: Uint8Array;
  /** Every byte the signature covers. */
  signed: Uint8Array;
  signature: Uint8Array;
}

export function parseGroup(data: Uint8Array): GroupMessage {
  checkPrefix(data, TYPE_GROUP);
  if (data.length < GROUP_PREFIX_LEN + GCM_TAG_LEN + SIGNATURE_LEN) {
    throw new MalformedMessage('group message too short');
  }
  const end = data.length - SIGNATURE_LEN;
  return {
    commitment: data.subarray(2, START),
    chainId: readU32(data, START),
    iteration: readU32(data, START + 4),
    associated: data.subarray(0, GROUP_PREFIX_LEN),
    ciphertext: data.subarray(GROUP_PREFIX_LEN, end),
    signed: data.subarray(0, end),
    signature: data.subarray(end),
  };
}

export function groupPrefix(commitment: Uint8Array, chainId: number, iteration: number): Uint8Array {
  return concat(new Uint8Array([VERSION, TYPE_GROUP]), commitment, u32(chainId), u32(iteration));
}

export class SenderKeyDistribution {
  constructor(
    readonly groupId: string,
    readonly chainId: number,
    readonly iteration: number,
    readonly chainKey: Uint8Array,
    readonly signingKey: Uint8Array,
  ) {}

  encode(): Uint8Array {
    const gid = utf8(this.groupId);
    if (gid.length > 0xffff) throw new MalformedMessage('group id too long');
    return concat(
      new Uint8Array([VERSION, TYPE_SENDER_KEY_DISTRIBUTION]),
      u32(this.chainId),
      u32(this.iteration),
      this.chainKey,
      this.signingKey,
      u16(gid.length),
      gid,
    );
  }

  static decode(data: Uint8Array): SenderKeyDistribution {
    checkPrefix(data, TYPE_SENDER_KEY_DISTRIBUTION);
    if (data.length < SKDM_FIXED_LEN) throw new MalformedMessage('sender key distribution message too short');
    const gidLen = readU16(data, 74);
    if (data.length !== SKDM_FIXED_LEN + gidLen) {
      throw new MalformedMessage('sender key distribution message has the wrong length');
    }
    let groupId: string;
    try {
      groupId = fromUtf8(data.subarray(76));
    } catch {
      throw new MalformedMessage('group id is not UTF-8');
    }
    return new SenderKeyDistribution(
      groupId,
      readU32(data, 2),
      readU32(data, 6),
      data.slice(10, 42),
      data.slice(42, 74),
    );
  }
}
