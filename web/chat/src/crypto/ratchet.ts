/**
 * The Double Ratchet (Signal, revision 4) with AES-256-GCM
 * (client/parley/crypto/ratchet.py; docs/crypto.md "Double Ratchet").
 *
 * - `KDF_RK(rk, dh_out) = HKDF-SHA256(salt = rk, ikm = dh_out, info = "parley-v1/ratchet/root", L = 64)`
 * - `KDF_CK(ck) = (HMAC-SHA256(ck, 0x01), HMAC-SHA256(ck, 0x02))`
 * - message keys: `HKDF-SHA256(salt = 32 zero bytes, ikm = mk, info = "parley-v1/ratchet/message-keys", L = 44)`
 *   -> AES key (32) ‖ nonce (12)
 * - header: ratchet public key (32) ‖ PN (u32) ‖ N (u32); AD = `ad ‖ every message byte before the ciphertext`
 *
 * Bounds: MAX_SKIP 5,000 (how far one message may move a chain; a previous chain's PN
 * past it gives that chain up instead of refusing the new one; Python keeps libsignal's
 * 25,000, but a chain step here is three async WebCrypto calls, ~10x Python's cost, so
 * a forged header would cost ~5 s a session tried at 25,000, ~1 s at 5,000),
 * MAX_SKIPPED_KEYS 2000 stored (oldest evicted; of a longer skip the last), skipped keys of a chain
 * dropped at the MAX_OLD_CHAINS-th (5th) further DH step, the ratchet keys of the
 * last MAX_REMEMBERED_CHAINS (100) receiving chains remembered for replay detection.
 *
 * Decryption is transactional: everything is computed into locals and the
 * state is assigned only after the AEAD and the payload check succeed.
 * Callers (Session) serialise calls on one state; concurrent calls on the
 * same RatchetState are not allowed.
 */

import { U32_MAX, b64decode, b64encode, bytesEqual, concat, readU32, u32, utf8 } from './encoding.ts';
import {
  CounterExhausted,
  CryptoError,
  DecryptionFailed,
  InvalidKey,
  MalformedBundle,
  MalformedMessage,
  MalformedState,
  ReplayedMessage,
  TooManySkippedMessages,
} from './errors.ts';
import {
  GCM_TAG_LEN,
  type RandomSource,
  X25519KeyPair,
  aeadDecrypt,
  aeadEncrypt,
  chainKeyStep,
  deriveMessageKeys,
  hkdfSha256,
  systemRandom,
} from './primitives.ts';
import { HEADER_LEN } from './wire.ts';

export const ROOT_INFO = utf8('parley-v1/ratchet/root');
export const MESSAGE_INFO = utf8('parley-v1/ratchet/message-keys');

/** The bounds in force (the defaults below); only tests change them, through {@link setRatchetBounds}. */
export const RATCHET_BOUNDS = {
  MAX_SKIP: 5000,
  MAX_SKIPPED_KEYS: 2000,
  MAX_OLD_CHAINS: 5,
  MAX_REMEMBERED_CHAINS: 100,
};
export const MAX_SKIP = 5000;
export const MAX_SKIPPED_KEYS = 2000;
export const MAX_OLD_CHAINS = 5;
export const MAX_REMEMBERED_CHAINS = 100;

/**
 * For tests only (as Python's tests patch the module constants): set smaller bounds to
 * exercise eviction. Not exported by index.ts.
 */
export function setRatchetBounds(bounds: Partial<typeof RATCHET_BOUNDS>): void {
  Object.assign(RATCHET_BOUNDS, bounds);
}

/** Called with the decrypted payload before the state is committed; may reject. */
export type PayloadCheck = (payload: Uint8Array) => Promise<void>;

export async function kdfRk(rootKey: Uint8Array, dhOut: Uint8Array): Promise<[Uint8Array, Uint8Array]> {
  const out = await hkdfSha256(dhOut, { salt: rootKey, info: ROOT_INFO, length: 64 });
  return [out.slice(0, 32), out.slice(32)];
}

interface SkippedKey {
  ratchetKey: Uint8Array;
  n: number;
  mk: Uint8Array;
  chainIndex: number;
}

type NewKey = [ratchetKey: Uint8Array, n: number, mk: Uint8Array];

function slotOf(ratchetKey: Uint8Array, n: number): string {
  return `${b64encode(ratchetKey)}.${n}`;
}

async function skip(
  chainKey: Uint8Array,
  start: number,
  until: number,
  ratchetKey: Uint8Array,
): Promise<[NewKey[], Uint8Array]> {
  const keys: NewKey[] = [];
  const keepFrom = until - RATCHET_BOUNDS.MAX_SKIPPED_KEYS; // no more are ever stored
  let ck = chainKey;
  for (let n = start; n < until; n++) {
    const [mk, next] = await chainKeyStep(ck);
    if (n >= keepFrom) keys.push([ratchetKey, n, mk]);
    ck = next;
  }
  return [keys, ck];
}

