/**
 * A device's private key material: identity, signed, one-time and KEM prekeys
 * (client/parley/crypto/device.py).
 *
 * Id spaces (each a u32 counter starting at 1, so "issued and consumed" can be
 * told from "never issued"): signed prekeys, one-time X25519 prekeys, and KEM
 * prekeys (one-time and last-resort share one counter). Retention: the current
 * and the previous signed prekey and last-resort KEM prekey; one-time prekeys
 * until used. Initial messages that consume no one-time material have their
 * ephemeral keys remembered under the signed prekey they were made with, for as
 * long as that signed prekey is kept: a repeat is refused (`ReplayedMessage`),
 * and once the signed prekey is retired any message made with it is refused
 * anyway (`UnknownPrekey`). The window is the signed prekey's lifetime, not a
 * count of messages (docs/crypto.md, "PQXDH").
 *
 * `toBytes()` is byte-identical to Python's `Device.to_bytes()` for the same
 * state, and either side loads the other's.
 */

import {
  KemPrekey,
  type KemPrekeyJson,
  OneTimePrekey,
  type OneTimePrekeyJson,
  PublicIdentity,
  type IdentityJson,
  SignedPrekey,
  type SignedPrekeyJson,
  signIdentityDh,
  signKemPrekey,
  signSignedPrekey,
} from './bundle.ts';
import { U32_MAX, b64decode, b64encode, concat, dumpsState, loadState, u32, utf8 } from './encoding.ts';
import {
  CounterExhausted,
  CryptoError,
  MalformedState,
  PrekeyReused,
  ReplayedMessage,
  UnknownPrekey,
} from './errors.ts';
import {
  Ed25519KeyPair,
  MLKEM768KeyPair,
  type RandomSource,
  X25519KeyPair,
  sha256,
  systemRandom,
} from './primitives.ts';
import { Serial } from './serial.ts';

export const DEFAULT_BATCH = 100;
const STATE_VERSION = 1;
const KEYS_CHECK_LABEL = utf8('parley-v1/keys-check');

/** A KEM prekey held by its 64-byte seed; the key pair is built on first use. */
export class KemPrekeyPrivate {
  #pair: MLKEM768KeyPair | null;

  constructor(
    readonly id: number,
    readonly seed: Uint8Array,
    readonly lastResort: boolean,
    readonly sig: Uint8Array,
    pair: MLKEM768KeyPair | null = null,
  ) {
    this.#pair = pair;
  }

  pair(): MLKEM768KeyPair {
    if (this.#pair === null) this.#pair = MLKEM768KeyPair.fromSeed(this.seed);
    return this.#pair;
  }

  public(): KemPrekey {
    return new KemPrekey(this.id, this.pair().public, this.sig, this.lastResort);
  }
}

interface SignedPrekeyPrivate {
  id: number;
  pair: X25519KeyPair;
  sig: Uint8Array;
}

function nextId(counter: number): number {
  if (counter > U32_MAX) throw new CounterExhausted('prekey id space exhausted');
  return counter;
}

/** Private state of one device. Persist it with {@link toBytes} (it holds secrets). */
export class Device {
  readonly identity: PublicIdentity;
  rng: RandomSource;
  /** Serialises the operations that change this device (Session.respond, prekey generation). */
  readonly serial = new Serial();
  readonly #signing: Ed25519KeyPair;
  readonly #dh: X25519KeyPair;
  #signedPrekeys = new Map<number, SignedPrekeyPrivate>();
  #currentSignedPrekey = 0;
  #nextSignedPrekeyId = 1;
  #oneTime = new Map<number, X25519KeyPair>();
  #nextOneTimeId = 1;
  #kem = new Map<number, KemPrekeyPrivate>();
  #lastResort: number[] = [];
  #nextKemId = 1;
  // signed prekey id -> ephemeral keys (base64url) of the handshakes without
  // one-time material made with it; dropped with the signed prekey.
  #seenBaseKeys = new Map<number, Set<string>>();

  private constructor(signing: Ed25519KeyPair, dh: X25519KeyPair, dhSig: Uint8Array, rng: RandomSource) {
    this.#signing = signing;
    this.#dh = dh;
    this.identity = new PublicIdentity(signing.public, dh.public, dhSig);
    this.rng = rng;
  }

