/**
 * Public API: pairwise sessions, group sessions, identity checks
 * (client/parley/crypto/session.py; docs/crypto.md "Public API").
 *
 *   const bob = await Device.generate();
 *   // ... Alice claims a bundle of Bob's from the key directory ...
 *   const binding = { initiatorUser: 'alice', initiatorDevice: 1, responderUser: 'bob', responderDevice: 1 };
 *   const [aliceSession, first] = await Session.initiate(alice, bundleJson, utf8('hi'), { binding });
 *   const [bobSession, plaintext] = await Session.respond(bob, first, { binding });   // consumes prekeys
 *   const reply = await bobSession.encrypt(utf8('hello'));
 *   await aliceSession.decrypt(reply);
 *
 * Every operation is async (WebCrypto) and serialised per object, so
 * overlapping calls on one Session, GroupSession or Device run one after the
 * other in call order, as the synchronous Python calls do. States serialise
 * with `toBytes()` / `fromBytes()` as UTF-8 JSON byte-identical to Python's;
 * persist them after every call that changes them (`respond` changes the device).
 */

import { PrekeyBundle, PublicIdentity } from './bundle.ts';
import { Device } from './device.ts';
import { b64decode, b64encode, bytesEqual, concat, dumpsState, loadState, utf8 } from './encoding.ts';
import type { StateJson } from './encoding.ts';
import {
  BadCommitment,
  CryptoError,
  FrankingMismatch,
  IdentityChanged,
  MalformedMessage,
  MalformedState,
  RetiredSenderKey,
  SessionMismatch,
  UnknownSenderKey,
} from './errors.ts';
import { safetyNumber } from './fingerprint.ts';
import * as franking from './franking.ts';
import * as pqxdh from './pqxdh.ts';
import { type RandomSource, mlkem768Encapsulate, requireBytes, sha256, systemRandom } from './primitives.ts';
import { type PayloadCheck, RatchetState } from './ratchet.ts';
import { MAX_RETIRED_CHAINS, ReceiverChain, SenderChain, groupAssociatedData } from './senderKeys.ts';
import { Serial } from './serial.ts';
import {
  HEADER_LEN,
  MESSAGE_PREFIX_LEN,
  TYPE_INITIAL,
  TYPE_MESSAGE,
  VERSION,
  PrekeySection,
  SenderKeyDistribution,
  parseGroup,
  parsePairwise,
} from './wire.ts';

export { Device };

const STATE_VERSION = 1;
const FK = franking.FRANKING_KEY_LEN;
const PREFIX_MESSAGE = new Uint8Array([VERSION, TYPE_MESSAGE]);
const PREFIX_INITIAL = new Uint8Array([VERSION, TYPE_INITIAL]);
const COMMITMENT_AT = franking.COMMITMENT_OFFSET;
const COMMITMENT_END = franking.COMMITMENT_OFFSET + franking.COMMITMENT_LEN;
const MESSAGE_HEADER_AT = MESSAGE_PREFIX_LEN - HEADER_LEN;

/** A decrypted message plus what a report needs (plaintext, franking key, commitment). */
export interface DecryptedMessage {
  plaintext: Uint8Array;
  frankingKey: Uint8Array;
  commitment: Uint8Array;
}

/**
 * `[commitment, payload]` with payload = franking key ‖ plaintext. The franking key is
 * drawn now (the same draw order as Python); the commitment is left computing so the
 * caller's key derivation runs at the same time.
 */
function sealPayload(plaintext: Uint8Array, rng: RandomSource): [Promise<Uint8Array>, Uint8Array] {
  requireBytes('plaintext', plaintext); // before drawing the franking key
  const frankingKey = rng(FK);
  return [franking.commit(plaintext, frankingKey), concat(frankingKey, plaintext)];
}

/** The check a decrypted payload must pass before the session commits. */
function commitmentCheck(commitment: Uint8Array): PayloadCheck {
  const expected = commitment.slice();
  return async (payload: Uint8Array): Promise<void> => {
    if (payload.length < FK) throw new MalformedMessage('payload shorter than the franking key');
    try {
      await franking.verifyReport(payload.subarray(FK), payload.subarray(0, FK), expected);
    } catch (error) {
      if (error instanceof FrankingMismatch) throw new BadCommitment('franking commitment does not match the message');
      throw error;
    }
  };
}

function decrypted(payload: Uint8Array, commitment: Uint8Array): DecryptedMessage {
  return { plaintext: payload.slice(FK), frankingKey: payload.slice(0, FK), commitment: commitment.slice() };
}

