// A private room message's mentions (client/parley/rooms.py `_mentions`,
// `_member_names`, commit 07a7d24): the @words of the text are matched on the device
// against the members' user ids and names, never looked up one by one at the auth
// service (which would learn words of an encrypted message); the member list is read
// once when some member's name is not known here; a stray "@..." does not end the scan;
// at most MAX_MENTIONS. The real client against test/support/fakeServer.ts.
import { afterEach, describe, expect, it, vi } from 'vitest';

import { MAX_MENTIONS } from '../src/app/rooms.ts';
import type * as W from '../src/generated/contract.ts';
import { cleanUp, connected, people } from './support/clients.ts';
import type { FakeServer } from './support/fakeServer.ts';
import { teamRoom } from './support/rooms.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

afterEach(() => cleanUp());

/** The paths of the auth service's user look-ups and of the room's member reads, as
 * they are asked from now on. */
function watch(server: FakeServer): { users: string[]; memberReads: number } {
  const seen = { users: [] as string[], memberReads: 0 };
  const inner = server.fetch;
  vi.stubGlobal('fetch', async (input: string | URL | Request, init?: RequestInit) => {
    const path = new URL(String(input)).pathname;
    if (path.startsWith('/auth/v1/users/')) seen.users.push(decodeURIComponent(path.slice('/auth/v1/users/'.length)));
    if (/^\/rooms\/v1\/rooms\/[0-9a-f]{24}\/members$/.test(path)) seen.memberReads++;
    return inner(input, init);
  });
  return seen;
}

/** The last room_send the server received. */
const roomSend = (server: FakeServer): W.RoomSend =>
  server.sends.map((s) => s.frame).filter((f): f is W.RoomSend => f.op === 'room_send').at(-1) as W.RoomSend;

describe("a private room message's mentions", () => {
  it('asks no server about the words after @: members matched by name here, other words are text', async () => {
    // Before: "@ceo-office" and "@noon" were each asked of the auth service.
    const { server, bob, alice, carol } = await people();
    const [A, C] = [alice.user.user_id, carol.user.user_id];
    const roomId = 'e5'.repeat(12);
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A, C] });
    await connected(bob, server);
    await bob.sendRoom(roomId, 'first'); // the members' names known from here
    const seen = watch(server);
    await bob.sendRoom(roomId, `the merger closes friday, meet @ceo-office at @noon, ping @Alice and @${C} and @${bob.username(bob.me)}`);
    expect(seen.users).toEqual([]);
    expect(roomSend(server).mentions).toEqual([A, C]); // not ourselves
  });

  it('a member whose name is not known here: the member list is read once, not each word looked up', async () => {
    const roomId = 'e6'.repeat(12);
    const { server, bob, A } = await teamRoom(roomId);
    const seen = watch(server);
    await bob.sendRoom(roomId, '@one @two @three @alice @four');
    expect(seen.users).toEqual([]);
    expect(roomSend(server).mentions).toEqual([A]);
    const reads = seen.memberReads;
    expect(reads).toBeLessThanOrEqual(2); // the send's own read of the members, and at most one for the names
    await bob.sendRoom(roomId, '@five @alice');
    expect(seen.memberReads).toBe(reads); // every name known now: no read
    expect(roomSend(server).mentions).toEqual([A]);
  });

  it('a stray "@..." does not end the scan, and hundreds of @words cost nothing and give at most MAX_MENTIONS', async () => {
    const { server, bob, alice } = await people();
    const members = [alice.user];
    for (let i = 0; i < MAX_MENTIONS + 5; i++) members.push(server.addUser(`member${i}`));
    const roomId = 'e7'.repeat(12);
    server.rooms.set(roomId, { name: 'big', members: [bob.me, ...members.map((m) => m.user_id)] });
    await connected(bob, server);
    const seen = watch(server);
    await bob.sendRoom(roomId, 'so @... anyway @alice');
    expect(roomSend(server).mentions).toEqual([alice.user.user_id]);
    const words = Array.from({ length: 500 }, (_, i) => `@word${i}`).join(' ');
    await bob.sendRoom(roomId, `${words} ${members.map((m) => `@${m.username}`).join(' ')}`);
    expect(seen.users).toEqual([]);
    expect(roomSend(server).mentions).toEqual(members.slice(0, MAX_MENTIONS).map((m) => m.user_id));
  });
});