  private static async create(signing: Ed25519KeyPair, dh: X25519KeyPair, rng: RandomSource): Promise<Device> {
    return new Device(signing, dh, await signIdentityDh(signing, dh.public), rng);
  }

  // ------------------------------------------------------------------ creation

  /**
   * A new identity with one signed prekey and one last-resort KEM prekey. Draws the
   * identity signing seed (32), identity X25519 private (32), signed prekey (32),
   * last-resort ML-KEM seed (64), as Python does.
   */
  static async generate(rng: RandomSource = systemRandom): Promise<Device> {
    const signing = await Ed25519KeyPair.generate(rng);
    const dh = await X25519KeyPair.generate(rng);
    const device = await Device.create(signing, dh, rng);
    await device.#rotateSignedPrekey();
    await device.#rotateLastResortKemPrekey();
    return device;
  }

  // ------------------------------------------------------------------ public parts

  /** The identity JSON: `{"signing_key", "dh_key", "dh_sig"}`. */
  publicIdentity(): IdentityJson {
    return this.identity.toJson();
  }

  get dhKeypair(): X25519KeyPair {
    return this.#dh;
  }

  /** The current signed prekey JSON: `{"id", "key", "sig"}`. */
  signedPrekey(): SignedPrekeyJson {
    const e = this.#signedPrekeys.get(this.#currentSignedPrekey) as SignedPrekeyPrivate;
    return new SignedPrekey(e.id, e.pair.public, e.sig).toJson();
  }

