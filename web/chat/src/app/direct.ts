/**
 * 1:1 messages' rules that need neither the socket nor the vault (client/parley/
 * messenger.py `_encrypt`, `_on_receipt`, `conversations`; docs/protocol.md "A note
 * to self", docs/devices.md "Notes to self"):
 *
 * - who a `send` is encrypted for: every device of the contact and every other device
 *   of ours; a **note to self** (`to` is our own id) goes to our other devices only,
 *   once, and needs one (the gateway answers `recipient_not_found` otherwise);
 * - whose device lists are read before encrypting;
 * - which `stored`/`delivered` receipts are news: those about a contact's devices, and
 *   in a note to self those about our other devices (its recipients); the others about
 *   our own devices are about the copies of what we sent to a contact;
 * - the conversations the list shows: the contacts', and ours when it has notes.
 *
 * ParleyClient (client.ts) does the rest: claims, the transaction, the outbox.
 */

import { type Binding, type Device, type PrekeyBundle, Session, b64encode, commitmentFromMessage } from '../crypto/index.ts';
import type * as W from '../generated/contract.ts';
import type { PeerState } from './peers.ts';

/** Why a note to self is refused when this is the account's only device (the SDK's words). */
export const NOTE_TO_SELF_ALONE = 'A note to yourself goes to your other devices, and this is the only one.';
export const NO_DEVICE = 'That contact has no device to send to.';
/** What the conversation with yourself is called in the list and its title. */
export const NOTE_TO_SELF = 'Note to self';

/** A 1:1 conversation's id, the same for both sides (envelopes.py `conversation_id`):
 * `dm:<me>:<me>` for notes to self. */
export function dmConversation(a: string, b: string): string {
  const [lo, hi] = a < b ? [a, b] : [b, a];
  return `dm:${lo}:${hi}`;
}

/** The other party of a 1:1 conversation id `dm:<a>:<b>` (ours in `dm:<me>:<me>`):
 * whose conversation an incoming copy of our own message goes to. */
export function otherParty(conversation: string | null | undefined, me: string): string | null {
  if (!conversation || !conversation.startsWith('dm:')) return null;
  const parts = conversation.split(':');
  if (parts.length !== 3 || !parts.slice(1).includes(me)) return null;
  return (parts[1] === me ? parts[2] : parts[1]) as string;
}

/** A device of the send has no session and no claimed bundle. */
export class MissingKeys extends Error {
  override name = 'MissingKeys';
}

/** The users a 1:1 message to `peer` is encrypted for, in order: the contact, then us
 * (our other devices); a note to self is for us alone (not twice). */
export function sendUsers(peer: string, me: string): string[] {
  return peer === me ? [me] : [peer, me];
}

/** The devices of `user` this device encrypts for: all of a contact's, all of ours
 * but this one. */
export function targetDevices(user: string, devices: Iterable<number>, me: string, myDevice: number): number[] {
  return [...devices].filter((d) => !(user === me && d === myDevice)).sort((a, b) => a - b);
}

/** Whose device lists to read from the directory before encrypting to `peer`
 * (messenger.py `_encrypt`): everyone's on `refresh` (`devices_changed`); a contact's
 * when none of its devices is known; ours when none is known or, in a note to self,
 * when this is the only one known (a device may have been linked since). */
export function listsToRead(peer: string, me: string, myDevice: number, refresh: boolean, known: (user: string) => Iterable<number>): string[] {
  const out: string[] = [];
  if (peer !== me && (refresh || [...known(peer)].length === 0)) out.push(peer);
  const mine = [...known(me)];
  if (refresh || mine.length === 0 || (peer === me && targetDevices(me, mine, me, myDevice).length === 0)) out.push(me);
  return out;
}

/**
 * Encrypt `plaintext` for every device `sendUsers(peer, me)` names but this one: with
 * the device's session, or a new PQXDH session from its claimed bundle (`bundles`,
 * keyed `<user>.<device>`). `state(user)` is the user's PeerState, changed in place
 * (the caller writes each back). The copies are in `send` order.
 */
/** A session started with a device's bundle and the message that starts it (what
 * `Session.initiate` gives). */
export type Initiated = [Session, Uint8Array];

/** Who a session this device starts with `user`'s device `did` is between (pqxdh.ts
 * Binding): our ids, and the ids we asked the directory for, not the bundle's. */
export function initiatorBinding(me: string, myDevice: number, user: string, did: number): Binding {
  return { initiatorUser: me, initiatorDevice: myDevice, responderUser: user, responderDevice: did };
}

