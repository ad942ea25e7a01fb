import { describe, expect, it, vi } from 'vitest';

import { PrekeyBundle, forgetVerifiedSignatures } from '../src/crypto/bundle.ts';
import { Device } from '../src/crypto/device.ts';
import { AccountKey, DeviceEntry, DeviceList, SignedDeviceList, VERSION_MAX, canonicalJson } from '../src/crypto/deviceList.ts';
import { b64encode, fromUtf8 } from '../src/crypto/encoding.ts';
import { bundleOf } from './support/fixtures.ts';

async function twoDevices(): Promise<[Device, Device]> {
  return [await Device.generate(), await Device.generate()];
}

describe('device lists (docs/devices.md)', () => {
  it('sorted, canonical, signed by the account key; parse(to_json) is the same list', async () => {
    const account = await AccountKey.generate();
    const [d1, d2] = await twoDevices();
    const list = new DeviceList('alice', 1, [DeviceEntry.of(7, 'phone "pro" 📱', d2.identity), DeviceEntry.of(2, 'laptop', d1.identity)]);
    expect(list.deviceIds).toEqual([2, 7]);
    const text = fromUtf8(list.canonicalJson());
    expect(text.startsWith('{"devices":[{"device_id":2,"dh_key":')).toBe(true);
    expect(text).toContain('"name":"phone \\"pro\\" 📱"'); // UTF-8, only " and \ escaped
    expect(text.endsWith('"user_id":"alice","version":1}')).toBe(true);
    expect(fromUtf8(list.signedBytes())).toBe('parley-v1/device-list' + text);
    const signed = await account.sign(list);
    const parsed = SignedDeviceList.fromJson(JSON.parse(JSON.stringify({ ...signed.toJson(), account_key: 'ignored' })));
    const verified = await parsed.verify(account.public, { userId: 'alice' });
    expect(verified.signedBytes()).toEqual(list.signedBytes());
    await expect(parsed.verify((await AccountKey.generate()).public)).rejects.toMatchObject({ name: 'InvalidSignature' });
    await expect(parsed.verify(account.public, { userId: 'bob' })).rejects.toMatchObject({ name: 'DeviceMismatch' });
    const restored = await AccountKey.fromSeed(account.seed());
    expect(restored.public).toEqual(account.public);
  });

  it('a list read again is not verified again; another signature is, every time', async () => {
    // Read, then again with each claim of the contact's bundles (a private room of 1,000's
    // first message: both, for every member).
    const account = await AccountKey.generate();
    const [d1] = await twoDevices();
    const signed = await account.sign(new DeviceList('alice', 1, [DeviceEntry.of(1, 'phone', d1.identity)]));
    const parsed = SignedDeviceList.fromJson(JSON.parse(JSON.stringify(signed.toJson())));
    forgetVerifiedSignatures();
    const verify = vi.spyOn(globalThis.crypto.subtle, 'verify');
    try {
      for (let i = 0; i < 3; i++) await parsed.verify(account.public, { userId: 'alice' });
      expect(verify).toHaveBeenCalledTimes(1);
      const sig = parsed.signature.slice();
      sig[0] = (sig[0] ?? 0) ^ 1;
      const forged = new SignedDeviceList(parsed.deviceList, sig);
      for (let i = 0; i < 2; i++) {
        await expect(forged.verify(account.public)).rejects.toMatchObject({ name: 'InvalidSignature' });
      }
      expect(verify).toHaveBeenCalledTimes(3);
      // Remembered, and still checked for its user.
      await expect(parsed.verify(account.public, { userId: 'bob' })).rejects.toMatchObject({ name: 'DeviceMismatch' });
      expect(verify).toHaveBeenCalledTimes(3);
    } finally {
      verify.mockRestore();
      forgetVerifiedSignatures();
    }
  });

  it('canonical JSON sorts keys by code point and writes integers', () => {
    expect(fromUtf8(canonicalJson({ b: 1, a: [true, null, 'é'], '\u{1F600}': 0, '\uFFFF': 1 }))).toBe(
      '{"a":[true,null,"é"],"b":1,"\uFFFF":1,"\u{1F600}":0}',
    );
  });

  it('strict parsing: order, repeats, unknown or missing members, ranges, names', async () => {
    const [d1, d2] = await twoDevices();
    const good = new DeviceList('alice', 3, [DeviceEntry.of(1, 'a', d1.identity), DeviceEntry.of(2, 'b', d2.identity)]).toJson();
    const bad: [string, unknown][] = [
      ['reordered', { ...good, devices: [good.devices[1], good.devices[0]] }],
      ['repeated', { ...good, devices: [good.devices[0], good.devices[0]] }],
      ['unknown member', { ...good, note: 'x' }],
      ['unknown device member', { ...good, devices: [{ ...good.devices[0], extra: 1 }] }],
      ['missing version', { user_id: 'alice', devices: [] }],
      ['version 0', { ...good, version: 0 }],
      ['version too large', { ...good, version: VERSION_MAX + 1 }],
      ['device id 0', { ...good, devices: [{ ...good.devices[0], device_id: 0 }] }],
      ['device id as a string', { ...good, devices: [{ ...good.devices[0], device_id: '1' }] }],
      ['empty name', { ...good, devices: [{ ...good.devices[0], name: '' }] }],
      ['65 code points', { ...good, devices: [{ ...good.devices[0], name: '📱'.repeat(65) }] }],
      ['control character', { ...good, devices: [{ ...good.devices[0], name: 'a\u0085b' }] }],
      ['lone surrogate', { ...good, devices: [{ ...good.devices[0], name: 'a\ud800' }] }],
      ['short key', { ...good, devices: [{ ...good.devices[0], dh_key: b64encode(new Uint8Array(31)) }] }],
      ['padded key', { ...good, devices: [{ ...good.devices[0], dh_key: good.devices[0]!.dh_key + '=' }] }],
      ['devices not a list', { ...good, devices: {} }],
    ];
    for (const [what, value] of bad) expect(() => DeviceList.fromJson(value), what).toThrow(expect.objectContaining({ name: 'MalformedDeviceList' }));
    expect(new DeviceEntry(1, '📱'.repeat(64), d1.identity.signingKey, d1.identity.dhKey).name).toHaveLength(128);
    expect(() => SignedDeviceList.fromJson({ device_list: good })).toThrow(expect.objectContaining({ name: 'MalformedDeviceList' }));
  });

  it('new versions add and remove devices; the version space ends', async () => {
    const [d1, d2] = await twoDevices();
    const v1 = new DeviceList('alice', 1, [DeviceEntry.of(1, 'a', d1.identity)]);
    const v2 = v1.withDevice(DeviceEntry.of(2, 'b', d2.identity));
    expect([v2.version, v2.deviceIds]).toEqual([2, [1, 2]]);
    const v3 = v2.withoutDevice(1);
    expect([v3.version, v3.deviceIds]).toEqual([3, [2]]);
    expect(() => v3.withoutDevice(1)).toThrow(expect.objectContaining({ name: 'UnlistedDevice' }));
    expect(() => new DeviceList('alice', VERSION_MAX, []).withDevice(DeviceEntry.of(1, 'a', d1.identity))).toThrow(
      expect.objectContaining({ name: 'CounterExhausted' }),
    );
  });

  it('bundles are checked against the list: unlisted device, other keys, other user', async () => {
    const [listed, intruder] = await twoDevices();
    const list = new DeviceList('bob', 1, [DeviceEntry.of(1, 'laptop', listed.identity)]);
    const good = await PrekeyBundle.fromJson(await bundleOf(listed));
    expect(list.checkBundle(good).deviceId).toBe(1);
    // A malicious directory serves its own device under the listed id, or an unlisted id, or another user.
    const impostor = await PrekeyBundle.fromJson(await bundleOf(intruder));
    expect(() => list.checkBundle(impostor)).toThrow(expect.objectContaining({ name: 'DeviceMismatch' }));
    const unlisted = await PrekeyBundle.fromJson({ ...(await bundleOf(intruder)), device_id: 2 });
    expect(() => list.checkBundle(unlisted)).toThrow(expect.objectContaining({ name: 'UnlistedDevice' }));
    const otherUser = await PrekeyBundle.fromJson(await bundleOf(listed, true, 'carol'));
    expect(() => list.checkBundle(otherUser)).toThrow(expect.objectContaining({ name: 'DeviceMismatch' }));
  });
});
