/**
 * The account identity key and the signed device list (docs/devices.md "Keys";
 * Python: client/parley/crypto/device_list.py, being written alongside).
 *
 *   device_list  = {"user_id", "version", "devices": [{"device_id", "name", "signing_key", "dh_key"}, ...]}
 *   signed bytes = "parley-v1/device-list" ‖ canonical JSON of device_list
 *   signature    = Ed25519(account identity key, signed bytes)
 *
 * Canonical JSON: UTF-8 (no \u escapes for non-ASCII), keys sorted, no
 * whitespace, as Python's `json.dumps(v, sort_keys=True, separators=(",", ":"),
 * ensure_ascii=False)`; binary values base64url without padding; devices in
 * ascending `device_id` order, each id once. The JSON on the wire is the
 * canonical form: {@link DeviceList.fromJson} refuses devices out of order,
 * repeated ids, missing and unknown members, so what was signed is exactly
 * what was parsed. Ids and versions are integers 1..2^31-1; names and user ids
 * 1..64 Unicode code points without control characters or lone surrogates.
 */

import { type PrekeyBundle, type PublicIdentity, verifyRemembered } from './bundle.ts';
import { b64decode, b64encode, bytesEqual, concat, utf8 } from './encoding.ts';
import {
  CounterExhausted,
  DeviceMismatch,
  MalformedBundle,
  MalformedDeviceList,
  UnlistedDevice,
} from './errors.ts';
import {
  ED25519_KEY_LEN,
  ED25519_SIG_LEN,
  Ed25519KeyPair,
  type RandomSource,
  X25519_KEY_LEN,
  requireBytes,
  systemRandom,
} from './primitives.ts';

export const LABEL_DEVICE_LIST = utf8('parley-v1/device-list');
export const DEVICE_ID_MAX = 2 ** 31 - 1;
export const VERSION_MAX = 2 ** 31 - 1;
/** A device name has 1 to 64 characters (Unicode code points). */
export const NAME_MAX = 64;
export const USER_ID_MAX = 64;

const ENTRY_KEYS = ['device_id', 'name', 'signing_key', 'dh_key'];
const LIST_KEYS = ['user_id', 'version', 'devices'];

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function compareCodePoints(a: string, b: string): number {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = (x[i] as string).codePointAt(0)! - (y[i] as string).codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/**
 * UTF-8 JSON with sorted keys (by code point, as Python sorts str) and no whitespace:
 * the signed form. Strings are escaped as JSON.stringify does, which equals Python's
 * `ensure_ascii=False` output for strings without lone surrogates.
 */
export function canonicalJson(value: Json): Uint8Array {
  const dump = (v: Json): string => {
    if (v === null) return 'null';
    if (typeof v === 'boolean') return v ? 'true' : 'false';
    if (typeof v === 'number') {
      if (!Number.isSafeInteger(v)) throw new TypeError('canonical JSON holds integers only');
      return String(v);
    }
    if (typeof v === 'string') return JSON.stringify(v);
    if (Array.isArray(v)) return '[' + v.map(dump).join(',') + ']';
    const keys = Object.keys(v).sort(compareCodePoints);
    return '{' + keys.map((k) => JSON.stringify(k) + ':' + dump(v[k] as Json)).join(',') + '}';
  };
  return utf8(dump(value));
}

function text(value: unknown, field: string, maxLen: number): string {
  if (typeof value !== 'string') throw new MalformedDeviceList(`${field}: expected a string of 1 to ${maxLen} characters`);
  const points = [...value];
  if (points.length === 0 || points.length > maxLen) {
    throw new MalformedDeviceList(`${field}: expected a string of 1 to ${maxLen} characters`);
  }
  for (const ch of points) {
    const o = ch.codePointAt(0) as number;
    if (o < 0x20 || (o >= 0x7f && o <= 0x9f) || (o >= 0xd800 && o <= 0xdfff)) {
      throw new MalformedDeviceList(`${field}: control characters are not allowed`);
    }
  }
  return value;
}

function integer(value: unknown, field: string, maximum: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > maximum) {
    throw new MalformedDeviceList(`${field}: expected an integer in 1..${maximum}`);
  }
  return value;
}

