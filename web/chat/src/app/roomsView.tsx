/** The room screens: the rooms list (mine, invitations, the public directory, a new
 * room) and a room (a private room's end-to-end-encrypted conversation, or a public
 * room's server-readable timeline with paging). */
import type { ComponentChildren } from 'preact';
import { useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks';
import { ApiError, type Room, type RoomBan, type RoomMember, type RoomMessage } from './api.ts';
import { type ClientEvent, type HistoryEntry, type ParleyClient, SafetyNumberChanged } from './client.ts';
import { failure, MessageActions } from './messageActions.tsx';
import { banLifted, banQuery, banQuestion, canInvite, canManageBans, canManageRoom, canRemovePost, canRestorePost, composerBlock, type MemberActions, memberActionDone, memberActions, type Role, roleOf } from './roles.ts';
import {
  applyPostChange,
  canDeletePost,
  canEditPost,
  cutFeed,
  emptyFeed,
  type Feed,
  type FeedMerge,
  feedReading,
  findNote,
  findPost,
  heldNote,
  isRemovedPost,
  JUMP_PAGE,
  keyChangeChoices,
  oneAtATime,
  readGap,
  readPast,
  withEarlier,
  withPosts,
} from './rooms.ts';
import type { Drafts } from './composer.ts';
import { failedSend, holding } from './composer.ts';
import { dateAndTime, hourMinute } from './format.ts';
import { useShown } from './earlier.ts';
import { newest, SHOWN } from './history.ts';
import { typingText } from './typing.ts';

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function ErrorLine(props: { error: string; id: string }) {
  return props.error ? (
    <p class="error" role="alert" id={props.id}>
      {props.error}
    </p>
  ) : null;
}

export function RoomList(props: { client: ParleyClient; current: string | null; onOpen: (room: Room) => void }) {
  const { client } = props;
  const [rooms, setRooms] = useState<Room[]>([]);
  const [invitations, setInvitations] = useState<Room[]>([]);
  const [reload, setReload] = useState(0);
  const [name, setName] = useState('');
  const [kind, setKind] = useState<'private' | 'public'>('private');
  const [query, setQuery] = useState('');
  const [found, setFound] = useState<Room[] | null>(null);
  const [error, setError] = useState('');
  const [status, setStatus] = useState('');
  const again = () => setReload((r) => r + 1);
  useEffect(() => {
    client.rooms().then(
      (r) => {
        setRooms(r.rooms);
        setInvitations(r.invitations);
      },
      (e: unknown) => setError(message(e)),
    );
  }, [reload, props.current]);
  useEffect(() => client.on((e: ClientEvent) => void (e.type === 'room_changed' && again())), [client]);
  const act = (what: Promise<unknown>, done: string, then?: () => void) => {
    setError('');
    what.then(
      () => {
        setStatus(done);
        again();
        then?.();
      },
      (e: unknown) => setError(message(e)),
    );
  };
  return (
    <section class="rooms" aria-labelledby="rooms-title">
      <div class="conv-head">
        <h2 id="rooms-title">Rooms</h2>
        <button type="button" id="refresh-rooms" class="small" onClick={again}>
          Refresh rooms
        </button>
      </div>
      <ul aria-label="Your rooms" id="room-list">
        {rooms.map((r) => (
          <li>
            <button
              type="button"
              class={`contact room${props.current === r.room_id ? ' current' : ''}`}
              data-room-name={r.name}
              aria-current={props.current === r.room_id ? 'true' : undefined}
              onClick={() => props.onOpen(r)}
            >
              #{r.name} <span class="kind">({r.kind}{r.state === 'closed' ? ', closed' : ''})</span>
            </button>
          </li>
        ))}
      </ul>
      {invitations.length > 0 && (
        <>
          <h3 id="invitations-title">Invitations</h3>
          <ul aria-labelledby="invitations-title" id="invitations">
            {invitations.map((r) => (
              <li class="invitation" data-room-name={r.name}>
                #{r.name}
                {r.invited_by ? ` (from ${client.username(r.invited_by)})` : ''}
                <div class="row">
                  <button type="button" class="small" aria-label={`Accept the invitation to #${r.name}`} onClick={() => act(client.acceptInvitation(r.room_id), `You joined #${r.name}.`, () => props.onOpen(r))}>
                    Accept
                  </button>
                  <button type="button" class="small secondary" aria-label={`Decline the invitation to #${r.name}`} onClick={() => act(client.declineInvitation(r.room_id), `Declined #${r.name}.`)}>
                    Decline
                  </button>
                </div>
              </li>
            ))}
          </ul>
        </>
      )}
      <form
        id="create-room"
        onSubmit={(e) => {
          e.preventDefault();
          act(client.createRoom(name, kind).then(props.onOpen), `Room #${name.trim()} created.`, () => setName(''));
        }}
      >
        <label for="room-name">New room name</label>
        <input id="room-name" value={name} autocomplete="off" required onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        <label for="room-kind">Kind</label>
        <select id="room-kind" value={kind} aria-describedby="room-kind-hint" onChange={(e) => setKind((e.target as HTMLSelectElement).value as 'private' | 'public')}>
          <option value="private">Private (encrypted)</option>
          <option value="public">Public</option>
        </select>
        <small id="room-kind-hint" class="hint">
          Private: end-to-end encrypted, by invitation. Public: in the directory, readable by the server.
        </small>
        <button type="submit" id="create-room-submit">
          Create room
        </button>
      </form>
      <form
        id="find-rooms"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          setError('');
          client.directory(query).then(setFound, (err: unknown) => setError(message(err)));
        }}
      >
        <label for="room-query">Find public rooms</label>
        <div class="row">
          <input id="room-query" value={query} autocomplete="off" onInput={(e) => setQuery((e.target as HTMLInputElement).value)} />
          <button type="submit" id="find-rooms-submit">
            Search
          </button>
        </div>
      </form>
      {found && (
        <ul aria-label="Public rooms found" id="directory">
          {found.length === 0 && <li>No public room has that in its name.</li>}
          {found.map((r) => (
            <li class="found" data-room-name={r.name}>
              #{r.name} ({r.members ?? 0} {r.members === 1 ? 'member' : 'members'})
              {rooms.some((m) => m.room_id === r.room_id) ? (
                <button type="button" class="small secondary" onClick={() => props.onOpen(r)}>
                  Open
                </button>
              ) : (
                <button type="button" class="small" aria-label={`Join #${r.name}`} onClick={() => act(client.joinRoom(r.room_id), `You joined #${r.name}.`, () => props.onOpen(r))}>
                  Join
                </button>
              )}
            </li>
          ))}
        </ul>
      )}
      <p role="status" class="hint" id="rooms-status">
        {status}
      </p>
      <ErrorLine error={error} id="rooms-error" />
    </section>
  );
}

const time = hourMinute;

const MARKER: Record<string, string> = {
  edited: 'edited',
  edited_by_moderator: 'edited by a moderator',
  removed_by_moderator: 'removed by a moderator',
  deleted_by_author: 'deleted by its author',
};

