// The #20 changes of client/parley/crypto (commit de787d3), as tests/crypto has them:
// the no-one-time-prekey replay memory is kept per signed prekey and retired with
// it; sender keys remember retired chain ids (RetiredSenderKey).
import { describe, expect, it } from 'vitest';

import { Device } from '../src/crypto/device.ts';
import { fromUtf8, utf8 } from '../src/crypto/encoding.ts';
import { ReplayedMessage, RetiredSenderKey } from '../src/crypto/errors.ts';
import { MAX_RETIRED_CHAINS } from '../src/crypto/senderKeys.ts';
import { CHAINS_KEPT_PER_SENDER, GroupSession, Session } from '../src/crypto/session.ts';
import { BOUND, bundleOf } from './support/fixtures.ts';

describe('replay memory of handshakes without one-time material', () => {
  it('is not a count: 2,500 other first contacts later the replay is still refused, also after a restore', async () => {
    const bob = await Device.generate();
    const bundle = await bundleOf(bob, false);
    const [, first] = await Session.initiate(await Device.generate(), bundle, utf8('once'), BOUND);
    await Session.respond(bob, first, BOUND);
    // Two real handshakes more, then 2,500 others recorded the way a successful
    // respond records them (a full PQXDH each would cost a minute of CI).
    const initiator = await Device.generate();
    for (let i = 0; i < 2; i++) await Session.respond(bob, (await Session.initiate(initiator, bundle, utf8('x'), BOUND))[1], BOUND);
    const kem = bob.lookupKemPrekey((bundle['kem_prekey'] as { id: number }).id);
    const spk = (bundle['signed_prekey'] as { id: number }).id;
    for (let i = 0; i < 2500; i++) bob.consume(null, kem, spk, crypto.getRandomValues(new Uint8Array(32)));
    expect(bob.rememberedBaseKeyCount).toBe(2503);
    await expect(Session.respond(bob, first, BOUND)).rejects.toBeInstanceOf(ReplayedMessage);
    await expect(Session.respond(await Device.fromBytes(bob.toBytes()), first, BOUND)).rejects.toBeInstanceOf(ReplayedMessage);
  });

  it('lasts as long as the signed prekey: a replay, then an unknown prekey once it is retired', async () => {
    const bob = await Device.generate();
    const [, first] = await Session.initiate(await Device.generate(), await bundleOf(bob, false), utf8('hi'), BOUND);
    await Session.respond(bob, first, BOUND);
    const state = JSON.parse(fromUtf8(bob.toBytes())) as { seen_base_keys: Record<string, string[]> };
    expect(Object.keys(state.seen_base_keys)).toEqual(['1']); // by signed prekey id, as Python writes it
    await bob.rotateSignedPrekey();
    await expect(Session.respond(bob, first, BOUND)).rejects.toBeInstanceOf(ReplayedMessage);
    await expect(Session.respond(await Device.fromBytes(bob.toBytes()), first, BOUND)).rejects.toBeInstanceOf(ReplayedMessage);
    await bob.rotateSignedPrekey();
    expect(bob.rememberedBaseKeyCount).toBe(0);
    await expect(Session.respond(bob, first, BOUND)).rejects.toMatchObject({ name: 'UnknownPrekey' });
  });

  it('reads a state from before the change (one flat list) and keeps its keys', async () => {
    const bob = await Device.generate();
    const [, first] = await Session.initiate(await Device.generate(), await bundleOf(bob, false), utf8('hi'), BOUND);
    await Session.respond(bob, first, BOUND);
    const state = JSON.parse(fromUtf8(bob.toBytes())) as { seen_base_keys: unknown };
    state.seen_base_keys = Object.values(state.seen_base_keys as Record<string, string[]>).flat();
    const old = await Device.fromBytes(JSON.stringify(state));
    await expect(Session.respond(old, first, BOUND)).rejects.toBeInstanceOf(ReplayedMessage);
  });

  it('an upgraded state keeps refusing replays of handshakes made with the previous signed prekey', async () => {
    // The flat list holds those keys too; they were once all filed under the current prekey.
    const bob = await Device.generate();
    const alice = await Device.generate();
    const [, first] = await Session.initiate(alice, await bundleOf(bob, false), utf8('once'), BOUND);
    await Session.respond(bob, first, BOUND);
    await bob.rotateSignedPrekey(); // the handshake's signed prekey is now the previous one
    const [, second] = await Session.initiate(alice, await bundleOf(bob, false), utf8('twice'), BOUND);
    await Session.respond(bob, second, BOUND);
    const state = JSON.parse(fromUtf8(bob.toBytes())) as { seen_base_keys: unknown };
    expect(Object.keys(state.seen_base_keys as Record<string, string[]>).sort()).toEqual(['1', '2']);
    state.seen_base_keys = Object.values(state.seen_base_keys as Record<string, string[]>).flat();
    const old = await Device.fromBytes(JSON.stringify(state));
    expect(old.rememberedBaseKeyCount).toBe(2);
    for (const replay of [first, second]) {
      await expect(Session.respond(old, replay, BOUND)).rejects.toBeInstanceOf(ReplayedMessage);
      await expect(Session.respond(await Device.fromBytes(old.toBytes()), replay, BOUND)).rejects.toBeInstanceOf(ReplayedMessage);
    }
    // The keys go with the previous prekey: one rotation later it is unknown.
    await old.rotateSignedPrekey();
    await expect(Session.respond(old, first, BOUND)).rejects.toMatchObject({ name: 'UnknownPrekey' });
    await expect(Session.respond(old, second, BOUND)).rejects.toBeInstanceOf(ReplayedMessage);
  });
});

