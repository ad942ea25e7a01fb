/**
 * Roles in rooms, the pure rules: who may do what to whom, given a role (the server's
 * checks in services/rooms: members.py `remove`, `set_moderator`, `transfer`; rooms.py
 * `update`; moderation.py `by_member`; docs/rooms.md "Roles"). The page shows a button
 * only where these say the server would allow it; the server still decides, and its
 * refusal is shown as it comes (roomsView.tsx).
 */

export type Role = 'owner' | 'moderator' | 'member';

/** A role as the rooms service names it, or null (not a member, or a name unknown here). */
export function roleOf(value: string | null | undefined): Role | null {
  return value === 'owner' || value === 'moderator' || value === 'member' ? value : null;
}

/** Whether `mine` may close and reopen the room (and change its name and topic): the
 * owner and moderators (`PATCH /rooms/v1/rooms/{id}`). */
export function canManageRoom(mine: string | null | undefined): boolean {
  const role = roleOf(mine);
  return role === 'owner' || role === 'moderator';
}

/** What may be done to one member from the members list. */
export interface MemberActions {
  /** Make a plain member a moderator (`PUT .../moderators/{user}`): the owner. */
  promote: boolean;
  /** Make a moderator a plain member again (`DELETE .../moderators/{user}`): the owner. */
  demote: boolean;
  /** Remove from the room (`DELETE .../members/{user}`): the owner removes anyone but
   * themself; a moderator removes plain members; nobody removes the owner. */
  remove: boolean;
  /** Hand the room over (`PUT .../owner`): the owner, to any other member; the owner
   * then becomes a moderator. */
  handOver: boolean;
  /** Ban from the room (`PUT .../bans/{user}`): removed, and refused (`banned`) when they
   * join, accept or are invited until the ban is lifted. The removal's rules exactly
   * (services/rooms members.py `ban`): whoever may remove a member may ban them. */
  ban: boolean;
}

const NOTHING: MemberActions = { promote: false, demote: false, remove: false, handOver: false, ban: false };

/** What `me`, whose role in the room is `mine`, may do to `target` (nobody targets
 * themself: `cannot_target_self`, leave instead). */
export function memberActions(mine: string | null | undefined, me: string, target: { user_id: string; role: string }): MemberActions {
  const role = roleOf(mine);
  const theirs = roleOf(target.role);
  if (target.user_id === me || role === null || role === 'member' || theirs === null || theirs === 'owner') return NOTHING;
  const remove = role === 'owner' || theirs === 'member'; // a moderator: plain members only
  const ban = remove; // a ban is the removal that sticks: the same rules
  if (role === 'moderator') return { ...NOTHING, remove, ban };
  return { promote: theirs === 'member', demote: theirs === 'moderator', remove, handOver: true, ban };
}

/** Whether `mine` sees the room's bans and lifts them (`GET .../bans`, `DELETE
 * .../bans/{user}`): the owner and moderators, as for closing the room. */
export function canManageBans(mine: string | null | undefined): boolean {
  return canManageRoom(mine);
}

/** A public room's post as far as removing it goes. */
export interface PostOwner {
  sender: string; // a user id, or `moderator` (posted as the room's moderator)
  marker?: string | null | undefined;
}

/** The sender the timeline shows for what was posted as the room's moderator. */
export const MODERATOR_SENDER = 'moderator';

const GONE = new Set(['removed_by_moderator', 'deleted_by_author']);

/**
 * Whether `me` (role `mine`) may remove someone else's public-room post as the room's
 * owner or a moderator (`DELETE .../messages/{seq}`, marked `removed_by_moderator`; a
 * closed room too). Not one's own (that is "Delete"), not one removed or deleted
 * already, not what was posted as the room's moderator (admins change those). A
 * moderator removes plain members' and former members' posts, not the owner's nor
 * another moderator's: `authorRole` is the author's role now (null: not a member any
 * more; undefined: not known yet, and then a moderator is not offered it).
 */