function Line(props: {
  dir: string;
  who: string;
  at: number;
  text: string;
  status?: string | undefined;
  failed?: boolean;
  seq?: number | undefined;
  marker?: string | null | undefined;
  serverId?: string | undefined;
  removed?: boolean;
  lit?: boolean;
  children?: ComponentChildren;
}) {
  const status = props.dir === 'out' && props.status;
  return (
    <li
      class={`msg ${props.dir}${props.failed ? ' failed' : ''}${props.removed ? ' removed' : ''}${props.lit ? ' highlight' : ''}`}
      data-status={props.status ?? ''}
      {...(props.seq ? { 'data-seq': props.seq } : {})}
      {...(props.serverId ? { 'data-server-id': props.serverId } : {})}
    >
      <span class="who">{props.who}</span> <time>{time(props.at)}</time>
      {(props.text || !props.removed) && <p class="text">{props.text}</p>}
      {props.marker && <p class="hint marker">({MARKER[props.marker] ?? props.marker})</p>}
      {(status || props.children) && (
        <div class="meta">
          {status && <span class="status">{status === 'queued' ? 'waiting to be sent' : status === 'accepted' ? 'sent' : status}</span>}
          {props.children}
        </div>
      )}
    </li>
  );
}

/** "Edit" on your own public-room post: the text in a labelled field, saved with
 * `PATCH .../messages/{seq}` (marked "edited"); the server's refusal is shown. */
function EditPost(props: { client: ParleyClient; post: RoomMessage; onEdited: (m: RoomMessage) => void }) {
  const { client, post } = props;
  const [editing, setEditing] = useState(false);
  const [text, setText] = useState(post.text);
  const [busy, setBusy] = useState(false);
  const [note, setNote] = useState('');
  const field = `edit-${post.seq}`;
  return (
    <>
      {!editing && (
        <button type="button" class="edit" aria-label={`Edit your message: ${post.text.slice(0, 40)}`}
          onClick={() => { setText(post.text); setNote(''); setEditing(true); }}>
          Edit
        </button>
      )}
      {editing && (
        <form class="edit-form row" onSubmit={(e) => {
          e.preventDefault();
          setBusy(true);
          setNote('');
          client.editRoomPost(post.room_id, post.seq, text).then(
            (m) => { props.onEdited(m); setEditing(false); setNote('Edited'); },
            (err: unknown) => setNote(failure(err)),
          ).finally(() => setBusy(false));
        }}>
          <label for={field} class="visually-hidden">Edit your message</label>
          <input id={field} class="edit-text" value={text} autocomplete="off" autoFocus onInput={(e) => setText((e.target as HTMLInputElement).value)} />
          <button type="submit" class="edit-save small" disabled={busy || !text.trim()} aria-busy={busy}>Save</button>
          <button type="button" class="edit-cancel small secondary" onClick={() => setEditing(false)}>Cancel</button>
        </form>
      )}
      {note && <span class="mod-note" role="status">{note}</span>}
    </>
  );
}

/** What "Delete" (your own post, `deleted_by_author`), "Remove" (someone else's, as the
 * room's owner or a moderator: `removed_by_moderator`) and "Restore" (undoing such a
 * removal: `POST .../restore`) say and are called. */
const REMOVAL = {
  own: {
    button: 'Delete',
    cls: 'delete',
    label: (_who: string, text: string, _at: number) => `Delete your message: ${text}`,
    group: 'Confirm the deletion',
    ask: "Delete this message for everyone in the room? Members will see it as deleted (the server's admins keep the original).",
    yes: 'Delete for everyone',
  },
  moderator: {
    button: 'Remove',
    cls: 'remove-post',
    label: (who: string, text: string, _at: number) => `Remove ${who}'s message: ${text}`,
    group: 'Confirm the removal',
    ask: "Remove this message for everyone in the room? Members will see it as removed by a moderator (the server's admins keep the original).",
    yes: 'Remove for everyone',
  },
  restore: {
    button: 'Restore',
    cls: 'restore-post',
    label: (who: string, _text: string, at: number) => `Restore ${who === 'You' ? 'your' : `${who}'s`} message of ${time(at)}, removed by a moderator`,
    group: 'Confirm the restore',
    ask: 'Restore this message for everyone in the room? Members will see it again as it was before the removal (the removal stays in its history).',
    yes: 'Restore for everyone',
  },
} as const;

/** "Delete" on your own public-room post, or "Remove" on a member's as the room's owner
 * or a moderator (roles.ts canRemovePost), behind a confirmation: `DELETE
 * .../messages/{seq}`; the answer (empty text, marked "deleted by its author" or
 * "removed by a moderator") replaces the line. "Restore" on a post a moderator removed
 * (roles.ts canRestorePost), behind the same confirmation: `POST .../restore`; the
 * answer (the post as it was before the removal) replaces the line. The server's refusal
 * is shown by the post (a restore's in an alert: the page cannot tell an admin's removal,
 * which the server refuses) and nothing changes. */
function PostRemoval(props: { client: ParleyClient; post: RoomMessage; mode: keyof typeof REMOVAL; who: string; onRemoved: (m: RoomMessage) => void }) {
  const { client, post } = props;
  const say = REMOVAL[props.mode];
  const [confirming, setConfirming] = useState<boolean | null>(null); // null: never opened
  const [busy, setBusy] = useState(false);
  const [note, setNote] = useState('');
  const yes = useRef<HTMLButtonElement>(null);
  const ask = useRef<HTMLButtonElement>(null);
  // The focus goes to the confirming button, and back to the first button on Cancel
  // (keyboard users stay where they were; `autofocus` works once per page only).
  useLayoutEffect(() => {
    if (confirming) yes.current?.focus();
    else if (confirming === false) ask.current?.focus();
  }, [confirming]);
  return (
    <>
      {!confirming && (
        <button type="button" class={say.cls} ref={ask} aria-label={say.label(props.who, post.text.slice(0, 40), post.sent_at)}
          onClick={() => { setNote(''); setConfirming(true); }}>
          {say.button}
        </button>
      )}
      {confirming && (
        <span class={`${say.cls}-confirm`} role="group" aria-label={say.group}>
          <span>{say.ask}</span>{' '}
          <button type="button" class={`${say.cls}-yes small`} disabled={busy} aria-busy={busy} ref={yes}
            onClick={() => {
              setBusy(true);
              setNote('');
              (props.mode === 'restore' ? client.restoreRoomPost(post.room_id, post.seq) : client.deleteRoomPost(post.room_id, post.seq)).then(
                (m) => { setConfirming(false); props.onRemoved(m); },
                (err: unknown) => setNote(failure(err)),
              ).finally(() => setBusy(false));
            }}>
            {say.yes}
          </button>{' '}
          <button type="button" class={`${say.cls}-no small secondary`} onClick={() => setConfirming(false)}>Cancel</button>
        </span>
      )}
      {note && <span class="mod-note" role={props.mode === 'restore' ? 'alert' : 'status'}>{note}</span>}
    </>
  );
}

/** An inline confirmation: what will happen, the confirming button (focused when it
 * shows) and Cancel. */
function Confirm(props: { label: string; text: string; yes: string; cls: string; busy: boolean; onYes: () => void; onNo: () => void }) {
  const yes = useRef<HTMLButtonElement>(null);
  useLayoutEffect(() => yes.current?.focus(), []);
  return (
    <span class={`confirm ${props.cls}-confirm`} role="group" aria-label={props.label}>
      <span>{props.text}</span>{' '}
      <button type="button" class={`${props.cls}-yes small`} ref={yes} disabled={props.busy} aria-busy={props.busy} onClick={props.onYes}>
        {props.yes}
      </button>{' '}
      <button type="button" class={`${props.cls}-no small secondary`} onClick={props.onNo}>
        Cancel
      </button>
    </span>
  );
}

