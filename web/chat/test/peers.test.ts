// The app's per-contact trust (src/app/peers.ts), as tests/client/test_peers.py checks
// client/parley/peers.py: trust on first use of the account key, device lists verified
// with it, the identity-change policy, sessions per device.
import { describe, expect, it } from 'vitest';

import { PeerState } from '../src/app/peers.ts';
import { AccountKey, DeviceEntry, DeviceList, type SignedDeviceList } from '../src/crypto/deviceList.ts';
import { Device } from '../src/crypto/device.ts';
import { b64encode, fromUtf8, utf8 } from '../src/crypto/encoding.ts';
import { Session } from '../src/crypto/session.ts';
import { bundleOf } from './support/fixtures.ts';

const ME = 'a'.repeat(32);
const BOB = 'b'.repeat(32);

async function listing(key: AccountKey, version: number, devices: [number, Device][]): Promise<SignedDeviceList> {
  return new DeviceList(BOB, version, devices.map(([id, d]) => DeviceEntry.of(id, `dev ${id}`, d.identity))).sign(key);
}

describe('PeerState', () => {
  it('trusts the first account key, then records a change as pending with both safety numbers', async () => {
    const mine = (await AccountKey.generate()).public;
    const [k1, k2] = [await AccountKey.generate(), await AccountKey.generate()];
    const dev = await Device.generate();
    const bob = new PeerState(BOB);
    expect(await bob.trust(b64encode(k1.public), await listing(k1, 1, [[7, dev]]), mine, ME)).toBeNull();
    const first = await bob.safetyNumber(mine, ME);
    expect(first).toMatch(/^\d{5}( \d{5}){11}$/);
    bob.markVerified(b64encode(k1.public));
    expect(bob.verified).toBe(true);
    const changed = await bob.trust(b64encode(k2.public), await listing(k2, 1, [[8, dev]]), mine, ME);
    expect(changed?.oldSafetyNumber).toBe(first);
    expect(changed?.newSafetyNumber).toBe(await bob.safetyNumber(mine, ME));
    expect(changed?.newSafetyNumber).not.toBe(first);
    expect(bob.pendingChange).toEqual({ old_key: b64encode(k1.public), old_safety_number: first, was_verified: true });
    expect(bob.verified).toBe(false);
    expect([...bob.devices.keys()]).toEqual([8]);
    // Verifying a key that is no longer the trusted one is refused.
    expect(() => bob.markVerified(b64encode(k1.public))).toThrow(/changed while/);
    // Back to the key the user had accepted: the pending change goes.
    await bob.trust(b64encode(k1.public), await listing(k1, 2, [[7, dev]]), mine, ME);
    expect(bob.pendingChange).toBeNull();
    // Accepting a change without comparing leaves the contact unverified.
    await bob.trust(b64encode(k2.public), await listing(k2, 1, [[8, dev]]), mine, ME);
    bob.accept();
    expect(bob.pendingChange).toBeNull();
    expect(bob.verified).toBe(false);
    // The state survives its JSON.
    expect(PeerState.fromJson(JSON.parse(JSON.stringify(bob.toJson()))).toJson()).toEqual(bob.toJson());
  });

  it('refuses a list not signed by the trusted key, an older list, and an unlisted device', async () => {
    const mine = (await AccountKey.generate()).public;
    const [key, other] = [await AccountKey.generate(), await AccountKey.generate()];
    const [d1, d2] = [await Device.generate(), await Device.generate()];
    const bob = new PeerState(BOB);
    await bob.trust(b64encode(key.public), await listing(key, 2, [[1, d1]]), mine, ME);
    await expect(bob.trust(b64encode(key.public), await listing(other, 3, [[1, d1]]), mine, ME)).rejects.toMatchObject({
      name: 'InvalidSignature',
    });
    await expect(bob.trust(b64encode(key.public), await listing(key, 1, [[1, d1]]), mine, ME)).rejects.toThrow(/older device list/);
    expect(() => bob.checkDevice(1, d2.identity)).toThrow(/not in its device list/);
    expect(() => bob.checkDevice(2, d1.identity)).toThrow(/not in its device list/);
    bob.checkDevice(1, d1.identity);
  });

  it('cannot be brought back to an older list by a switch to another key and back', async () => {
    // The list version restarted at 0 on every key change: a directory that served its
    // own key, then the trusted one with an older list (a removed device still in it),
    // had the old list taken and the pending change cleared (peers.py's test too).
    const mine = (await AccountKey.generate()).public;
    const [first, other] = [await AccountKey.generate(), await AccountKey.generate()];
    const [phone, stolen] = [await Device.generate(), await Device.generate()];
    const bob = new PeerState(BOB);
    await bob.trust(b64encode(first.public), await listing(first, 4, [[1, phone], [2, stolen]]), mine, ME);
    await bob.trust(b64encode(first.public), await listing(first, 5, [[1, phone]]), mine, ME);
    await bob.trust(b64encode(other.public), await listing(other, 1, [[1, phone]]), mine, ME);
    await expect(bob.trust(b64encode(first.public), await listing(first, 4, [[1, phone], [2, stolen]]), mine, ME)).rejects.toThrow(
      /older device list/,
    );
    expect(bob.accountKey).toBe(b64encode(other.public));
    expect(bob.pendingChange).not.toBeNull();
    await bob.trust(b64encode(first.public), await listing(first, 5, [[1, phone]]), mine, ME);
    expect(bob.pendingChange).toBeNull();
    const again = PeerState.fromJson(JSON.parse(JSON.stringify(bob.toJson())));
    await expect(again.trust(b64encode(first.public), await listing(first, 4, [[1, phone], [2, stolen]]), mine, ME)).rejects.toThrow(
      /older device list/,
    );
  });

  it('keeps sessions per device, answers an initial message, and drops removed devices', async () => {
    const mine = (await AccountKey.generate()).public;
    const key = await AccountKey.generate();
    const [me, bobDevice] = [await Device.generate(), await Device.generate()];
    // Bob's side: the peer is "me", and Bob's device answers my initial message.
    const meAsPeer = new PeerState(BOB);
    await meAsPeer.trust(b64encode(key.public), await listing(key, 1, [[3, me]]), mine, ME);
    const [session, initial] = await Session.initiate(me, await bundleOf(bobDevice, true, BOB), utf8('first'));
    const bobs = async () => bobDevice;
    const got = await meAsPeer.decrypt(bobs, 3, initial);
    expect(got.newSession && fromUtf8(got.plaintext) === 'first').toBe(true);
    await expect(meAsPeer.decrypt(bobs, 3, initial)).rejects.toMatchObject({ name: 'ReplayedMessage' });
    const reply = await meAsPeer.encrypt(3, utf8('reply'));
    expect(fromUtf8(await session.decrypt(reply))).toBe('reply');
    const next = await session.encrypt(utf8('second'));
    // A message in the session: this device's private state is not read.
    const unread = async (): Promise<Device> => {
      throw new Error('the device was read for a message in an existing session');
    };
    expect(fromUtf8((await meAsPeer.decrypt(unread, 3, next)).plaintext)).toBe('second');
    // A device that is not in the list cannot start a session.
    const stranger = await Device.generate();
    const [, fromStranger] = await Session.initiate(stranger, await bundleOf(bobDevice, true, BOB), utf8('hi'));
    await expect(meAsPeer.decrypt(bobs, 3, fromStranger)).rejects.toThrow(/not in its device list/);
    // The device leaves the list: its sessions go.
    await meAsPeer.trust(b64encode(key.public), await listing(key, 2, []), mine, ME);
    expect(meAsPeer.hasSession(3)).toBe(false);
  });
});