async function pair(): Promise<[GroupSession, GroupSession]> {
  const [alice, bob] = await Promise.all([GroupSession.create('room-1'), GroupSession.create('room-1')]);
  await bob.processDistribution('m0', await alice.distributionMessage());
  return [alice, bob];
}

describe('retired sender-key chains', () => {
  it('an evicted chain cannot be rewound by its old distribution message', async () => {
    const [alice, bob] = await pair();
    const firstDist = await alice.distributionMessage();
    const old = await alice.encrypt(utf8('old message'));
    expect(fromUtf8(await bob.decrypt('m0', old))).toBe('old message');
    for (let i = 0; i < CHAINS_KEPT_PER_SENDER; i++) await bob.processDistribution('m0', await alice.rotate());
    // Dropped: it says so (before 2026-12-08, UnknownSenderKey, as if its key might come).
    await expect(bob.decrypt('m0', old)).rejects.toMatchObject({ name: 'RetiredSenderKey' });
    const before = fromUtf8(await bob.toBytes());
    await expect(bob.processDistribution('m0', firstDist)).rejects.toThrow(/retired/);
    await expect(bob.processDistribution('m0', firstDist)).rejects.toBeInstanceOf(RetiredSenderKey);
    expect(new RetiredSenderKey('x')).toBeInstanceOf(ReplayedMessage);
    expect(fromUtf8(await bob.toBytes())).toBe(before); // nothing taken
    const restored = await GroupSession.fromBytes(await bob.toBytes());
    await expect(restored.processDistribution('m0', firstDist)).rejects.toBeInstanceOf(RetiredSenderKey);
    expect(fromUtf8(await restored.decrypt('m0', await alice.encrypt(utf8('new'))))).toBe('new');
  });

  it("a removed member's chains are retired, and the memory is bounded", async () => {
    const [alice, bob] = await pair();
    const dist = await alice.distributionMessage();
    await bob.removeMember('m0');
    await expect(bob.processDistribution('m0', dist)).rejects.toBeInstanceOf(RetiredSenderKey);
    const carol = await GroupSession.create('room-1');
    const dists = [await carol.distributionMessage()];
    for (let i = 0; i < MAX_RETIRED_CHAINS + CHAINS_KEPT_PER_SENDER; i++) dists.push(await carol.rotate());
    for (const d of dists) await bob.processDistribution('carol', d);
    const state = JSON.parse(fromUtf8(await bob.toBytes())) as { retired: Record<string, number[]> };
    expect(state.retired['carol']).toHaveLength(MAX_RETIRED_CHAINS);
    await expect(bob.processDistribution('carol', dists[dists.length - CHAINS_KEPT_PER_SENDER - 1] as Uint8Array)).rejects.toBeInstanceOf(
      RetiredSenderKey,
    );
  });
});
