/**
 * Interop with the Python client beyond the vectors: a real subprocess running the
 * repository's parley.crypto (test/interop/parley_peer.py) and this library talk
 * to each other with fresh random keys, both directions, and hand each other
 * their serialised states.
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Device } from '../src/crypto/device.ts';
import { b64decode, b64encode, fromUtf8, toHex, utf8 } from '../src/crypto/encoding.ts';
import type { Binding } from '../src/crypto/pqxdh.ts';
import { GroupSession, Session } from '../src/crypto/session.ts';
import { safetyNumber } from '../src/crypto/fingerprint.ts';
import { verifyReport } from '../src/crypto/franking.ts';
import { RatchetState } from '../src/crypto/ratchet.ts';
import { X25519KeyPair } from '../src/crypto/primitives.ts';
import { deterministicRandom, labelledRandom } from './support/drbg.ts';
import { PythonPeer } from './support/pythonPeer.ts';
import { loadVector } from './support/vectors.ts';

let py: PythonPeer;
beforeAll(() => {
  py = PythonPeer.start();
});
afterAll(async () => {
  await py.stop();
});

interface PublicParts {
  identity: unknown;
  signed_prekey: unknown;
  one_time_prekeys: { id: number; key: string }[];
  kem_prekeys: { id: number; key: string; sig: string }[];
  last_resort_kem_prekey: { id: number; key: string; sig: string };
}

interface Received {
  plaintext: string;
  franking_key: string;
  commitment: string;
}

/** The claimed bundle the key directory would hand out. */
function bundleOf(user: string, parts: PublicParts, oneTime: boolean): unknown {
  return {
    user_id: user,
    device_id: 1,
    identity: parts.identity,
    signed_prekey: parts.signed_prekey,
    one_time_prekey: oneTime ? parts.one_time_prekeys[0] : null,
    kem_prekey: oneTime
      ? { ...parts.kem_prekeys[0], last_resort: false }
      : { ...parts.last_resort_kem_prekey, last_resort: true },
  };
}

async function tsDevice(): Promise<[Device, PublicParts]> {
  const device = await Device.generate();
  const parts: PublicParts = {
    identity: device.publicIdentity(),
    signed_prekey: device.signedPrekey(),
    one_time_prekeys: await device.generateOneTimePrekeys(2),
    kem_prekeys: await device.generateKemPrekeys(2),
    last_resort_kem_prekey: device.lastResortKemPrekey(),
  };
  return [device, parts];
}

/** Who a handshake is between (device 1 each, as bundleOf's): the TS options' binding
 * and the Python peer's (snake_case, as in the vectors). */
function between(initiatorUser: string, responderUser: string): { ts: Binding; py: Record<string, unknown> } {
  return {
    ts: { initiatorUser, initiatorDevice: 1, responderUser, responderDevice: 1 },
    py: { initiator_user: initiatorUser, initiator_device: 1, responder_user: responderUser, responder_device: 1 },
  };
}

const text = (s: string): string => b64encode(utf8(s));
const plain = (r: Received | string): string => fromUtf8(b64decode(typeof r === 'string' ? r : r.plaintext));

