/**
 * A public post whose answer was lost (a 504 after the rooms service stored it) keeps
 * its client_id, with its room and text, until it is known posted: sent again minutes
 * later, or after a reload, it goes with the same client_id, which the rooms service
 * deduplicates for good (docs/rooms.md): never a second post (README "Public rooms").
 */
import { afterEach, expect, it, vi } from 'vitest';

import type { ParleyClient } from '../src/app/client.ts';
import { cleanUp, people, reopen } from './support/clients.ts';
import type { FakeServer } from './support/fakeServer.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});
afterEach(() => {
  vi.restoreAllMocks();
  cleanUp();
});

/** A public room whose service deduplicates client_ids; the first `lose` posts' answers
 * are lost after they were stored (504). Its timeline answers the stored posts. */
function publicRoom(server: FakeServer, room: string, lose: number): { stored: Map<string, { seq: number; text: string }> } {
  const stored = new Map<string, { seq: number; text: string }>();
  const inner = server.fetch;
  vi.stubGlobal('fetch', async (input: string | URL | Request, init?: RequestInit) => {
    const path = new URL(String(input)).pathname;
    const json = (status: number, body: unknown) => new Response(JSON.stringify(body), { status });
    if (path === `/rooms/v1/rooms/${room}`) {
      return json(200, { room_id: room, name: 'general', kind: 'public', role: 'member', version: 1, state: 'open' });
    }
    if (path === `/rooms/v1/rooms/${room}/messages` && init?.method === 'POST') {
      const body = JSON.parse(String(init.body)) as { client_id: string; text: string };
      const had = stored.get(body.client_id);
      const post = had ?? { seq: stored.size + 1, text: body.text };
      stored.set(body.client_id, post);
      if (lose-- > 0) return json(504, { error: { code: 'http_504', message: 'Gateway Timeout' } });
      return json(201, { room_id: room, ...post, client_id: body.client_id, sender: server.me?.user_id, mentions: [], sent_at: 0, duplicate: had !== undefined });
    }
    if (path === `/rooms/v1/rooms/${room}/messages`) {
      const messages = [...stored.entries()].map(([client_id, p]) => ({ room_id: room, seq: p.seq, sender: server.me?.user_id, client_id, text: p.text, mentions: [], sent_at: 0 }));
      return json(200, { messages: messages.reverse(), next_before: null });
    }
    return inner(input, init);
  });
  return { stored };
}

const later = (ms: number) => {
  const realNow = Date.now();
  vi.spyOn(Date, 'now').mockImplementation(() => realNow + ms);
};

it('a post answered 504 and sent again 2 minutes later is posted once', async () => {
  const { server, bob } = await people();
  const room = 'a1'.repeat(16);
  const { stored } = publicRoom(server, room, 1);
  await expect(bob.sendRoom(room, 'see you at 5')).rejects.toMatchObject({ status: 504 });
  later(121_000);
  await bob.sendRoom(room, 'see you at 5');
  expect([...stored.values()].map((p) => p.text)).toEqual(['see you at 5']);
  // Known posted: the same text sent again is a new post.
  await bob.sendRoom(room, 'see you at 5');
  expect(stored.size).toBe(2);
});

it('a post answered 504 and sent again after a reload is posted once', async () => {
  const { server, bob } = await people();
  const room = 'a2'.repeat(16);
  const { stored } = publicRoom(server, room, 1);
  await expect(bob.sendRoom(room, 'see you at 5')).rejects.toMatchObject({ status: 504 });
  const again: ParleyClient = await reopen(bob);
  later(3_600_000);
  await again.sendRoom(room, 'see you at 5');
  expect([...stored.values()].map((p) => p.text)).toEqual(['see you at 5']);
  // Known posted, after another reload too.
  const third = await reopen(again);
  await third.sendRoom(room, 'see you at 5');
  expect(stored.size).toBe(2);
});

it('a post the timeline shows stored is known posted: the same text later is a new post', async () => {
  const { server, bob } = await people();
  const room = 'a3'.repeat(16);
  const { stored } = publicRoom(server, room, 1);
  await expect(bob.sendRoom(room, 'ok')).rejects.toMatchObject({ status: 504 });
  const page = await bob.timeline(room, null);
  expect(page.messages.map((m) => m.text)).toEqual(['ok']);
  await bob.sendRoom(room, 'ok');
  expect([...stored.values()].map((p) => p.text)).toEqual(['ok', 'ok']);
  // Forgotten in the vault too: after a reload, the same text is a third post.
  const again = await reopen(bob);
  await again.sendRoom(room, 'ok');
  expect(stored.size).toBe(3);
});

it('the unsent posts kept are bounded: the oldest go first', async () => {
  const { server, bob } = await people();
  const room = 'a4'.repeat(16);
  const { stored } = publicRoom(server, room, 301);
  for (let n = 0; n < 301; n++) await expect(bob.sendRoom(room, `post ${n}`)).rejects.toMatchObject({ status: 504 });
  const again = await reopen(bob);
  await again.sendRoom(room, 'post 300'); // kept: the same post
  expect(stored.size).toBe(301);
  await again.sendRoom(room, 'post 0'); // the oldest, forgotten: a new post
  expect(stored.size).toBe(302);
});
