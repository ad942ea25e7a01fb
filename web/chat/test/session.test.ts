/**
 * The protocol's behaviour beyond the vectors (as tests/crypto in Python): the
 * malicious server, tampering, replays, reordering, the bounds on skipped keys,
 * transactional decryption, serialised state, and overlapping async calls.
 */

import { afterEach, describe, expect, it } from 'vitest';

import { PrekeyBundle, PublicIdentity } from '../src/crypto/bundle.ts';
import { Device } from '../src/crypto/device.ts';
import { b64encode, concat, fromUtf8, toHex, utf8 } from '../src/crypto/encoding.ts';
import { MalformedBundle } from '../src/crypto/errors.ts';
import { formatSafetyNumber } from '../src/crypto/fingerprint.ts';
import { commit, commitmentFromMessage, verifyReport } from '../src/crypto/franking.ts';
import { Ed25519KeyPair, X25519KeyPair, systemRandom } from '../src/crypto/primitives.ts';
import { type Binding, encodeBinding } from '../src/crypto/pqxdh.ts';
import { RATCHET_BOUNDS, RatchetState, setRatchetBounds } from '../src/crypto/ratchet.ts';
import { Session, checkIdentity, isInitialMessage } from '../src/crypto/session.ts';
import { BOUND, bundleOf, flip, sessionPair } from './support/fixtures.ts';

const DEFAULT_BOUNDS = { ...RATCHET_BOUNDS };
afterEach(() => setRatchetBounds(DEFAULT_BOUNDS));

async function state(s: Session): Promise<string> {
  return toHex(await s.toBytes());
}

