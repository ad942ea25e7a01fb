// GroupSession stored in rows (src/crypto/session.ts; as client/parley/crypto/session.py,
// tests/crypto/test_crypto_group_rows.py): our chain in one row, each member's chains and
// retired ids in one of its own, a session loaded with the members a call needs, and the
// rows it changed. And how long a member's older chains are kept (CHAINS_KEPT_PER_SENDER,
// 64; 5 before): a member offline while a sender rotated several times (members left)
// still reads what was sent under every chain it had; a chain truly dropped says so
// (RetiredSenderKey), unlike one not received yet (UnknownSenderKey: its key may come).
import { describe, expect, it } from 'vitest';

import { fromUtf8, utf8 } from '../src/crypto/encoding.ts';
import { MalformedState, RetiredSenderKey, UnknownSenderKey } from '../src/crypto/errors.ts';
import { CHAINS_KEPT_PER_SENDER, GroupSession, MemberNotLoaded, SKIPPED_KEYS_PER_SENDER } from '../src/crypto/session.ts';

async function rows(session: GroupSession): Promise<[Uint8Array, Map<string, Uint8Array>]> {
  const out = new Map<string, Uint8Array>();
  for (const m of session.rowMembers()) {
    const row = await session.memberRow(m);
    if (row !== null) out.set(m, row);
  }
  return [await session.ownRow(), out];
}

const state = async (session: GroupSession): Promise<unknown> => JSON.parse(fromUtf8(await session.toBytes()));

describe('chains kept per sender', () => {
  it('offline through six rotations (the keys before the messages): every chain still opens', async () => {
    const [alice, bob] = [await GroupSession.create('room'), await GroupSession.create('room')];
    await bob.processDistribution('alice', await alice.distributionMessage());
    const waiting = [await alice.encrypt(utf8('m0'))];
    const dists: Uint8Array[] = [];
    for (let i = 1; i < 7; i++) {
      dists.push(await alice.rotate());
      waiting.push(await alice.encrypt(utf8(`m${i}`)));
    }
    for (const d of dists) await bob.processDistribution('alice', d);
    const read: string[] = [];
    for (const w of waiting) read.push(fromUtf8(await bob.decrypt('alice', w)));
    expect(read).toEqual(['m0', 'm1', 'm2', 'm3', 'm4', 'm5', 'm6']);
  });

  it('past the kept chains the oldest is retired, and its messages say so (RetiredSenderKey); a chain never received stays UnknownSenderKey', async () => {
    expect(CHAINS_KEPT_PER_SENDER).toBe(64);
    const [alice, bob] = [await GroupSession.create('room'), await GroupSession.create('room')];
    await bob.processDistribution('alice', await alice.distributionMessage());
    const first = await alice.encrypt(utf8('first chain'));
    for (let i = 0; i < CHAINS_KEPT_PER_SENDER - 1; i++) await bob.processDistribution('alice', await alice.rotate());
    expect(fromUtf8(await bob.decrypt('alice', first))).toBe('first chain'); // the 64th: kept
    await bob.processDistribution('alice', await alice.rotate()); // the 65th: the first goes
    const newest = await alice.encrypt(utf8('newest'));
    await expect(bob.decrypt('alice', first)).rejects.toBeInstanceOf(RetiredSenderKey);
    expect(fromUtf8(await bob.decrypt('alice', newest))).toBe('newest');
    const stranger = await GroupSession.create('room');
    await expect(bob.decrypt('alice', await stranger.encrypt(utf8('?')))).rejects.toBeInstanceOf(UnknownSenderKey);
  });
});