/** True if `message` is a PQXDH initial message (give it to {@link Session.respond}). */
export function isInitialMessage(message: Uint8Array): boolean {
  return message.length >= 2 && message[0] === VERSION && message[1] === TYPE_INITIAL;
}

/**
 * SHA-256 of an initial message's PQXDH fields: the same for every initial message of
 * one handshake (the initiator repeats them until answered), and what
 * {@link Session.initialDigest} holds for the session it started. MalformedMessage (or
 * UnsupportedVersion) for anything else.
 */
export async function initialMessageDigest(message: Uint8Array): Promise<Uint8Array> {
  const parsed = parsePairwise(message);
  if (parsed.type !== TYPE_INITIAL || parsed.prekeyRaw === null) throw new MalformedMessage('not an initial message');
  return sha256(parsed.prekeyRaw);
}

/**
 * Trust on first use: IdentityChanged if `presented` differs from the `known`
 * identity of a contact (`null` = first contact, always accepted). With
 * `localIdentity` and both user ids the error carries the old and new safety numbers.
 */
export async function checkIdentity(
  known: PublicIdentity | null,
  presented: PublicIdentity,
  options: { localIdentity?: PublicIdentity; localUserId?: string; remoteUserId?: string } = {},
): Promise<void> {
  if (known === null) return;
  if (bytesEqual(known.signingKey, presented.signingKey) && bytesEqual(known.dhKey, presented.dhKey)) return;
  let oldNumber: string | null = null;
  let newNumber: string | null = null;
  const { localIdentity, localUserId, remoteUserId } = options;
  if (localIdentity !== undefined && localUserId !== undefined && remoteUserId !== undefined) {
    oldNumber = await safetyNumber(localIdentity.signingKey, localUserId, known.signingKey, remoteUserId);
    newNumber = await safetyNumber(localIdentity.signingKey, localUserId, presented.signingKey, remoteUserId);
  }
  throw new IdentityChanged("the contact's identity key changed", {
    oldSafetyNumber: oldNumber,
    newSafetyNumber: newNumber,
  });
}

/** Options of {@link Session.respond}: `binding` is the sender's ids as the envelope
 * gives them, and ours ({@link pqxdh.Binding}). */
export interface RespondOptions {
  binding: pqxdh.Binding;
  rng?: RandomSource;
}

export interface InitiateOptions {
  /** This device's ids and the ones asked the key directory for ({@link pqxdh.Binding}). */
  binding: pqxdh.Binding;
  /** The identity we already know for this contact (IdentityChanged if the bundle has another). */
  expectedIdentity?: PublicIdentity | null;
  /** For test vectors: the randomness (default: the device's). */
  rng?: RandomSource;
  /** For test vectors: `encapsulate(ek) -> [sharedSecret, ciphertext]`. */
  kemEncapsulate?: pqxdh.Encapsulate;
}

/** A pairwise end-to-end encrypted session with one device of a contact. */
export class Session {
  readonly localIdentity: PublicIdentity;
  readonly peerIdentity: PublicIdentity;
  readonly #serial = new Serial();
  readonly #ratchet: RatchetState;
  #pendingSection: Uint8Array | null;
  readonly #initialDigest: Uint8Array | null;

  /** @internal Use {@link initiate}, {@link respond} or {@link fromBytes}. */
  constructor(init: {
    ratchet: RatchetState;
    localIdentity: PublicIdentity;
    peerIdentity: PublicIdentity;
    pendingSection: Uint8Array | null;
    initialDigest: Uint8Array | null;
  }) {
    this.#ratchet = init.ratchet;
    this.localIdentity = init.localIdentity;
    this.peerIdentity = init.peerIdentity;
    this.#pendingSection = init.pendingSection;
    this.#initialDigest = init.initialDigest;
  }

  // ------------------------------------------------------------------ handshake