  /** The current last-resort KEM prekey JSON (upload form): `{"id", "key", "sig"}`. */
  lastResortKemPrekey(): KemPrekeyJson {
    const id = this.#lastResort[this.#lastResort.length - 1] as number;
    return (this.#kem.get(id) as KemPrekeyPrivate).public().toJson(false);
  }

  /** Make a new signed prekey current (keep one previous); its JSON. */
  rotateSignedPrekey(): Promise<SignedPrekeyJson> {
    return this.serial.run(() => this.#rotateSignedPrekey());
  }

  async #rotateSignedPrekey(): Promise<SignedPrekeyJson> {
    const id = nextId(this.#nextSignedPrekeyId);
    const pair = await X25519KeyPair.generate(this.rng);
    const sig = await signSignedPrekey(this.#signing, id, pair.public);
    this.#signedPrekeys.set(id, { id, pair, sig });
    const previous = this.#currentSignedPrekey;
    this.#currentSignedPrekey = id;
    this.#nextSignedPrekeyId = id + 1;
    for (const key of [...this.#signedPrekeys.keys()]) {
      if (key !== previous && key !== id) this.#signedPrekeys.delete(key);
    }
    for (const key of [...this.#seenBaseKeys.keys()]) {
      if (!this.#signedPrekeys.has(key)) this.#seenBaseKeys.delete(key);
    }
    return this.signedPrekey();
  }

  /** Make a new last-resort KEM prekey current (keep one previous); its JSON. */
  rotateLastResortKemPrekey(): Promise<KemPrekeyJson> {
    return this.serial.run(() => this.#rotateLastResortKemPrekey());
  }

  async #rotateLastResortKemPrekey(): Promise<KemPrekeyJson> {
    const entry = await this.#newKemPrekey(true);
    this.#lastResort.push(entry.id);
    for (const dropped of this.#lastResort.slice(0, -2)) this.#kem.delete(dropped);
    this.#lastResort = this.#lastResort.slice(-2);
    return this.lastResortKemPrekey();
  }

  /** Make `n` one-time X25519 prekeys; their JSON (`{"id", "key"}`). */
  generateOneTimePrekeys(n: number = DEFAULT_BATCH): Promise<OneTimePrekeyJson[]> {
    return this.serial.run(async () => {
      const out: OneTimePrekeyJson[] = [];
      for (let i = 0; i < n; i++) {
        const id = nextId(this.#nextOneTimeId);
        const pair = await X25519KeyPair.generate(this.rng);
        this.#oneTime.set(id, pair);
        this.#nextOneTimeId = id + 1;
        out.push(new OneTimePrekey(id, pair.public).toJson());
      }
      return out;
    });
  }

  /** Make `n` signed one-time ML-KEM-768 prekeys; their JSON (upload form). */
  generateKemPrekeys(n: number = DEFAULT_BATCH): Promise<KemPrekeyJson[]> {
    return this.serial.run(async () => {
      const out: KemPrekeyJson[] = [];
      for (let i = 0; i < n; i++) out.push((await this.#newKemPrekey(false)).public().toJson(false));
      return out;
    });
  }

  async #newKemPrekey(lastResort: boolean): Promise<KemPrekeyPrivate> {
    const id = nextId(this.#nextKemId);
    const pair = MLKEM768KeyPair.generate(this.rng);
    const sig = await signKemPrekey(this.#signing, id, pair.public, lastResort);
    const entry = new KemPrekeyPrivate(id, pair.seed(), lastResort, sig, pair);
    this.#kem.set(id, entry);
    this.#nextKemId = id + 1;
    return entry;
  }

  /**
   * The key directory's keys-check digest: `SHA-256("parley-v1/keys-check" ‖ signing_key ‖
   * dh_key ‖ u32(spk id) ‖ spk ‖ u32(last-resort id) ‖ last-resort key)` (docs/keys.md).
   */
  keysDigest(): Promise<Uint8Array> {
    const spk = this.#signedPrekeys.get(this.#currentSignedPrekey) as SignedPrekeyPrivate;
    const lastResort = this.#kem.get(this.#lastResort[this.#lastResort.length - 1] as number) as KemPrekeyPrivate;
    return sha256(
      concat(
        KEYS_CHECK_LABEL,
        this.identity.signingKey,
        this.identity.dhKey,
        u32(spk.id),
        spk.pair.public,
        u32(lastResort.id),
        lastResort.pair().public,
      ),
    );
  }

  /**
   * Forget the oldest (lowest id) one-time X25519 prekeys past the `keep` newest, and the
   * oldest one-time ML-KEM prekeys past the `keepKem` newest (last-resort ones never):
   * one claimed by someone who never writes was kept for ever (client/parley/crypto
   * device.py `retire_one_time_prekeys`; docs/crypto.md, "One-time prekeys kept"). An
   * initial message naming a forgotten one cannot be read (`PrekeyReused`). Returns how
   * many of each kind were forgotten.
   */
  retireOneTimePrekeys(keep: number, keepKem: number = keep): [number, number] {
    const oneTime = [...this.#oneTime.keys()].sort((a, b) => a - b);
    const oldOneTime = oneTime.slice(0, Math.max(0, oneTime.length - Math.max(0, keep)));
    for (const id of oldOneTime) this.#oneTime.delete(id);
    const kem = [...this.#kem.values()].filter((k) => !k.lastResort).map((k) => k.id).sort((a, b) => a - b);
    const oldKem = kem.slice(0, Math.max(0, kem.length - Math.max(0, keepKem)));
    for (const id of oldKem) this.#kem.delete(id);
    return [oldOneTime.length, oldKem.length];
  }

  get oneTimePrekeyCount(): number {
    return this.#oneTime.size;
  }

  /** One-time KEM prekeys left (last-resort ones not counted). */
  get kemPrekeyCount(): number {
    let n = 0;
    for (const k of this.#kem.values()) if (!k.lastResort) n++;
    return n;
  }

  // ------------------------------------------------------------------ used by Session.respond (under serial)

  /** @internal */
  lookupSignedPrekey(id: number): X25519KeyPair {
    const entry = this.#signedPrekeys.get(id);
    if (entry === undefined) throw new UnknownPrekey(`signed prekey ${id} is unknown or was rotated out`);
    return entry.pair;
  }

  /** @internal */
  lookupOneTimePrekey(id: number): X25519KeyPair {
    const pair = this.#oneTime.get(id);
    if (pair === undefined) {
      if (id > 0 && id < this.#nextOneTimeId) throw new PrekeyReused(`one-time prekey ${id} was already used or retired`);
      throw new UnknownPrekey(`one-time prekey ${id} was never issued`);
    }
    return pair;
  }

  /** @internal */
  lookupKemPrekey(id: number): KemPrekeyPrivate {
    const entry = this.#kem.get(id);
    if (entry === undefined) {
      if (id > 0 && id < this.#nextKemId) throw new PrekeyReused(`KEM prekey ${id} was already used, retired or rotated out`);
      throw new UnknownPrekey(`KEM prekey ${id} was never issued`);
    }
    return entry;
  }

  /** @internal */
  checkBaseKey(signedPrekeyId: number, ephemeralKey: Uint8Array): void {
    if (this.#seenBaseKeys.get(signedPrekeyId)?.has(b64encode(ephemeralKey))) {
      throw new ReplayedMessage('initial message already processed');
    }
  }

  /** Ephemeral keys remembered against replays (handshakes without one-time
   * material, for the signed prekeys still kept). Each counted once: a state
   * from before #20 files its keys under every signed prekey kept. */
  get rememberedBaseKeyCount(): number {
    const all = new Set<string>();
    for (const keys of this.#seenBaseKeys.values()) for (const key of keys) all.add(key);
    return all.size;
  }

  /** @internal Commit the use of prekeys after a successful handshake. */
  consume(oneTimePrekeyId: number | null, kem: KemPrekeyPrivate, signedPrekeyId: number, ephemeralKey: Uint8Array): void {
    if (oneTimePrekeyId !== null) this.#oneTime.delete(oneTimePrekeyId);
    if (!kem.lastResort) this.#kem.delete(kem.id);
    if (oneTimePrekeyId === null && kem.lastResort) {
      let keys = this.#seenBaseKeys.get(signedPrekeyId);
      if (keys === undefined) this.#seenBaseKeys.set(signedPrekeyId, (keys = new Set()));
      keys.add(b64encode(ephemeralKey));
    }
  }

  /** @internal The identity signing key pair (for tests and vectors, like Python's `_identity_signing`). */
  identitySigning(): Ed25519KeyPair {
    return this.#signing;
  }

  /** @internal Private parts for vectors and tests. */
  debugPrivate(): {
    signedPrekey: (id: number) => Uint8Array | undefined;
    oneTime: (id: number) => Uint8Array | undefined;
    kemSeed: (id: number) => Uint8Array | undefined;
  } {
    return {
      signedPrekey: (id) => this.#signedPrekeys.get(id)?.pair.privateBytes(),
      oneTime: (id) => this.#oneTime.get(id)?.privateBytes(),
      kemSeed: (id) => this.#kem.get(id)?.seed.slice(),
    };
  }

  // ------------------------------------------------------------------ persistence

  toJson(): Record<string, unknown> {
    return {
      v: STATE_VERSION,
      signing: b64encode(this.#signing.seed()),
      dh: b64encode(this.#dh.privateBytes()),
      signed_prekeys: [...this.#signedPrekeys.values()].map((e) => [e.id, b64encode(e.pair.privateBytes()), b64encode(e.sig)]),
      current_signed_prekey: this.#currentSignedPrekey,
      next_signed_prekey_id: this.#nextSignedPrekeyId,
      one_time: [...this.#oneTime.entries()].map(([i, p]) => [i, b64encode(p.privateBytes())]),
      next_one_time_id: this.#nextOneTimeId,
      kem: [...this.#kem.values()].map((e) => [e.id, b64encode(e.seed), e.lastResort, b64encode(e.sig)]),
      last_resort: [...this.#lastResort],
      next_kem_id: this.#nextKemId,
      // As Python: {"<signed prekey id>": sorted keys}, ids ascending.
      seen_base_keys: new Map(
        [...this.#seenBaseKeys.entries()].sort(([a], [b]) => a - b).map(([i, keys]) => [String(i), [...keys].sort()]),
      ),
    };
  }

  /** All private state as UTF-8 JSON (byte-identical to Python's). Store it encrypted. */
  toBytes(): Uint8Array {
    return utf8(dumpsState(this.toJson() as never));
  }

  static async fromJson(obj: unknown, rng: RandomSource = systemRandom): Promise<Device> {
    try {
      const o = obj as Record<string, unknown>;
      if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new MalformedState('device state is not an object');
      const need = (name: string): unknown => {
        if (!(name in o)) throw new MalformedState(`device state: ${name} missing`);
        return o[name];
      };
      const int = (value: unknown): number => {
        if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
          throw new MalformedState('device state: expected a non-negative integer');
        }
        return value;
      };
      const rows = (value: unknown, width: number): unknown[][] => {
        if (!Array.isArray(value) || !value.every((r) => Array.isArray(r) && r.length === width)) {
          throw new MalformedState('device state: bad list');
        }
        return value as unknown[][];
      };
      if (need('v') !== STATE_VERSION) throw new MalformedState('unsupported device state version');
      const signing = await Ed25519KeyPair.fromSeed(b64decode(need('signing'), { length: 32 }));
      const dh = await X25519KeyPair.fromPrivateBytes(b64decode(need('dh'), { length: 32 }));
      const device = await Device.create(signing, dh, rng);
      for (const [id, raw, sig] of rows(need('signed_prekeys'), 3)) {
        const pair = await X25519KeyPair.fromPrivateBytes(b64decode(raw, { length: 32 }));
        device.#signedPrekeys.set(int(id), { id: int(id), pair, sig: b64decode(sig, { length: 64 }) });
      }
      device.#currentSignedPrekey = int(need('current_signed_prekey'));
      device.#nextSignedPrekeyId = int(need('next_signed_prekey_id'));
      for (const [id, raw] of rows(need('one_time'), 2)) {
        device.#oneTime.set(int(id), await X25519KeyPair.fromPrivateBytes(b64decode(raw, { length: 32 })));
      }
      device.#nextOneTimeId = int(need('next_one_time_id'));
      for (const [id, seed, lastResort, sig] of rows(need('kem'), 4)) {
        if (typeof lastResort !== 'boolean') throw new MalformedState('device state: bad last_resort flag');
        device.#kem.set(int(id), new KemPrekeyPrivate(int(id), b64decode(seed, { length: 64 }), lastResort, b64decode(sig)));
      }
      const lastResort = need('last_resort');
      if (!Array.isArray(lastResort)) throw new MalformedState('device state: bad last_resort');
      device.#lastResort = lastResort.map(int);
      device.#nextKemId = int(need('next_kem_id'));
      let seen = need('seen_base_keys');
      // Before #20: one flat list, not by signed prekey, so which prekey each
      // handshake was made with is unknown. File every key under each signed
      // prekey still kept (the previous one's handshakes included): a replay is
      // refused whichever it names, and the keys go with the last of those
      // prekeys to be retired.
      if (Array.isArray(seen)) {
        const flat = seen;
        seen = Object.fromEntries([...device.#signedPrekeys.keys()].map((id) => [String(id), flat]));
      }
      if (typeof seen !== 'object' || seen === null) throw new MalformedState('device state: bad seen_base_keys');
      for (const [id, keys] of Object.entries(seen as Record<string, unknown>)) {
        if (!/^(0|[1-9][0-9]*)$/.test(id) || !Array.isArray(keys)) throw new MalformedState('device state: bad seen_base_keys');
        const set = new Set(keys.map((k) => b64encode(b64decode(k, { length: 32 }))));
        if (device.#signedPrekeys.has(Number(id))) device.#seenBaseKeys.set(Number(id), set);
      }
      if (
        !device.#signedPrekeys.has(device.#currentSignedPrekey) ||
        !device.#lastResort.every((i) => device.#kem.has(i)) ||
        device.#lastResort.length === 0
      ) {
        throw new MalformedState('device state is inconsistent');
      }
      return device;
    } catch (error) {
      if (error instanceof MalformedState) throw error;
      if (error instanceof CryptoError || error instanceof TypeError) {
        throw new MalformedState(`device state does not parse (${String(error)})`);
      }
      throw error;
    }
  }

  static fromBytes(data: Uint8Array | string, rng: RandomSource = systemRandom): Promise<Device> {
    return Device.fromJson(loadState(data), rng);
  }

  toString(): string {
    return `Device(signing_key=${b64encode(this.identity.signingKey)})`;
  }
}