function key(value: unknown, field: string, length: number): Uint8Array {
  if (!(value instanceof Uint8Array) || value.length !== length) {
    throw new MalformedDeviceList(`${field}: expected ${length} bytes`);
  }
  return value.slice();
}

function decode(value: unknown, field: string, length: number): Uint8Array {
  try {
    return b64decode(value, { field, length });
  } catch (error) {
    if (error instanceof MalformedBundle) throw new MalformedDeviceList(error.message);
    throw error;
  }
}

function object(value: unknown, field: string, keys: string[]): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new MalformedDeviceList(`${field}: expected a JSON object`);
  }
  const obj = value as Record<string, unknown>;
  const missing = keys.filter((k) => !Object.prototype.hasOwnProperty.call(obj, k)).sort();
  if (missing.length > 0) throw new MalformedDeviceList(`${field}.${missing[0]}: missing`);
  const unknown = Object.keys(obj)
    .filter((k) => !keys.includes(k))
    .sort();
  if (unknown.length > 0) throw new MalformedDeviceList(`${field}.${unknown[0]}: unknown member (not signed)`);
  return obj;
}

// --------------------------------------------------------------------------- account key

/** The account identity key: an Ed25519 key pair shared by the account's devices; signs device lists only. */
export class AccountKey {
  readonly #pair: Ed25519KeyPair;
  readonly public: Uint8Array;

  private constructor(pair: Ed25519KeyPair) {
    this.#pair = pair;
    this.public = pair.public;
  }

  /** A new account key (draws the 32-byte seed from `rng`). */
  static async generate(rng: RandomSource = systemRandom): Promise<AccountKey> {
    return new AccountKey(await Ed25519KeyPair.generate(rng));
  }

  /** The key from its 32-byte private seed (InvalidKeyLength otherwise). */
  static async fromSeed(seed: Uint8Array): Promise<AccountKey> {
    return new AccountKey(await Ed25519KeyPair.fromSeed(seed));
  }

  /** The 32-byte private seed: secret. */
  seed(): Uint8Array {
    return this.#pair.seed();
  }

  async sign(deviceList: DeviceList): Promise<SignedDeviceList> {
    if (!(deviceList instanceof DeviceList)) throw new TypeError('an account key signs device lists only');
    return new SignedDeviceList(deviceList, await this.#pair.sign(deviceList.signedBytes()));
  }

  toString(): string {
    return `AccountKey(public=${b64encode(this.public)})`;
  }
}

// --------------------------------------------------------------------------- entries

export interface DeviceEntryJson {
  device_id: number;
  name: string;
  signing_key: string;
  dh_key: string;
}

/** One device of the list: its id, a name for people, and its identity keys. */
export class DeviceEntry {
  readonly deviceId: number;
  readonly name: string;
  readonly signingKey: Uint8Array;
  readonly dhKey: Uint8Array;

  constructor(deviceId: number, name: string, signingKey: Uint8Array, dhKey: Uint8Array) {
    this.deviceId = integer(deviceId, 'device_id', DEVICE_ID_MAX);
    this.name = text(name, 'name', NAME_MAX);
    this.signingKey = key(signingKey, 'signing_key', ED25519_KEY_LEN);
    this.dhKey = key(dhKey, 'dh_key', X25519_KEY_LEN);
  }

  /** The entry of a device with this identity (e.g. `device.identity`). */
  static of(deviceId: number, name: string, identity: PublicIdentity): DeviceEntry {
    return new DeviceEntry(deviceId, name, identity.signingKey, identity.dhKey);
  }

  /** DeviceMismatch unless `identity` has exactly this entry's keys. */
  check(identity: PublicIdentity): void {
    if (!bytesEqual(identity.signingKey, this.signingKey) || !bytesEqual(identity.dhKey, this.dhKey)) {
      throw new DeviceMismatch(`device ${this.deviceId}: its identity differs from the signed device list`);
    }
  }