  /**
   * Start a session from a claimed bundle; resolves to the session and the initial
   * message. Every signature in the bundle is verified before any key is used
   * (InvalidSignature / MalformedBundle). `options.binding` names this device and the
   * one written to (MalformedBundle if an id is unusable). Until the peer answers,
   * every message from {@link encrypt} is an initial message with the same PQXDH fields.
   */
  static async initiate(
    device: Device,
    bundle: PrekeyBundle | unknown,
    plaintext: Uint8Array = new Uint8Array(0),
    options: InitiateOptions,
  ): Promise<[Session, Uint8Array]> {
    let verified: PrekeyBundle;
    if (bundle instanceof PrekeyBundle) {
      await bundle.verify();
      verified = bundle;
    } else {
      verified = await PrekeyBundle.fromJson(bundle);
    }
    await checkIdentity(options.expectedIdentity ?? null, verified.identity);
    const rng = options.rng ?? device.rng;
    const handshake = await pqxdh.initiate(
      device.dhKeypair,
      device.identity,
      verified,
      rng,
      options.kemEncapsulate ?? mlkem768Encapsulate,
      options.binding,
    );
    const ratchet = await RatchetState.initiator(
      handshake.secret,
      handshake.associatedData,
      verified.signedPrekey.key,
      rng,
    );
    const session = new Session({
      ratchet,
      localIdentity: device.identity,
      peerIdentity: verified.identity,
      pendingSection: handshake.section.encode(),
      initialDigest: null,
    });
    return [session, await session.encrypt(plaintext)];
  }

  /**
   * Accept an initial message; resolves to the new session and the plaintext.
   * Consumes the one-time X25519 and KEM prekeys it names (persist `device`
   * afterwards). Rejects with InvalidSignature, PrekeyReused, UnknownPrekey,
   * ReplayedMessage, DecryptionFailed, ...; on any error the device is unchanged.
   * When `options.binding` is not the one the initiator bound, the message does not
   * decrypt (DecryptionFailed) and no prekey is consumed.
   */
  static async respond(device: Device, message: Uint8Array, options: RespondOptions): Promise<[Session, Uint8Array]> {
    const [session, received] = await Session.respondMessage(device, message, options);
    return [session, received.plaintext];
  }

  /** Like {@link respond}, with the franking key and commitment too. */
  static respondMessage(
    device: Device,
    message: Uint8Array,
    options: RespondOptions,
  ): Promise<[Session, DecryptedMessage]> {
    return device.serial.run(async () => {
      const parsed = parsePairwise(message);
      if (parsed.type !== TYPE_INITIAL || parsed.prekeyRaw === null) throw new MalformedMessage('not an initial message');
      const section = PrekeySection.decode(parsed.prekeyRaw);
      await section.identity.verify();
      const signedPrekey = device.lookupSignedPrekey(section.signedPrekeyId);
      const oneTime = section.oneTimePrekeyId === null ? null : device.lookupOneTimePrekey(section.oneTimePrekeyId);
      const kem = device.lookupKemPrekey(section.kemPrekeyId);
      if (oneTime === null && kem.lastResort) device.checkBaseKey(section.signedPrekeyId, section.ephemeralKey);
      const [secret, ad] = await pqxdh.respond(
        device.dhKeypair,
        device.identity,
        section,
        signedPrekey,
        oneTime,
        kem.pair(),
        options.binding,
      );
      const ratchet = RatchetState.responder(secret, ad, signedPrekey, options.rng ?? device.rng);
      const payload = await ratchet.decrypt(
        parsed.ratchetKey,
        parsed.previousChainLength,
        parsed.messageNumber,
        parsed.associated,
        parsed.ciphertext,
        commitmentCheck(parsed.commitment),
      );
      // Only once it decrypts (a binding that differs fails above): nothing consumed before.
      device.consume(section.oneTimePrekeyId, kem, section.signedPrekeyId, section.ephemeralKey);
      const session = new Session({
        ratchet,
        localIdentity: device.identity,
        peerIdentity: section.identity,
        pendingSection: null,
        initialDigest: await sha256(parsed.prekeyRaw),
      });
      return [session, decrypted(payload, parsed.commitment)];
    });
  }

  // ------------------------------------------------------------------ messages