describe('PQXDH + Double Ratchet with the Python client', () => {
  for (const oneTime of [true, false]) {
    const variant = oneTime ? 'one-time prekeys' : 'last-resort KEM prekey, no one-time prekey';
    it(`Python initiates to a TS responder (${variant}); messages both ways, out of order, replay`, async () => {
      const [bob, parts] = await tsDevice();
      await py.call('device_new', { name: 'alice' });
      const ids = between('zoë', '李'); // non-ASCII: the UTF-8 lengths in the AD agree
      const initial = await py.call<string>('initiate', {
        device: 'alice',
        session: 'a→b',
        bundle: bundleOf('李', parts, oneTime),
        plaintext: text('hello from Python'),
        binding: ids.py,
      });
      const [session, first] = await Session.respondMessage(bob, b64decode(initial), { binding: ids.ts });
      expect(fromUtf8(first.plaintext)).toBe('hello from Python');
      await py.call('verify_report', {
        plaintext: b64encode(first.plaintext),
        franking_key: b64encode(first.frankingKey),
        commitment: b64encode(first.commitment),
      });
      expect(bob.oneTimePrekeyCount).toBe(oneTime ? 1 : 2);
      expect(bob.kemPrekeyCount).toBe(oneTime ? 1 : 2);

      const reply = await session.encrypt(utf8('hello from TypeScript'));
      expect(plain(await py.call<Received>('decrypt', { session: 'a→b', message: b64encode(reply) }))).toBe(
        'hello from TypeScript',
      );
      // Python sends three, TypeScript receives them 2, 0, 1, then a replay.
      const fromPy: string[] = [];
      for (let i = 0; i < 3; i++) fromPy.push(await py.call<string>('encrypt', { session: 'a→b', plaintext: text(`py ${i}`) }));
      for (const i of [2, 0, 1]) expect(fromUtf8(await session.decrypt(b64decode(fromPy[i] as string)))).toBe(`py ${i}`);
      await expect(session.decrypt(b64decode(fromPy[1] as string))).rejects.toMatchObject({ name: 'ReplayedMessage' });
      // TypeScript sends three, Python receives them 1, 2, 0, then a replay.
      const fromTs: Uint8Array[] = [];
      for (let i = 0; i < 3; i++) fromTs.push(await session.encrypt(utf8(`ts ${i}`)));
      for (const i of [1, 2, 0]) {
        const got = await py.call<Received>('decrypt', { session: 'a→b', message: b64encode(fromTs[i] as Uint8Array) });
        expect(plain(got)).toBe(`ts ${i}`);
      }
      await expect(py.call('decrypt', { session: 'a→b', message: b64encode(fromTs[0] as Uint8Array) })).rejects.toMatchObject({
        name: 'ReplayedMessage',
      });
      // The same initial message again: refused by the TS device, which stays unchanged.
      const before = toHex(bob.toBytes());
      await expect(Session.respond(bob, b64decode(initial), { binding: ids.ts })).rejects.toMatchObject({
        name: oneTime ? 'PrekeyReused' : 'ReplayedMessage',
      });
      expect(toHex(bob.toBytes())).toBe(before);
    });

    it(`TS initiates to a Python responder (${variant}); messages both ways`, async () => {
      const alice = await Device.generate();
      const parts = await py.call<PublicParts>('device_new', { name: 'bob' });
      const ids = between('zoë', '李');
      const [session, initial] = await Session.initiate(alice, bundleOf('李', parts, oneTime), utf8('hello from TypeScript'), {
        binding: ids.ts,
      });
      // Until Python answers, every TS message is an initial message with the same PQXDH fields.
      const second = await session.encrypt(utf8('second, before any reply'));
      expect(second[1]).toBe(2);
      const first = await py.call<Received>('respond', { device: 'bob', session: 'b→a', message: b64encode(initial), binding: ids.py });
      expect(plain(first)).toBe('hello from TypeScript');
      await verifyReport(b64decode(first.plaintext), b64decode(first.franking_key), b64decode(first.commitment));
      expect(plain(await py.call<Received>('decrypt', { session: 'b→a', message: b64encode(second) }))).toBe(
        'second, before any reply',
      );
      const reply = await py.call<string>('encrypt', { session: 'b→a', plaintext: text('hello from Python') });
      expect(fromUtf8(await session.decrypt(b64decode(reply)))).toBe('hello from Python');
      const third = await session.encrypt(utf8('after the reply'));
      expect(third[1]).toBe(1); // a plain ratchet message now
      expect(plain(await py.call<Received>('decrypt', { session: 'b→a', message: b64encode(third) }))).toBe('after the reply');
      // A long alternating run: a DH ratchet step per message in both implementations.
      for (let i = 0; i < 6; i++) {
        const m = await session.encrypt(utf8(`ping ${i}`));
        expect(plain(await py.call<Received>('decrypt', { session: 'b→a', message: b64encode(m) }))).toBe(`ping ${i}`);
        const r = await py.call<string>('encrypt', { session: 'b→a', plaintext: text(`pong ${i}`) });
        expect(fromUtf8(await session.decrypt(b64decode(r)))).toBe(`pong ${i}`);
      }
      // Tampering is refused by Python exactly as by TypeScript.
      const tampered = await session.encrypt(utf8('tampered'));
      tampered[tampered.length - 1] = (tampered[tampered.length - 1] as number) ^ 1;
      await expect(py.call('decrypt', { session: 'b→a', message: b64encode(tampered) })).rejects.toMatchObject({
        name: 'DecryptionFailed',
      });
    });
  }

  it('a binding the two sides do not share fails to decrypt in either, and the right one then works', async () => {
    // Python initiates; the TS responder is told another sender device, then the right one.
    const [bob, parts] = await tsDevice();
    await py.call('device_new', { name: 'alice3' });
    const ids = between('alice', 'bob');
    const initial = await py.call<string>('initiate', {
      device: 'alice3',
      session: 'a3',
      bundle: bundleOf('bob', parts, true),
      plaintext: text('bound'),
      binding: ids.py,
    });
    const before = toHex(bob.toBytes());
    await expect(
      Session.respond(bob, b64decode(initial), { binding: { ...ids.ts, initiatorDevice: 2 } }),
    ).rejects.toMatchObject({ name: 'DecryptionFailed' });
    expect(toHex(bob.toBytes())).toBe(before);
    expect(fromUtf8((await Session.respond(bob, b64decode(initial), { binding: ids.ts }))[1])).toBe('bound');
    // TS initiates; the Python responder is told another sender account, then the right one.
    const pyParts = await py.call<PublicParts>('device_new', { name: 'bob3' });
    const [, toPy] = await Session.initiate(await Device.generate(), bundleOf('bob', pyParts, true), utf8('bound too'), {
      binding: ids.ts,
    });
    const mallory = between('mallory', 'bob');
    await expect(
      py.call('respond', { device: 'bob3', session: 'b3', message: b64encode(toPy), binding: mallory.py }),
    ).rejects.toMatchObject({ name: 'DecryptionFailed' });
    expect(plain(await py.call<Received>('respond', { device: 'bob3', session: 'b3', message: b64encode(toPy), binding: ids.py }))).toBe(
      'bound too',
    );
  });

  it('safety numbers agree (non-ASCII user ids)', async () => {
    const a = await Device.generate();
    const b = await Device.generate();
    const args = {
      local_key: b64encode(a.identity.signingKey),
      local_user_id: 'zoë',
      remote_key: b64encode(b.identity.signingKey),
      remote_user_id: '李',
    };
    expect(await py.call<string>('safety_number', args)).toBe(
      await safetyNumber(a.identity.signingKey, 'zoë', b.identity.signingKey, '李'),
    );
  });
});

