// Our own account's device list is taken only under the account key this browser holds
// (ParleyClient #trustLists; client/parley/messenger.py `_trust_checked`), never trusted
// on first use as a contact's is. The audit's finding: a directory that served our own
// id under another account key, with a list naming a device 666 of its own, was trusted
// silently (a pending change on ourselves, shown nowhere): every later message had a
// copy for 666, as "one of our other devices", and 666 could write lines "sent by us".
// The real client against test/support/fakeServer.ts.
import { afterEach, describe, expect, it, vi } from 'vitest';

import { OTHER_ACCOUNT_KEY, type ParleyClient, UntrustedKeys } from '../src/app/client.ts';
import { messageServerId } from '../src/app/moderation.ts';
import { AccountKey, Device, DeviceEntry, DeviceList, PrekeyBundle, Session, b64encode, utf8 } from '../src/crypto/index.ts';
import type * as W from '../src/generated/contract.ts';
import { cleanUp, connected, people, reopen, until } from './support/clients.ts';
import { type FakeServer, MemoryVault } from './support/fakeServer.ts';
import { teamRoom } from './support/rooms.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

afterEach(() => {
  cleanUp();
});

const EVIL = 666;

/** The directory starts lying about bob's own account: another account key, and a list
 * (a later version) naming bob's device and a device 666 whose keys it holds. Returns
 * that device, the evil key, and how to make the directory honest again. */
async function lie(server: FakeServer, bob: ParleyClient): Promise<{ evil: Device; evilKey: AccountKey; honest: () => void }> {
  const me = bob.me;
  const real = server.lists.get(me);
  const realBundles = server.bundles.get(me);
  const held = bob.ownList()?.deviceList;
  if (!real || !held) throw new Error('bob has no list');
  const [evilKey, evil] = [await AccountKey.generate(), await Device.generate()];
  const signed = await new DeviceList(me, held.version + 4, [...held.devices, DeviceEntry.of(EVIL, 'evil', evil.identity)]).sign(evilKey);
  server.lists.set(me, { user_id: me, account_key: b64encode(evilKey.public), ...signed.toJson() });
  const bundle = { user_id: me, device_id: EVIL, identity: evil.publicIdentity(), signed_prekey: evil.signedPrekey(), one_time_prekey: null, kem_prekey: { ...evil.lastResortKemPrekey(), last_resort: true } };
  server.bundles.set(me, [bundle]);
  return {
    evil,
    evilKey,
    honest: () => {
      server.lists.set(me, real);
      if (realBundles === undefined) server.bundles.delete(me);
      else server.bundles.set(me, realBundles);
    },
  };
}

/** A first message from device 666 "of ours" to this browser, in the conversation with
 * `peer`: what the lying directory's device would write. */
async function fromEvil(server: FakeServer, evil: Device, me: string, peer: string, text: string): Promise<Omit<W.Message, 'seq'>> {
  const bundle = await PrekeyBundle.fromJson({
    user_id: me,
    device_id: server.deviceId,
    identity: server.keys.get('identity'),
    signed_prekey: server.keys.get('signed-prekey'),
    one_time_prekey: null,
    kem_prekey: { ...(server.keys.get('kem-last-resort') as object), last_resort: true },
  });
  const binding = { initiatorUser: me, initiatorDevice: EVIL, responderUser: me, responderDevice: server.deviceId };
  const [, wire] = await Session.initiate(evil, bundle, utf8(text), { binding });
  const [a, b] = [me, peer].sort();
  return {
    op: 'message', kind: 'message', server_id: await messageServerId(me, `evil-${text}`), from: me, from_device: EVIL,
    conversation: `dm:${a}:${b}`, body: b64encode(wire), commitment: null, sent_at: Date.now(), room: null, mentions: null, franking_tag: null,
  };
}

/** Every copy bob's sends were encrypted for, `<user>:<device>`. */
const copies = (server: FakeServer): string[] =>
  server.sends.flatMap((s) => (s.frame.op === 'send' ? s.frame.copies.map((c) => `${c.user}:${c.device}`) : []));

