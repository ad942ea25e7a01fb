// An initial message naming a one-time prekey that an earlier initiator used up
// (PrekeyReused: the directory handed it out twice), as the real client receives it
// (src/app/client.ts #readMessage, src/app/peers.ts decrypt) against
// test/support/fakeServer.ts. It is no replay: it was dropped as one (no history line,
// no event, acknowledged), and so was every later message of that session.
import { afterEach, describe, expect, it, vi } from 'vitest';

import type { ClientEvent } from '../src/app/client.ts';
import { Device } from '../src/crypto/device.ts';
import { b64decode } from '../src/crypto/encoding.ts';
import { cleanUp, connected, people, reopen, texts, until } from './support/clients.ts';
import { MemoryVault } from './support/fakeServer.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

afterEach(cleanUp);

describe('a one-time prekey used by two initiators', () => {
  it("the second initiator's messages are 'could not decrypt' lines with an event; a real replay is still dropped", async () => {
    const { server, bob, alice, carol } = await people();
    server.prekeyCounts = { one_time: 0, kem_one_time: 0 };
    await bob.topUp(); // bob's one-time prekeys, in the directory
    await connected(bob, server);
    const seen: ClientEvent[] = [];
    bob.on((e) => seen.push(e));

    const first = server.push(await alice.message(server, 'hi from alice', { oneTime: true }));
    await until('alice read', () => texts(bob, alice).length === 1);
    // Carol was handed the same prekeys: her first message, and the next one of that
    // session (still an initial message: bob never answered), cannot be read.
    const c1 = server.push(await carol.message(server, 'hi from carol', { oneTime: true }));
    const c2 = server.push(await carol.message(server, 'carol again', { oneTime: true }));
    await until('acknowledged', () => server.inbox.acked >= c2.seq);
    const lines = bob.history(carol.user.user_id);
    expect(lines.map((e) => [e.kind, e.text, e.server_id])).toEqual([
      ['error', '[could not decrypt: PrekeyReused]', c1.server_id],
      ['error', '[could not decrypt: PrekeyReused]', c2.server_id],
    ]);
    const failed = seen.filter((e) => e.type === 'error' && e.code === 'decrypt_failed');
    expect(failed).toHaveLength(2);

    // Alice's first message replayed by the relay (a new server id): a replay, dropped
    // without a line or an event, and acknowledged.
    const { seq: _seq, ...again } = first;
    const replay = server.push({ ...again, server_id: 'f'.repeat(32) });
    await until('acknowledged', () => server.inbox.acked >= replay.seq);
    expect(bob.history(alice.user.user_id)).toHaveLength(1);
    expect(seen.filter((e) => e.type === 'error')).toHaveLength(2);
    // Alice's session goes on.
    server.push(await alice.message(server, 'and more'));
    await until('alice read', () => texts(bob, alice).length === 2);
    expect(texts(bob, alice)).toEqual(['hi from alice', 'and more']);
  });
});

describe('one-time prekeys claimed and never used', () => {
  it('are forgotten past a batch at each top-up; the newest claimed and those the directory holds still start sessions', async () => {
    const { server, bob, alice } = await people();
    // Every one-time prekey claimed, five times over (someone claiming bob's bundles
    // and never writing): each top-up uploaded a batch, and kept them all.
    for (let round = 0; round < 5; round++) {
      server.prekeyCounts = { one_time: 0, kem_one_time: 0 };
      await bob.topUp();
    }
    const raw = (MemoryVault.stores.get(bob.vault.username) as Map<string, string>).get('device') as string;
    const device = await Device.fromBytes(b64decode(JSON.parse(raw) as string));
    // What the directory holds (the last batch) and a batch claimed before it.
    expect([device.oneTimePrekeyCount, device.kemPrekeyCount]).toEqual([200, 200]);
    // A first message on the oldest prekey still kept (the batch claimed before the
    // last top-up) is read.
    server.oneTimePrekeys.splice(0, server.oneTimePrekeys.length - 200);
    server.kemPrekeys.splice(0, server.kemPrekeys.length - 200);
    await connected(bob, server);
    server.push(await alice.message(server, 'on a kept prekey', { oneTime: true }));
    await until('alice read', () => texts(bob, alice).length === 1);
    expect(texts(bob, alice)).toEqual(['on a kept prekey']);
  });
});