async function openWith(mk: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array): Promise<Uint8Array> {
  const [key, nonce] = await deriveMessageKeys(mk, MESSAGE_INFO);
  return aeadDecrypt(key, nonce, ciphertext, ad);
}

export interface RatchetStateInit {
  ad: Uint8Array;
  rk: Uint8Array;
  dhs: X25519KeyPair;
  dhr: Uint8Array | null;
  cks: Uint8Array | null;
  ckr: Uint8Array | null;
  ns?: number;
  nr?: number;
  pn?: number;
  chainIndex?: number;
  skipped?: Map<string, SkippedKey>;
  oldChains?: Map<string, { ratchetKey: Uint8Array; chainIndex: number }>;
  rng?: RandomSource;
}

/**
 * One side of a Double Ratchet session. `skipped` maps (ratchet key, N) to
 * (message key, chain index) in insertion order (oldest first); `oldChains`
 * maps the ratchet keys of the last MAX_REMEMBERED_CHAINS receiving chains to
 * their chain index.
 */
export class RatchetState {
  ad: Uint8Array;
  rk: Uint8Array;
  dhs: X25519KeyPair;
  dhr: Uint8Array | null;
  cks: Uint8Array | null;
  ckr: Uint8Array | null;
  ns: number;
  nr: number;
  pn: number;
  chainIndex: number;
  skipped: Map<string, SkippedKey>;
  oldChains: Map<string, { ratchetKey: Uint8Array; chainIndex: number }>;
  rng: RandomSource;

  constructor(init: RatchetStateInit) {
    this.ad = init.ad;
    this.rk = init.rk;
    this.dhs = init.dhs;
    this.dhr = init.dhr;
    this.cks = init.cks;
    this.ckr = init.ckr;
    this.ns = init.ns ?? 0;
    this.nr = init.nr ?? 0;
    this.pn = init.pn ?? 0;
    this.chainIndex = init.chainIndex ?? 0;
    this.skipped = init.skipped ?? new Map();
    this.oldChains = init.oldChains ?? new Map();
    this.rng = init.rng ?? systemRandom;
  }

  // ------------------------------------------------------------------ setup

  /** RatchetInitAlice: the first remote ratchet key is the responder's signed prekey. */
  static async initiator(
    secret: Uint8Array,
    ad: Uint8Array,
    remoteRatchetKey: Uint8Array,
    rng: RandomSource,
  ): Promise<RatchetState> {
    const dhs = await X25519KeyPair.generate(rng);
    const [rk, cks] = await kdfRk(secret, await dhs.dh(remoteRatchetKey));
    return new RatchetState({ ad, rk, dhs, dhr: remoteRatchetKey.slice(), cks, ckr: null, rng });
  }

  /** RatchetInitBob: our first ratchet key pair is the signed prekey. */
  static responder(secret: Uint8Array, ad: Uint8Array, ownRatchetKey: X25519KeyPair, rng: RandomSource): RatchetState {
    return new RatchetState({ ad, rk: secret, dhs: ownRatchetKey, dhr: null, cks: null, ckr: null, rng });
  }

  // ------------------------------------------------------------------ encrypt

  /**
   * The whole message `prefix ‖ header ‖ ciphertext` (AD: `ad ‖ prefix ‖ header`).
   * `prefix` may still be computing (the franking commitment): the key derivation
   * runs meanwhile. Not re-entrant: the caller serialises calls.
   */
  async seal(payload: Uint8Array, prefix: Uint8Array | Promise<Uint8Array>): Promise<Uint8Array> {
    if (prefix instanceof Promise) prefix.catch(() => undefined); // awaited below; no unhandled rejection
    const cks = this.cks;
    if (cks === null) throw new CryptoError('this session cannot send before it has received a message');
    const ns = this.ns;
    if (ns > U32_MAX) throw new CounterExhausted('sending chain exhausted');
    const [mk, next] = await chainKeyStep(cks);
    const [key, nonce] = await deriveMessageKeys(mk, MESSAGE_INFO);
    const associated = concat(await prefix, this.dhs.public, u32(this.pn), u32(ns));
    const ciphertext = await aeadEncrypt(key, nonce, payload, concat(this.ad, associated));
    this.cks = next;
    this.ns = ns + 1;
    return concat(associated, ciphertext);
  }

  // ------------------------------------------------------------------ decrypt

