import { describe, expect, it } from 'vitest';

import { b64encode, fromHex, utf8 } from '../src/crypto/encoding.ts';
import {
  LINK_CODE_LEN,
  LinkRequest,
  SEALED_MIN_LEN,
  openOnNewDevice,
  parseLinkCode,
  sealForNewDevice,
} from '../src/crypto/linking.ts';
import { Ed25519KeyPair } from '../src/crypto/primitives.ts';
import { flip } from './support/fixtures.ts';

describe('linking a new device (docs/devices.md)', () => {
  it('the approver seals, only the new device with E, its link id and its signing key opens', async () => {
    const request = await LinkRequest.generate();
    const newDevice = await Ed25519KeyPair.generate();
    expect(request.code).toHaveLength(LINK_CODE_LEN);
    const [linkId, ePub] = parseLinkCode(request.code);
    const payload = utf8('{"account_key":"..."}');
    const sealed = await sealForNewDevice(ePub, linkId, newDevice.public, payload);
    expect(await request.open(newDevice.public, sealed)).toEqual(payload);
    const restored = await LinkRequest.fromPrivate(request.linkId, request.privateBytes());
    expect(await restored.open(newDevice.public, sealed)).toEqual(payload);

    const otherE = await LinkRequest.generate();
    const stranger = await Ed25519KeyPair.generate();
    const refusals: [string, () => Promise<unknown>][] = [
      ['another E', () => openOnNewDevice(otherE.privateBytes(), linkId, newDevice.public, sealed)],
      ['another link id', () => openOnNewDevice(request.privateBytes(), flip(linkId, 0), newDevice.public, sealed)],
      ['another signing key', () => request.open(stranger.public, sealed)],
      ['a flipped nonce', () => request.open(newDevice.public, flip(sealed, 33))],
      ['a flipped tag', () => request.open(newDevice.public, flip(sealed, sealed.length - 1))],
      ['another F', () => request.open(newDevice.public, flip(sealed, 0))],
    ];
    for (const [what, p] of refusals) await expect(p(), what).rejects.toMatchObject({ name: 'DecryptionFailed' });
    for (const n of [0, 31, 44, SEALED_MIN_LEN - 1]) {
      await expect(request.open(newDevice.public, sealed.subarray(0, n)), `${n} bytes`).rejects.toMatchObject({ name: 'MalformedMessage' });
    }
    const lowOrderF = new Uint8Array(sealed);
    lowOrderF.fill(0, 0, 32);
    await expect(request.open(newDevice.public, lowOrderF)).rejects.toMatchObject({ name: 'MalformedMessage' });
    await expect(sealForNewDevice(new Uint8Array(32), linkId, newDevice.public, payload)).rejects.toMatchObject({ name: 'InvalidKey' });
  });

  it('link codes are strict', async () => {
    const code = (await LinkRequest.generate()).code;
    const bad = [code.slice(1), code + 'A', code.slice(0, 53) + '=', code.replace(/.$/, '+'), ' '.repeat(54)];
    // The last character carries 4 unused bits: a non-canonical one is refused too.
    const raw = new Uint8Array(40);
    const canonical = b64encode(raw);
    bad.push(canonical.slice(0, 53) + 'B');
    for (const c of bad) expect(() => parseLinkCode(c), c).toThrow(expect.objectContaining({ name: 'MalformedLinkCode' }));
    expect(parseLinkCode(canonical)[0]).toEqual(fromHex('0000000000000000'));
  });
});
