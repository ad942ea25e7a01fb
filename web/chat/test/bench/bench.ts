/**
 * Throughput of the library in whatever runtime loads it (Node or Chromium):
 * bundled by test/bench/run.mjs. Same operations as loadtest/bench_crypto.py's
 * ratchet and handshake figures: 200-byte messages, one encrypt + one decrypt
 * per pair, each awaited before the next (a session serialises its calls).
 */

import { hmac } from '@noble/hashes/hmac.js';
import { sha256 as nobleSha256 } from '@noble/hashes/sha2.js';

import { forgetVerifiedSignatures } from '../../src/crypto/bundle.ts';
import { Device } from '../../src/crypto/device.ts';
import { GroupSession, Session } from '../../src/crypto/session.ts';
import { hmacSha256, sha256 } from '../../src/crypto/primitives.ts';

export interface BenchResult {
  name: string;
  ops: number;
  seconds: number;
  perSecond: number;
  microsPerOp: number;
}

const MESSAGE = new Uint8Array(200).fill(0x61);

async function timed(name: string, seconds: number, op: () => Promise<void>): Promise<BenchResult> {
  for (let i = 0; i < 20; i++) await op(); // warm-up
  let ops = 0;
  const start = performance.now();
  const end = start + seconds * 1000;
  while (performance.now() < end) {
    await op();
    ops++;
  }
  const elapsed = (performance.now() - start) / 1000;
  return { name, ops, seconds: elapsed, perSecond: ops / elapsed, microsPerOp: (elapsed * 1e6) / ops };
}

async function bundleOf(device: Device): Promise<unknown> {
  return {
    user_id: 'bob',
    device_id: 1,
    identity: device.publicIdentity(),
    signed_prekey: device.signedPrekey(),
    one_time_prekey: (await device.generateOneTimePrekeys(1))[0],
    kem_prekey: { ...(await device.generateKemPrekeys(1))[0], last_resort: false },
  };
}

export async function runBench(seconds = 1.5): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const alice = await Device.generate();
  const bob = await Device.generate();
  const [a, first] = await Session.initiate(alice, await bundleOf(bob));
  const [b] = await Session.respond(bob, first);
  await a.decrypt(await b.encrypt(new Uint8Array(3)));

  const key = new Uint8Array(32).fill(7);
  results.push(await timed('WebCrypto call: SHA-256 of 32 bytes (floor of any await)', seconds / 3, async () => void (await sha256(key))));
  results.push(await timed('WebCrypto HMAC-SHA256 (importKey + sign)', seconds / 3, async () => void (await hmacSha256(key, MESSAGE))));
  // Not used by the library: what a synchronous pure-JS HMAC costs here, for comparison.
  results.push(
    await timed('for comparison: HMAC-SHA256 in pure JS (@noble/hashes, synchronous)', seconds / 3, async () => {
      hmac(nobleSha256, key, MESSAGE);
    }),
  );
  results.push(
    await timed('Session.encrypt + Session.decrypt, 200 B', seconds, async () => {
      await b.decrypt(await a.encrypt(MESSAGE));
    }),
  );
  let flip = false;
  results.push(
    await timed('encrypt + decrypt alternating direction (a DH ratchet step per message)', seconds, async () => {
      flip = !flip;
      if (flip) await a.decrypt(await b.encrypt(MESSAGE));
      else await b.decrypt(await a.encrypt(MESSAGE));
    }),
  );
  const gAlice = await GroupSession.create('bench');
  const gBob = await GroupSession.create('bench');
  await gBob.processDistribution('alice', await gAlice.distributionMessage());
  results.push(
    await timed('GroupSession encrypt + decrypt, 200 B (Ed25519 sign + verify)', seconds, async () => {
      await gBob.decrypt('alice', await gAlice.encrypt(MESSAGE));
    }),
  );
  // Handshakes: bundles prepared beforehand (prekey generation is not part of the figure).
  const responder = await Device.generate();
  const bundles: unknown[] = [];
  for (let i = 0; i < 60; i++) bundles.push(await bundleOf(responder));
  let next = 0;
  results.push(
    await timed('PQXDH handshake, first contact (initiate + respond, all signatures verified)', seconds, async () => {
      forgetVerifiedSignatures();
      if (next >= bundles.length) for (let i = 0; i < 20; i++) bundles.push(await bundleOf(responder));
      const [, initial] = await Session.initiate(alice, bundles[next++], MESSAGE);
      await Session.respond(responder, initial);
    }),
  );
  return results;
}
