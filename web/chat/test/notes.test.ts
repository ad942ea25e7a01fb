// Notes to self, the pure rules of web/chat/src/app/direct.ts that ParleyClient follows,
// as client/parley/messenger.py does (docs/protocol.md "A note to self", docs/devices.md
// "Notes to self"): a `send` to our own id carries copies for our other devices only,
// once; our device list is read again first when no other device is known; with none it
// is refused; its `stored`/`delivered` receipts (`to` is us, conversation
// `dm:<me>:<me>`) count, the other receipts about our own devices do not; and the
// conversation with ourselves is listed and receives what our other devices write.
//
// Vitest, with the rest of web/chat's unit tests (`npm run test:node`).
import { describe, expect, it } from 'vitest';

import {
  NOTE_TO_SELF_ALONE,
  NO_DEVICE,
  conversationList,
  dmConversation,
  encryptCopies,
  listsToRead,
  otherParty,
  receiptCounts,
  sendRefusal,
  sendUsers,
} from '../src/app/direct.ts';
import { PeerState } from '../src/app/peers.ts';
import { PrekeyBundle } from '../src/crypto/bundle.ts';
import { AccountKey, DeviceEntry, DeviceList } from '../src/crypto/deviceList.ts';
import { Device } from '../src/crypto/device.ts';
import { b64decode, b64encode, fromUtf8, utf8 } from '../src/crypto/encoding.ts';
import type * as W from '../src/generated/contract.ts';
import { bundleOf } from './support/fixtures.ts';

const ME = 'a'.repeat(32);
const BOB = 'b'.repeat(32);
const THIS = 1; // this device of ME

/** `user`'s PeerState with its signed list of `devices`, and a claimed bundle of each
 * device (but `THIS` of ME), keyed `<user>.<device>` as ParleyClient claims them. */
async function account(user: string, devices: [number, Device][], bundles: Map<string, PrekeyBundle>): Promise<PeerState> {
  const key = await AccountKey.generate();
  const signed = await new DeviceList(user, 1, devices.map(([id, d]) => DeviceEntry.of(id, `dev ${id}`, d.identity))).sign(key);
  const state = new PeerState(user);
  await state.trust(b64encode(key.public), signed, (await AccountKey.generate()).public, ME);
  for (const [id, d] of devices) {
    if (user === ME && id === THIS) continue;
    bundles.set(`${user}.${id}`, await PrekeyBundle.fromJson({ ...(await bundleOf(d, true, user)), device_id: id }));
  }
  return state;
}