  /** Encrypt one message (a fresh franking key and commitment each time). */
  encrypt(plaintext: Uint8Array): Promise<Uint8Array> {
    requireBytes('plaintext', plaintext);
    return this.#serial.run(async () => {
      const [commitment, payload] = sealPayload(plaintext, this.#ratchet.rng);
      const section = this.#pendingSection;
      const prefix = commitment.then((c) =>
        section === null ? concat(PREFIX_MESSAGE, c) : concat(PREFIX_INITIAL, c, section),
      );
      return this.#ratchet.seal(payload, prefix);
    });
  }

  /** Decrypt one message; rejects (and leaves the session unchanged) on any failure. */
  async decrypt(message: Uint8Array): Promise<Uint8Array> {
    return (await this.decryptMessage(message)).plaintext;
  }

  /** Like {@link decrypt}, with the franking key and commitment too. */
  decryptMessage(message: Uint8Array): Promise<DecryptedMessage> {
    requireBytes('message', message);
    return this.#serial.run(async () => {
      let headerAt: number;
      if (message.length >= 2 && message[0] === VERSION && message[1] === TYPE_MESSAGE) {
        headerAt = MESSAGE_HEADER_AT; // the common case
      } else {
        const parsed = parsePairwise(message); // MalformedMessage, UnsupportedVersion
        if (parsed.type === TYPE_INITIAL) {
          const digest = parsed.prekeyRaw === null ? null : await sha256(parsed.prekeyRaw);
          if (this.#initialDigest === null || digest === null || !bytesEqual(digest, this.#initialDigest)) {
            throw new SessionMismatch('initial message of another session');
          }
        }
        headerAt = parsed.associated.length - HEADER_LEN;
      }
      const commitment = message.subarray(COMMITMENT_AT, COMMITMENT_END);
      const payload = await this.#ratchet.open(message, headerAt, commitmentCheck(commitment));
      this.#pendingSection = null; // the peer has our session: stop sending PQXDH fields
      return decrypted(payload, commitment);
    });
  }

  // ------------------------------------------------------------------ identity

  /** For a session started by the peer's initial message, SHA-256 of its PQXDH fields
   * ({@link initialMessageDigest}); null for one we initiated. */
  get initialDigest(): Uint8Array | null {
    return this.#initialDigest === null ? null : this.#initialDigest.slice();
  }

  /** The peer's identity keys in a serialised session, read without restoring its
   * ratchet or verifying anything (MalformedState if it does not parse). */
  static peerKeysOf(data: Uint8Array | string): { signingKey: Uint8Array; dhKey: Uint8Array } {
    const obj = loadState(data) as { peer?: { signing_key?: unknown; dh_key?: unknown } } | null;
    try {
      const peer = typeof obj === 'object' && obj !== null ? obj.peer : undefined;
      if (typeof peer !== 'object' || peer === null) throw new MalformedState('session state: peer missing');
      return {
        signingKey: b64decode(peer.signing_key, { field: 'signing_key', length: 32 }),
        dhKey: b64decode(peer.dh_key, { field: 'dh_key', length: 32 }),
      };
    } catch (error) {
      if (error instanceof MalformedState) throw error;
      if (error instanceof CryptoError) throw new MalformedState(`session state does not parse (${String(error)})`);
      throw error;
    }
  }

  /** The {@link initialDigest} of a serialised session, read without restoring its
   * ratchet (MalformedState if it does not parse). */
  static initialDigestOf(data: Uint8Array | string): Uint8Array | null {
    const obj = loadState(data) as { initial_digest?: unknown } | null;
    try {
      if (typeof obj !== 'object' || obj === null || !('initial_digest' in obj)) throw new MalformedState('session state: initial_digest missing');
      const digest = obj.initial_digest;
      return digest === null ? null : b64decode(digest, { field: 'initial_digest', length: 32 });
    } catch (error) {
      if (error instanceof MalformedState) throw error;
      if (error instanceof CryptoError) throw new MalformedState(`session state does not parse (${String(error)})`);
      throw error;
    }
  }

  /** The 60-digit safety number of this session's two device identities. */
  safetyNumber(localUserId: string, peerUserId: string): Promise<string> {
    return safetyNumber(this.localIdentity.signingKey, localUserId, this.peerIdentity.signingKey, peerUserId);
  }

  // ------------------------------------------------------------------ persistence

  /** UTF-8 JSON, byte-identical to Python's `Session.to_bytes()`. Waits for queued operations. */
  toBytes(): Promise<Uint8Array> {
    return this.#serial.run(async () => this.toBytesNow());
  }

  /** @internal Serialise without waiting (only when no operation is in flight). */
  toBytesNow(): Uint8Array {
    const obj = {
      v: STATE_VERSION,
      local: this.localIdentity.toJson(),
      peer: this.peerIdentity.toJson(),
      pending_section: this.#pendingSection === null ? null : b64encode(this.#pendingSection),
      initial_digest: this.#initialDigest === null ? null : b64encode(this.#initialDigest),
      ratchet: this.#ratchet.toJson(),
    };
    return utf8(dumpsState(obj as unknown as StateJson));
  }

  static async fromBytes(data: Uint8Array | string, options: { rng?: RandomSource } = {}): Promise<Session> {
    const obj = loadState(data) as Record<string, unknown>;
    try {
      if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new MalformedState('not an object');
      for (const name of ['v', 'local', 'peer', 'pending_section', 'initial_digest', 'ratchet']) {
        if (!(name in obj)) throw new MalformedState(`session state: ${name} missing`);
      }
      if (obj['v'] !== STATE_VERSION) throw new MalformedState('unsupported session state version');
      const pending = obj['pending_section'];
      const digest = obj['initial_digest'];
      return new Session({
        ratchet: await RatchetState.fromJson(obj['ratchet'], options.rng ?? systemRandom),
        localIdentity: await PublicIdentity.fromJson(obj['local']),
        peerIdentity: await PublicIdentity.fromJson(obj['peer']),
        pendingSection: pending === null ? null : b64decode(pending),
        initialDigest: digest === null ? null : b64decode(digest, { length: 32 }),
      });
    } catch (error) {
      if (error instanceof MalformedState) throw error;
      if (error instanceof CryptoError || error instanceof TypeError) {
        throw new MalformedState(`session state does not parse (${String(error)})`);
      }
      throw error;
    }
  }
}