export function canRemovePost(post: PostOwner, me: string, mine: string | null | undefined, authorRole: Role | null | undefined): boolean {
  const role = roleOf(mine);
  if (role !== 'owner' && role !== 'moderator') return false;
  if (post.sender === me || post.sender === MODERATOR_SENDER || GONE.has(post.marker ?? '')) return false;
  if (role === 'owner') return true;
  return authorRole === null || authorRole === 'member';
}

/**
 * Whether `me` (role `mine`) may restore a public-room post that a moderator removed
 * (`POST .../messages/{seq}/restore`, services/rooms/moderation.py `by_member`): the
 * removal's rules, on a post marked `removed_by_moderator` only. The owner restores
 * anyone's, a moderator plain members' and former members' (`authorRole` as for
 * {@link canRemovePost}: null, not a member any more; undefined, not known yet, and then
 * a moderator is not offered it); nobody restores what was posted as the room's
 * moderator, nor an author's own deletion (`deleted_by_author` is final: `conflict`).
 * The server checks the author's role as it is now, not who the post is, so one's own
 * post removed before one became its owner is offered too. What the page cannot know:
 * whether an admin made the removal (the marker is the same); the server refuses that
 * one (`forbidden`: admins restore it), and the refusal is shown.
 */
export function canRestorePost(post: PostOwner, mine: string | null | undefined, authorRole: Role | null | undefined): boolean {
  const role = roleOf(mine);
  if (role !== 'owner' && role !== 'moderator') return false;
  if (post.marker !== 'removed_by_moderator' || post.sender === MODERATOR_SENDER) return false;
  if (role === 'owner') return true;
  return authorRole === null || authorRole === 'member';
}

/** Why a room's composer is disabled (null: it is not): a closed room takes no new
 * messages (`room_closed`), and only members write. */
export function composerBlock(room: { state: string; role: string | null | undefined }): string | null {
  if (room.state === 'closed') return 'This room is closed: nobody can post until its owner or a moderator reopens it. Its history stays readable.';
  if (roleOf(room.role) === null) return 'You are not a member of this room.';
  return null;
}

/** Whether the invitation field is offered: a member of an open room
 * (invitations are refused in a closed room: `room_closed`). */
export function canInvite(room: { state: string; role: string | null | undefined }): boolean {
  return room.state !== 'closed' && roleOf(room.role) !== null;
}

/** What the status line says after a member action that the server accepted. */
export function memberActionDone(action: keyof MemberActions, name: string, room: string): string {
  switch (action) {
    case 'promote':
      return `${name} is now a moderator of ${room}.`;
    case 'demote':
      return `${name} is no longer a moderator of ${room}.`;
    case 'remove':
      return `${name} was removed from ${room}.`;
    case 'handOver':
      return `${name} is now the owner of ${room}; you are a moderator.`;
    case 'ban':
      return `${name} was banned from ${room}.`;
  }
}

/** What the status line says once a ban is lifted. */
export function banLifted(name: string, room: string): string {
  return `The ban on ${name} was lifted: they may join ${room} again.`;
}

/** What the "Ban a user" field names, to be looked up (`GET /auth/v1/users/{username
 * or id}`): trimmed, without the `@` a mention puts before a name (an invitation takes
 * it so too); '' when it names nobody. */
export function banQuery(raw: string): string {
  return raw.trim().replace(/^@/, '').trim();
}

/** What a ban asks before it is made, by the user's name (`member`: whether they are a
 * member now, as the member list says; undefined: not known, the list not read yet). A
 * member is removed (a private room's members then send under a new key; a public
 * room's posts stay); anyone is refused until the ban is lifted. */
export function banQuestion(name: string, room: { name: string; kind: string }, member: boolean | undefined): string {
  const title = `#${room.name}`;
  const refused = `cannot join it, accept an invitation to it or be invited again until the ban is lifted (under "Banned users").`;
  const after = room.kind === 'private' ? " Each member's next message goes out under a new key." : ' Their posts stay.';
  if (member === true) return `Ban ${name} from ${title}? They are removed, and ${refused}${after}`;
  if (member === false) return `Ban ${name} from ${title}? They are not a member; they ${refused} Any invitation to it is withdrawn.`;
  return `Ban ${name} from ${title}? If they are a member, they are removed; they ${refused}`;
}