/** The sessions to start for `plaintext`, one per bundle of a device in `bundles` that
 * `lacks` a session, each begun at once (they run side by side, and beside other
 * sends'): `encryptCopies` uses them inside its transaction, where one at a time the page
 * waited on WebCrypto for each (a room's key distribution is a thousand). A session
 * started meanwhile (a message from that device) wins: the one begun here is dropped. */
export function startSessions(
  me: string,
  myDevice: number,
  device: () => Promise<Device>,
  bundles: Map<string, PrekeyBundle>,
  lacks: (key: string) => boolean,
  plaintext: Uint8Array,
): Map<string, Promise<Initiated>> {
  const started = new Map<string, Promise<Initiated>>();
  for (const [key, bundle] of bundles) {
    if (!lacks(key)) continue;
    // `<user>.<device>`: the device id (digits) is after the last dot.
    const dot = key.lastIndexOf('.');
    const binding = initiatorBinding(me, myDevice, key.slice(0, dot), Number(key.slice(dot + 1)));
    const begun = device().then((d) => Session.initiate(d, bundle, plaintext, { binding }));
    begun.catch(() => undefined); // its error is raised where it is used, if it is
    started.set(key, begun);
  }
  return started;
}

/** Each copy of `plaintext` for `peer`'s devices and our other ones: over the session
 * with the device, or a new one with its bundle (`started` for it already, if given). */
export async function encryptCopies(
  peer: string,
  me: string,
  myDevice: number,
  device: () => Promise<Device>, // read only to start a session (a device with none yet)
  plaintext: Uint8Array,
  state: (user: string) => PeerState,
  bundles: Map<string, PrekeyBundle>,
  started?: Map<string, Promise<Initiated>>,
): Promise<W.Copy[]> {
  const copies: W.Copy[] = [];
  for (const user of sendUsers(peer, me)) {
    const peerState = state(user);
    for (const did of targetDevices(user, peerState.devices.keys(), me, myDevice)) {
      let wire: Uint8Array;
      if (peerState.hasSession(did)) {
        wire = await peerState.encrypt(did, plaintext);
      } else {
        const bundle = bundles.get(`${user}.${did}`);
        if (bundle === undefined) throw new MissingKeys(`No keys for device ${did} of ${user}: try again.`);
        const binding = initiatorBinding(me, myDevice, user, did);
        const [session, initial] = await (started?.get(`${user}.${did}`) ?? Session.initiate(await device(), bundle, plaintext, { binding }));
        await peerState.start(did, session);
        wire = initial;
      }
      copies.push({ user, device: did, body: b64encode(wire), commitment: b64encode(commitmentFromMessage(wire)) });
    }
  }
  return copies;
}

/** Why a `send` with these copies must not go (null: it may): no copy for its
 * recipient, a contact's device or, in a note to self, another device of ours. */
export function sendRefusal(copies: readonly W.Copy[], peer: string, me: string): string | null {
  if (copies.some((c) => c.user === peer)) return null;
  return peer === me ? NOTE_TO_SELF_ALONE : NO_DEVICE;
}

/** Whether a receipt says something about a message's recipients (messenger.py
 * `_on_receipt`): `accepted` always; `stored`/`delivered` about a contact's device; about
 * one of ours only in a note to self (`dm:<me>:<me>`), where our other devices are the
 * recipients; otherwise it is about the copy our other devices get of what we sent. */
export function receiptCounts(frame: W.Accepted | W.Stored | W.Delivered, me: string): boolean {
  if (frame.op === 'accepted' || frame.to !== me) return true;
  return frame.conversation === dmConversation(me, me);
}

export interface ConversationItem {
  user_id: string;
  username: string;
  /** The conversation with yourself (notes to self). */
  self?: boolean;
}

/** The conversations the list shows: ours first when `hasNotes` (it has history, or
 * is open), then the contacts' that `shows` takes, in the order they came
 * (messenger.py `conversations` shows ours when it has history). The client leaves out
 * a contact made only for a room's sender keys until a message is exchanged with it
 * (client.ts `conversations`): a room of a thousand is not a thousand conversations. */
export function conversationList<C extends { user_id: string; username: string }>(
  contacts: readonly C[],
  me: { user_id: string; username: string } | null,
  hasNotes: boolean,
  shows: (contact: C) => boolean = () => true,
): ConversationItem[] {
  const out: ConversationItem[] = [];
  if (me !== null && hasNotes) out.push({ user_id: me.user_id, username: me.username, self: true });
  for (const c of contacts) if (c.user_id !== me?.user_id && shows(c)) out.push({ user_id: c.user_id, username: c.username });
  return out;
}
