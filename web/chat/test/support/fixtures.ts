import { Device } from '../../src/crypto/device.ts';
import { Session } from '../../src/crypto/session.ts';
import { utf8 } from '../../src/crypto/encoding.ts';
import type { Binding } from '../../src/crypto/pqxdh.ts';

export interface Pair {
  alice: Device;
  bob: Device;
  bundle: Record<string, unknown>;
  a: Session;
  b: Session;
  initial: Uint8Array;
}

/** Alice's device 1 writes to Bob's device 1 (bundleOf's ids): what both sides bind. */
export const BINDING: Binding = { initiatorUser: 'alice', initiatorDevice: 1, responderUser: 'bob', responderDevice: 1 };
/** Session.initiate / Session.respond options with {@link BINDING}. */
export const BOUND = { binding: BINDING } as const;

/** A claimed bundle of `device` (one-time prekey and one-time KEM prekey, or neither). */
export async function bundleOf(device: Device, oneTime = true, user = 'bob'): Promise<Record<string, unknown>> {
  const otp = oneTime ? (await device.generateOneTimePrekeys(1))[0] : null;
  const kem = oneTime
    ? { ...(await device.generateKemPrekeys(1))[0], last_resort: false }
    : { ...device.lastResortKemPrekey(), last_resort: true };
  return {
    user_id: user,
    device_id: 1,
    identity: device.publicIdentity(),
    signed_prekey: device.signedPrekey(),
    one_time_prekey: otp,
    kem_prekey: kem,
  };
}

/** Alice initiates to Bob; Bob responds; Bob answers once (so both have sending chains) unless `reply` is false. */
export async function sessionPair(options: { oneTime?: boolean; reply?: boolean } = {}): Promise<Pair> {
  const alice = await Device.generate();
  const bob = await Device.generate();
  const bundle = await bundleOf(bob, options.oneTime ?? true);
  const [a, initial] = await Session.initiate(alice, bundle, utf8('hello'), BOUND);
  const [b] = await Session.respond(bob, initial, BOUND);
  if (options.reply ?? true) await a.decrypt(await b.encrypt(utf8('ack')));
  return { alice, bob, bundle, a, b, initial };
}

export function flip(data: Uint8Array, at: number, mask = 0x01): Uint8Array {
  const out = data.slice();
  out[at] = (out[at] as number) ^ mask;
  return out;
}