  /**
   * Decrypt a message made by {@link seal}, its header starting at `headerAt`
   * (every byte before the ciphertext is associated data). MalformedMessage if
   * too short; otherwise as {@link decrypt}.
   */
  open(message: Uint8Array, headerAt: number, check?: PayloadCheck): Promise<Uint8Array> {
    const bodyAt = headerAt + HEADER_LEN;
    if (message.length < bodyAt + GCM_TAG_LEN) return Promise.reject(new MalformedMessage('message too short'));
    return this.decrypt(
      message.subarray(headerAt, headerAt + 32),
      readU32(message, headerAt + 32),
      readU32(message, headerAt + 36),
      message.subarray(0, bodyAt),
      message.subarray(bodyAt),
      check,
    );
  }

  /** Decrypt one message; `associated` is every message byte before the ciphertext. */
  async decrypt(
    ratchetKey: Uint8Array,
    pn: number,
    n: number,
    associated: Uint8Array,
    ciphertext: Uint8Array,
    check?: PayloadCheck,
  ): Promise<Uint8Array> {
    const { MAX_SKIP: maxSkip } = RATCHET_BOUNDS;
    const ad = concat(this.ad, associated);
    const nr = this.nr;

    // 2. a stored skipped key for (ratchet key, N)
    const slot = slotOf(ratchetKey, n);
    const stored = this.skipped.get(slot);
    if (stored !== undefined) {
      const payload = await openWith(stored.mk, ciphertext, ad);
      if (check !== undefined) await check(payload);
      this.skipped.delete(slot);
      return payload;
    }

    // 3. the current receiving chain
    if (this.dhr !== null && bytesEqual(ratchetKey, this.dhr)) {
      const ckr = this.ckr;
      if (ckr === null) throw new DecryptionFailed("message reuses the responder's prekey as ratchet key");
      if (n < nr) throw new ReplayedMessage('message number already received (or its key expired)');
      if (n - nr > maxSkip) throw new TooManySkippedMessages(`message skips ${n - nr} keys (max ${maxSkip})`);
      const [newKeys, ck] = await skip(ckr, nr, n, ratchetKey.slice());
      const [mk, next] = await chainKeyStep(ck);
      const payload = await openWith(mk, ciphertext, ad);
      if (check !== undefined) await check(payload);
      this.store(newKeys, this.chainIndex);
      this.ckr = next;
      this.nr = n + 1;
      return payload;
    }

    // 4. a remembered old chain
    if (this.oldChains.has(b64encode(ratchetKey))) {
      throw new ReplayedMessage('message from an old chain already received (or its key expired)');
    }

    // 5. a new ratchet public key: DH ratchet step, computed on the side
    if (n > maxSkip) throw new TooManySkippedMessages(`message skips ${n} keys (max ${maxSkip})`);
    let oldKeys: NewKey[] = [];
    if (this.ckr !== null && this.dhr !== null && pn - this.nr <= maxSkip) {
      // Further than that the previous chain is given up (its missing messages are
      // lost; refusing the new chain would lose every later one too).
      [oldKeys] = await skip(this.ckr, this.nr, pn, this.dhr);
    }
    let dhOut: Uint8Array;
    try {
      dhOut = await this.dhs.dh(ratchetKey);
    } catch (error) {
      if (error instanceof InvalidKey) throw new DecryptionFailed('ratchet key is a low-order point');
      throw error;
    }
    const remoteKey = ratchetKey.slice();
    const [rk1, ckr0] = await kdfRk(this.rk, dhOut);
    const [newKeys, ckr1] = await skip(ckr0, 0, n, remoteKey);
    const [mk, ckr2] = await chainKeyStep(ckr1);
    const payload = await openWith(mk, ciphertext, ad);
    if (check !== undefined) await check(payload);

    // 6. success: the new sending chain, then commit everything at once.
    const newDhs = await X25519KeyPair.generate(this.rng);
    const [rk2, cks] = await kdfRk(rk1, await newDhs.dh(remoteKey));
    if (this.dhr !== null && this.ckr !== null) {
      const key = b64encode(this.dhr);
      const existing = this.oldChains.get(key);
      if (existing !== undefined) existing.chainIndex = this.chainIndex;
      else this.oldChains.set(key, { ratchetKey: this.dhr, chainIndex: this.chainIndex });
    }
    this.store(oldKeys, this.chainIndex);
    this.chainIndex += 1;
    this.store(newKeys, this.chainIndex);
    this.pn = this.ns;
    this.ns = 0;
    this.nr = n + 1;
    this.dhr = remoteKey;
    this.ckr = ckr2;
    this.cks = cks;
    this.rk = rk2;
    this.dhs = newDhs;
    this.expire();
    return payload;
  }

