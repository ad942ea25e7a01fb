/**
 * Parley's end-to-end encryption for the browser: the public API
 * (mirrors `parley.crypto`). Layers, bottom up:
 *
 *   errors                      the error family (CryptoError and its subclasses)
 *   primitives, encoding,       WebCrypto + @noble/post-quantum wrappers; base64url,
 *   serial                      integers, state JSON; one-at-a-time execution
 *   protocols                   bundle, wire, pqxdh, ratchet, senderKeys, franking,
 *                               fingerprint, device, deviceList, linking
 *   session                     Session, GroupSession, checkIdentity
 *   index (this file)           re-exports the public API and the errors
 *
 * test/layers.test.ts checks the import rules.
 */

export * from './errors.ts';
export {
  KemPrekey,
  OneTimePrekey,
  PrekeyBundle,
  PublicIdentity,
  SignedPrekey,
  forgetVerifiedSignatures,
  type IdentityJson,
  type KemPrekeyJson,
  type OneTimePrekeyJson,
  type PrekeyBundleJson,
  type SignedPrekeyJson,
} from './bundle.ts';
export { b64decode, b64encode, fromUtf8, utf8 } from './encoding.ts';
export { fingerprintDigits, formatSafetyNumber, safetyNumber } from './fingerprint.ts';
export { commitmentFromMessage, verifyReport } from './franking.ts';
export { type RandomSource, systemRandom } from './primitives.ts';
export { DEFAULT_BATCH } from './device.ts';
export {
  AccountKey,
  DeviceEntry,
  DeviceList,
  SignedDeviceList,
  canonicalJson,
  type DeviceEntryJson,
  type DeviceListJson,
} from './deviceList.ts';
export {
  LinkRequest,
  linkCode,
  openOnNewDevice,
  parseLinkCode,
  sealForNewDevice,
} from './linking.ts';
export { type Binding, encodeBinding } from './pqxdh.ts';
export {
  CHAINS_KEPT_PER_SENDER,
  SKIPPED_KEYS_PER_SENDER,
  Device,
  GroupSession,
  MemberNotLoaded,
  Session,
  checkIdentity,
  initialMessageDigest,
  isInitialMessage,
  type DecryptedMessage,
  type InitiateOptions,
  type RespondOptions,
} from './session.ts';