describe('handshake and the malicious key directory', () => {
  it('a session starts with and without one-time prekeys; prekeys are consumed once', async () => {
    for (const oneTime of [true, false]) {
      const bob = await Device.generate();
      const bundle = await bundleOf(bob, oneTime);
      const [, initial] = await Session.initiate(await Device.generate(), bundle, utf8('hi'), BOUND);
      expect(isInitialMessage(initial)).toBe(true);
      expect(initial.length).toBe(1335 + 32 + 2 + 16);
      const counts = [bob.oneTimePrekeyCount, bob.kemPrekeyCount];
      const [, plaintext] = await Session.respond(bob, initial, BOUND);
      expect(fromUtf8(plaintext)).toBe('hi');
      expect([bob.oneTimePrekeyCount, bob.kemPrekeyCount]).toEqual(oneTime ? [counts[0]! - 1, counts[1]! - 1] : counts);
    }
  });

  it('refuses bundles whose signatures do not hold', async () => {
    const bob = await Device.generate();
    const alice = await Device.generate();
    const bundle = (await bundleOf(bob)) as Record<string, Record<string, unknown>>;
    const other = await Device.generate();
    const cases: [string, unknown, string][] = [
      ['signed prekey of another device', { ...bundle, signed_prekey: other.signedPrekey() }, 'InvalidSignature'],
      ['KEM prekey relabelled last resort', { ...bundle, kem_prekey: { ...bundle['kem_prekey'], last_resort: true } }, 'InvalidSignature'],
      ['KEM prekey under another id', { ...bundle, kem_prekey: { ...bundle['kem_prekey'], id: 99 } }, 'InvalidSignature'],
      ['identity of another device', { ...bundle, identity: other.publicIdentity() }, 'InvalidSignature'],
      ['missing signed prekey', { ...bundle, signed_prekey: undefined }, 'MalformedBundle'],
      ['a short key', { ...bundle, one_time_prekey: { id: 1, key: 'AAAA' } }, 'MalformedBundle'],
      ['an id out of range', { ...bundle, one_time_prekey: { id: 2 ** 32, key: b64encode(new Uint8Array(32)) } }, 'MalformedBundle'],
      ['not an object', [], 'MalformedBundle'],
    ];
    for (const [what, bad, error] of cases) {
      await expect(Session.initiate(alice, bad, undefined, BOUND), what).rejects.toMatchObject({ name: error });
    }
  });

  it('IdentityChanged when the directory serves another identity; checkIdentity gives both safety numbers', async () => {
    const alice = await Device.generate();
    const bob = await Device.generate();
    const mallory = await Device.generate();
    const known = bob.identity;
    await Session.initiate(alice, await bundleOf(bob), utf8(''), { ...BOUND, expectedIdentity: known });
    await expect(Session.initiate(alice, await bundleOf(mallory), utf8(''), { ...BOUND, expectedIdentity: known })).rejects.toMatchObject({
      name: 'IdentityChanged',
    });
    const error = await checkIdentity(known, mallory.identity, {
      localIdentity: alice.identity,
      localUserId: 'alice',
      remoteUserId: 'bob',
    }).catch((e: unknown) => e as { name: string; oldSafetyNumber: string; newSafetyNumber: string });
    expect(error?.name).toBe('IdentityChanged');
    expect(error?.oldSafetyNumber).toMatch(/^\d{60}$/);
    expect(error?.newSafetyNumber).toMatch(/^\d{60}$/);
    expect(error?.oldSafetyNumber).not.toBe(error?.newSafetyNumber);
    await checkIdentity(null, mallory.identity);
    await checkIdentity(known, bob.identity);
  });

  it('the responder refuses forged initiators and unknown or used prekeys, and stays unchanged', async () => {
    const { bob, initial, alice } = await sessionPair({ reply: false });
    const bundle = (await bundleOf(bob)) as Record<string, Record<string, unknown>>;
    const never = { ...bundle, one_time_prekey: { ...bundle['one_time_prekey'], id: 4000 } };
    // The one-time prekey is unsigned: a directory can make an id up; the responder refuses it.
    const [, toUnknown] = await Session.initiate(alice, never, utf8('x'), BOUND);
    const before = toHex(bob.toBytes());
    // Someone else's signing key in the initiator identity: dh_sig no longer verifies.
    const forged = concat(initial.subarray(0, 34), (await Ed25519KeyPair.generate()).public, initial.subarray(66));
    await expect(Session.respond(bob, forged, BOUND)).rejects.toMatchObject({ name: 'InvalidSignature' });
    await expect(Session.respond(bob, initial, BOUND)).rejects.toMatchObject({ name: 'PrekeyReused' });
    await expect(Session.respond(bob, toUnknown, BOUND)).rejects.toMatchObject({ name: 'UnknownPrekey' });
    await expect(Session.respond(bob, initial.subarray(0, 1300), BOUND)).rejects.toMatchObject({ name: 'MalformedMessage' });
    await expect(Session.respond(bob, await (await sessionPair()).a.encrypt(utf8('not initial')), BOUND)).rejects.toMatchObject({
      name: 'MalformedMessage',
    });
    expect(toHex(bob.toBytes())).toBe(before);
  });

  it('a tampered initial message leaves the device unchanged; the genuine one still works', async () => {
    const alice = await Device.generate();
    const bob = await Device.generate();
    const [, initial] = await Session.initiate(alice, await bundleOf(bob), utf8('hi'), BOUND);
    const before = toHex(bob.toBytes());
    for (const at of [2, 170, 200, 1000, 1300, 1336, initial.length - 1]) {
      await expect(Session.respond(bob, flip(initial, at), BOUND), `byte ${at}`).rejects.toMatchObject({
        name: expect.stringMatching(/DecryptionFailed|UnknownPrekey|MalformedMessage|InvalidKey/),
      });
      expect(toHex(bob.toBytes()), `byte ${at}`).toBe(before);
    }
    const [, plaintext] = await Session.respond(bob, initial, BOUND);
    expect(fromUtf8(plaintext)).toBe('hi');
  });

  it('initial messages repeat the PQXDH fields until the first reply; another session’s are refused', async () => {
    const { alice, bob } = await sessionPair();
    const bundle = await bundleOf(bob);
    const [a, first] = await Session.initiate(alice, bundle, utf8('1'), BOUND);
    const second = await a.encrypt(utf8('2'));
    expect(isInitialMessage(second)).toBe(true);
    expect(second.subarray(34, 1295)).toEqual(first.subarray(34, 1295));
    const [b] = await Session.respond(bob, first, BOUND);
    expect(fromUtf8(await b.decrypt(second))).toBe('2');
    await a.decrypt(await b.encrypt(utf8('ack')));
    expect(isInitialMessage(await a.encrypt(utf8('3')))).toBe(false);
    const [, foreign] = await Session.initiate(alice, await bundleOf(bob), utf8('other'), BOUND);
    await expect(b.decrypt(foreign)).rejects.toMatchObject({ name: 'SessionMismatch' });
  });
});