/** Bob's device as his vault holds it. */
async function storedDevice(bob: { vault: { username: string } }): Promise<Device> {
  const raw = (MemoryVault.stores.get(bob.vault.username) as Map<string, string>).get('device') as string;
  return Device.fromBytes(b64decode(JSON.parse(raw) as string));
}

/** Whether `device` still holds the private halves of these one-time prekeys. */
function holds(device: Device, oneTime: readonly { id: number }[], kem: readonly { id: number }[]): boolean {
  const keys = device.debugPrivate();
  return oneTime.every((p) => keys.oneTime(p.id) !== undefined) && kem.every((p) => keys.kemSeed(p.id) !== undefined);
}

describe('a top-up whose upload fails', () => {
  it('retires nothing: a first message on a prekey claimed before still decrypts after the next top-up', async () => {
    const { server, bob, alice } = await people();
    server.prekeyCounts = { one_time: 0, kem_one_time: 0 };
    await bob.topUp(); // a batch, in the directory
    // The directory hands the whole batch out; alice's first message, on its first
    // prekeys, waits to be read.
    const waiting = await alice.message(server, 'on a claimed prekey', { oneTime: true });
    const claimed = [[...server.oneTimePrekeys], [...server.kemPrekeys]] as const;
    server.failUploads.push({}); // a 503: the new batch never reaches the directory
    await expect(bob.topUp()).rejects.toThrow();
    expect(holds(await storedDevice(bob), ...claimed)).toBe(true);
    await bob.topUp();
    expect(holds(await storedDevice(bob), ...claimed)).toBe(true);
    server.prekeyCounts = { one_time: 100, kem_one_time: 100 }; // the batch uploaded
    await connected(bob, server);
    server.push(waiting);
    await until('a line', () => bob.history(alice.user.user_id).length === 1);
    expect(texts(bob, alice)).toEqual(['on a claimed prekey']);
  });

  it('twice in a row: nothing the directory holds (nor anything claimed) is retired, then or at the next top-up', async () => {
    const { server, bob, alice } = await people();
    server.prekeyCounts = { one_time: 0, kem_one_time: 0 };
    await bob.topUp();
    const batch = [[...server.oneTimePrekeys], [...server.kemPrekeys]] as const;
    // 90 of each kind handed out: the directory holds the last 10.
    server.oneTimePrekeys.splice(0, 90);
    server.kemPrekeys.splice(0, 90);
    server.prekeyCounts = { one_time: 10, kem_one_time: 10 };
    const directory = [[...server.oneTimePrekeys], [...server.kemPrekeys]] as const;
    server.failUploads.push({}, {});
    await expect(bob.topUp()).rejects.toThrow();
    await expect(bob.topUp()).rejects.toThrow();
    expect(holds(await storedDevice(bob), ...batch)).toBe(true);
    await bob.topUp();
    const device = await storedDevice(bob);
    expect(holds(device, ...directory)).toBe(true);
    expect(holds(device, ...batch)).toBe(true); // 10 held + 90 new + a batch claimed
    // One batch was generated in all: no prekey past it.
    expect([device.oneTimePrekeyCount, device.kemPrekeyCount]).toEqual([190, 190]);
    server.prekeyCounts = { one_time: 100, kem_one_time: 100 };
    await connected(bob, server);
    server.push(await alice.message(server, 'on a prekey the directory held', { oneTime: true }));
    await until('a line', () => bob.history(alice.user.user_id).length === 1);
    expect(texts(bob, alice)).toEqual(['on a prekey the directory held']);
  });

  it('is sent again unchanged (same ids and keys), not made again, after a reload too', async () => {
    const { server, bob } = await people();
    server.prekeyCounts = { one_time: 0, kem_one_time: 0 };
    server.failUploads.push({ kind: 'one-time-prekeys' });
    await expect(bob.topUp()).rejects.toThrow();
    const [first] = server.uploads;
    expect(first?.status).toBe(503);
    // A reload: the log-in tops up, sending the batch remembered in the vault.
    const again = await reopen(bob);
    const sent = server.uploads.filter((u) => u.kind === 'one-time-prekeys');
    expect(sent.map((u) => u.status)).toEqual([503, 200]);
    expect(sent[1]?.ids).toEqual(first?.ids);
    expect(sent[1]?.keys).toEqual(first?.keys);
    expect(server.uploads.filter((u) => u.kind === 'kem-prekeys').map((u) => u.status)).toEqual([200]);
    expect(server.oneTimePrekeys.map((p) => p.id)).toEqual(first?.ids);
    const device = await storedDevice(again);
    expect([device.oneTimePrekeyCount, device.kemPrekeyCount]).toEqual([100, 100]);
    // Uploaded: the next top-up makes a new batch.
    await again.topUp();
    expect(server.oneTimePrekeys).toHaveLength(200);
    expect(new Set(server.oneTimePrekeys.map((p) => p.id)).size).toBe(200);
  });

  it('only the KEM upload failing: the KEM batch is sent again unchanged, the one-time one not again', async () => {
    const { server, bob } = await people();
    server.prekeyCounts = { one_time: 0, kem_one_time: 0 };
    server.failUploads.push({ kind: 'kem-prekeys' });
    await expect(bob.topUp()).rejects.toThrow();
    // Claims meanwhile take some of the one-time batch the directory stored.
    server.oneTimePrekeys.splice(0, 5);
    server.prekeyCounts = { one_time: 95, kem_one_time: 0 };
    await bob.topUp();
    expect(server.uploads.map((u) => [u.kind, u.status])).toEqual([
      ['one-time-prekeys', 200],
      ['kem-prekeys', 503],
      ['kem-prekeys', 200],
    ]);
    const [, failed, sent] = server.uploads;
    expect(sent?.ids).toEqual(failed?.ids);
    expect(sent?.keys).toEqual(failed?.keys);
    const device = await storedDevice(bob);
    expect([device.oneTimePrekeyCount, device.kemPrekeyCount]).toEqual([100, 100]);
  });

  it('stored and its answer lost, some claimed since: the refusal of the same batch counts as uploaded', async () => {
    const { server, bob } = await people();
    server.prekeyCounts = { one_time: 0, kem_one_time: 0 };
    server.failUploads.push({ kind: 'one-time-prekeys', stored: true });
    await expect(bob.topUp()).rejects.toThrow();
    server.oneTimePrekeys.splice(0, 5); // claimed
    server.prekeyCounts = { one_time: 95, kem_one_time: 0 };
    await bob.topUp();
    expect(server.uploads.map((u) => [u.kind, u.status])).toEqual([
      ['one-time-prekeys', 503],
      ['one-time-prekeys', 409],
      ['kem-prekeys', 200],
    ]);
    // Done: the next top-up makes a new batch (the vault forgot the one sent).
    server.prekeyCounts = { one_time: 0, kem_one_time: 100 };
    await bob.topUp();
    expect(server.uploads.at(-1)?.kind).toBe('one-time-prekeys');
    expect(server.uploads.at(-1)?.status).toBe(200);
    expect(server.oneTimePrekeys).toHaveLength(195);
  });
});

describe('two top-ups at once', () => {
  it('upload one batch (the second awaits the first)', async () => {
    const { server, bob } = await people();
    server.prekeyCounts = { one_time: 0, kem_one_time: 0 };
    await Promise.all([bob.topUp(), bob.topUp()]);
    expect([server.oneTimePrekeys.length, server.kemPrekeys.length]).toEqual([100, 100]);
    const device = await storedDevice(bob);
    expect([device.oneTimePrekeyCount, device.kemPrekeyCount]).toEqual([100, 100]);
  });
});