/** What a member action asks before it is made (null: made at once). */
function confirmText(action: keyof MemberActions, name: string, room: Room): { text: string; yes: string } | null {
  const title = `#${room.name}`;
  if (action === 'remove') {
    return {
      text:
        room.kind === 'private'
          ? `Remove ${name} from ${title}? They will no longer get its messages: each member's next message goes out under a new key.`
          : `Remove ${name} from ${title}? Their posts stay. A public room is open to anyone: they can join it again.`,
      yes: 'Remove',
    };
  }
  if (action === 'ban') return { text: banQuestion(name, room, true), yes: 'Ban' };
  if (action === 'handOver') return { text: `Hand ${title} over to ${name}? They become its owner; you become a moderator, and only they can make you the owner again.`, yes: 'Hand over' };
  return null;
}

/** How a confirmation is named, and the class of the button it stands for (focused
 * again on Cancel). */
const CONFIRMED: Partial<Record<keyof MemberActions, { label: (name: string) => string; cls: string }>> = {
  remove: { label: (name) => `Confirm removing ${name}`, cls: 'remove-member' },
  ban: { label: (name) => `Confirm banning ${name}`, cls: 'ban-member' },
  handOver: { label: (name) => `Confirm handing the room over to ${name}`, cls: 'hand-over' },
};

/** One member's buttons in the members list, as the viewer's role allows (roles.ts
 * memberActions): "Make moderator" / "Remove as moderator" and "Make owner" for the
 * owner, "Remove" and "Ban" for the owner and (plain members only) moderators. A refusal
 * shows its code and message by the member, and nothing changes. `onDone`: what the
 * action did, and the room as the server answered it (a hand-over); the lists are read
 * again on the `room_changed` ParleyClient tells the page after each. */
function MemberButtons(props: {
  client: ParleyClient;
  room: Room;
  member: RoomMember;
  name: string;
  me: string;
  onDone: (said: string, room: Room | undefined) => void;
}) {
  const { client, room, member, name } = props;
  const can = memberActions(room.role, props.me, member);
  const [confirming, setConfirming] = useState<keyof MemberActions | null>(null);
  const [busy, setBusy] = useState(false);
  const [note, setNote] = useState('');
  const box = useRef<HTMLSpanElement>(null);
  const [back, setBack] = useState<string | null>(null); // the button a Cancel goes back to (its class)
  useLayoutEffect(() => {
    if (back === null || confirming) return;
    box.current?.querySelector<HTMLButtonElement>(`button.${back}`)?.focus();
    setBack(null);
  }, [back, confirming]);
  if (!Object.values(can).some(Boolean)) return null;
  const run = (action: keyof MemberActions) => {
    setBusy(true);
    setNote('');
    const id = room.room_id;
    const call: Promise<Room | undefined> =
      action === 'promote' || action === 'demote'
        ? client.setModerator(id, member.user_id, action === 'promote').then(() => undefined)
        : action === 'remove'
          ? client.removeMember(id, member.user_id).then(() => undefined)
          : action === 'ban'
            ? client.banUser(id, member.user_id).then(() => undefined)
            : client.handOver(id, member.user_id);
    call.then(
      (now) => {
        setConfirming(null);
        props.onDone(memberActionDone(action, name, `#${room.name}`), now);
      },
      (err: unknown) => setNote(failure(err)),
    ).finally(() => setBusy(false));
  };
  const ask = (action: keyof MemberActions) => {
    setNote('');
    if (confirmText(action, name, room)) setConfirming(action);
    else run(action);
  };
  const asked = confirming ? confirmText(confirming, name, room) : null;
  const named = confirming ? CONFIRMED[confirming] : undefined;
  return (
    <span class="member-actions" ref={box}>
      {asked && confirming && named ? (
        <Confirm
          label={named.label(name)}
          cls={named.cls}
          text={asked.text}
          yes={asked.yes}
          busy={busy}
          onYes={() => run(confirming)}
          onNo={() => {
            setBack(named.cls);
            setConfirming(null);
          }}
        />
      ) : (
        <>
          {can.promote && (
            <button type="button" class="promote small secondary" disabled={busy} aria-label={`Make ${name} a moderator`} onClick={() => ask('promote')}>
              Make moderator
            </button>
          )}
          {can.demote && (
            <button type="button" class="demote small secondary" disabled={busy} aria-label={`Remove ${name} as moderator`} onClick={() => ask('demote')}>
              Remove as moderator
            </button>
          )}
          {can.handOver && (
            <button type="button" class="hand-over small secondary" disabled={busy} aria-label={`Make ${name} the owner of #${room.name}`} onClick={() => ask('handOver')}>
              Make owner
            </button>
          )}
          {can.remove && (
            <button type="button" class="remove-member small secondary" disabled={busy} aria-label={`Remove ${name} from #${room.name}`} onClick={() => ask('remove')}>
              Remove
            </button>
          )}
          {can.ban && (
            <button type="button" class="ban-member small secondary" disabled={busy} aria-label={`Ban ${name} from #${room.name}`} onClick={() => ask('ban')}>
              Ban
            </button>
          )}
        </>
      )}
      {note && (
        <span class="mod-note member-note" role="alert">
          {note}
        </span>
      )}
    </span>
  );
}

/** One banned user in "Banned users": their name, who banned them and when, and "Lift
 * ban" (`DELETE .../bans/{user}`, made at once: it only lets them join again). A refusal
 * shows its code and message by the row, and nothing changes. */
function BanRow(props: { client: ParleyClient; room: Room; ban: RoomBan; name: string; username: string; by: string; onLifted: (said: string) => void }) {
  const { client, room, ban, name } = props;
  const [busy, setBusy] = useState(false);
  const [note, setNote] = useState('');
  return (
    <li class="ban" data-user-id={ban.user_id} data-username={props.username}>
      <span class="member-name">{name}</span>
      <span class="ban-by">
        <span class="visually-hidden">, </span>banned by {props.by}, <time dateTime={new Date(ban.at).toISOString()}>{dateAndTime(ban.at)}</time>
      </span>
      <span class="member-actions">
        <button
          type="button"
          class="lift-ban small secondary"
          disabled={busy}
          aria-busy={busy}
          aria-label={`Lift the ban on ${name}`}
          onClick={() => {
            setBusy(true);
            setNote('');
            client
              .liftBan(room.room_id, ban.user_id)
              .then(
                () => props.onLifted(banLifted(name, `#${room.name}`)),
                (err: unknown) => setNote(failure(err)),
              )
              .finally(() => setBusy(false));
          }}
        >
          Lift ban
        </button>
      </span>
      {note && (
        <span class="mod-note member-note" role="alert">
          {note}
        </span>
      )}
    </li>
  );
}

/** "Ban a user": a username (or `@name`) or a user id, looked up as "Add contact" looks
 * names up (ParleyClient lookupUser: `user_not_found` for nobody), then banned after
 * the same confirmation as a member's Ban ("Confirm banning NAME", the question saying
 * whether they are a member: `members`, the list as last read), `PUT .../bans/{user}`.
 * Oneself is asked of the server at once (it always refuses: `cannot_target_self`);
 * someone listed under "Banned users" already is said so, and nothing is sent. A refusal
 * (the look-up's or the ban's: `forbidden`, `cannot_remove_owner`...) shows its code and
 * message under the field, an alert, and nothing changes; done, `onBanned` gets the
 * status line and the field is emptied, and both lists are read again (`room_changed`).
 * The focus: on the confirming button while it asks, back on the form's Ban on Cancel,
 * on the field once the ban is made or refused. */