describe('GroupSession in rows', () => {
  it('rows hold the whole state, and a partial load changes only its members', async () => {
    const me = await GroupSession.create('room');
    const members = new Map<string, GroupSession>();
    for (let i = 0; i < 5; i++) members.set(`u${i}:1`, await GroupSession.create('room'));
    for (const [name, s] of members) {
      await me.processDistribution(name, await s.distributionMessage());
      await me.processDistribution(name, await s.rotate());
    }
    await me.removeMember('u4:1'); // only its retired ids are kept
    await me.encrypt(utf8('advances our chain'));
    const whole = await state(me);
    const [own, memberRows] = await rows(me);
    expect([...memberRows.keys()].sort()).toEqual([...members.keys()].sort());
    expect(GroupSession.isWhole(await me.toBytes())).toBe(true);
    expect(GroupSession.isWhole(own)).toBe(false);

    // Every row loaded: the same state as the whole one.
    expect(await state(await GroupSession.fromRows(own, memberRows, { every: true }))).toEqual(whole);

    // One member loaded: it decrypts, and only its row changed.
    const part = await GroupSession.fromRows(own, new Map([['u1:1', memberRows.get('u1:1') as Uint8Array]]));
    expect(part.members()).toEqual(['u1:1']);
    const message = await (members.get('u1:1') as GroupSession).encrypt(utf8('hi'));
    expect(fromUtf8(await part.decrypt('u1:1', message))).toBe('hi');
    expect([part.ownChanged, part.changedMembers()]).toEqual([false, ['u1:1']]);
    expect(part.hadRow('u1:1')).toBe(true);
    const u2 = members.get('u2:1') as GroupSession;
    await expect(part.decrypt('u2:1', await u2.encrypt(utf8('x')))).rejects.toBeInstanceOf(MemberNotLoaded); // never "no key"
    await expect(part.processDistribution('u2:1', await u2.distributionMessage())).rejects.toBeInstanceOf(MemberNotLoaded);
    await expect(part.toBytes()).rejects.toThrow(/not a whole state/);
    memberRows.set('u1:1', (await part.memberRow('u1:1')) as Uint8Array);
    part.markSaved();
    expect(part.changedMembers()).toEqual([]);
    // The replay is refused after the row is read back.
    const back = await GroupSession.fromRows(own, new Map([['u1:1', memberRows.get('u1:1') as Uint8Array]]));
    await expect(back.decrypt('u1:1', message)).rejects.toMatchObject({ name: 'ReplayedMessage' });

    // A member new to the group: loaded with no row, then it has one.
    const fresh = await GroupSession.fromRows(own, new Map([['n:1', null]]));
    expect(fresh.hadRow('n:1')).toBe(false);
    expect(await fresh.memberRow('n:1')).toBeNull();
    await fresh.processDistribution('n:1', await (await GroupSession.create('room')).distributionMessage());
    expect(fresh.changedMembers()).toEqual(['n:1']);
    expect(await fresh.memberRow('n:1')).not.toBeNull();

    // A removed member's retired ids stay refused from its row.
    const removed = await GroupSession.fromRows(own, new Map([['u4:1', memberRows.get('u4:1') as Uint8Array]]));
    await expect(removed.processDistribution('u4:1', await (members.get('u4:1') as GroupSession).distributionMessage())).rejects.toBeInstanceOf(
      RetiredSenderKey,
    );

    // Our chain: sending changes the own row only.
    const mine = await GroupSession.fromRows(own, new Map());
    await mine.encrypt(utf8('x'));
    expect([mine.ownChanged, mine.changedMembers()]).toEqual([true, []]);
    expect((await GroupSession.create('room')).ownChanged).toBe(true); // a new one must be written
    expect(own.length).toBeLessThan(400);
  });

  it('rows that are not rows are refused', async () => {
    const me = await GroupSession.create('room');
    await me.processDistribution('a:1', await (await GroupSession.create('room')).distributionMessage());
    const [own, memberRows] = await rows(me);
    await expect(GroupSession.fromRows(await me.toBytes(), new Map())).rejects.toBeInstanceOf(MalformedState); // a whole state is no own row
    await expect(GroupSession.fromRows(own, new Map([['b:1', memberRows.get('a:1') as Uint8Array]]))).rejects.toBeInstanceOf(MalformedState);
    expect(() => GroupSession.isWhole(utf8('[]'))).toThrow(MalformedState);
  });
  it("a member's skipped keys are bounded over all its chains, the oldest chains' first", async () => {
    // Each chain kept up to 2,000, and 64 chains are kept: a member that jumped far on
    // each would leave ~7 MB in the row every one of its messages reads and writes.
    const alice = await GroupSession.create('room');
    const bob = await GroupSession.create('room');
    let firstChain: Uint8Array[] = [];
    let wires: Uint8Array[] = [];
    for (let r = 0; r < 3; r++) {
      await bob.processDistribution('a:1', r === 0 ? await alice.distributionMessage() : await alice.rotate());
      wires = [];
      for (let i = 0; i < 1500; i++) wires.push(await alice.encrypt(utf8(`${r}.${i}`)));
      expect(fromUtf8(await bob.decrypt('a:1', wires[1499]!))).toBe(`${r}.1499`);
      if (r === 0) firstChain = wires;
    }
    const [, memberRows] = await rows(bob);
    const row = JSON.parse(fromUtf8(memberRows.get('a:1') as Uint8Array)) as { chains: { skipped: unknown[] }[] };
    expect(row.chains.reduce((n, c) => n + c.skipped.length, 0)).toBe(SKIPPED_KEYS_PER_SENDER);
    expect(row.chains[0]!.skipped.length).toBe(1499); // the newest chain's, all kept
    expect(fromUtf8(await bob.decrypt('a:1', wires[0]!))).toBe('2.0');
    await expect(bob.decrypt('a:1', firstChain[0]!)).rejects.toMatchObject({ name: 'ReplayedMessage' });
  }, 60_000);
});
