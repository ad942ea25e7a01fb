// Roles in rooms, the pure rules of src/app/roles.ts, against the server's checks in
// services/rooms (members.py `remove`, `ban`, `bans`, `set_moderator`, `transfer`;
// rooms.py `update`; moderation.py `by_member`; docs/rooms.md "Roles", "A ban"): the page
// offers a button only where the server would take the request.
import { afterEach, describe, expect, it, vi } from 'vitest';

import { Api } from '../src/app/api.ts';
import { banLifted, banQuery, banQuestion, canInvite, canManageBans, canManageRoom, canRemovePost, canRestorePost, composerBlock, memberActionDone, memberActions, roleOf } from '../src/app/roles.ts';
import { BANS_PAGE, readBans } from '../src/app/rooms.ts';

const ME = 'me';
const member = (user_id: string, role: string) => ({ user_id, role });
const NOTHING = { promote: false, demote: false, remove: false, handOver: false, ban: false };

describe('roleOf', () => {
  it('knows the three roles and nothing else', () => {
    expect(['owner', 'moderator', 'member'].map(roleOf)).toEqual(['owner', 'moderator', 'member']);
    for (const other of [null, undefined, '', 'admin', 'Owner', 'moderator ']) expect(roleOf(other)).toBeNull();
  });
});

describe('canManageRoom: close and reopen (PATCH .../rooms/{id} state)', () => {
  it('is the owner and moderators only', () => {
    expect(canManageRoom('owner')).toBe(true);
    expect(canManageRoom('moderator')).toBe(true);
    expect(canManageRoom('member')).toBe(false); // forbidden
    expect(canManageRoom(null)).toBe(false); // not_a_member
    expect(canManageRoom(undefined)).toBe(false);
    expect(canManageRoom('admin')).toBe(false); // admins use the admin routes, not this page
  });
});

describe('memberActions', () => {
  it('gives the owner every action on a plain member', () => {
    expect(memberActions('owner', ME, member('bob', 'member'))).toEqual({ promote: true, demote: false, remove: true, handOver: true, ban: true });
  });

  it('gives the owner demote, remove, ban and hand over on a moderator, not promote', () => {
    expect(memberActions('owner', ME, member('mod', 'moderator'))).toEqual({ promote: false, demote: true, remove: true, handOver: true, ban: true });
  });

  it('lets a moderator remove and ban plain members only (only the owner removes or bans a moderator), and change no role', () => {
    expect(memberActions('moderator', ME, member('bob', 'member'))).toEqual({ promote: false, demote: false, remove: true, handOver: false, ban: true });
    expect(memberActions('moderator', ME, member('mod', 'moderator'))).toEqual(NOTHING);
  });

  it('offers nothing on the owner (cannot_remove_owner; roles are the owner\'s)', () => {
    for (const mine of ['owner', 'moderator', 'member']) {
      expect(memberActions(mine, ME, member('boss', 'owner'))).toEqual(NOTHING);
    }
  });

  it('offers nothing on oneself (cannot_target_self: leave instead)', () => {
    for (const mine of ['owner', 'moderator', 'member']) {
      expect(memberActions(mine, ME, member(ME, mine))).toEqual(NOTHING);
    }
  });

  it('offers a plain member, a non-member and an unknown role nothing', () => {
    for (const target of [member('bob', 'member'), member('mod', 'moderator')]) {
      expect(Object.values(memberActions('member', ME, target)).some(Boolean)).toBe(false);
      expect(Object.values(memberActions(null, ME, target)).some(Boolean)).toBe(false);
      expect(Object.values(memberActions('admin', ME, target)).some(Boolean)).toBe(false);
    }
    expect(Object.values(memberActions('owner', ME, member('x', 'guest'))).some(Boolean)).toBe(false);
  });

  it('follows a hand-over: the old owner, now a moderator, keeps only the removal of plain members', () => {
    // services/rooms members.py transfer: the new owner's old role goes, the old owner becomes a moderator.
    expect(memberActions('moderator', ME, member('new', 'owner'))).toEqual(NOTHING);
    expect(memberActions('moderator', ME, member('bob', 'member')).remove).toBe(true);
    expect(memberActions('owner', 'new', member(ME, 'moderator'))).toEqual({ promote: false, demote: true, remove: true, handOver: true, ban: true });
  });
});