describe('the handshake binds both parties\' account and device ids (pqxdh.ts Binding)', () => {
  const ids: Binding = { initiatorUser: 'zoë', initiatorDevice: 7, responderUser: '李', responderDevice: 2 ** 32 - 1 };

  it('matching bindings: the session works both ways, its AD is the identities then the ids', async () => {
    const alice = await Device.generate();
    const bob = await Device.generate();
    const [a, initial] = await Session.initiate(alice, await bundleOf(bob), utf8('hi'), { binding: ids });
    const [b, plaintext] = await Session.respond(bob, initial, { binding: { ...ids } });
    expect(fromUtf8(plaintext)).toBe('hi');
    expect(fromUtf8(await a.decrypt(await b.encrypt(utf8('hello'))))).toBe('hello');
    expect(fromUtf8(await b.decrypt(await a.encrypt(utf8('again'))))).toBe('again');
    const ad = concat(alice.identity.encode(), bob.identity.encode(), encodeBinding(ids));
    for (const s of [a, b]) expect(JSON.parse(fromUtf8(await s.toBytes())).ratchet.ad).toBe(b64encode(ad));
  });

  it('encodes ids(user, device) = u16 length ‖ UTF-8 ‖ u32, initiator then responder', () => {
    expect(toHex(encodeBinding(ids))).toBe(
      '0004' + toHex(utf8('zoë')) + '00000007' + '0003' + toHex(utf8('李')) + 'ffffffff',
    );
    // The length prefix keeps the split between the two users in the bytes.
    const split = (a: string, b: string) => toHex(encodeBinding({ ...ids, initiatorUser: a, responderUser: b }));
    expect(split('ab', 'c')).not.toBe(split('a', 'bc'));
    expect(encodeBinding({ ...ids, initiatorUser: 'x'.repeat(65535), initiatorDevice: 0 }).length).toBe(2 + 65535 + 4 + 2 + 3 + 4);
  });

  it('refuses an empty user, one over 65,535 UTF-8 bytes, and a device id that is not a u32 (MalformedBundle)', async () => {
    const bad: [string, Partial<Binding>][] = [
      ['empty initiator user', { initiatorUser: '' }],
      ['empty responder user', { responderUser: '' }],
      ['65,536 UTF-8 bytes', { initiatorUser: 'é'.repeat(32768) }],
      ['65,536 UTF-8 bytes (responder)', { responderUser: 'x'.repeat(65536) }],
      ['a lone surrogate (no UTF-8)', { responderUser: 'a\ud800' }],
      ['device -1', { initiatorDevice: -1 }],
      ['device 2^32', { responderDevice: 2 ** 32 }],
      ['device 1.5', { initiatorDevice: 1.5 }],
      ['device NaN', { responderDevice: Number.NaN }],
    ];
    for (const [what, change] of bad) {
      expect(() => encodeBinding({ ...ids, ...change }), what).toThrow(MalformedBundle);
    }
    // A user that is not a string, as JSON could give it.
    expect(() => encodeBinding({ ...ids, initiatorUser: 5 as unknown as string })).toThrow(MalformedBundle);
    // Through the session API: refused before any key is used; the responder's device unchanged.
    const alice = await Device.generate();
    const bob = await Device.generate();
    const bundle = await bundleOf(bob);
    await expect(Session.initiate(alice, bundle, utf8('x'), { binding: { ...ids, initiatorDevice: -1 } })).rejects.toBeInstanceOf(
      MalformedBundle,
    );
    const [, initial] = await Session.initiate(alice, bundle, utf8('x'), { binding: ids });
    const before = toHex(bob.toBytes());
    await expect(Session.respond(bob, initial, { binding: { ...ids, responderUser: '' } })).rejects.toBeInstanceOf(MalformedBundle);
    expect(toHex(bob.toBytes())).toBe(before);
  });

  it('a responder whose binding differs in any one id fails to decrypt and consumes no prekey; the right one then works', async () => {
    const wrong: [string, Binding][] = [
      ['initiator user', { ...ids, initiatorUser: 'mallory' }],
      ['initiator device', { ...ids, initiatorDevice: 8 }],
      ['responder user', { ...ids, responderUser: '李李' }],
      ['responder device', { ...ids, responderDevice: 0 }],
      ['the roles swapped', { initiatorUser: '李', initiatorDevice: 2 ** 32 - 1, responderUser: 'zoë', responderDevice: 7 }],
    ];
    for (const oneTime of [true, false]) {
      const bob = await Device.generate();
      const [a, initial] = await Session.initiate(await Device.generate(), await bundleOf(bob, oneTime), utf8('bound'), { binding: ids });
      const counts = [bob.oneTimePrekeyCount, bob.kemPrekeyCount, bob.rememberedBaseKeyCount];
      const before = toHex(bob.toBytes());
      for (const [what, binding] of wrong) {
        await expect(Session.respond(bob, initial, { binding }), `${what} (one-time: ${oneTime})`).rejects.toMatchObject({
          name: 'DecryptionFailed',
        });
        expect(toHex(bob.toBytes()), what).toBe(before);
      }
      expect([bob.oneTimePrekeyCount, bob.kemPrekeyCount, bob.rememberedBaseKeyCount]).toEqual(counts);
      const [b, plaintext] = await Session.respond(bob, initial, { binding: ids });
      expect(fromUtf8(plaintext)).toBe('bound');
      expect([bob.oneTimePrekeyCount, bob.kemPrekeyCount]).toEqual(oneTime ? [counts[0]! - 1, counts[1]! - 1] : counts.slice(0, 2));
      expect(fromUtf8(await a.decrypt(await b.encrypt(utf8('answered'))))).toBe('answered');
    }
  });

  it('a session stored before the ids were bound (a 128-byte AD) decrypts and encrypts after fromBytes', async () => {
    const { alice, bob } = await sessionPair({ reply: false });
    const sk = crypto.getRandomValues(new Uint8Array(32));
    const ad = concat(alice.identity.encode(), bob.identity.encode()); // the AD as it was
    expect(ad.length).toBe(128);
    const bobRatchet = await X25519KeyPair.generate();
    const stored = async (s: Session): Promise<Session> => Session.fromBytes(await s.toBytes());
    let a = new Session({
      ratchet: await RatchetState.initiator(sk, ad, bobRatchet.public, systemRandom),
      localIdentity: alice.identity,
      peerIdentity: bob.identity,
      pendingSection: null,
      initialDigest: null,
    });
    let b = new Session({
      ratchet: RatchetState.responder(sk, ad, bobRatchet, systemRandom),
      localIdentity: bob.identity,
      peerIdentity: alice.identity,
      pendingSection: null,
      initialDigest: null,
    });
    const first = await a.encrypt(utf8('before the upgrade'));
    [a, b] = [await stored(a), await stored(b)];
    expect(JSON.parse(fromUtf8(await b.toBytes())).ratchet.ad).toBe(b64encode(ad));
    expect(fromUtf8(await b.decrypt(first))).toBe('before the upgrade');
    expect(fromUtf8(await a.decrypt(await b.encrypt(utf8('after it'))))).toBe('after it');
    [a, b] = [await stored(a), await stored(b)];
    expect(fromUtf8(await b.decrypt(await a.encrypt(utf8('and on'))))).toBe('and on');
    expect(JSON.parse(fromUtf8(await a.toBytes())).ratchet.ad).toBe(b64encode(ad));
  });
});