function BanForm(props: {
  client: ParleyClient;
  room: Room;
  me: string;
  members: RoomMember[] | null;
  bans: RoomBan[] | null;
  onBanned: (said: string) => void;
}) {
  const { client, room } = props;
  const [text, setText] = useState('');
  const [busy, setBusy] = useState(false);
  const [note, setNote] = useState(''); // a refusal (an alert)
  const [said, setSaid] = useState(''); // not a refusal: banned already
  const [asking, setAsking] = useState<{ user_id: string; username: string } | null>(null);
  const field = useRef<HTMLInputElement>(null);
  const submit = useRef<HTMLButtonElement>(null);
  const [back, setBack] = useState<'field' | 'submit' | null>(null); // where the focus goes once the confirmation goes
  useLayoutEffect(() => {
    if (back === null || asking) return;
    (back === 'field' ? field : submit).current?.focus();
    setBack(null);
  }, [back, asking]);
  const title = `#${room.name}`;
  const ban = (user: { user_id: string; username: string }) => {
    setBusy(true);
    setNote('');
    client
      .banUser(room.room_id, user.user_id)
      .then(
        () => {
          setText('');
          props.onBanned(memberActionDone('ban', user.username, title));
        },
        (err: unknown) => setNote(failure(err)),
      )
      .finally(() => {
        setBusy(false);
        setAsking(null);
        setBack('field');
      });
  };
  return (
    <form
      id="ban-form"
      class="ban-form"
      aria-labelledby="ban-form-title"
      aria-busy={busy}
      onSubmit={(e) => {
        e.preventDefault();
        const query = banQuery(text);
        if (busy || asking || !query) return;
        setBusy(true);
        setNote('');
        setSaid('');
        client
          .lookupUser(query)
          .then(
            (user) => {
              if (user.user_id === props.me) {
                ban(user); // refused by the server, whose words are shown
                return;
              }
              if (props.bans?.some((b) => b.user_id === user.user_id)) {
                setSaid(`${user.username} is banned from ${title} already.`);
                setBusy(false);
                return;
              }
              setAsking({ user_id: user.user_id, username: user.username });
              setBusy(false);
            },
            (err: unknown) => {
              setNote(failure(err));
              setBusy(false);
            },
          );
      }}
    >
      <h5 id="ban-form-title">Ban a user</h5>
      <label for="ban-user">User to ban (username or user id)</label>
      <div class="row">
        <input
          id="ban-user"
          ref={field}
          value={text}
          autocomplete="off"
          spellcheck={false}
          required
          aria-invalid={note ? 'true' : undefined}
          aria-describedby={note ? 'ban-form-error' : undefined}
          onInput={(e) => {
            setText((e.target as HTMLInputElement).value);
            setAsking(null); // another name: the question asked is no longer the one
            setSaid('');
          }}
        />
        {!asking && (
          <button type="submit" id="ban-user-submit" class="small" ref={submit} aria-busy={busy}>
            Ban
          </button>
        )}
      </div>
      {asking && (
        <Confirm
          label={`Confirm banning ${asking.username}`}
          cls="ban-user"
          text={banQuestion(asking.username, room, props.members ? props.members.some((m) => m.user_id === asking.user_id) : undefined)}
          yes="Ban"
          busy={busy}
          onYes={() => ban(asking)}
          onNo={() => {
            setBack('submit');
            setAsking(null);
          }}
        />
      )}
      <p class="hint" role="status" id="ban-form-status">
        {said}
      </p>
      {note && (
        <p class="error" role="alert" id="ban-form-error">
          {note}
        </p>
      )}
    </form>
  );
}

/** Refusals of `GET .../bans` that say our role changed (made a plain member, removed):
 * the list goes, and the room is read again (its role hides the section). */
const NOT_MINE = new Set(['forbidden', 'not_a_member', 'room_not_found']);

/** "Members": the room's members, each with their name, role and whether they are online
 * now, and the buttons the viewer's role allows (MemberButtons). Read (every page, once)
 * when opened, on "Refresh members" (with the room: one's own role may have changed), and
 * when the room changes (`room_changed`, or a change made from this page); presence is not
 * pushed, so the list is as of its last read. `alwaysRead`: read it even while closed (a
 * moderator's public room, whose posts' authors' roles say which posts they may
 * remove); `onList` gets each list read. For the owner and moderators (roles.ts
 * canManageBans) the panel also lists the room's bans ("Banned users", every page of
 * `GET .../bans`, read with the members), each with "Lift ban", and "Ban a user" bans
 * anyone by name (BanForm); after a ban or a lift both lists and the room are read
 * again (ParleyClient tells the page `room_changed`, as after a removal). */