describe('who may ban whom (PUT .../bans/{user}: the removal\'s rules)', () => {
  // services/rooms members.py `ban`: owner and moderators only (forbidden), nobody bans the
  // owner (cannot_remove_owner), only the owner bans a moderator (forbidden), nobody bans
  // themself (cannot_target_self).
  const roles = ['owner', 'moderator', 'member', null, 'admin'] as const;
  const targets = ['owner', 'moderator', 'member', 'guest'] as const;
  const allowed = new Set(['owner>moderator', 'owner>member', 'moderator>member']);

  it('is exactly the owner on moderators and members, and a moderator on plain members', () => {
    for (const mine of roles) {
      for (const theirs of targets) {
        const may = memberActions(mine, ME, member('them', theirs)).ban;
        expect(may, `${mine} bans a ${theirs}`).toBe(allowed.has(`${mine}>${theirs}`));
      }
    }
  });

  it('is offered on exactly the members the viewer may remove', () => {
    for (const mine of roles) {
      for (const theirs of targets) {
        const can = memberActions(mine, ME, member('them', theirs));
        expect(can.ban, `${mine} on a ${theirs}`).toBe(can.remove);
      }
      const self = memberActions(mine, ME, member(ME, mine ?? 'member'));
      expect(self.ban).toBe(false); // cannot_target_self
      expect(self.remove).toBe(false);
    }
  });

  it('lets the owner and moderators, nobody else, list bans and lift them', () => {
    expect(canManageBans('owner')).toBe(true);
    expect(canManageBans('moderator')).toBe(true);
    for (const other of ['member', null, undefined, 'admin']) expect(canManageBans(other)).toBe(false); // forbidden / not_a_member
  });

  it('says what a ban and a lift did', () => {
    expect(memberActionDone('ban', 'bob', '#r')).toBe('bob was banned from #r.');
    expect(banLifted('bob', '#r')).toBe('The ban on bob was lifted: they may join #r again.');
  });
});

describe('readBans: every page of GET .../bans', () => {
  const ban = (user_id: string) => ({ room_id: 'r', user_id, banned_by: ME, at: 1 });

  it('follows next_after from the start to null', async () => {
    const pages: Record<string, { bans: ReturnType<typeof ban>[]; next_after: string | null }> = {
      '': { bans: [ban('a'), ban('b')], next_after: 'b' },
      b: { bans: [ban('c'), ban('d')], next_after: 'd' },
      d: { bans: [ban('e')], next_after: null },
    };
    const asked: (string | null)[] = [];
    const all = await readBans(async (after) => {
      asked.push(after);
      return pages[after ?? ''] as (typeof pages)[string];
    });
    expect(asked).toEqual([null, 'b', 'd']);
    expect(all.map((b) => b.user_id)).toEqual(['a', 'b', 'c', 'd', 'e']);
  });

  it('reads one page when there are none, or few', async () => {
    expect(await readBans(async () => ({ bans: [], next_after: null }))).toEqual([]);
  });

  it('never loops on a page that does not go on, and keeps each user once', async () => {
    let reads = 0;
    const all = await readBans(async () => {
      reads += 1;
      return { bans: [ban('a')], next_after: 'a' };
    });
    expect(reads).toBe(2); // from the start, then from `a`: answered `a` again, it ends
    expect(all.map((b) => b.user_id)).toEqual(['a']);
  });
});