describe('sender keys with the Python client', () => {
  it('both members send, out of order, through a rotation', async () => {
    const groupId = 'interop-groupe-é';
    const ts = await GroupSession.create(groupId);
    const pyDistribution = await py.call<string>('group_create', { group: 'g', group_id: groupId });
    await py.call('group_process', { group: 'g', member: 'ts', message: b64encode(await ts.distributionMessage()) });
    await ts.processDistribution('py', b64decode(pyDistribution));
    const fromTs = [await ts.encrypt(utf8('ts 0')), await ts.encrypt(utf8('ts 1'))];
    expect(plain(await py.call<string>('group_decrypt', { group: 'g', member: 'ts', message: b64encode(fromTs[1] as Uint8Array) }))).toBe('ts 1');
    expect(plain(await py.call<string>('group_decrypt', { group: 'g', member: 'ts', message: b64encode(fromTs[0] as Uint8Array) }))).toBe('ts 0');
    const fromPy = await py.call<string>('group_encrypt', { group: 'g', plaintext: text('py 0') });
    expect(fromUtf8(await ts.decrypt('py', b64decode(fromPy)))).toBe('py 0');
    await expect(ts.decrypt('py', b64decode(fromPy))).rejects.toMatchObject({ name: 'ReplayedMessage' });
    const rotated = await py.call<string>('group_rotate', { group: 'g' });
    await ts.processDistribution('py', b64decode(rotated));
    const afterRotation = await py.call<string>('group_encrypt', { group: 'g', plaintext: text('py after rotation') });
    expect(fromUtf8(await ts.decrypt('py', b64decode(afterRotation)))).toBe('py after rotation');
    const tsRotated = await ts.removeMember('someone');
    await py.call('group_process', { group: 'g', member: 'ts', message: b64encode(tsRotated) });
    const m = await ts.encrypt(utf8('ts after rotation'));
    expect(plain(await py.call<string>('group_decrypt', { group: 'g', member: 'ts', message: b64encode(m) }))).toBe('ts after rotation');
  });
});

