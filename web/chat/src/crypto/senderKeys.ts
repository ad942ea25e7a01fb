/**
 * Sender keys for groups, as Signal's (client/parley/crypto/sender_keys.py;
 * docs/crypto.md "Sender keys (groups)").
 *
 * Per member and group a sender chain: random 32-bit chain id, 32-byte chain
 * key, iteration counter, Ed25519 signing key. Per message:
 *   (mk, ck') = KDF_CK(ck)
 *   key ‖ nonce = HKDF-SHA256(salt = 32 zero bytes, ikm = mk, info = "parley-v1/sender-key/message-keys", L = 44)
 *   AES-256-GCM with AD = "parley-v1/group" ‖ u16(len(group id)) ‖ group id ‖ message[0:42],
 *   then an Ed25519 signature over every preceding byte.
 * Receivers verify the signature first; at most MAX_SKIP iterations ahead,
 * MAX_SKIPPED_KEYS stored per chain (oldest evicted); GroupSession keeps
 * CHAINS_KEPT_PER_SENDER (64, session.ts) chains per sender (older ones dropped
 * and retired; several exist around rotations: 5, MAX_CHAINS_PER_SENDER here,
 * until 2026-12-08, as Python's). Decryption is transactional.
 */

import { U32_MAX, b64decode, b64encode, concat, readU32, u16, utf8 } from './encoding.ts';
import {
  CounterExhausted,
  CryptoError,
  MalformedState,
  ReplayedMessage,
  TooManySkippedMessages,
} from './errors.ts';
import {
  Ed25519KeyPair,
  type RandomSource,
  aeadDecrypt,
  aeadEncrypt,
  chainKeyStep,
  deriveMessageKeys,
  ed25519Verify,
} from './primitives.ts';
import type { PayloadCheck } from './ratchet.ts';
import { type GroupMessage, SenderKeyDistribution, groupPrefix } from './wire.ts';

export const MESSAGE_INFO = utf8('parley-v1/sender-key/message-keys');
/** 5,000 here (Python: libsignal's 25,000): a chain step is three async WebCrypto calls,
 * so a member's 25,000-key jump would hold the browser ~2.5 s a message. */
export const MAX_SKIP = 5000;
export const MAX_SKIPPED_KEYS = 2000;
/** Ids of dropped chains remembered per sender (a distribution for one is refused). */
export const MAX_RETIRED_CHAINS = 1000;
const GROUP_LABEL = utf8('parley-v1/group');

export function groupAssociatedData(groupId: string): Uint8Array {
  const gid = utf8(groupId);
  return concat(GROUP_LABEL, u16(gid.length), gid);
}

function int(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new MalformedState(`${what}: expected a non-negative integer`);
  }
  return value;
}

function field(obj: unknown, name: string, what: string): unknown {
  if (typeof obj !== 'object' || obj === null || !(name in obj)) throw new MalformedState(`${what}: ${name} missing`);
  return (obj as Record<string, unknown>)[name];
}

function asState<T>(what: string, parse: () => Promise<T>): Promise<T> {
  return parse().catch((error: unknown) => {
    if (error instanceof MalformedState) throw error;
    if (error instanceof CryptoError || error instanceof TypeError) {
      throw new MalformedState(`${what} does not parse (${String(error)})`);
    }
    throw error;
  });
}

/** Our own sending chain in one group. */
export class SenderChain {
  constructor(
    public chainId: number,
    public chainKey: Uint8Array,
    public iteration: number,
    public signing: Ed25519KeyPair,
  ) {}

  /** Draws chain id (4, big-endian; again while in `avoid`), chain key (32), signing seed (32). */
  static async generate(rng: RandomSource, avoid?: Set<number>): Promise<SenderChain> {
    let chainId: number;
    for (;;) {
      chainId = readU32(rng(4), 0);
      if (avoid === undefined || !avoid.has(chainId)) break;
    }
    const chainKey = rng(32);
    return new SenderChain(chainId, chainKey, 0, await Ed25519KeyPair.generate(rng));
  }

  distribution(groupId: string): SenderKeyDistribution {
    return new SenderKeyDistribution(groupId, this.chainId, this.iteration, this.chainKey, this.signing.public);
  }

  /** `commitment` may still be computing. Not re-entrant: the caller (GroupSession) serialises calls. */
  async encrypt(
    payload: Uint8Array,
    commitment: Uint8Array | Promise<Uint8Array>,
    groupAd: Uint8Array,
  ): Promise<Uint8Array> {
    if (commitment instanceof Promise) commitment.catch(() => undefined); // awaited below
    if (this.iteration > U32_MAX) throw new CounterExhausted('sender chain exhausted; rotate the sender key');
    const [mk, next] = await chainKeyStep(this.chainKey);
    const [key, nonce] = await deriveMessageKeys(mk, MESSAGE_INFO);
    const prefix = groupPrefix(await commitment, this.chainId, this.iteration);
    const body = concat(prefix, await aeadEncrypt(key, nonce, payload, concat(groupAd, prefix)));
    const signature = await this.signing.sign(body);
    this.chainKey = next;
    this.iteration += 1;
    return concat(body, signature);
  }

