import { describe, expect, it } from 'vitest';

import { concat, fromUtf8, toHex, utf8 } from '../src/crypto/encoding.ts';
import { Ed25519KeyPair } from '../src/crypto/primitives.ts';
import { CHAINS_KEPT_PER_SENDER, GroupSession } from '../src/crypto/session.ts';
import { flip } from './support/fixtures.ts';

async function group(id = 'room'): Promise<[GroupSession, GroupSession, GroupSession]> {
  const [alice, bob, carol] = await Promise.all([GroupSession.create(id), GroupSession.create(id), GroupSession.create(id)]);
  for (const [name, g] of [['alice', alice], ['bob', bob], ['carol', carol]] as const) {
    const dist = await g.distributionMessage();
    for (const [other, h] of [['alice', alice], ['bob', bob], ['carol', carol]] as const) if (other !== name) await h.processDistribution(name, dist);
  }
  return [alice, bob, carol];
}

describe('sender keys', () => {
  it('members read each other, out of order; replays and unknown senders are refused', async () => {
    const [alice, bob, carol] = await group();
    const m = [await alice.encrypt(utf8('a0')), await alice.encrypt(utf8('a1')), await alice.encrypt(utf8('a2'))];
    expect(fromUtf8(await bob.decrypt('alice', m[2]!))).toBe('a2');
    expect(fromUtf8(await bob.decrypt('alice', m[0]!))).toBe('a0');
    expect(fromUtf8(await carol.decrypt('alice', m[1]!))).toBe('a1');
    await expect(bob.decrypt('alice', m[0]!)).rejects.toMatchObject({ name: 'ReplayedMessage' });
    await expect(bob.decrypt('carol', m[1]!)).rejects.toMatchObject({ name: 'UnknownSenderKey' }); // not carol's chain
    expect(alice.members().sort()).toEqual(['bob', 'carol']);
  });

  it('a member who knows the chain key cannot forge another member’s message', async () => {
    const [alice, bob] = await group();
    const genuine = await alice.encrypt(utf8('genuine'));
    // Re-sign the message with another key (the chain key is known to every member, the signing key is not).
    const mallory = await Ed25519KeyPair.generate();
    const body = genuine.subarray(0, genuine.length - 64);
    const forged = concat(body, await mallory.sign(body));
    const before = toHex(await bob.toBytes());
    await expect(bob.decrypt('alice', forged)).rejects.toMatchObject({ name: 'InvalidSignature' });
    await expect(bob.decrypt('alice', flip(genuine, 45))).rejects.toMatchObject({ name: 'InvalidSignature' });
    expect(toHex(await bob.toBytes())).toBe(before);
    expect(fromUtf8(await bob.decrypt('alice', genuine))).toBe('genuine');
  });

  it('after removeMember the removed member cannot read new messages', async () => {
    const [alice, bob, carol] = await group();
    const rotated = await alice.removeMember('carol');
    await bob.processDistribution('alice', rotated);
    const secret = await alice.encrypt(utf8('carol has left'));
    expect(fromUtf8(await bob.decrypt('alice', secret))).toBe('carol has left');
    await expect(carol.decrypt('alice', secret)).rejects.toMatchObject({ name: 'UnknownSenderKey' });
    expect(alice.members()).toEqual(['bob']);
  });

  it('bounds, group id checks, idempotent distributions, and state round trip', async () => {
    const [alice, bob] = await group('g1');
    const other = await GroupSession.create('g2');
    await expect(bob.processDistribution('x', await other.distributionMessage())).rejects.toMatchObject({ name: 'SessionMismatch' });
    await bob.processDistribution('alice', await alice.distributionMessage()); // again: nothing changes
    const far = await alice.encrypt(utf8('x'));
    const farther = far.slice();
    new DataView(farther.buffer).setUint32(38, 2500, false); // iteration (then the signature fails first)
    await expect(bob.decrypt('alice', farther)).rejects.toMatchObject({ name: 'InvalidSignature' });
    const saved = await bob.toBytes();
    const restored = await GroupSession.fromBytes(saved);
    expect(await restored.toBytes()).toEqual(saved);
    expect(fromUtf8(await restored.decrypt('alice', far))).toBe('x');
    await expect(GroupSession.fromBytes(utf8('{"v":1,"group_id":""}'))).rejects.toMatchObject({ name: 'MalformedState' });
    await expect(GroupSession.create('')).rejects.toThrow(RangeError);
    await expect(bob.decrypt('alice', far.subarray(0, 100))).rejects.toMatchObject({ name: 'MalformedMessage' });
  });

  it('keeps at most CHAINS_KEPT_PER_SENDER (64; 5 before 2026-12-08) chains per sender, a dropped one RetiredSenderKey', async () => {
    const [alice, bob] = await group();
    const old = await alice.encrypt(utf8('old chain'));
    const older = await alice.encrypt(utf8('old chain, later'));
    for (let i = 0; i < CHAINS_KEPT_PER_SENDER - 1; i++) await bob.processDistribution('alice', await alice.rotate());
    expect(fromUtf8(await bob.decrypt('alice', old))).toBe('old chain');
    await bob.processDistribution('alice', await alice.rotate());
    await expect(bob.decrypt('alice', older)).rejects.toMatchObject({ name: 'RetiredSenderKey' });
  });
});