describe("canRemovePost: the owner's and moderators' removal of members' public posts", () => {
  const post = (sender: string, marker: string | null = null) => ({ sender, marker });

  it("lets the owner remove anyone's post, a moderator's too, whatever is known of the author", () => {
    for (const author of ['member', 'moderator', null, undefined] as const) expect(canRemovePost(post('bob'), ME, 'owner', author)).toBe(true);
  });

  it("lets a moderator remove plain members' and former members' posts, not the owner's nor a moderator's", () => {
    expect(canRemovePost(post('bob'), ME, 'moderator', 'member')).toBe(true);
    expect(canRemovePost(post('gone'), ME, 'moderator', null)).toBe(true); // no longer a member
    expect(canRemovePost(post('boss'), ME, 'moderator', 'owner')).toBe(false);
    expect(canRemovePost(post('mod'), ME, 'moderator', 'moderator')).toBe(false);
    expect(canRemovePost(post('bob'), ME, 'moderator', undefined)).toBe(false); // not known yet: not offered
  });

  it('offers nothing to a plain member or a non-member', () => {
    expect(canRemovePost(post('bob'), ME, 'member', 'member')).toBe(false);
    expect(canRemovePost(post('bob'), ME, null, 'member')).toBe(false);
  });

  it('is never offered on one\'s own post (that is "Delete"), on one removed or deleted, nor on a moderator post', () => {
    expect(canRemovePost(post(ME), ME, 'owner', 'owner')).toBe(false);
    expect(canRemovePost(post('bob', 'removed_by_moderator'), ME, 'owner', 'member')).toBe(false);
    expect(canRemovePost(post('bob', 'deleted_by_author'), ME, 'owner', 'member')).toBe(false);
    expect(canRemovePost(post('moderator'), ME, 'owner', null)).toBe(false); // admins change those
  });

  it('is offered after an edit, the author\'s or a moderator\'s', () => {
    expect(canRemovePost(post('bob', 'edited'), ME, 'moderator', 'member')).toBe(true);
    expect(canRemovePost(post('bob', 'edited_by_moderator'), ME, 'owner', 'member')).toBe(true);
  });
});

describe("canRestorePost: undoing a moderator's removal (services/rooms/moderation.py by_member, RESTORE)", () => {
  const removed = (sender: string, marker: string | null = 'removed_by_moderator') => ({ sender, marker });

  it("lets the owner restore anyone's removed post, whatever is known of the author", () => {
    for (const author of ['member', 'moderator', 'owner', null, undefined] as const) expect(canRestorePost(removed('bob'), 'owner', author)).toBe(true);
  });

  it("lets a moderator restore plain members' and former members' removed posts, not the owner's nor a moderator's", () => {
    expect(canRestorePost(removed('bob'), 'moderator', 'member')).toBe(true);
    expect(canRestorePost(removed('gone'), 'moderator', null)).toBe(true); // no longer a member
    expect(canRestorePost(removed('boss'), 'moderator', 'owner')).toBe(false); // forbidden
    expect(canRestorePost(removed('mod'), 'moderator', 'moderator')).toBe(false); // forbidden
    expect(canRestorePost(removed('bob'), 'moderator', undefined)).toBe(false); // not known yet: not offered
  });

  it('offers nothing to a plain member or a non-member', () => {
    expect(canRestorePost(removed('bob'), 'member', 'member')).toBe(false); // forbidden
    expect(canRestorePost(removed('bob'), null, 'member')).toBe(false); // not_a_member
    expect(canRestorePost(removed('bob'), undefined, 'member')).toBe(false);
    expect(canRestorePost(removed('bob'), 'admin', 'member')).toBe(false); // admins use the admin console
  });

  it("is offered on a moderator's removal only: never on an author's own deletion (final: conflict), nor on a post shown as it is", () => {
    for (const marker of ['deleted_by_author', 'edited', 'edited_by_moderator', null]) {
      expect(canRestorePost(removed('bob', marker), 'owner', 'member')).toBe(false);
    }
    expect(canRestorePost({ sender: 'bob' }, 'owner', 'member')).toBe(false); // no marker at all
  });

  it('is never offered on what was posted as the room\'s moderator (admins change those)', () => {
    expect(canRestorePost(removed('moderator'), 'owner', null)).toBe(false);
  });

  it("follows the author's role now, not who they are: the owner's own post removed before they owned the room", () => {
    // The server checks the author's current role only (a removal of the owner's post
    // by an admin is refused there, `forbidden`, and the page shows it).
    expect(canRestorePost(removed(ME), 'owner', 'owner')).toBe(true);
    expect(canRestorePost(removed(ME), 'moderator', 'moderator')).toBe(false);
  });

  it("offers Restore exactly where Remove is not, on the same post once removed", () => {
    const post = { sender: 'bob', marker: null as string | null };
    expect(canRemovePost(post, ME, 'moderator', 'member')).toBe(true);
    expect(canRestorePost(post, 'moderator', 'member')).toBe(false);
    post.marker = 'removed_by_moderator';
    expect(canRemovePost(post, ME, 'moderator', 'member')).toBe(false);
    expect(canRestorePost(post, 'moderator', 'member')).toBe(true);
  });
});