  toJson(): Record<string, unknown> {
    return {
      chain_id: this.chainId,
      chain_key: b64encode(this.chainKey),
      iteration: this.iteration,
      signing: b64encode(this.signing.seed()),
    };
  }

  static fromJson(obj: unknown): Promise<SenderChain> {
    return asState('sender chain', async () => {
      const what = 'sender chain';
      return new SenderChain(
        int(field(obj, 'chain_id', what), what),
        b64decode(field(obj, 'chain_key', what), { length: 32 }),
        int(field(obj, 'iteration', what), what),
        await Ed25519KeyPair.fromSeed(b64decode(field(obj, 'signing', what), { length: 32 })),
      );
    });
  }
}

/** Another member's chain as we track it. */
export class ReceiverChain {
  constructor(
    readonly chainId: number,
    public chainKey: Uint8Array,
    /** The next iteration we have not derived yet. */
    public iteration: number,
    readonly signingKey: Uint8Array,
    readonly skipped: Map<number, Uint8Array> = new Map(),
  ) {}

  static fromDistribution(dist: SenderKeyDistribution): ReceiverChain {
    return new ReceiverChain(dist.chainId, dist.chainKey, dist.iteration, dist.signingKey);
  }

  /** Verify the signature, then decrypt; commits only on success (`check` included). */
  async decrypt(message: GroupMessage, groupAd: Uint8Array, check?: PayloadCheck): Promise<Uint8Array> {
    await ed25519Verify(this.signingKey, message.signature, message.signed);
    const ad = concat(groupAd, message.associated);
    const n = message.iteration;
    const stored = this.skipped.get(n);
    if (stored !== undefined) {
      const payload = await ReceiverChain.open(stored, message.ciphertext, ad);
      if (check !== undefined) await check(payload);
      this.skipped.delete(n);
      return payload;
    }
    if (n < this.iteration) throw new ReplayedMessage('group message iteration already received (or its key expired)');
    if (n - this.iteration > MAX_SKIP) {
      throw new TooManySkippedMessages(`group message skips ${n - this.iteration} keys (max ${MAX_SKIP})`);
    }
    let ck = this.chainKey;
    const newKeys: [number, Uint8Array][] = [];
    const keepFrom = n - MAX_SKIPPED_KEYS; // no more are ever stored
    for (let i = this.iteration; i < n; i++) {
      const [skippedKey, next] = await chainKeyStep(ck);
      if (i >= keepFrom) newKeys.push([i, skippedKey]);
      ck = next;
    }
    const [mk, next] = await chainKeyStep(ck);
    const payload = await ReceiverChain.open(mk, message.ciphertext, ad);
    if (check !== undefined) await check(payload);
    for (const [i, key] of newKeys) this.skipped.set(i, key);
    let excess = this.skipped.size - MAX_SKIPPED_KEYS;
    if (excess > 0) {
      for (const i of this.skipped.keys()) {
        if (excess-- <= 0) break;
        this.skipped.delete(i);
      }
    }
    this.chainKey = next;
    this.iteration = n + 1;
    return payload;
  }

  private static async open(mk: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array): Promise<Uint8Array> {
    const [key, nonce] = await deriveMessageKeys(mk, MESSAGE_INFO);
    return aeadDecrypt(key, nonce, ciphertext, ad);
  }

  toJson(): Record<string, unknown> {
    return {
      chain_id: this.chainId,
      chain_key: b64encode(this.chainKey),
      iteration: this.iteration,
      signing_key: b64encode(this.signingKey),
      skipped: [...this.skipped.entries()].map(([i, k]) => [i, b64encode(k)]),
    };
  }

  static fromJson(obj: unknown): Promise<ReceiverChain> {
    return asState('receiver chain', async () => {
      const what = 'receiver chain';
      const raw = field(obj, 'skipped', what);
      if (!Array.isArray(raw)) throw new MalformedState(`${what}: skipped is not a list`);
      const skipped = new Map<number, Uint8Array>();
      for (const entry of raw as unknown[]) {
        if (!Array.isArray(entry) || entry.length !== 2) throw new MalformedState(`${what}: bad skipped key`);
        skipped.set(int(entry[0], what), b64decode(entry[1], { length: 32 }));
      }
      return new ReceiverChain(
        int(field(obj, 'chain_id', what), what),
        b64decode(field(obj, 'chain_key', what), { length: 32 }),
        int(field(obj, 'iteration', what), what),
        b64decode(field(obj, 'signing_key', what), { length: 32 }),
        skipped,
      );
    });
  }
}