/**
 * Chains a receiver keeps per member of a group, the newest first; older ones are
 * dropped (their ids retired). A member who was offline while a sender rotated (each
 * member leaving makes every remaining one rotate at its next message) gets the new keys
 * from its inbox before the room's log: every chain whose messages it has not read yet
 * must still be there. It was 5 (`MAX_CHAINS_PER_SENDER`) until 2026-12-08, as Python's:
 * six members leaving while one was offline lost that member the first chain's messages
 * (kept waiting for a key it would never have again). ~160 bytes a chain without
 * skipped keys: 64 are ~10 KB of state a member.
 */
export const CHAINS_KEPT_PER_SENDER = 64;

/** Skipped message keys kept over all of one member's chains (each chain also keeps at
 * most MAX_SKIPPED_KEYS), as Python's SKIPPED_KEYS_PER_SENDER: a member that jumped far
 * on each of 64 chains would leave 64 x 2,000 keys (~7 MB) in the row each of its
 * messages reads and writes. The oldest chains' (then the oldest iterations) go first. */
export const SKIPPED_KEYS_PER_SENDER = 2000;

function boundSkipped(chains: ReceiverChain[]): void {
  let excess = chains.reduce((n, c) => n + c.skipped.size, 0) - SKIPPED_KEYS_PER_SENDER;
  for (let c = chains.length - 1; c >= 0 && excess > 0; c--) {
    for (const i of [...chains[c]!.skipped.keys()]) {
      if (excess <= 0) break;
      chains[c]!.skipped.delete(i);
      excess--;
    }
  }
}

/** A member of a GroupSession loaded from rows (`fromRows`) without that member's row:
 * a bug of the caller, never taken for "no key" (Python's `LookupError`). */
export class MemberNotLoaded extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MemberNotLoaded';
  }
}

/**
 * Sender-key state for one group: our sending chain and the other members'
 * chains. Members are named by the caller (e.g. `"user_id:device_id"`): the
 * sender of the pairwise session that carried their distribution message.
 *
 * Stored whole (`toBytes` / `fromBytes`), or in rows (a large group's state is many
 * members' chains, and a message changes one member's): `ownRow()` for our chain,
 * `memberRow(member)` per member; `fromRows` makes a session with only the members a
 * call needs loaded (those it names, row or none), and `ownChanged` / `changedMembers()`
 * say which rows to write again (until `markSaved()`), as Python's GroupSession.
 */
export class GroupSession {
  readonly groupId: string;
  rng: RandomSource;
  readonly #serial = new Serial();
  #own: SenderChain;
  readonly #receivers: Map<string, ReceiverChain[]>;
  // member -> ids of chains dropped (evicted, or the member removed), oldest first
  readonly #retired: Map<string, number[]>;
  // The members whose state is here (null: every member's); another is refused.
  readonly #loaded: ReadonlySet<string> | null;
  #ownChanged = false;
  readonly #changed = new Set<string>();
  #stored: Set<string>; // the members with a row (when loaded, or at markSaved)

  /** @internal Use {@link create}, {@link fromBytes} or {@link fromRows}. */
  constructor(
    groupId: string,
    own: SenderChain,
    receivers?: Map<string, ReceiverChain[]>,
    rng: RandomSource = systemRandom,
    retired?: Map<string, number[]>,
    loaded: ReadonlySet<string> | null = null,
  ) {
    if (typeof groupId !== 'string' || groupId === '') throw new RangeError('group_id must be a non-empty string');
    this.groupId = groupId;
    this.#own = own;
    this.#receivers = receivers ?? new Map();
    this.#retired = retired ?? new Map();
    this.rng = rng;
    this.#loaded = loaded;
    this.#stored = new Set([...this.#receivers.keys(), ...this.#retired.keys()]);
  }