  private store(keys: NewKey[], chainIndex: number): void {
    const skipped = this.skipped;
    for (const [ratchetKey, n, mk] of keys) {
      const slot = slotOf(ratchetKey, n);
      const existing = skipped.get(slot);
      if (existing !== undefined) {
        // Python's dict assignment keeps the position of an existing key.
        existing.mk = mk;
        existing.chainIndex = chainIndex;
      } else {
        skipped.set(slot, { ratchetKey, n, mk, chainIndex });
      }
    }
    let excess = skipped.size - RATCHET_BOUNDS.MAX_SKIPPED_KEYS;
    if (excess > 0) {
      for (const slot of skipped.keys()) {
        if (excess-- <= 0) break;
        skipped.delete(slot); // oldest first
      }
    }
  }

  private expire(): void {
    const remembered = this.chainIndex - RATCHET_BOUNDS.MAX_REMEMBERED_CHAINS;
    if (this.oldChains.size > RATCHET_BOUNDS.MAX_REMEMBERED_CHAINS) {
      for (const [key, value] of [...this.oldChains]) {
        if (value.chainIndex < remembered) this.oldChains.delete(key);
      }
    }
    // Skipped keys of a receiving chain are deleted at the MAX_OLD_CHAINS-th DH step
    // after it (docs/crypto.md): those of the last MAX_OLD_CHAINS receiving chains, the
    // current one included, are kept. (It kept one chain more, as ratchet.py did.)
    const oldest = this.chainIndex - RATCHET_BOUNDS.MAX_OLD_CHAINS;
    for (const [slot, value] of [...this.skipped]) {
      if (value.chainIndex <= oldest) this.skipped.delete(slot);
    }
  }

  // ------------------------------------------------------------------ state

  /** The JSON object of Python's `RatchetState.to_json` (same members, same order). */
  toJson(): Record<string, unknown> {
    const opt = (value: Uint8Array | null): string | null => (value === null ? null : b64encode(value));
    return {
      ad: b64encode(this.ad),
      rk: b64encode(this.rk),
      dhs: b64encode(this.dhs.privateBytes()),
      dhr: opt(this.dhr),
      cks: opt(this.cks),
      ckr: opt(this.ckr),
      ns: this.ns,
      nr: this.nr,
      pn: this.pn,
      chain_index: this.chainIndex,
      skipped: [...this.skipped.values()].map((s) => [b64encode(s.ratchetKey), s.n, b64encode(s.mk), s.chainIndex]),
      old_chains: [...this.oldChains.values()].map((c) => [b64encode(c.ratchetKey), c.chainIndex]),
    };
  }

  static async fromJson(obj: unknown, rng: RandomSource = systemRandom): Promise<RatchetState> {
    try {
      const o = obj as Record<string, unknown>;
      const key = (value: unknown, length = 32): Uint8Array => b64decode(value, { field: 'ratchet', length });
      const opt = (value: unknown): Uint8Array | null => (value === null ? null : key(value));
      const count = (value: unknown): number => {
        if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
          throw new MalformedState('ratchet: bad counter');
        }
        return value;
      };
      const need = (name: string): unknown => {
        if (typeof o !== 'object' || o === null || !(name in o)) throw new MalformedState(`ratchet: ${name} missing`);
        return o[name];
      };
      const list = (value: unknown): unknown[][] => {
        if (!Array.isArray(value) || !value.every(Array.isArray)) throw new MalformedState('ratchet: expected a list');
        return value as unknown[][];
      };
      const skipped = new Map<string, SkippedKey>();
      for (const entry of list(need('skipped'))) {
        if (entry.length !== 4) throw new MalformedState('ratchet: bad skipped key');
        const ratchetKey = key(entry[0]);
        const n = count(entry[1]);
        skipped.set(slotOf(ratchetKey, n), { ratchetKey, n, mk: key(entry[2]), chainIndex: count(entry[3]) });
      }
      const oldChains = new Map<string, { ratchetKey: Uint8Array; chainIndex: number }>();
      for (const entry of list(need('old_chains'))) {
        if (entry.length !== 2) throw new MalformedState('ratchet: bad old chain');
        const ratchetKey = key(entry[0]);
        oldChains.set(b64encode(ratchetKey), { ratchetKey, chainIndex: count(entry[1]) });
      }
      return new RatchetState({
        ad: b64decode(need('ad'), { field: 'ad' }),
        rk: key(need('rk')),
        dhs: await X25519KeyPair.fromPrivateBytes(key(need('dhs'))),
        dhr: opt(need('dhr')),
        cks: opt(need('cks')),
        ckr: opt(need('ckr')),
        ns: count(need('ns')),
        nr: count(need('nr')),
        pn: count(need('pn')),
        chainIndex: count(need('chain_index')),
        skipped,
        oldChains,
        rng,
      });
    } catch (error) {
      if (error instanceof MalformedState) throw error;
      if (error instanceof MalformedBundle || error instanceof CryptoError || error instanceof TypeError) {
        throw new MalformedState(`ratchet state does not parse (${String(error)})`);
      }
      throw error;
    }
  }
}