describe('serialised state crosses between the implementations', () => {
  it('a TS session continues in Python and a Python session continues in TS', async () => {
    const [bob, parts] = await tsDevice();
    await py.call('device_new', { name: 'alice2' });
    const ids = between('alice', 'bob');
    const initial = await py.call<string>('initiate', {
      device: 'alice2',
      session: 's',
      bundle: bundleOf('bob', parts, true),
      plaintext: text('hi'),
      binding: ids.py,
    });
    const [tsBob] = await Session.respond(bob, b64decode(initial), { binding: ids.ts });
    await py.call('decrypt', { session: 's', message: b64encode(await tsBob.encrypt(utf8('reply'))) });
    await tsBob.decrypt(b64decode(await py.call<string>('encrypt', { session: 's', plaintext: text('one more') })));

    // Python's Alice state, restored in TS, talks to TS's Bob (and re-serialises byte for byte).
    const pyState = await py.call<string>('session_state', { session: 's' });
    const tsAlice = await Session.fromBytes(b64decode(pyState));
    expect(b64encode(await tsAlice.toBytes())).toBe(pyState);
    expect(fromUtf8(await tsBob.decrypt(await tsAlice.encrypt(utf8('from the restored Python state'))))).toBe(
      'from the restored Python state',
    );
    expect(fromUtf8(await tsAlice.decrypt(await tsBob.encrypt(utf8('answered'))))).toBe('answered');

    // TS's Bob state, loaded in Python, talks to TS's Alice.
    const bobState = b64encode(await tsBob.toBytes());
    await py.call('session_load', { session: 'bob-from-ts', state: bobState });
    expect(await py.call<string>('session_state', { session: 'bob-from-ts' })).toBe(bobState);
    const fromAlice = await tsAlice.encrypt(utf8('to the TS state in Python'));
    expect(plain(await py.call<Received>('decrypt', { session: 'bob-from-ts', message: b64encode(fromAlice) }))).toBe(
      'to the TS state in Python',
    );
    const answer = await py.call<string>('encrypt', { session: 'bob-from-ts', plaintext: text('from Python with the TS state') });
    expect(fromUtf8(await tsAlice.decrypt(b64decode(answer)))).toBe('from Python with the TS state');
  });

  it('a device state made in TS responds in Python, and one made in Python responds in TS', async () => {
    const [bob, parts] = await tsDevice();
    await py.call('device_load', { name: 'bob-from-ts', state: b64encode(bob.toBytes()) });
    expect(await py.call<string>('device_state', { name: 'bob-from-ts' })).toBe(b64encode(bob.toBytes()));
    const alice = await Device.generate();
    const toBob = between('alice', 'bob');
    const [session, initial] = await Session.initiate(alice, bundleOf('bob', parts, true), utf8('to the TS device in Python'), {
      binding: toBob.ts,
    });
    const answer = await py.call<Received>('respond', { device: 'bob-from-ts', session: 'x', message: b64encode(initial), binding: toBob.py });
    expect(plain(answer)).toBe('to the TS device in Python');
    const back = await py.call<string>('encrypt', { session: 'x', plaintext: text('back') });
    expect(fromUtf8(await session.decrypt(b64decode(back)))).toBe('back');

    const pyParts = await py.call<PublicParts>('device_new', { name: 'carol' });
    const carol = await Device.fromBytes(b64decode(await py.call<string>('device_state', { name: 'carol' })));
    expect(b64encode(carol.toBytes())).toBe(await py.call<string>('device_state', { name: 'carol' }));
    await py.call('device_new', { name: 'dave' });
    const toCarol = between('dave', 'carol');
    const fromDave = await py.call<string>('initiate', {
      device: 'dave',
      session: 'd',
      bundle: bundleOf('carol', pyParts, false),
      plaintext: text('to the Python device in TS'),
      binding: toCarol.py,
    });
    const [, received] = await Session.respond(carol, b64decode(fromDave), { binding: toCarol.ts });
    expect(fromUtf8(received)).toBe('to the Python device in TS');
  });

  it('deterministic runs give byte-identical states (devices, the ratchet transcript, groups)', async () => {
    const seed = toHex(utf8('parley-interop-parity'));
    await py.call('device_new', { name: 'det', drbg_seed: seed, one_time: 3, kem: 2 });
    const det = await Device.generate(deterministicRandom(seed));
    await det.generateOneTimePrekeys(3);
    await det.generateKemPrekeys(2);
    expect(b64encode(det.toBytes())).toBe(await py.call<string>('device_state', { name: 'det' }));
    expect(b64encode(await det.keysDigest())).toBe(await py.call<string>('device_keys_digest', { name: 'det' }));

    const v = loadVector('ratchet.json') as Record<string, unknown> & { steps: Record<string, unknown>[] };
    const pyStates = await py.call<Record<string, string>>('ratchet_transcript', { vector: v });
    const alice = await Device.generate(labelledRandom('parley-vector-alice'));
    const bob = await Device.generate(labelledRandom('parley-vector-bob'));
    const bobRatchet = await X25519KeyPair.fromPrivateBytes(Uint8Array.from(Buffer.from(v['bob_ratchet_private'] as string, 'hex')));
    const hex = (s: unknown): Uint8Array => Uint8Array.from(Buffer.from(s as string, 'hex'));
    const parties: Record<string, Session> = {
      alice: new Session({
        ratchet: await RatchetState.initiator(hex(v['sk']), hex(v['ad']), bobRatchet.public, deterministicRandom(v['alice_drbg_seed'] as string)),
        localIdentity: alice.identity,
        peerIdentity: bob.identity,
        pendingSection: null,
        initialDigest: null,
      }),
      bob: new Session({
        ratchet: RatchetState.responder(hex(v['sk']), hex(v['ad']), bobRatchet, deterministicRandom(v['bob_drbg_seed'] as string)),
        localIdentity: bob.identity,
        peerIdentity: alice.identity,
        pendingSection: null,
        initialDigest: null,
      }),
    };
    const messages: Uint8Array[] = [];
    for (const step of v.steps) {
      const s = parties[step['by'] as string] as Session;
      if (step['op'] === 'encrypt') messages[step['index'] as number] = await s.encrypt(hex(step['plaintext']));
      else await s.decrypt(messages[step['index'] as number] as Uint8Array).catch(() => undefined);
    }
    // Skipped keys, old chains, counters: the whole state, byte for byte.
    expect(b64encode(await (parties['alice'] as Session).toBytes())).toBe(pyStates['alice']);
    expect(b64encode(await (parties['bob'] as Session).toBytes())).toBe(pyStates['bob']);

    const gseed = toHex(utf8('parley-interop-group'));
    await py.call('group_create', { group: 'det', group_id: 'déterministe', drbg_seed: gseed });
    const g = await GroupSession.create('déterministe', { rng: deterministicRandom(gseed) });
    const other = await GroupSession.create('déterministe', { rng: labelledRandom('other') });
    const dist = await other.distributionMessage();
    await g.processDistribution('autre:1', dist);
    await py.call('group_process', { group: 'det', member: 'autre:1', message: b64encode(dist) });
    const m0 = await other.encrypt(utf8('0'));
    await other.encrypt(utf8('1'));
    const m2 = await other.encrypt(utf8('2'));
    for (const m of [m2, m0]) {
      await g.decrypt('autre:1', m);
      await py.call('group_decrypt', { group: 'det', member: 'autre:1', message: b64encode(m) });
    }
    const encrypted = await g.encrypt(utf8('x'));
    expect(b64encode(encrypted)).toBe(await py.call<string>('group_encrypt', { group: 'det', plaintext: b64encode(utf8('x')) }));
    expect(b64encode(await g.toBytes())).toBe(await py.call<string>('group_state', { group: 'det' }));
    const restored = await GroupSession.fromBytes(await g.toBytes());
    expect(b64encode(await restored.toBytes())).toBe(b64encode(await g.toBytes()));
  });
});