describe('our own device list under another account key', () => {
  it('fails the send that reads it (a devices_changed resend): no copy for its device, nothing trusted', async () => {
    const { server, bob, alice } = await people();
    const A = alice.user.user_id;
    const me = bob.me;
    await connected(bob, server);
    await bob.send(A, 'first');
    await until('first accepted', () => bob.outbox().length === 0);
    const before = bob.peer(me).toJson();
    await lie(server, bob);
    const failed: string[] = [];
    const notices: string[] = [];
    bob.on((e) => {
      if (e.type === 'receipt' && e.status === 'failed') failed.push(e.clientId);
      if (e.type === 'error') notices.push(e.message);
    });
    // The gateway says our devices changed: the resend reads every list again, ours too.
    server.answerSend = (frame, _s, n) => (frame.op === 'send' && n === 1 ? ({ op: 'error', code: 'devices_changed', message: 'Devices changed.', devices: [] } as never) : null);
    const id = await bob.send(A, 'for alice only');
    await until('the resend failed (or went)', () => failed.includes(id) || server.accepted.has(id));
    expect(server.accepted.has(id)).toBe(false);
    expect(copies(server)).not.toContain(`${me}:${EVIL}`);
    expect(bob.outbox()).toEqual([]);
    const line = bob.history(A).find((e) => e.client_id === id);
    expect(line).toMatchObject({ status: 'failed', error: OTHER_ACCOUNT_KEY });
    expect(notices).toContain(`Not sent to alice: ${OTHER_ACCOUNT_KEY}`);
    // Nothing trusted: our own state is as it was (no device 666, no other key, no pending change).
    expect(bob.peer(me).toJson()).toEqual(before);
    expect(bob.peer(me).devices.has(EVIL)).toBe(false);
    expect(bob.identityStatus(me).pendingChange).toBe(false);
  });

  it('refuses a note to self that reads it, nothing queued', async () => {
    // This is bob's only device: a note to self reads his list first (a device may have
    // been linked). Before: the lying list was trusted and the note went to device 666.
    const { server, bob } = await people();
    const me = bob.me;
    await connected(bob, server);
    await lie(server, bob);
    const refused = await bob.send(me, 'my notes').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(UntrustedKeys);
    expect((refused as Error).message).toBe(OTHER_ACCOUNT_KEY);
    expect(bob.outbox()).toEqual([]);
    expect(server.sends).toEqual([]);
    expect(bob.peer(me).devices.has(EVIL)).toBe(false);
  });

  it("refuses a private room's send that reads it: no sender key for its device", async () => {
    const roomId = 'f1'.repeat(12);
    const { server, bob } = await teamRoom(roomId);
    await lie(server, bob);
    const refused = await bob.sendRoom(roomId, 'to the room').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(UntrustedKeys);
    expect(copies(server)).not.toContain(`${bob.me}:${EVIL}`);
    expect(server.sends.filter((s) => s.frame.op === 'room_send')).toEqual([]);
    expect(bob.peer(bob.me).devices.has(EVIL)).toBe(false);
  });

  it('does not make a message from its device one of ours: "could not decrypt", no line sent by us', async () => {
    const { server, bob, alice } = await people();
    const A = alice.user.user_id;
    const me = bob.me;
    await connected(bob, server);
    server.push(await alice.message(server, 'hi bob'));
    await until('alice read', () => bob.history(A).length === 1);
    const { evil } = await lie(server, bob);
    server.push(await fromEvil(server, evil, me, A, 'I owe alice 1000 euros'));
    await until('acknowledged', () => server.inbox.items.size === 0);
    await until('said', () => bob.history(A).length === 2);
    const entries = bob.history(A).map((e) => [e.dir, e.kind, e.text]);
    expect(entries).toEqual([
      ['in', 'message', 'hi bob'],
      ['out', 'error', '[could not decrypt: UnknownDevice]'],
    ]);
    expect(bob.peer(me).devices.has(EVIL)).toBe(false);
  });

  it('the honest list (under our key) is still taken, and sends go on', async () => {
    const { server, bob, alice } = await people();
    const A = alice.user.user_id;
    const me = bob.me;
    await connected(bob, server);
    const { honest } = await lie(server, bob);
    const refused = await bob.send(me, 'note').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(UntrustedKeys);
    honest();
    server.answerSend = (frame, _s, n) => (frame.op === 'send' && n === 1 ? ({ op: 'error', code: 'devices_changed', message: 'Devices changed.', devices: [] } as never) : null);
    const id = await bob.send(A, 'after the lie');
    await until('accepted', () => server.accepted.has(id));
    expect(copies(server)).not.toContain(`${me}:${EVIL}`);
    expect(bob.peer(me).accountKey).toBe(server.lists.get(me)?.account_key);
    expect(bob.identityStatus(me).pendingChange).toBe(false);
  });

  it('taken before this check (a stored state), it is forgotten at the next log-in and read again under our key', async () => {
    const { server, bob, alice } = await people();
    const A = alice.user.user_id;
    const me = bob.me;
    await connected(bob, server);
    await bob.send(A, 'first'); // our own list read and kept
    await until('first accepted', () => bob.outbox().length === 0);
    // What the old code kept after reading the lying list: device 666 under its key.
    const { evil, evilKey } = await lie(server, bob);
    const rows = MemoryVault.stores.get(bob.vault.username) as Map<string, string>;
    const self = JSON.parse(rows.get('self_peer') as string);
    self.account_key = b64encode(evilKey.public);
    self.devices[String(EVIL)] = { name: 'evil', signing_key: b64encode(evil.identity.signingKey), dh_key: b64encode(evil.identity.dhKey) };
    self.pending_change = { old_key: server.lists.get(A)?.account_key, old_safety_number: null, was_verified: false };
    rows.set('self_peer', JSON.stringify(self));
    const again = await reopen(bob);
    expect(again.peer(me).devices.has(EVIL)).toBe(false);
    expect(again.peer(me).accountKey).toBeNull();
    await connected(again, server);
    const refused = await again.send(A, 'while it lies').catch((e: unknown) => e); // ours is read again: refused
    expect(refused).toBeInstanceOf(UntrustedKeys);
    expect(copies(server)).not.toContain(`${me}:${EVIL}`);
  });
});
