/**
 * Errors raised by the crypto library (the same family as client/parley/crypto/errors.py).
 *
 * Every failure is an exception; nothing signals failure by returning `false`
 * or `undefined`. All of them derive from {@link CryptoError}, so a caller that
 * only wants "did it work" catches that one class, while tests and careful
 * callers check the narrow ones with `instanceof`. Each class sets `name` to
 * the Python class name (it survives minification), so `error.name` can be
 * compared with the `error` fields of the shared vectors.
 *
 * Programming errors are built-in errors, not CryptoError: `TypeError` for a
 * value of the wrong type (a string where bytes are required), `RangeError`
 * for an impossible argument (an HKDF length out of range, an empty group id).
 */

export class CryptoError extends Error {
  override name = 'CryptoError';
}

/** A key is unusable: wrong type, wrong encoding or a low-order point. */
export class InvalidKey extends CryptoError {
  override name = 'InvalidKey';
}

/** A key (or nonce, seed, signature) has the wrong number of bytes. */
export class InvalidKeyLength extends InvalidKey {
  override name = 'InvalidKeyLength';
}

/** An Ed25519 signature does not verify. */
export class InvalidSignature extends CryptoError {
  override name = 'InvalidSignature';
}

/** AEAD authentication failed: wrong key, or header/body/associated data changed. */
export class DecryptionFailed extends CryptoError {
  override name = 'DecryptionFailed';
}

/** A decrypted message's franking commitment does not match its content. */
export class BadCommitment extends DecryptionFailed {
  override name = 'BadCommitment';
}

/** The message was already decrypted (or its key was deliberately discarded). */
export class ReplayedMessage extends CryptoError {
  override name = 'ReplayedMessage';
}

/** A sender-key distribution message for a chain already dropped (evicted by newer
 * chains of that member, or the member was removed): taking it again would rewind
 * the chain and let old group messages be replayed. */
export class RetiredSenderKey extends ReplayedMessage {
  override name = 'RetiredSenderKey';
}

/** The message would need more skipped message keys than the bound allows. */
export class TooManySkippedMessages extends CryptoError {
  override name = 'TooManySkippedMessages';
}

/** A 32-bit counter ran out (sending chain, sender-key iteration, prekey ids, list version). */
export class CounterExhausted extends CryptoError {
  override name = 'CounterExhausted';
}

/** An initial message names a one-time prekey that was already consumed. */
export class PrekeyReused extends CryptoError {
  override name = 'PrekeyReused';
}

/** An initial message names a prekey id this device never issued (or dropped). */
export class UnknownPrekey extends CryptoError {
  override name = 'UnknownPrekey';
}

/** A binary message does not parse (length, version, type or field ranges). */
export class MalformedMessage extends CryptoError {
  override name = 'MalformedMessage';
}

/** The message's version byte is not one this library speaks. */
export class UnsupportedVersion extends MalformedMessage {
  override name = 'UnsupportedVersion';
}

/** A JSON key bundle is missing fields or has fields of the wrong type/encoding. */
export class MalformedBundle extends CryptoError {
  override name = 'MalformedBundle';
}

/**
 * A contact presented an identity key different from the one we know.
 * `oldSafetyNumber` / `newSafetyNumber` are set when the caller gave enough
 * information to compute them.
 */
export class IdentityChanged extends CryptoError {
  override name = 'IdentityChanged';
  readonly oldSafetyNumber: string | null;
  readonly newSafetyNumber: string | null;

  constructor(
    message: string,
    numbers: { oldSafetyNumber?: string | null; newSafetyNumber?: string | null } = {},
  ) {
    super(message);
    this.oldSafetyNumber = numbers.oldSafetyNumber ?? null;
    this.newSafetyNumber = numbers.newSafetyNumber ?? null;
  }
}

/** The message belongs to a different session (other initial message or group). */
export class SessionMismatch extends CryptoError {
  override name = 'SessionMismatch';
}

/** A group message uses a sender key we have not received (or have dropped). */
export class UnknownSenderKey extends CryptoError {
  override name = 'UnknownSenderKey';
}

/** A report's plaintext and franking key do not open its franking commitment. */
export class FrankingMismatch extends CryptoError {
  override name = 'FrankingMismatch';
}

/** A string given as a safety number is not 60 decimal digits. */
export class InvalidSafetyNumber extends CryptoError {
  override name = 'InvalidSafetyNumber';
}

/** Serialised private state (device, session, group) does not parse. */
export class MalformedState extends CryptoError {
  override name = 'MalformedState';
}

/** A device list breaks a structural rule (docs/devices.md). */
export class MalformedDeviceList extends CryptoError {
  override name = 'MalformedDeviceList';
}

/** A device is not in the account's signed device list. */
export class UnlistedDevice extends CryptoError {
  override name = 'UnlistedDevice';
}

/** A device's identity differs from its entry in the signed device list (or another user's list). */
export class DeviceMismatch extends CryptoError {
  override name = 'DeviceMismatch';
}

/** A link code is not 54 characters of canonical base64url (`link_id ‖ E_pub`). */
export class MalformedLinkCode extends CryptoError {
  override name = 'MalformedLinkCode';
}