describe('composerBlock and canInvite', () => {
  it('blocks a closed room with the reason, for every role', () => {
    for (const role of ['owner', 'moderator', 'member', null]) {
      const reason = composerBlock({ state: 'closed', role });
      expect(reason).toMatch(/^This room is closed: nobody can post/);
      expect(canInvite({ state: 'closed', role })).toBe(false); // room_closed
    }
  });

  it('blocks a non-member, and nobody else in an open room', () => {
    expect(composerBlock({ state: 'open', role: null })).toBe('You are not a member of this room.');
    expect(composerBlock({ state: 'open', role: undefined })).toBe('You are not a member of this room.');
    for (const role of ['owner', 'moderator', 'member']) {
      expect(composerBlock({ state: 'open', role })).toBeNull();
      expect(canInvite({ state: 'open', role })).toBe(true);
    }
    expect(canInvite({ state: 'open', role: null })).toBe(false); // not_a_member
  });
});

describe('memberActionDone', () => {
  it('says what each action did', () => {
    expect(memberActionDone('promote', 'bob', '#r')).toBe('bob is now a moderator of #r.');
    expect(memberActionDone('demote', 'bob', '#r')).toBe('bob is no longer a moderator of #r.');
    expect(memberActionDone('remove', 'bob', '#r')).toBe('bob was removed from #r.');
    expect(memberActionDone('handOver', 'bob', '#r')).toBe('bob is now the owner of #r; you are a moderator.');
    expect(memberActionDone('ban', 'bob', '#r')).toBe('bob was banned from #r.');
  });
});

describe('banQuery: what the "Ban a user" field names', () => {
  it('is the name or id as typed, trimmed, without a leading @ (as an invitation takes it)', () => {
    expect(banQuery('bob')).toBe('bob');
    expect(banQuery('  Bob.Smith  ')).toBe('Bob.Smith'); // the auth service looks names up in any case
    expect(banQuery('@bob')).toBe('bob');
    expect(banQuery(' @ bob ')).toBe('bob');
    expect(banQuery('0123456789abcdef0123456789abcdef')).toBe('0123456789abcdef0123456789abcdef'); // a user id
    expect(banQuery('b@b')).toBe('b@b'); // only a leading @ goes: the look-up refuses the rest
  });

  it('is empty for nothing (nothing is looked up)', () => {
    for (const nothing of ['', '   ', '@', ' @ ']) expect(banQuery(nothing)).toBe('');
  });
});

