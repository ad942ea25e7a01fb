// The account and device ids bound into every new handshake (src/crypto/pqxdh.ts
// Binding; docs/crypto.md, the unknown key-share), as the real client uses them
// (src/app/direct.ts encryptCopies, src/app/peers.ts decrypt) against
// test/support/fakeServer.ts: a server that relabels one account's message as another's
// (that account lists the sender's device keys as its own) gets a "could not decrypt"
// line, not a message from that account, and the genuine message still reads.
import { afterEach, describe, expect, it, vi } from 'vitest';

import type { ClientEvent } from '../src/app/client.ts';
import { dmConversation } from '../src/app/direct.ts';
import { Session } from '../src/crypto/session.ts';
import { b64decode, fromUtf8 } from '../src/crypto/encoding.ts';
import type * as W from '../src/generated/contract.ts';
import { cleanUp, connected, people, texts, until } from './support/clients.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

afterEach(cleanUp);

describe('the handshake binds who is writing to whom', () => {
  it("a first message relabelled as another account's (which lists the sender's device) is not taken as that account's", async () => {
    const { server, bob, alice, carol } = await people();
    await connected(bob, server);
    const seen: ClientEvent[] = [];
    bob.on((e) => seen.push(e));
    // Carol's signed list names alice's device keys as carol's device 2.
    const listed = await carol.linkDevice(server, alice.device);
    const genuine = await alice.message(server, 'hi from alice');
    const relabelled = server.push<W.Message>({
      ...genuine,
      server_id: 'e'.repeat(32),
      from: carol.user.user_id,
      from_device: listed,
      conversation: dmConversation(carol.user.user_id, bob.me),
    });
    await until('acknowledged', () => server.inbox.acked >= relabelled.seq);
    expect(texts(bob, carol)).toEqual([]);
    const lines = bob.history(carol.user.user_id).map((e) => [e.kind, e.text]);
    expect(lines).toEqual([['error', '[could not decrypt: DecryptionFailed]']]);
    expect(seen.some((e) => e.type === 'error' && e.code === 'decrypt_failed')).toBe(true);
    // Nothing of bob's device was used up (a last-resort handshake's base key is not
    // remembered): the same message under its true sender reads.
    server.push(genuine);
    await until('alice read', () => texts(bob, alice).length === 1);
    expect(texts(bob, alice)).toEqual(['hi from alice']);
    expect(bob.history(carol.user.user_id)).toHaveLength(1);
  });

  it('a first message the client sends is bound to its ids and the device it claimed keys for', async () => {
    const { server, bob, alice, carol } = await people();
    await connected(bob, server);
    await bob.send(alice.user.user_id, 'hello alice');
    await until('sent', () => server.sends.length === 1);
    const copies = (server.sends[0]?.frame as W.Send).copies;
    const copy = copies.find((c) => c.user === alice.user.user_id && c.device === alice.deviceId) as W.Copy;
    const wire = b64decode(copy.body);
    const ids = { initiatorUser: bob.me, initiatorDevice: server.deviceId, responderUser: alice.user.user_id, responderDevice: alice.deviceId };
    // Read by alice's device as written to carol (what a relabelled device list would
    // make of it), it does not decrypt; as written to alice, it does.
    const asCarol = { binding: { ...ids, responderUser: carol.user.user_id } };
    await expect(Session.respond(alice.device, wire, asCarol)).rejects.toMatchObject({ name: 'DecryptionFailed' });
    const [, plaintext] = await Session.respond(alice.device, wire, { binding: ids });
    expect(fromUtf8(plaintext)).toBe('hello alice');
  });
});