describe('Double Ratchet', () => {
  it('any delivery order decrypts; replays are refused and change nothing', async () => {
    const { a, b } = await sessionPair();
    const messages: Uint8Array[] = [];
    for (let i = 0; i < 12; i++) messages.push(await a.encrypt(utf8(`m${i}`)));
    const order = [5, 0, 11, 3, 1, 2, 10, 4, 6, 9, 7, 8];
    for (const i of order) expect(fromUtf8(await b.decrypt(messages[i]!))).toBe(`m${i}`);
    const before = await state(b);
    for (const i of [0, 5, 11]) await expect(b.decrypt(messages[i]!)).rejects.toMatchObject({ name: 'ReplayedMessage' });
    expect(await state(b)).toBe(before);
  });

  it('every region of a message is authenticated; a failure leaves the session byte-for-byte unchanged', async () => {
    const { a, b } = await sessionPair();
    const message = await a.encrypt(utf8('tamper with me'));
    const before = await state(b);
    const expected: [number, string][] = [
      [0, 'UnsupportedVersion'],
      [1, 'MalformedMessage'],
      [2, 'DecryptionFailed'], // commitment
      [40, 'DecryptionFailed'], // ratchet key: a new chain whose AEAD fails
      [69, 'DecryptionFailed'], // PN of the current chain is not checked, but authenticated
      [73, 'DecryptionFailed'], // N + 1: one key skipped, then the AEAD fails
      [80, 'DecryptionFailed'], // body
      [message.length - 1, 'DecryptionFailed'], // tag
    ];
    for (const [at, error] of expected) {
      await expect(b.decrypt(flip(message, at)), `byte ${at}`).rejects.toMatchObject({ name: error });
      expect(await state(b), `byte ${at}`).toBe(before);
    }
    await expect(b.decrypt(message.subarray(0, 89))).rejects.toMatchObject({ name: 'MalformedMessage' });
    expect(fromUtf8(await b.decrypt(message))).toBe('tamper with me');
  });

  it('a message whose franking commitment does not open is BadCommitment, state unchanged', async () => {
    // A lying sender: a valid AEAD around a payload whose franking key does not open the
    // commitment it put in the clear (possible only by bypassing Session.encrypt).
    const sk = crypto.getRandomValues(new Uint8Array(32));
    const ad = crypto.getRandomValues(new Uint8Array(128));
    const bobRatchet = await X25519KeyPair.generate();
    const liar = await RatchetState.initiator(sk, ad, bobRatchet.public, systemRandom);
    const { alice, bob } = await sessionPair({ reply: false });
    const b = new Session({
      ratchet: RatchetState.responder(sk, ad, bobRatchet, systemRandom),
      localIdentity: bob.identity,
      peerIdentity: alice.identity,
      pendingSection: null,
      initialDigest: null,
    });
    const fk = crypto.getRandomValues(new Uint8Array(32));
    const commitment = await commit(utf8('what a report would show'), fk);
    const honest = await liar.seal(concat(fk, utf8('what a report would show')), concat(new Uint8Array([1, 1]), commitment));
    const lying = await liar.seal(concat(fk, utf8('what was really said')), concat(new Uint8Array([1, 1]), commitment));
    const before = await state(b);
    await expect(b.decrypt(lying)).rejects.toMatchObject({ name: 'BadCommitment' });
    expect(await state(b)).toBe(before);
    expect(fromUtf8(await b.decrypt(honest))).toBe('what a report would show');
  });

  it('decryptMessage returns what a report needs; the report verifies', async () => {
    const { a, b } = await sessionPair();
    const message = await a.encrypt(utf8('abuse'));
    const received = await b.decryptMessage(message);
    expect(received.commitment).toEqual(commitmentFromMessage(message));
    await verifyReport(received.plaintext, received.frankingKey, received.commitment);
    await expect(verifyReport(utf8('not abuse'), received.frankingKey, received.commitment)).rejects.toMatchObject({
      name: 'FrankingMismatch',
    });
  });

  it('MAX_SKIP: a header too far ahead is refused before any key is derived', async () => {
    const { a, b } = await sessionPair();
    const message = await a.encrypt(utf8('x'));
    const far = message.slice();
    new DataView(far.buffer).setUint32(70, 5002, false); // N on the current chain
    await expect(b.decrypt(far)).rejects.toMatchObject({ name: 'TooManySkippedMessages' });
    const { a: a2, b: b2 } = await sessionPair();
    await b2.decrypt(await a2.encrypt(utf8('y')));
    const next = await b2.encrypt(utf8('new chain'));
    const farNew = next.slice();
    new DataView(farNew.buffer).setUint32(70, 5001, false); // N on a new chain
    await expect(a2.decrypt(farNew)).rejects.toMatchObject({ name: 'TooManySkippedMessages' });
    // A PN past the bound gives the previous chain up (no key derived): the AEAD, whose
    // associated data holds the header, refuses the change.
    const farPn = next.slice();
    new DataView(farPn.buffer).setUint32(66, 10_000, false);
    await expect(a2.decrypt(farPn)).rejects.toMatchObject({ name: 'DecryptionFailed' });
    expect(fromUtf8(await a2.decrypt(next))).toBe('new chain');
  });

  it('a gap past the stored keys is read, and a new chain after a gap past MAX_SKIP gives the old one up', async () => {
    // Until 2026-12-08 a gap over 2,000 on one chain (a device that never
    // answers, whose oldest messages expired unread) was refused, and so was the next chain.
    setRatchetBounds({ MAX_SKIP: 10, MAX_SKIPPED_KEYS: 4 });
    const { a, b } = await sessionPair();
    await b.decrypt(await a.encrypt(utf8('start')));
    const lost: Uint8Array[] = [];
    for (let i = 0; i < 8; i++) lost.push(await a.encrypt(utf8(`m${i}`)));
    expect(fromUtf8(await b.decrypt(lost[7]!))).toBe('m7'); // skips 6 keys, keeps the last 4
    expect(fromUtf8(await b.decrypt(lost[3]!))).toBe('m3');
    await expect(b.decrypt(lost[0]!)).rejects.toMatchObject({ name: 'ReplayedMessage' });
    await a.decrypt(await b.encrypt(utf8('reply')));
    expect(fromUtf8(await b.decrypt(await a.encrypt(utf8('a new chain'))))).toBe('a new chain');
    for (let i = 0; i < 12; i++) await a.encrypt(utf8('never read')); // past MAX_SKIP
    await a.decrypt(await b.encrypt(utf8('are you there?')));
    expect(fromUtf8(await b.decrypt(await a.encrypt(utf8('yes'))))).toBe('yes');
    expect(fromUtf8(await b.decrypt(await a.encrypt(utf8('and on'))))).toBe('and on');
  });

  it('stored skipped keys are bounded (oldest evicted) and expire after MAX_OLD_CHAINS steps', async () => {
    setRatchetBounds({ MAX_SKIP: 10, MAX_SKIPPED_KEYS: 4, MAX_OLD_CHAINS: 2, MAX_REMEMBERED_CHAINS: 3 });
    const { a, b } = await sessionPair();
    const sent: Uint8Array[] = [];
    for (let i = 0; i < 7; i++) sent.push(await a.encrypt(utf8(`m${i}`)));
    expect(fromUtf8(await b.decrypt(sent[6]!))).toBe('m6'); // skips 0..5: six keys, the two oldest evicted
    await expect(b.decrypt(sent[0]!)).rejects.toMatchObject({ name: 'ReplayedMessage' });
    await expect(b.decrypt(sent[1]!)).rejects.toMatchObject({ name: 'ReplayedMessage' });
    expect(fromUtf8(await b.decrypt(sent[2]!))).toBe('m2');
    const skippedOf = async (): Promise<number> => (JSON.parse(fromUtf8(await b.toBytes())).ratchet.skipped as unknown[]).length;
    expect(await skippedOf()).toBe(3);
    // Keys of a receiving chain go once Bob's chain index is MAX_OLD_CHAINS past it
    // (docs/crypto.md: after MAX_OLD_CHAINS further DH steps): two DH ratchet steps here.
    for (let step = 0; step < 1; step++) {
      await a.decrypt(await b.encrypt(utf8('ping')));
      await b.decrypt(await a.encrypt(utf8('pong')));
    }
    expect(await skippedOf()).toBe(3);
    for (let step = 0; step < 1; step++) {
      await a.decrypt(await b.encrypt(utf8('ping')));
      await b.decrypt(await a.encrypt(utf8('pong')));
    }
    expect(await skippedOf()).toBe(0);
    await expect(b.decrypt(sent[3]!)).rejects.toMatchObject({ name: 'ReplayedMessage' });
    // Beyond MAX_REMEMBERED_CHAINS the old chain is forgotten: a message of it fails as DecryptionFailed.
    for (let step = 0; step < 4; step++) {
      await a.decrypt(await b.encrypt(utf8('ping')));
      await b.decrypt(await a.encrypt(utf8('pong')));
    }
    const remembered = JSON.parse(fromUtf8(await b.toBytes())).ratchet.old_chains as unknown[];
    expect(remembered.length).toBeLessThanOrEqual(4);
    await expect(b.decrypt(sent[4]!)).rejects.toMatchObject({ name: 'DecryptionFailed' });
  });

  it('skipped keys are deleted after exactly 5 further DH ratchet steps (MAX_OLD_CHAINS, docs/crypto.md)', async () => {
    expect(RATCHET_BOUNDS.MAX_OLD_CHAINS).toBe(5);
    const { a, b } = await sessionPair();
    const sent: Uint8Array[] = [];
    for (let i = 0; i < 4; i++) sent.push(await a.encrypt(utf8(`m${i}`)));
    expect(fromUtf8(await b.decrypt(sent[3]!))).toBe('m3'); // keys of m0..m2 skipped, on Bob's chain 1
    const ratchet = async (): Promise<{ chain_index: number; skipped: [string, number, string, number][] }> =>
      JSON.parse(fromUtf8(await b.toBytes())).ratchet;
    const chain = (await ratchet()).chain_index;
    expect((await ratchet()).skipped.map((k) => k[3])).toEqual([chain, chain, chain]);
    const step = async (): Promise<void> => {
      await a.decrypt(await b.encrypt(utf8('ping')));
      await b.decrypt(await a.encrypt(utf8('pong')));
    };
    for (let n = 1; n <= 4; n++) {
      await step();
      expect((await ratchet()).chain_index).toBe(chain + n);
      expect((await ratchet()).skipped).toHaveLength(3);
    }
    expect(fromUtf8(await b.decrypt(sent[0]!))).toBe('m0'); // 4 further steps on: still readable
    await step(); // the 5th further DH step
    expect((await ratchet()).chain_index).toBe(chain + 5);
    expect((await ratchet()).skipped).toEqual([]);
    await expect(b.decrypt(sent[1]!)).rejects.toMatchObject({ name: 'ReplayedMessage' });
  });

  it('a restored session continues exactly as the original (same random draws, same bytes)', async () => {
    const { a, b } = await sessionPair();
    for (let i = 0; i < 3; i++) await b.decrypt(await a.encrypt(utf8(`${i}`)));
    const held = await a.encrypt(utf8('held back'));
    const saved = await b.toBytes();
    const stream = (): ((n: number) => Uint8Array) => {
      let i = 0;
      return (n: number) => new Uint8Array(n).map(() => (i++ * 7) & 0xff);
    };
    const copy1 = await Session.fromBytes(saved, { rng: stream() });
    const copy2 = await Session.fromBytes(saved, { rng: stream() });
    expect(await copy1.toBytes()).toEqual(saved);
    const out1 = [await copy1.decrypt(held), await copy1.encrypt(utf8('reply'))];
    const out2 = [await copy2.decrypt(held), await copy2.encrypt(utf8('reply'))];
    expect(out1).toEqual(out2);
    expect(await copy1.toBytes()).toEqual(await copy2.toBytes());
    expect(fromUtf8(await a.decrypt(out1[1]!))).toBe('reply');
    await expect(Session.fromBytes(utf8('{"v":1}'))).rejects.toMatchObject({ name: 'MalformedState' });
    await expect(Session.fromBytes(utf8('{"v":2}'))).rejects.toMatchObject({ name: 'MalformedState' });
    await expect(Session.fromBytes(new Uint8Array([0xff]))).rejects.toMatchObject({ name: 'MalformedState' });
    const broken = JSON.parse(fromUtf8(saved));
    broken.ratchet.rk = 'AAAA';
    await expect(Session.fromBytes(JSON.stringify(broken))).rejects.toMatchObject({ name: 'MalformedState' });
  });

  it('the ephemeral key EK_A is in no serialised state', async () => {
    const { a, b, alice, bob, initial } = await sessionPair();
    const ek = b64encode(initial.subarray(162, 194));
    for (const blob of [await a.toBytes(), await b.toBytes(), alice.toBytes()]) expect(fromUtf8(blob)).not.toContain(ek);
    void bob;
  });
});