describe('a note to self: the frame', () => {
  it('has copies for our other devices only, once each, and they read it', async () => {
    const [d1, d2, d3, bob5] = [await Device.generate(), await Device.generate(), await Device.generate(), await Device.generate()];
    const bundles = new Map<string, PrekeyBundle>();
    const states = new Map([
      [ME, await account(ME, [[THIS, d1], [2, d2], [3, d3]], bundles)],
      [BOB, await account(BOB, [[5, bob5]], bundles)],
    ]);
    const state = (u: string) => states.get(u) as PeerState;
    expect(sendUsers(ME, ME)).toEqual([ME]); // not (me, me): once
    const copies = await encryptCopies(ME, ME, THIS, async () => d1, utf8('buy milk'), state, bundles);
    expect(copies.map((c) => [c.user, c.device])).toEqual([
      [ME, 2],
      [ME, 3],
    ]);
    expect(sendRefusal(copies, ME, ME)).toBeNull();
    // Device 2 reads it: the sender is ME's device 1 (from == me, a note to self).
    const onTwo = await account(ME, [[THIS, d1], [2, d2], [3, d3]], new Map());
    const got = await onTwo.decrypt(async () => d2, THIS, b64decode((copies[0] as W.Copy).body), [ME, 2]);
    expect(fromUtf8(got.plaintext)).toBe('buy milk');
    // A message to a contact still goes to all of its devices and our other ones.
    const toBob = await encryptCopies(BOB, ME, THIS, async () => d1, utf8('hi'), state, bundles);
    expect(toBob.map((c) => [c.user, c.device])).toEqual([
      [BOB, 5],
      [ME, 2],
      [ME, 3],
    ]);
    // Every session is started now: the next message does not read this device's keys.
    const unread = async (): Promise<Device> => {
      throw new Error('the device was read for messages in existing sessions');
    };
    expect(await encryptCopies(BOB, ME, THIS, unread, utf8('again'), state, bundles)).toHaveLength(3);
  });

  it('with no other device of ours, it has no copy and is refused with the SDK\'s words', async () => {
    const d1 = await Device.generate();
    const bundles = new Map<string, PrekeyBundle>();
    const mine = await account(ME, [[THIS, d1]], bundles);
    const copies = await encryptCopies(ME, ME, THIS, async () => d1, utf8('nobody to tell'), () => mine, bundles);
    expect(copies).toEqual([]);
    expect(sendRefusal(copies, ME, ME)).toBe(NOTE_TO_SELF_ALONE);
    expect(NOTE_TO_SELF_ALONE).toBe('A note to yourself goes to your other devices, and this is the only one.');
    // A contact without devices keeps its own words; copies for our devices do not count.
    expect(sendRefusal([{ user: ME, device: 2, body: 'x', commitment: 'y' }], BOB, ME)).toBe(NO_DEVICE);
  });

  it('reads our own list first when no other device of ours is known (one may have been linked)', () => {
    const known = (lists: Record<string, number[]>) => (u: string) => lists[u] ?? [];
    expect(listsToRead(ME, ME, THIS, false, known({ [ME]: [THIS] }))).toEqual([ME]);
    expect(listsToRead(ME, ME, THIS, false, known({}))).toEqual([ME]);
    expect(listsToRead(ME, ME, THIS, false, known({ [ME]: [THIS, 2] }))).toEqual([]);
    expect(listsToRead(ME, ME, THIS, true, known({ [ME]: [THIS, 2] }))).toEqual([ME]); // devices_changed: once
    // To a contact, as before: its list when none is known, ours when none is known.
    expect(listsToRead(BOB, ME, THIS, false, known({ [ME]: [THIS] }))).toEqual([BOB]);
    expect(listsToRead(BOB, ME, THIS, false, known({ [ME]: [THIS], [BOB]: [5] }))).toEqual([]);
    expect(listsToRead(BOB, ME, THIS, true, known({ [ME]: [THIS], [BOB]: [5] }))).toEqual([BOB, ME]);
  });
});

describe('a note to self: receipts and the conversation', () => {
  const receipt = (op: 'stored' | 'delivered', to: string, conversation: string | null): W.Stored | W.Delivered => ({
    op,
    id: 'c1',
    server_id: 's1',
    conversation,
    to,
    device: 2,
  });

  it('a to-me receipt counts in dm:<me>:<me>, not in a conversation with a contact', () => {
    expect(dmConversation(ME, ME)).toBe(`dm:${ME}:${ME}`);
    expect(dmConversation(BOB, ME)).toBe(`dm:${ME}:${BOB}`);
    for (const op of ['stored', 'delivered'] as const) {
      expect(receiptCounts(receipt(op, ME, `dm:${ME}:${ME}`), ME)).toBe(true);
      // The copy our device 2 got of what we sent to BOB: not news.
      expect(receiptCounts(receipt(op, ME, `dm:${ME}:${BOB}`), ME)).toBe(false);
      expect(receiptCounts(receipt(op, ME, null), ME)).toBe(false);
      expect(receiptCounts(receipt(op, BOB, `dm:${ME}:${BOB}`), ME)).toBe(true);
    }
    expect(receiptCounts({ op: 'accepted', id: 'c1', server_id: 's1', conversation: `dm:${ME}:${BOB}` }, ME)).toBe(true);
  });

  it('what another device of ours wrote to itself goes to our own conversation, listed when it has notes', () => {
    expect(otherParty(`dm:${ME}:${ME}`, ME)).toBe(ME);
    expect(otherParty(`dm:${ME}:${BOB}`, ME)).toBe(BOB);
    const contacts = [{ user_id: BOB, username: 'bob' }];
    const me = { user_id: ME, username: 'alice' };
    expect(conversationList(contacts, me, false)).toEqual([{ user_id: BOB, username: 'bob' }]);
    expect(conversationList(contacts, me, true)).toEqual([
      { user_id: ME, username: 'alice', self: true },
      { user_id: BOB, username: 'bob' },
    ]);
    // A contact the client does not show (a room member's, no message exchanged).
    const carol = { user_id: 'carol-id', username: 'carol', listed: false as const };
    expect(conversationList([...contacts, carol], me, false, (c) => !('listed' in c))).toEqual([{ user_id: BOB, username: 'bob' }]);
  });
});