describe('banQuestion: what a ban asks first', () => {
  const priv = { name: 'r', kind: 'private' };
  const pub = { name: 'p', kind: 'public' };

  it("asks a member's ban as the Ban button always has: removed, refused until lifted, and the room's consequence", () => {
    expect(banQuestion('bob', priv, true)).toBe(
      'Ban bob from #r? They are removed, and cannot join it, accept an invitation to it or be invited again until the ban is lifted (under "Banned users"). Each member\'s next message goes out under a new key.',
    );
    expect(banQuestion('bob', pub, true)).toBe(
      'Ban bob from #p? They are removed, and cannot join it, accept an invitation to it or be invited again until the ban is lifted (under "Banned users"). Their posts stay.',
    );
  });

  it("asks a non-member's ban without a removal: refused until lifted, any invitation withdrawn", () => {
    for (const room of [priv, pub]) {
      const asked = banQuestion('eve', room, false);
      expect(asked).toBe(
        `Ban eve from #${room.name}? They are not a member; they cannot join it, accept an invitation to it or be invited again until the ban is lifted (under "Banned users"). Any invitation to it is withdrawn.`,
      );
      expect(asked).not.toMatch(/removed|new key|posts stay/);
    }
  });

  it('says both when the member list is not read yet', () => {
    const asked = banQuestion('eve', pub, undefined);
    expect(asked).toMatch(/^Ban eve from #p\? If they are a member, they are removed; they cannot join it/);
    expect(asked).toContain('until the ban is lifted');
  });
});

describe('the ban calls on the wire (Api, as ParleyClient banUser, liftBan and roomBans make them)', () => {
  afterEach(() => void vi.unstubAllGlobals());
  const ROOM = 'ab'.repeat(12);
  const USER = 'cd'.repeat(16);

  it('bans with PUT and lifts with DELETE .../bans/{user}, with the bearer token; a refusal is an ApiError with its code', async () => {
    const calls: [string, string | undefined][] = [];
    const ban = { room_id: ROOM, user_id: USER, banned_by: ME, at: 1 };
    vi.stubGlobal('fetch', async (url: string, init: RequestInit) => {
      calls.push([`${init.method} ${url}`, (init.headers as Record<string, string>)['Authorization']]);
      if (init.method === 'PUT') return new Response(JSON.stringify(ban), { status: 200 });
      if (url.endsWith('/nobody')) return new Response(JSON.stringify({ error: { code: 'user_not_found', message: 'That user is not banned from this room.' } }), { status: 404 });
      return new Response(null, { status: 204 });
    });
    const api = new Api();
    api.token = 't';
    expect(await api.banUser(ROOM, USER)).toEqual(ban);
    expect(await api.liftBan(ROOM, USER)).toBeUndefined();
    await expect(api.liftBan(ROOM, 'nobody')).rejects.toMatchObject({ name: 'ApiError', code: 'user_not_found', status: 404 });
    expect(calls).toEqual([
      [`PUT /rooms/v1/rooms/${ROOM}/bans/${USER}`, 'Bearer t'],
      [`DELETE /rooms/v1/rooms/${ROOM}/bans/${USER}`, 'Bearer t'],
      [`DELETE /rooms/v1/rooms/${ROOM}/bans/nobody`, 'Bearer t'],
    ]);
  });

  it('reads every page of GET .../bans from the start, each from the previous next_after', async () => {
    const urls: string[] = [];
    const user = (n: number) => String(n).padStart(32, '0');
    vi.stubGlobal('fetch', async (url: string) => {
      urls.push(url);
      const after = new URL(url, 'http://x').searchParams.get('after');
      const start = after === null ? 0 : Number(after) + 1;
      const bans = [start, start + 1].filter((n) => n < 5).map((n) => ({ room_id: ROOM, user_id: user(n), banned_by: ME, at: n }));
      const next = start + 2 < 5 ? user(start + 1) : null;
      return new Response(JSON.stringify({ bans, next_after: next }), { status: 200 });
    });
    const api = new Api();
    const all = await readBans((after) => api.roomBans(ROOM, after, BANS_PAGE));
    expect(all.map((b) => b.at)).toEqual([0, 1, 2, 3, 4]);
    expect(urls).toEqual([
      `/rooms/v1/rooms/${ROOM}/bans?limit=500`,
      `/rooms/v1/rooms/${ROOM}/bans?limit=500&after=${user(1)}`,
      `/rooms/v1/rooms/${ROOM}/bans?limit=500&after=${user(3)}`,
    ]);
  });
});

describe('the restore call on the wire (Api, as ParleyClient restoreRoomPost makes it)', () => {
  afterEach(() => void vi.unstubAllGlobals());
  const ROOM = 'ab'.repeat(12);

  it('is POST .../messages/{seq}/restore with the bearer token and no body; a refusal is an ApiError with its code', async () => {
    const calls: [string, string | undefined, unknown][] = [];
    const restored = { room_id: ROOM, seq: 7, sender: 'bob', client_id: 'c', text: 'back again', mentions: [], sent_at: 1, rev: 3, marker: null };
    vi.stubGlobal('fetch', async (url: string, init: RequestInit) => {
      calls.push([`${init.method} ${url}`, (init.headers as Record<string, string>)['Authorization'], init.body]);
      if (url.includes('/messages/7/')) return new Response(JSON.stringify(restored), { status: 200 });
      return new Response(JSON.stringify({ error: { code: 'forbidden', message: 'An admin removed this message; admins restore it.' } }), { status: 403 });
    });
    const api = new Api();
    api.token = 't';
    expect(await api.restoreRoomMessage(ROOM, 7)).toEqual(restored);
    await expect(api.restoreRoomMessage(ROOM, 8)).rejects.toMatchObject({ name: 'ApiError', code: 'forbidden', status: 403 });
    expect(calls).toEqual([
      [`POST /rooms/v1/rooms/${ROOM}/messages/7/restore`, 'Bearer t', null],
      [`POST /rooms/v1/rooms/${ROOM}/messages/8/restore`, 'Bearer t', null],
    ]);
  });
});