  toJson(): DeviceEntryJson {
    return {
      device_id: this.deviceId,
      name: this.name,
      signing_key: b64encode(this.signingKey),
      dh_key: b64encode(this.dhKey),
    };
  }

  static fromJson(value: unknown, field = 'device'): DeviceEntry {
    const obj = object(value, field, ENTRY_KEYS);
    return new DeviceEntry(
      integer(obj['device_id'], `${field}.device_id`, DEVICE_ID_MAX),
      text(obj['name'], `${field}.name`, NAME_MAX),
      decode(obj['signing_key'], `${field}.signing_key`, ED25519_KEY_LEN),
      decode(obj['dh_key'], `${field}.dh_key`, X25519_KEY_LEN),
    );
  }
}

// --------------------------------------------------------------------------- the list

export interface DeviceListJson {
  user_id: string;
  version: number;
  devices: DeviceEntryJson[];
}

/**
 * The devices of `userId`'s account at `version` (1, 2, ...). The constructor
 * accepts the devices in any order and keeps them sorted by id; a repeated id
 * is MalformedDeviceList.
 */
export class DeviceList {
  readonly userId: string;
  readonly version: number;
  readonly devices: readonly DeviceEntry[];

  constructor(userId: string, version: number, devices: Iterable<DeviceEntry> = []) {
    const entries = [...devices];
    if (!entries.every((d) => d instanceof DeviceEntry)) throw new TypeError('devices must be DeviceEntry objects');
    const ordered = entries.sort((a, b) => a.deviceId - b.deviceId);
    for (let i = 1; i < ordered.length; i++) {
      if ((ordered[i] as DeviceEntry).deviceId === (ordered[i - 1] as DeviceEntry).deviceId) {
        throw new MalformedDeviceList(`device ${(ordered[i] as DeviceEntry).deviceId} is listed twice`);
      }
    }
    this.userId = text(userId, 'user_id', USER_ID_MAX);
    this.version = integer(version, 'version', VERSION_MAX);
    this.devices = Object.freeze(ordered);
  }

  get deviceIds(): number[] {
    return this.devices.map((d) => d.deviceId);
  }

  /** The entry of `deviceId`, or null if the list does not name it. */
  get(deviceId: number): DeviceEntry | null {
    return this.devices.find((d) => d.deviceId === deviceId) ?? null;
  }

  /** The entry of `deviceId`; UnlistedDevice if the list does not name it. */
  entry(deviceId: number): DeviceEntry {
    const entry = this.get(deviceId);
    if (entry === null) throw new UnlistedDevice(`device ${deviceId} is not in ${this.userId}'s device list`);
    return entry;
  }

  /** The entry of `deviceId` if it names exactly `identity` (UnlistedDevice, DeviceMismatch). */
  checkIdentity(deviceId: number, identity: PublicIdentity): DeviceEntry {
    const entry = this.entry(deviceId);
    entry.check(identity);
    return entry;
  }

  /** Check a claimed (already verified) bundle against the list: same user, a listed device, the listed identity. */
  checkBundle(bundle: PrekeyBundle): DeviceEntry {
    if (bundle.userId !== this.userId) {
      throw new DeviceMismatch(`a bundle of ${JSON.stringify(bundle.userId)} checked against ${JSON.stringify(this.userId)}'s device list`);
    }
    return this.checkIdentity(bundle.deviceId, bundle.identity);
  }

  #nextVersion(): number {
    if (this.version >= VERSION_MAX) throw new CounterExhausted('device list version space exhausted');
    return this.version + 1;
  }