function Members(props: {
  client: ParleyClient;
  room: Room;
  title: string;
  alwaysRead: boolean;
  onList: (list: RoomMember[]) => void;
  onRoom: (room: Room) => void;
}) {
  const { client, room } = props;
  const roomId = room.room_id;
  const [open, setOpen] = useState(false);
  const [members, setMembers] = useState<RoomMember[] | null>(null);
  const [names, setNames] = useState<Record<string, string>>({});
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState('');
  const [done, setDone] = useState(''); // what the last member action did
  const [reads, setReads] = useState(0); // raised to read the list again
  const [answers, setAnswers] = useState(0); // the reads shown so far (data-reads: for tests)
  const latest = useRef(0); // the read whose answer counts (an older one's is dropped)
  const alive = useRef(true);
  const again = () => setReads((n) => n + 1);
  useEffect(
    () => () => {
      alive.current = false;
    },
    [],
  );
  useEffect(() => client.on((e: ClientEvent) => void (e.type === 'room_changed' && e.room === roomId && again())), [client, roomId]);
  const reading = open || props.alwaysRead;
  const manage = canManageBans(room.role);
  const [bans, setBans] = useState<RoomBan[] | null>(null);
  const [bansLoading, setBansLoading] = useState(false);
  const [bansError, setBansError] = useState('');
  const [banReads, setBanReads] = useState(0); // the ban lists shown so far (data-reads: for tests)
  const latestBans = useRef(0);
  useEffect(() => {
    const n = ++latestBans.current;
    if (!open || !manage) {
      setBans(null);
      setBansLoading(false);
      setBansError('');
      return;
    }
    setBansLoading(true);
    setBansError('');
    client.roomBans(roomId).then(
      (list) => {
        if (!alive.current || n !== latestBans.current) return;
        setBans(list);
        setBanReads((k) => k + 1);
        setBansLoading(false);
        client
          .namesOf(
            list.flatMap((b) => [b.user_id, b.banned_by]),
            (more) => alive.current && setNames((old) => ({ ...old, ...more })),
          )
          .catch(() => undefined); // logged out meanwhile: the short ids stay
      },
      (e: unknown) => {
        if (!alive.current || n !== latestBans.current) return;
        setBansLoading(false);
        if (e instanceof ApiError && NOT_MINE.has(e.code)) {
          setBans(null);
          client.room(roomId).then(props.onRoom, () => undefined);
        } else {
          setBansError(message(e));
        }
      },
    );
  }, [open, manage, reads, roomId]);
  useEffect(() => {
    if (!reading) return;
    const n = ++latest.current;
    setLoading(true);
    setError('');
    client.roomMembers(roomId).then(
      (list) => {
        if (!alive.current || n !== latest.current) return;
        setMembers(list);
        props.onList(list);
        setAnswers((k) => k + 1);
        setLoading(false);
        client
          .namesOf(
            list.map((m) => m.user_id),
            (more) => alive.current && setNames((old) => ({ ...old, ...more })),
          )
          .catch(() => undefined); // logged out meanwhile: the short ids stay
      },
      (e: unknown) => {
        if (!alive.current || n !== latest.current) return;
        setError(message(e));
        setLoading(false);
      },
    );
  }, [reading, reads, roomId]);
  const me = client.account?.user_id ?? '';
  const count = members?.length ?? room.members;
  const online = members?.filter((m) => m.online).length ?? 0;
  const summary = loading
    ? 'Reading the members…'
    : members
      ? `${members.length} ${members.length === 1 ? 'member' : 'members'}, ${online} online.`
      : '';
  const nameOf = (userId: string) => names[userId] ?? client.username(userId);
  return (
    <div class="members">
      <button
        type="button"
        id="members-toggle"
        class="secondary small"
        aria-expanded={open}
        aria-controls={open ? 'members-panel' : undefined}
        onClick={() => setOpen((o) => !o)}
      >
        Members{count === undefined ? '' : ` (${count})`}
      </button>
      {open && (
        <section id="members-panel" class="panel members-panel" aria-labelledby="members-title">
          <div class="conv-head">
            <h3 id="members-title">Members of {props.title}</h3>
            <button
              type="button"
              id="refresh-members"
              class="small secondary"
              aria-busy={loading}
              onClick={() => {
                again();
                // One's own role may have changed elsewhere (the server tells no role change).
                client.room(roomId).then(props.onRoom, () => undefined);
              }}
            >
              Refresh members
            </button>
          </div>
          <p role="status" class="hint" id="members-summary">
            {summary}
          </p>
          {members && (
            <ul id="member-list" aria-label={`Members of ${props.title}`} aria-busy={loading} data-reads={answers}>
              {members.map((m) => (
                <li
                  key={m.user_id}
                  class={`member${m.online ? ' online' : ''}`}
                  data-user-id={m.user_id}
                  data-username={names[m.user_id] ?? ''}
                  data-role={m.role}
                  data-online={m.online ? 'true' : 'false'}
                >
                  <span class="member-name">
                    {nameOf(m.user_id)}
                    {m.user_id === me ? ' (you)' : ''}
                  </span>
                  <span class="role">
                    <span class="visually-hidden">, </span>
                    {m.role}
                  </span>
                  {m.online && (
                    <span class="presence">
                      <span class="dot" aria-hidden="true" />
                      <span class="visually-hidden">, </span>online
                    </span>
                  )}
                  <MemberButtons
                    key={`${m.user_id}:${m.role}:${room.role ?? ''}`}
                    client={client}
                    room={room}
                    member={m}
                    name={nameOf(m.user_id)}
                    me={me}
                    onDone={(said, now) => {
                      setDone(said);
                      if (now) props.onRoom(now);
                    }}
                  />
                </li>
              ))}
            </ul>
          )}
          {manage && (
            <section id="bans" class="bans" aria-labelledby="bans-title" aria-busy={bansLoading} data-reads={banReads}>
              <h4 id="bans-title">Banned users</h4>
              {bans === null ? (
                bansLoading && <p class="hint">Reading the bans…</p>
              ) : bans.length === 0 ? (
                <p class="hint" id="bans-empty">
                  Nobody is banned from {props.title}.
                </p>
              ) : (
                <ul id="ban-list" aria-label={`Banned from ${props.title}`}>
                  {bans.map((b) => (
                    <BanRow
                      key={b.user_id}
                      client={client}
                      room={room}
                      ban={b}
                      name={nameOf(b.user_id)}
                      username={names[b.user_id] ?? ''}
                      by={b.banned_by === me ? 'you' : nameOf(b.banned_by)}
                      onLifted={setDone}
                    />
                  ))}
                </ul>
              )}
              <ErrorLine error={bansError} id="bans-error" />
              <BanForm client={client} room={room} me={me} members={members} bans={bans} onBanned={setDone} />
            </section>
          )}
          <p role="status" class="hint" id="members-status">
            {done}
          </p>
          <ErrorLine error={error} id="members-error" />
        </section>
      )}
    </div>
  );
}

/** "Close room" (behind a confirmation) or "Reopen room", for the owner and moderators
 * (roles.ts canManageRoom): `PATCH /rooms/v1/rooms/{id}` `{"state"}`. Every member's page
 * hears of it (`room_changed`, change `state`). A refusal shows its code and message and
 * nothing changes. */
function RoomStateControl(props: { client: ParleyClient; room: Room; onRoom: (room: Room) => void }) {
  const { client, room } = props;
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const [note, setNote] = useState('');
  const closeButton = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    setConfirming(false);
    setNote('');
  }, [room.room_id]);
  if (!canManageRoom(room.role)) return null;
  const closed = room.state === 'closed';
  const set = (state: 'open' | 'closed') => {
    setBusy(true);
    setNote('');
    client
      .setRoomState(room.room_id, state)
      .then(
        (now) => {
          setConfirming(false);
          props.onRoom(now);
        },
        (err: unknown) => setNote(failure(err)),
      )
      .finally(() => setBusy(false));
  };
  return (
    <div class="room-state-control">
      {closed ? (
        <button type="button" id="reopen-room" class="secondary" disabled={busy} aria-busy={busy} onClick={() => set('open')}>
          Reopen room
        </button>
      ) : confirming ? (
        <Confirm
          label={`Confirm closing #${room.name}`}
          cls="close-room"
          text={`Close #${room.name}? Nobody can post, join or be invited until it is reopened; members can still read it and leave.`}
          yes="Close room"
          busy={busy}
          onYes={() => set('closed')}
          onNo={() => {
            setConfirming(false);
            setTimeout(() => closeButton.current?.focus());
          }}
        />
      ) : (
        <button type="button" id="close-room" class="secondary" ref={closeButton} onClick={() => { setNote(''); setConfirming(true); }}>
          Close room
        </button>
      )}
      {note && (
        <span class="mod-note" id="room-state-note" role="alert">
          {note}
        </span>
      )}
    </div>
  );
}

/** A member of a private room whose safety number changed: every send to the room is
 * refused (SafetyNumberChanged) until the user compares the new number with them, or, if
 * they had not verified them, accepts the new key (the contact's own functions: room
 * members are contacts the list does not show). `onDone`: the key is trusted now. */