describe('overlapping async calls behave as the synchronous Python calls', () => {
  it('concurrent encrypts get consecutive message numbers; the peer decrypts them all', async () => {
    const { a, b } = await sessionPair();
    const messages = await Promise.all(Array.from({ length: 10 }, (_, i) => a.encrypt(utf8(`c${i}`))));
    expect(messages.map((m) => new DataView(m.buffer).getUint32(70, false))).toEqual([...Array(10).keys()]);
    const texts = await Promise.all(messages.map((m) => b.decrypt(m)));
    expect(texts.map(fromUtf8)).toEqual(messages.map((_, i) => `c${i}`));
  });

  it('the same message decrypted twice at once: one plaintext, one ReplayedMessage', async () => {
    const { a, b } = await sessionPair();
    const m = await a.encrypt(utf8('once'));
    const results = await Promise.allSettled([b.decrypt(m), b.decrypt(m)]);
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
  });

  it('the same initial message answered twice at once: one session, one PrekeyReused', async () => {
    const bob = await Device.generate();
    const [, initial] = await Session.initiate(await Device.generate(), await bundleOf(bob), utf8('hi'), BOUND);
    const results = await Promise.allSettled([Session.respond(bob, initial, BOUND), Session.respond(bob, initial, BOUND)]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected']);
    expect((results[1] as PromiseRejectedResult).reason).toMatchObject({ name: 'PrekeyReused' });
  });
});

describe('devices and identities', () => {
  it('prekey ids, rotation, retention and state round trip', async () => {
    const device = await Device.generate();
    const otps = await device.generateOneTimePrekeys(3);
    expect(otps.map((p) => p.id)).toEqual([1, 2, 3]);
    const kems = await device.generateKemPrekeys(2);
    expect(kems.map((p) => p.id)).toEqual([2, 3]); // the last-resort key took KEM id 1
    expect(device.kemPrekeyCount).toBe(2);
    const first = device.signedPrekey();
    await device.rotateSignedPrekey();
    await device.rotateSignedPrekey();
    expect(device.signedPrekey().id).toBe(3);
    expect(() => device.lookupSignedPrekey(first.id)).toThrow(/rotated out/);
    await device.rotateLastResortKemPrekey();
    expect(device.lastResortKemPrekey().id).toBe(4);
    const restored = await Device.fromBytes(device.toBytes());
    expect(restored.toBytes()).toEqual(device.toBytes());
    expect(await restored.keysDigest()).toEqual(await device.keysDigest());
    await expect(Device.fromBytes(utf8('{"v":1}'))).rejects.toMatchObject({ name: 'MalformedState' });
    const bad = JSON.parse(fromUtf8(device.toBytes()));
    bad.current_signed_prekey = 99;
    await expect(Device.fromBytes(JSON.stringify(bad))).rejects.toMatchObject({ name: 'MalformedState' });
  });

  it('identity JSON verifies; safety numbers are symmetric and formatted in 12 groups', async () => {
    const { a, b, alice } = await sessionPair();
    await PublicIdentity.fromJson(alice.publicIdentity());
    await expect(
      PublicIdentity.fromJson({ ...alice.publicIdentity(), dh_key: b64encode(new Uint8Array(32)) }),
    ).rejects.toMatchObject({ name: 'InvalidSignature' });
    const n1 = await a.safetyNumber('alice', 'bob');
    expect(n1).toBe(await b.safetyNumber('bob', 'alice'));
    expect(formatSafetyNumber(n1).split(' ')).toHaveLength(12);
    expect(() => formatSafetyNumber('123')).toThrow(/60 digits/);
    const bundle = await PrekeyBundle.fromJson(await bundleOf(await Device.generate()));
    expect(bundle.oneTimePrekey).not.toBeNull();
  });
});