  /** Draws chain id (4), chain key (32), signing seed (32). */
  static async create(groupId: string, options: { rng?: RandomSource } = {}): Promise<GroupSession> {
    if (typeof groupId !== 'string' || groupId === '') throw new RangeError('group_id must be a non-empty string');
    const rng = options.rng ?? systemRandom;
    const session = new GroupSession(groupId, await SenderChain.generate(rng), undefined, rng);
    session.#ownChanged = true;
    return session;
  }

  get chainId(): number {
    return this.#own.chainId;
  }

  /** Our current sender key (at its current iteration), to send over pairwise sessions. */
  distributionMessage(): Promise<Uint8Array> {
    return this.#serial.run(async () => this.#own.distribution(this.groupId).encode());
  }

  /** A fresh sender key (new chain id, chain key, signing key); its distribution message. */
  rotate(): Promise<Uint8Array> {
    return this.#serial.run(() => this.#rotate());
  }

  async #rotate(): Promise<Uint8Array> {
    this.#own = await SenderChain.generate(this.rng, new Set([this.#own.chainId]));
    this.#ownChanged = true;
    return this.#own.distribution(this.groupId).encode();
  }

  /** Forget `member`'s sender keys and rotate ours; the new distribution message. */
  removeMember(member: string): Promise<Uint8Array> {
    return this.#serial.run(async () => {
      this.#checkLoaded(member);
      this.#retire(member, this.#receivers.get(member) ?? []);
      this.#receivers.delete(member);
      this.#changed.add(member);
      return this.#rotate();
    });
  }

  /** The members we hold sender keys of (of those loaded, for {@link fromRows}). */
  members(): string[] {
    return [...this.#receivers.keys()];
  }

  encrypt(plaintext: Uint8Array): Promise<Uint8Array> {
    requireBytes('plaintext', plaintext);
    return this.#serial.run(async () => {
      const [commitment, payload] = sealPayload(plaintext, this.rng);
      const message = await this.#own.encrypt(payload, commitment, groupAssociatedData(this.groupId));
      this.#ownChanged = true;
      return message;
    });
  }

  /** Store `member`'s sender key from a distribution message (idempotent). The newest
   * {@link CHAINS_KEPT_PER_SENDER} chains of a member are kept; older ones are dropped
   * and their ids retired (a distribution for one of them is refused: RetiredSenderKey). */
  processDistribution(member: string, message: Uint8Array): Promise<void> {
    return this.#serial.run(async () => {
      this.#checkLoaded(member);
      const dist = SenderKeyDistribution.decode(message);
      if (dist.groupId !== this.groupId) throw new SessionMismatch('distribution message is for another group');
      const chains = this.#receivers.get(member) ?? [];
      if (chains.some((c) => c.chainId === dist.chainId)) return;
      if (this.#retired.get(member)?.includes(dist.chainId)) {
        throw new RetiredSenderKey(
          `sender key ${dist.chainId} of ${JSON.stringify(member)} was retired: refusing to take it ` +
            'again (it would let old group messages be replayed); the member must send a new sender key',
        );
      }
      chains.unshift(ReceiverChain.fromDistribution(dist));
      this.#receivers.set(member, chains);
      this.#retire(member, chains.slice(CHAINS_KEPT_PER_SENDER));
      chains.splice(CHAINS_KEPT_PER_SENDER);
      this.#changed.add(member);
    });
  }

  #retire(member: string, chains: ReceiverChain[]): void {
    if (chains.length === 0) return;
    let retired = this.#retired.get(member);
    if (retired === undefined) this.#retired.set(member, (retired = []));
    for (const c of chains) if (!retired.includes(c.chainId)) retired.push(c.chainId);
    if (retired.length > MAX_RETIRED_CHAINS) retired.splice(0, retired.length - MAX_RETIRED_CHAINS);
  }

  #checkLoaded(member: string): void {
    if (this.#loaded !== null && !this.#loaded.has(member)) {
      throw new MemberNotLoaded(`${JSON.stringify(member)}'s sender keys were not loaded (fromRows)`);
    }
  }

  async decrypt(member: string, message: Uint8Array): Promise<Uint8Array> {
    return (await this.decryptMessage(member, message)).plaintext;
  }

  /** Verify and decrypt `member`'s group message (transactional). A chain we do not
   * have raises UnknownSenderKey (its key may still come); one we had and dropped
   * (retired) raises RetiredSenderKey: it never opens here. */
  decryptMessage(member: string, message: Uint8Array): Promise<DecryptedMessage> {
    return this.#serial.run(async () => {
      this.#checkLoaded(member);
      const parsed = parseGroup(message);
      for (const chain of this.#receivers.get(member) ?? []) {
        if (chain.chainId === parsed.chainId) {
          const payload = await chain.decrypt(parsed, groupAssociatedData(this.groupId), commitmentCheck(parsed.commitment));
          boundSkipped(this.#receivers.get(member) ?? []);
          this.#changed.add(member);
          return decrypted(payload, parsed.commitment);
        }
      }
      if (this.#retired.get(member)?.includes(parsed.chainId)) {
        throw new RetiredSenderKey(
          `sender key ${parsed.chainId} of ${JSON.stringify(member)} was dropped (newer ones replaced it, ` +
            'or the member was removed): its messages cannot be read',
        );
      }
      throw new UnknownSenderKey(`no sender key ${parsed.chainId} for ${JSON.stringify(member)}`);
    });
  }

  // ------------------------------------------------------------------ rows

  /** Our chain ({@link ownRow}) changed since the session was made, loaded or {@link markSaved}. */
  get ownChanged(): boolean {
    return this.#ownChanged;
  }

  /** The members whose {@link memberRow} changed since the session was made, loaded or
   * {@link markSaved} (a key taken, a message decrypted, removed), sorted. */
  changedMembers(): string[] {
    return [...this.#changed].sort();
  }

  /** Whether `member` had a row when the session was loaded (or at {@link markSaved}): a
   * changed member without one is new to the group. */
  hadRow(member: string): boolean {
    return this.#stored.has(member);
  }

  /** Every loaded member we keep something of (a {@link memberRow}): those with chains,
   * and removed or rotated-away ones whose retired ids are kept. */
  rowMembers(): string[] {
    return [...new Set([...this.#receivers.keys(), ...this.#retired.keys()])];
  }

  /** The changed rows were written: nothing is changed from here on. */
  markSaved(): void {
    this.#ownChanged = false;
    this.#changed.clear();
    this.#stored = new Set([...this.#receivers.keys(), ...this.#retired.keys()]);
  }

  /** The group's own row (UTF-8 JSON, as Python's `own_row()`): its id and our sending
   * chain, no member's. */
  ownRow(): Promise<Uint8Array> {
    return this.#serial.run(async () => {
      const obj = new Map<string, StateJson>([
        ['v', STATE_VERSION],
        ['group_id', this.groupId],
        ['own', this.#own.toJson() as StateJson],
      ]);
      return utf8(dumpsState(obj));
    });
  }

  /** `member`'s row (as Python's `member_row()`): its chains, newest first, and retired
   * chain ids; null if we keep nothing of it. */
  memberRow(member: string): Promise<Uint8Array | null> {
    return this.#serial.run(async () => {
      this.#checkLoaded(member);
      const chains = this.#receivers.get(member) ?? [];
      const retired = this.#retired.get(member) ?? [];
      if (chains.length === 0 && retired.length === 0) return null;
      const obj = new Map<string, StateJson>([
        ['v', STATE_VERSION],
        ['member', member],
        ['chains', chains.map((c) => c.toJson() as StateJson)],
        ['retired', [...retired]],
      ]);
      return utf8(dumpsState(obj));
    });
  }

  /** Whether `data` is a whole state ({@link toBytes}), not an {@link ownRow}
   * (MalformedState if it is neither). */
  static isWhole(data: Uint8Array | string): boolean {
    const obj = loadState(data) as Record<string, unknown>;
    if (typeof obj !== 'object' || obj === null || Array.isArray(obj) || !('own' in obj) || !('group_id' in obj)) {
      throw new MalformedState('group state does not parse');
    }
    return 'receivers' in obj;
  }

  /** A session from its {@link ownRow} and the rows of `members` (null: a member we keep
   * nothing of yet). Only those members can be used: any other raises MemberNotLoaded,
   * and {@link toBytes} refuses (the state is not whole), unless `every` says they are
   * every member's rows (then it is whole). */
  static async fromRows(
    own: Uint8Array | string,
    members: ReadonlyMap<string, Uint8Array | string | null>,
    options: { every?: boolean; rng?: RandomSource } = {},
  ): Promise<GroupSession> {
    const obj = loadState(own) as Record<string, unknown>;
    try {
      if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new MalformedState('not an object');
      if (obj['v'] !== STATE_VERSION || 'receivers' in obj || !('own' in obj)) throw new MalformedState("not a group's own row");
      const groupId = obj['group_id'];
      if (typeof groupId !== 'string' || groupId === '') throw new MalformedState('group state: bad group_id');
      const receivers = new Map<string, ReceiverChain[]>();
      const retired = new Map<string, number[]>();
      for (const [member, raw] of members) {
        if (raw === null) continue;
        const row = loadState(raw) as Record<string, unknown>;
        if (typeof row !== 'object' || row === null || row['v'] !== STATE_VERSION || row['member'] !== member) {
          throw new MalformedState("a member's row is not that member's");
        }
        const chains = row['chains'];
        const ids = row['retired'];
        if (!Array.isArray(chains)) throw new MalformedState('group state: bad chains');
        if (!Array.isArray(ids) || !ids.every((i) => Number.isSafeInteger(i) && (i as number) >= 0)) {
          throw new MalformedState('group state: bad retired ids');
        }
        if (chains.length) receivers.set(member, await Promise.all(chains.map((c) => ReceiverChain.fromJson(c))));
        if (ids.length) retired.set(member, ids as number[]);
      }
      const loaded = options.every === true ? null : new Set(members.keys());
      return new GroupSession(groupId, await SenderChain.fromJson(obj['own']), receivers, options.rng ?? systemRandom, retired, loaded);
    } catch (error) {
      if (error instanceof MalformedState) throw error;
      if (error instanceof CryptoError || error instanceof TypeError || error instanceof RangeError) {
        throw new MalformedState(`group state does not parse (${String(error)})`);
      }
      throw error;
    }
  }

  /** UTF-8 JSON, byte-identical to Python's `GroupSession.to_bytes()`. */
  toBytes(): Promise<Uint8Array> {
    return this.#serial.run(async () => {
      if (this.#loaded !== null) throw new Error('a session loaded with some members only is not a whole state');
      const receivers = new Map<string, StateJson>();
      for (const [member, chains] of this.#receivers) receivers.set(member, chains.map((c) => c.toJson() as StateJson));
      const obj = new Map<string, StateJson>([
        ['v', STATE_VERSION],
        ['group_id', this.groupId],
        ['own', this.#own.toJson() as StateJson],
        ['receivers', receivers],
        ['retired', new Map<string, StateJson>([...this.#retired].map(([m, ids]) => [m, [...ids]]))],
      ]);
      return utf8(dumpsState(obj));
    });
  }

  static async fromBytes(data: Uint8Array | string, options: { rng?: RandomSource } = {}): Promise<GroupSession> {
    const obj = loadState(data) as Record<string, unknown>;
    try {
      if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new MalformedState('not an object');
      for (const name of ['v', 'group_id', 'own', 'receivers']) {
        if (!(name in obj)) throw new MalformedState(`group state: ${name} missing`);
      }
      if (obj['v'] !== STATE_VERSION) throw new MalformedState('unsupported group state version');
      const groupId = obj['group_id'];
      if (typeof groupId !== 'string' || groupId === '') throw new MalformedState('group state: bad group_id');
      const rawReceivers = obj['receivers'];
      if (typeof rawReceivers !== 'object' || rawReceivers === null || Array.isArray(rawReceivers)) {
        throw new MalformedState('group state: bad receivers');
      }
      const receivers = new Map<string, ReceiverChain[]>();
      for (const [member, chains] of Object.entries(rawReceivers as Record<string, unknown>)) {
        if (!Array.isArray(chains)) throw new MalformedState('group state: bad chains');
        receivers.set(member, await Promise.all(chains.map((c) => ReceiverChain.fromJson(c))));
      }
      // Absent from states written before #20.
      const rawRetired = obj['retired'] ?? {};
      if (typeof rawRetired !== 'object' || rawRetired === null || Array.isArray(rawRetired)) {
        throw new MalformedState('group state: bad retired');
      }
      const retired = new Map<string, number[]>();
      for (const [member, ids] of Object.entries(rawRetired as Record<string, unknown>)) {
        if (!Array.isArray(ids) || !ids.every((i) => Number.isSafeInteger(i) && (i as number) >= 0)) {
          throw new MalformedState('group state: bad retired ids');
        }
        retired.set(member, ids as number[]);
      }
      return new GroupSession(groupId, await SenderChain.fromJson(obj['own']), receivers, options.rng ?? systemRandom, retired);
    } catch (error) {
      if (error instanceof MalformedState) throw error;
      if (error instanceof CryptoError || error instanceof TypeError || error instanceof RangeError) {
        throw new MalformedState(`group state does not parse (${String(error)})`);
      }
      throw error;
    }
  }
}