function MemberKeyChange(props: { client: ParleyClient; change: SafetyNumberChanged; onDone: () => void }) {
  const { client, change } = props;
  const [error, setError] = useState('');
  const name = change.username;
  const choices = keyChangeChoices(change);
  const done = (step: Promise<void>) => {
    setError('');
    step.then(props.onDone, (e: unknown) => setError(message(e)));
  };
  return (
    <div id="member-key-warning" class="warning" role="alert" data-user-id={change.userId}>
      <h3>{name}'s safety number changed</h3>
      <p>
        {name}'s identity key is new: a reinstall, a new device, or someone in the middle. Messages to this room are paused until you compare the new
        number with {name}
        {change.verified ? ' again (you had verified them)' : ' or accept the new key'}; then send your message again.
      </p>
      {change.oldSafetyNumber && (
        <p>
          Old safety number: <span class="number">{change.oldSafetyNumber}</span>
        </p>
      )}
      <p>
        New safety number: <span class="number" id="member-new-safety-number">{change.newSafetyNumber}</span>
      </p>
      <button type="button" id="member-verify-new" onClick={() => done(client.verify(change.userId, change.newSafetyNumber))}>
        I compared it: they match
      </button>
      {choices.includes('accept') && (
        <button type="button" id="member-accept-new" onClick={() => done(client.acceptIdentity(change.userId))}>
          Accept the new key without comparing
        </button>
      )}
      <ErrorLine error={error} id="member-key-error" />
    </div>
  );
}