  /** The next version, with `entry` added (or replacing the entry of its id). */
  withDevice(entry: DeviceEntry): DeviceList {
    const others = this.devices.filter((d) => d.deviceId !== entry.deviceId);
    return new DeviceList(this.userId, this.#nextVersion(), [...others, entry]);
  }

  /** The next version, without `deviceId` (UnlistedDevice if absent). */
  withoutDevice(deviceId: number): DeviceList {
    this.entry(deviceId);
    return new DeviceList(
      this.userId,
      this.#nextVersion(),
      this.devices.filter((d) => d.deviceId !== deviceId),
    );
  }

  toJson(): DeviceListJson {
    return { user_id: this.userId, version: this.version, devices: this.devices.map((d) => d.toJson()) };
  }

  canonicalJson(): Uint8Array {
    return canonicalJson(this.toJson() as unknown as Json);
  }

  /** `"parley-v1/device-list" ‖ canonical JSON`: what the account key signs. */
  signedBytes(): Uint8Array {
    return concat(LABEL_DEVICE_LIST, this.canonicalJson());
  }

  sign(accountKey: AccountKey): Promise<SignedDeviceList> {
    return accountKey.sign(this);
  }

  /**
   * Parse strictly: every member present and well typed, no unknown member,
   * devices in ascending id order without repeats; else MalformedDeviceList.
   */
  static fromJson(value: unknown, field = 'device_list'): DeviceList {
    const obj = object(value, field, LIST_KEYS);
    const raw = obj['devices'];
    if (!Array.isArray(raw)) throw new MalformedDeviceList(`${field}.devices: expected a JSON array`);
    const entries = raw.map((item, i) => DeviceEntry.fromJson(item, `${field}.devices[${i}]`));
    for (let i = 1; i < entries.length; i++) {
      if ((entries[i] as DeviceEntry).deviceId <= (entries[i - 1] as DeviceEntry).deviceId) {
        throw new MalformedDeviceList(`${field}.devices[${i}]: devices must be in ascending device_id order, each once`);
      }
    }
    return new DeviceList(
      text(obj['user_id'], `${field}.user_id`, USER_ID_MAX),
      integer(obj['version'], `${field}.version`, VERSION_MAX),
      entries,
    );
  }
}

/** A device list and the account key's signature over its signed bytes. */
export class SignedDeviceList {
  readonly deviceList: DeviceList;
  readonly signature: Uint8Array;

  constructor(deviceList: DeviceList, signature: Uint8Array) {
    if (!(deviceList instanceof DeviceList)) throw new TypeError('deviceList must be a DeviceList');
    requireBytes('signature', signature, ED25519_SIG_LEN);
    this.deviceList = deviceList;
    this.signature = signature.slice();
  }

  /**
   * The list, if the account key `accountPublic` signed it: InvalidSignature otherwise,
   * DeviceMismatch if `userId` is given and the list is another user's.
   */
  async verify(accountPublic: Uint8Array, options: { userId?: string } = {}): Promise<DeviceList> {
    // Remembered: a contact's list is checked when it is read and again with each claim of
    // its bundles (a private room's first message: both, for every member).
    await verifyRemembered(accountPublic, this.signature, this.deviceList.signedBytes());
    if (options.userId !== undefined && this.deviceList.userId !== options.userId) {
      throw new DeviceMismatch(`the device list is ${JSON.stringify(this.deviceList.userId)}'s, not ${JSON.stringify(options.userId)}'s`);
    }
    return this.deviceList;
  }

  /** `{"device_list": {...}, "signature": b64}` (the directory's request bodies). */
  toJson(): { device_list: DeviceListJson; signature: string } {
    return { device_list: this.deviceList.toJson(), signature: b64encode(this.signature) };
  }

  /** Parse `{"device_list", "signature", ...}` (other members ignored). Not verified: call {@link verify}. */
  static fromJson(value: unknown): SignedDeviceList {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new MalformedDeviceList('expected a JSON object');
    }
    const obj = value as Record<string, unknown>;
    for (const name of ['device_list', 'signature']) {
      if (!Object.prototype.hasOwnProperty.call(obj, name)) throw new MalformedDeviceList(`${name}: missing`);
    }
    return new SignedDeviceList(
      DeviceList.fromJson(obj['device_list']),
      decode(obj['signature'], 'signature', ED25519_SIG_LEN),
    );
  }
}
