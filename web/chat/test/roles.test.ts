// Roles in rooms, the pure rules of src/app/roles.ts, against the server's checks in
// services/rooms (members.py `remove`, `set_moderator`, `transfer`; rooms.py `update`;
// moderation.py `by_member`; docs/rooms.md "Roles"): the page offers a button only where
// the server would take the request.
import { describe, expect, it } from 'vitest';

import { canInvite, canManageRoom, canRemovePost, composerBlock, memberActionDone, memberActions, roleOf } from '../src/app/roles.ts';

const ME = 'me';
const member = (user_id: string, role: string) => ({ user_id, role });

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
    expect(memberActions('owner', ME, member('bob', 'member'))).toEqual({ promote: true, demote: false, remove: true, handOver: true });
  });

  it('gives the owner demote, remove and hand over on a moderator, not promote', () => {
    expect(memberActions('owner', ME, member('mod', 'moderator'))).toEqual({ promote: false, demote: true, remove: true, handOver: true });
  });

  it('lets a moderator remove plain members only (only the owner removes a moderator), and change no role', () => {
    expect(memberActions('moderator', ME, member('bob', 'member'))).toEqual({ promote: false, demote: false, remove: true, handOver: false });
    expect(memberActions('moderator', ME, member('mod', 'moderator'))).toEqual({ promote: false, demote: false, remove: false, handOver: false });
  });

  it('offers nothing on the owner (cannot_remove_owner; roles are the owner\'s)', () => {
    for (const mine of ['owner', 'moderator', 'member']) {
      expect(memberActions(mine, ME, member('boss', 'owner'))).toEqual({ promote: false, demote: false, remove: false, handOver: false });
    }
  });

  it('offers nothing on oneself (cannot_target_self: leave instead)', () => {
    for (const mine of ['owner', 'moderator', 'member']) {
      expect(memberActions(mine, ME, member(ME, mine))).toEqual({ promote: false, demote: false, remove: false, handOver: false });
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
    expect(memberActions('moderator', ME, member('new', 'owner'))).toEqual({ promote: false, demote: false, remove: false, handOver: false });
    expect(memberActions('moderator', ME, member('bob', 'member')).remove).toBe(true);
    expect(memberActions('owner', 'new', member(ME, 'moderator'))).toEqual({ promote: false, demote: true, remove: true, handOver: true });
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
  });
});