export function RoomView(props: {
  client: ParleyClient;
  room: Room;
  version: number;
  highlight?: { seq: number; n: number } | null; // a post to show (from a mention)
  drafts: Drafts; // each conversation's unsent text (`room:<id>` for a room)
  onLeft: () => void;
}) {
  const { client, drafts } = props;
  const [room, setRoom] = useState<Room>(props.room);
  const [text, setText] = useState(() => drafts.get(`room:${props.room.room_id}`));
  const [invitee, setInvitee] = useState('');
  const [error, setError] = useState('');
  const [status, setStatus] = useState('');
  const [keyChange, setKeyChange] = useState<SafetyNumberChanged | null>(null); // a member's, that stopped a send here
  // A public room's posts: the newest SHOWN kept as live ones come (more once the user
  // asks for earlier ones), "Load earlier messages" going on below them (rooms.ts Feed).
  const [feed, setFeed] = useState<Feed<RoomMessage>>(emptyFeed);
  const timeline = feed.posts;
  const nextBefore = feed.nextBefore;
  const timelineNow = useRef<RoomMessage[]>([]); // for the event listener (set each render)
  timelineNow.current = timeline;
  const feedFor = useRef(0); // which room's feed (one more at each room shown): a read for another is dropped
  const [names, setNames] = useState<Record<string, string>>({});
  const [sending, setSending] = useState(0); // messages under way
  const sends = useRef<Promise<unknown>>(Promise.resolve()); // the last one's end
  const [, setTick] = useState(0); // shown again when a typist expires
  const listRef = useRef<HTMLOListElement>(null);
  const { limit, setLimit, more } = useShown(listRef); // a private room's newest entries shown
  const [lit, setLit] = useState<number | null>(null);
  const [readyFor, setReadyFor] = useState<string | null>(null); // the room whose first page (public) or rows (private) are in
  const shown = useRef<number | null>(null); // the highlight request already shown
  const [jumpTo, setJumpTo] = useState<number | null>(null); // a public post to scroll to once it is shown
  const [finding, setFinding] = useState(false); // earlier pages are read to find a mentioned post
  const [earlier, setEarlier] = useState(false); // "Load earlier messages" is reading (a held-back page waits up to ~15 s)
  const search = useRef(0); // the current search: another room or another mention calls it off
  const [showWant, setShowWant] = useState<{ serverId: string; n: number } | null>(null); // a private message to show
  const [litId, setLitId] = useState<string | null>(null); // the private message highlighted (server_id)
  const noted = useRef(''); // what the status line says of the private message not shown yet
  const titleRef = useRef<HTMLHeadingElement>(null);
  const [roomRead, setRoomRead] = useState<string | null>(null); // the room read from the server (its role and state are known)
  const [roster, setRoster] = useState<{ room: string; roles: Map<string, Role | null> } | null>(null); // members' roles, once read
  const id = props.room.room_id;
  const draftKey = `room:${id}`;
  const current = useRef(id);
  current.current = id;
  /** A room read or changed: shown if it is still the open one. */
  const takeRoom = (r: Room) => {
    if (r.room_id !== current.current) return;
    setRoom(r);
    setRoomRead(r.room_id);
  };
  const isPublic = room.kind === 'public';
  const merge = (more: RoomMessage[], how: FeedMerge = 'live') => setFeed((f) => withPosts(f, more, how));
  /** A read of pages under way: no post is let go until it ends (its pages must meet what is held). */
  const reading = <T,>(read: Promise<T>): Promise<T> => {
    const of = feedFor.current;
    setFeed((f) => feedReading(f, 1));
    return read.finally(() => feedFor.current === of && setFeed((f) => feedReading(f, -1)));
  };
  useLayoutEffect(() => {
    setRoom(props.room);
    feedFor.current += 1;
    setFeed(emptyFeed());
    setReadyFor(null);
    setLit(null);
    setJumpTo(null);
    setFinding(false);
    setEarlier(false);
    search.current += 1;
    setShowWant(null);
    setLitId(null);
    setLimit(SHOWN);
    noted.current = '';
    setError('');
    setStatus('');
    setKeyChange(null);
    setRoomRead(null);
    setRoster(null);
    setText(drafts.get(draftKey)); // this room's unsent text, if one was left in it
    titleRef.current?.focus(); // keyboard and screen-reader users land in the room (and a phone scrolls to it)
    let ended = false;
    let publicRoom = false; // known once the room is read
    // The room itself first: a directory entry or an invitation may not say its kind.
    client
      .room(id)
      .then(async (full) => {
        takeRoom(full);
        if (full.kind === 'public') {
          publicRoom = true;
          const page = await client.timeline(id, null);
          if (ended) return; // another room shows now
          setFeed((f) => ({ ...withPosts(f, page.messages, 'live'), nextBefore: page.nextBefore }));
          setReadyFor(id);
        } else {
          await client.openRoom(id);
          setReadyFor(id);
        }
      })
      .catch((e: unknown) => setError(message(e)));
    // Posts written while frames were lost (offline, a pod gone, a resync) came as no
    // live frame (room_post is live only): the public timeline is read from the newest
    // page down to what is shown (a timeline with nothing shown: its newest page), one
    // fill at a time, and once more after it if asked meanwhile (a resync during a fill
    // may be for posts written after it read its pages). Past the limits (a long
    // absence in a busy room), what was read replaces the timeline, and "Load earlier
    // messages" goes on from its end: no gap is left between the two.
    const fillGap = oneAtATime(async () => {
      if (!publicRoom || ended || current.current !== id) return;
      const still = () => !ended && current.current === id;
      try {
        const cut = await reading(
          readGap({
            loaded: timelineNow.current,
            read: (before) => client.timeline(id, before, JUMP_PAGE),
            onPage: (page) => merge(page.messages, 'fill'),
            stop: () => !still(),
          }),
        );
        if (cut !== null && still()) setFeed((f) => cutFeed(f, cut));
      } catch {
        // read again at the next connection
      }
    });
    const off = client.on((e: ClientEvent) => {
      if ((e.type === 'connection' && e.state === 'connected') || e.type === 'resync') void fillGap();
      if (e.type === 'room_post' && e.post.room_id === id) merge([{ ...e.post, rev: 1, marker: null }]);
      if (e.type === 'room_message_changed' && e.change.room_id === id) {
        const c = e.change; // keep the highest revision (docs/moderation.md)
        setFeed((f) => ({ ...f, posts: applyPostChange(f.posts, c) }));
      }
      if (e.type === 'room_changed' && e.room === id) client.room(id).then(takeRoom, () => current.current === id && props.onLeft());
    });
    return () => {
      ended = true;
      off();
      client.draftDone(id); // leaving the room with a draft: members stop seeing us type
    };
  }, [id]);
  // The open room opened again (joined from the directory while it shows, after a removal
  // or a lifted ban; picked in the list): our role may have changed, and the server tells
  // no join, so the room is read again.
  const given = useRef(props.room);
  useEffect(() => {
    const before = given.current;
    given.current = props.room;
    if (before === props.room || before.room_id !== props.room.room_id) return;
    client.room(id).then(takeRoom, (e: unknown) => current.current === id && setError(message(e)));
  }, [props.room]);
  const history: HistoryEntry[] = isPublic ? [] : client.roomHistory(id);
  const shownHistory = newest(history, limit); // a private room's newest entries
  const senders = isPublic ? timeline.map((m) => m.sender) : shownHistory.map((e) => e.sender ?? '');
  const typists = client.typists(id);
  useEffect(() => {
    for (const s of new Set([...senders, ...typists])) {
      if (s && s !== 'moderator' && !(s in names)) void client.nameOf(s).then((n) => setNames((old) => ({ ...old, [s]: n })));
    }
  }, [senders.join(','), typists.join(',')]);
  useEffect(() => {
    // Each typist shows until 6 s after their last notice: render again when one expires.
    const next = client.typingExpiry(id);
    if (next === null) return undefined;
    const timer = setTimeout(() => setTick((t) => t + 1), Math.max(0, next - Date.now()) + 20);
    return () => clearTimeout(timer);
  });
  const count = isPublic ? timeline.length : history.length;
  const newestSeq = isPublic ? (timeline[timeline.length - 1]?.seq ?? 0) : 0; // a public room's count stays once the oldest go
  useEffect(() => {
    const list = listRef.current;
    if (list) list.scrollTop = list.scrollHeight;
  }, [count, newestSeq, id]);
  // A mention opened from the list: its post scrolled to and marked. A public post not
  // loaded yet is looked for in earlier pages (rooms.ts findPost), each merged as it comes.
  const want = props.highlight;
  const ready = readyFor === id; // not the previous room's, in the render that switches rooms
  useEffect(() => {
    if (!want || shown.current === want.n || !isPublic || !ready) return;
    shown.current = want.n;
    const target = want.seq;
    const run = ++search.current;
    setLit(null);
    if (timeline.some((m) => m.seq === target)) {
      setJumpTo(target);
      return;
    }
    setFinding(true);
    setStatus('Looking for that message in earlier messages…');
    reading(
      findPost({
        seq: target,
        loaded: timeline,
        nextBefore,
        read: (before) => client.timeline(id, before, JUMP_PAGE),
        onPage: (page, older) => setFeed((f) => (older ? { ...withPosts(f, page.messages, 'asked'), nextBefore: page.nextBefore } : withPosts(f, page.messages, 'asked'))),
        stop: () => search.current !== run,
      }),
    )
      .then(
        (result) => {
          if (search.current !== run) return;
          setStatus(findNote(result));
          if (result.outcome === 'found') setJumpTo(target);
        },
        (e: unknown) => {
          if (search.current !== run) return;
          setStatus('');
          setError(message(e));
        },
      )
      .finally(() => search.current === run && setFinding(false));
  }, [want?.n, ready, isPublic]);
  useEffect(() => {
    // After the scroll to the newest line above: the post found is shown instead.
    if (jumpTo === null) return;
    const line = listRef.current?.querySelector(`li[data-seq="${jumpTo}"]`);
    if (!line) return; // not rendered yet
    line.scrollIntoView({ block: 'center' });
    setLit(jumpTo);
    setJumpTo(null);
  }, [jumpTo, timeline]);
  // A private room's mention names its message by `server_id`: shown if this browser holds
  // it (its history is local), or said why not; one that arrives later is shown then.
  useEffect(() => {
    const take = () => {
      const asked = client.takeShowRequest(id);
      if (asked) {
        setLitId(null);
        setShowWant(asked);
      }
    };
    take();
    return client.on((e: ClientEvent) => void (e.type === 'show_message' && e.room === id && take()));
  }, [id]);
  const held = !isPublic && showWant ? client.roomMessageState(id, showWant.serverId) : null;
  useEffect(() => {
    if (!showWant || isPublic || !ready || held === null) return;
    const line = held === 'held' ? listRef.current?.querySelector(`li[data-server-id="${CSS.escape(showWant.serverId)}"]`) : null;
    if (line) {
      line.scrollIntoView({ block: 'center' });
      setLitId(showWant.serverId);
      setShowWant(null);
      const said = noted.current;
      if (said) setStatus((s) => (s === said ? '' : s));
      noted.current = '';
    } else if (held === 'held') {
      // Older than the entries shown: show down to it (the next render finds its line).
      const at = history.findIndex((e) => e.server_id === showWant.serverId);
      if (at >= 0 && at < history.length - limit) setLimit(history.length - at);
    } else {
      const note = heldNote(held);
      if (note !== noted.current) {
        noted.current = note;
        setStatus(note);
      }
    }
  }, [showWant?.n, ready, isPublic, held, count, limit]);
  const me = client.me;
  const who = (sender: string | undefined) => (sender === me ? 'You' : (names[sender ?? ''] ?? client.username(sender ?? '')));
  const pending = isPublic ? 0 : client.roomPending(id);
  const typing = typingText(typists.map((u) => names[u] ?? client.username(u)));
  const title = `#${room.name}`;
  // Until the room is read, the list's copy may not say our role (a mention's): nothing
  // is blocked on a guess.
  const block = roomRead === id ? composerBlock(room) : null;
  const inviting = roomRead !== id || canInvite(room);
  const closed = room.state === 'closed';
  useEffect(() => {
    if (block !== null) client.draftDone(id); // a draft left in a room that closed: no longer typing
  }, [block, id]);
  // A post's author's role: from the member list once read; the owner is known before.
  const roles = roster?.room === id ? roster.roles : null;
  const authorRole = (sender: string): Role | null | undefined => (roles ? (roles.get(sender) ?? null) : sender === room.owner ? 'owner' : undefined);
  return (
    <section class="conversation" aria-labelledby="conversation-title" data-room-id={id}>
      <header class="conv-head">
        <div>
          <h2 id="conversation-title" tabIndex={-1} ref={titleRef}>
            {title}
            {closed && (
              <span class="room-closed-badge" id="room-closed-badge">
                {' '}
                (closed)
              </span>
            )}
          </h2>
          <p class="hint" id="room-kind-note">
            {isPublic ? 'Public room: the server can read its messages.' : 'Private room: end-to-end encrypted with sender keys.'}
            {roomRead === id && roleOf(room.role) ? ` You are its ${room.role}.` : ''}
          </p>
        </div>
        <div class="room-actions">
          <RoomStateControl client={client} room={room} onRoom={takeRoom} />
          <button
            type="button"
            id="leave-room"
            class="secondary"
            onClick={() => {
              setError('');
              client.leaveRoom(id).then(props.onLeft, (e: unknown) => setError(message(e)));
            }}
          >
            Leave room
          </button>
        </div>
      </header>
      <Members
        key={id}
        client={client}
        room={room}
        title={title}
        alwaysRead={isPublic && roomRead === id && roleOf(room.role) === 'moderator'}
        onList={(list) => setRoster({ room: id, roles: new Map(list.map((m) => [m.user_id, roleOf(m.role)])) })}
        onRoom={takeRoom}
      />
      <form
        id="invite"
        class="row"
        aria-disabled={!inviting}
        onSubmit={(e) => {
          e.preventDefault();
          setError('');
          const user = invitee;
          client.invite(id, user).then(
            () => {
              setInvitee('');
              setStatus(`Invited ${user.trim()}.`);
            },
            (err: unknown) => setError(message(err)),
          );
        }}
      >
        <label for="invitee" class="visually-hidden">
          Invite to {title} by username
        </label>
        <input
          id="invitee"
          value={invitee}
          autocomplete="off"
          required
          disabled={!inviting}
          aria-describedby={!inviting && block ? 'composer-blocked' : undefined}
          placeholder="Invite by username"
          onInput={(e) => setInvitee((e.target as HTMLInputElement).value)}
        />
        <button type="submit" id="invite-submit" disabled={!inviting}>
          Invite
        </button>
      </form>
      {isPublic && nextBefore !== null && (
        <button
          type="button"
          id="older"
          class="secondary"
          disabled={finding || earlier}
          aria-busy={finding || earlier}
          onClick={() => {
            const [before, of] = [nextBefore, feedFor.current];
            setEarlier(true);
            // A page held back by a message still being sent is asked again (rooms.ts readPast).
            reading(readPast((b) => client.timeline(id, b), before, { stop: () => feedFor.current !== of })).then(
              (page) => {
                if (feedFor.current !== of || page === 'stopped') return;
                if (page === 'pending') setError('Earlier messages cannot be read yet: a message is still being sent. Try again in a moment.');
                else setFeed((f) => withEarlier(f, before, page));
              },
              (e: unknown) => setError(message(e)),
            ).finally(() => feedFor.current === of && setEarlier(false));
          }}
        >
          Load earlier messages
        </button>
      )}
      {!isPublic && history.length > shownHistory.length && (
        <button type="button" id="show-earlier" class="secondary" onClick={more}>
          Show earlier messages ({history.length - shownHistory.length} more)
        </button>
      )}
      {pending > 0 && (
        <p class="hint" role="status" id="room-pending">
          {pending} message{pending === 1 ? '' : 's'} wait for their sender's key.
        </p>
      )}
      <ol id="messages" ref={listRef} aria-label={`Messages in ${title}`} aria-live="polite" aria-relevant="additions">
        {isPublic
          ? timeline.map((m) => (
              <Line key={m.seq} dir={m.sender === me ? 'out' : 'in'} who={m.sender === 'moderator' ? 'Moderator' : who(m.sender)} at={m.sent_at} text={m.text} seq={m.seq} marker={m.marker} removed={isRemovedPost(m)} lit={lit === m.seq}>
                {canEditPost(m, me) && room.state === 'open' && <EditPost client={client} post={m} onEdited={(edited) => merge([edited])} />}
                {canDeletePost(m, me) && room.role != null && <PostRemoval client={client} post={m} mode="own" who="You" onRemoved={(deleted) => merge([deleted])} />}
                {canRemovePost(m, me, room.role, authorRole(m.sender)) && (
                  <PostRemoval client={client} post={m} mode="moderator" who={who(m.sender)} onRemoved={(removed) => merge([removed])} />
                )}
                {canRestorePost(m, room.role, authorRole(m.sender)) && (
                  <PostRemoval
                    client={client}
                    post={m}
                    mode="restore"
                    who={who(m.sender)}
                    onRemoved={(restored) => {
                      merge([restored]);
                      setStatus(`${m.sender === me ? 'Your' : `${who(m.sender)}'s`} message of ${time(m.sent_at)} is restored.`);
                    }}
                  />
                )}
              </Line>
            ))
          : shownHistory.map((e) => (
              <Line dir={e.dir} who={who(e.sender)} at={e.at} text={e.text} status={e.status} seq={e.seq} failed={e.kind === 'error'} removed={e.kind === 'removed'} serverId={e.server_id} lit={litId !== null && litId === e.server_id}>
                <MessageActions client={client} peer={`room:${id}`} entry={e} />
              </Line>
            ))}
      </ol>
      {keyChange && (
        <MemberKeyChange
          client={client}
          change={keyChange}
          onDone={() => {
            setKeyChange(null);
            setError('');
            setStatus(`${keyChange.username}'s new key is trusted: you can send to ${title} again.`);
          }}
        />
      )}
      {block && (
        <p class="hint blocked" id="composer-blocked" role="status">
          {block}
        </p>
      )}
      <form
        id="composer"
        onSubmit={(e) => {
          e.preventDefault();
          const sent = text;
          if (block || !sent.trim()) return;
          // The field is emptied at once and the next message may be written and sent
          // while this one is under way: sends wait for the one before (each until the
          // server accepted it), so they go in the order written. Refused, its text comes
          // back to the room's draft (and field) if the user wrote no other one there;
          // queued but not accepted in time, it stays out of them (it goes by itself:
          // its line says it waits to be sent).
          setError('');
          setText('');
          drafts.set(draftKey, '');
          client.draftDone(id);
          setSending((n) => n + 1);
          const send = () => client.sendRoom(id, sent);
          const done = holding(sends.current.then(send, send));
          sends.current = done.catch(() => undefined);
          done
            .then(
              () => {
                // The timeline's newest page, read after the send: the post's live frame
                // often shows it first. A failed read changes nothing: the live frame shows it.
                if (isPublic) client.timeline(id, null, 20).then((page) => merge(page.messages), () => undefined);
              },
              (err: unknown) => {
                if (failedSend(err) === 'queued') {
                  // In the outbox: sent again it would go twice.
                  setError(current.current === id ? message(err) : `${title}: ${message(err)}`);
                  return;
                }
                // Back into the room's draft and, if the room is still open, its field
                // (nobody is told of typing), unless the user wrote another one there.
                drafts.restore(draftKey, sent);
                if (current.current !== id) {
                  setError(`Not sent to ${title}: ${message(err)} Its text waits in ${title}'s field.`);
                  return;
                }
                setError(message(err));
                // A member's new key: compared or accepted here, then the message can go.
                if (err instanceof SafetyNumberChanged) setKeyChange(err);
                setText((t) => (t === '' ? sent : t));
              },
            )
            .finally(() => setSending((n) => n - 1));
        }}
      >
        <label for="message" class="visually-hidden">
          Message to {title}
        </label>
        <input
          id="message"
          autocomplete="off"
          value={text}
          disabled={block !== null}
          aria-describedby={block ? 'composer-blocked' : undefined}
          placeholder={closed ? `${title} is closed` : `Message ${title}`}
          onInput={(e) => {
            const draft = (e.target as HTMLInputElement).value;
            setText(draft);
            drafts.set(draftKey, draft);
            client.draftChanged(id, draft);
          }}
        />
        <button type="submit" id="send" disabled={!text.trim() || block !== null} aria-busy={sending > 0}>
          Send
        </button>
      </form>
      <p id="typing" class="hint typing" aria-live="polite" aria-atomic="true">
        {typing}
      </p>
      <p role="status" class="hint" id="room-status">
        {status}
      </p>
      <ErrorLine error={error} id="room-error" />
    </section>
  );
}
