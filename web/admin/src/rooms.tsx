// Rooms: every room (private ones as metadata only), one room, its members and the
// admin actions of docs/moderation.md; a public room's timeline and its messages' moderation.
import { useEffect, useRef, useState } from "preact/hooks";
import { newClientId } from "./api";
import type { AdminRoom, Api, Marker, Revision, RevisionHistory, RoomFilter, RoomMember, RoomMessage } from "./api";
import type { Navigate } from "./main";
import { Confirm, Link, Problem, UserName, noticeAction, useBusy, usePagedList, when } from "./ui";

const MARKERS: Record<Marker, string> = {
  edited: "edited",
  edited_by_moderator: "edited by a moderator",
  removed_by_moderator: "removed by a moderator",
  deleted_by_author: "deleted by its author",
};
const gone = (m: Marker | null) => m === "removed_by_moderator" || m === "deleted_by_author";
/** A revision that undid a removal: a removed message changes only by a restore. */
const restores = (r: Revision, before: Revision | undefined) =>
  before?.marker === "removed_by_moderator" && !gone(r.marker);

function RoomBadges({ room }: { room: AdminRoom }) {
  return (
    <>
      <span class={`badge kind ${room.kind}`}>{room.kind}</span>{" "}
      {room.deleted_at !== null ? (
        <span class="badge bad">deleted</span>
      ) : (
        <span class={room.state === "closed" ? "badge bad" : "badge"}>{room.state}</span>
      )}
    </>
  );
}

export function RoomsPage({ api, navigate }: { api: Api; navigate: Navigate }) {
  // The form as it is; "More" pages with the filter last submitted (usePagedList).
  const [filter, setFilter] = useState<RoomFilter>({ q: "", kind: "", state: "" });
  const { items: rooms, next, loaded, error, load, more } = usePagedList(async (f: RoomFilter, cursor?: string | null) => {
    const page = await api.rooms(f, cursor);
    return { items: page.rooms, next: page.next_cursor };
  });
  useEffect(() => void load(filter), []);
  const refilter = (change: Partial<RoomFilter>) => {
    const f = { ...filter, ...change };
    setFilter(f);
    void load(f);
  };

  return (
    <section>
      <h1>Rooms</h1>
      <p class="muted">
        Every room, private ones included. Private rooms are end-to-end encrypted: the server, and so this console, sees
        their name, members and state, never their messages.
      </p>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          // The field as it is now: a search typed and submitted before the page
          // re-rendered would otherwise go out with the text of the render before.
          refilter({ q: (e.currentTarget.elements.namedItem("q") as HTMLInputElement).value });
        }}
      >
        <input
          id="room-search"
          name="q"
          placeholder="A part of the name"
          maxLength={100}
          value={filter.q}
          onInput={(e) => setFilter({ ...filter, q: e.currentTarget.value })}
        />
        <select id="room-kind" aria-label="Kind" value={filter.kind} onChange={(e) => refilter({ kind: e.currentTarget.value as RoomFilter["kind"] })}>
          <option value="">public and private</option>
          <option value="public">public</option>
          <option value="private">private</option>
        </select>
        <select id="room-state" aria-label="State" value={filter.state} onChange={(e) => refilter({ state: e.currentTarget.value as RoomFilter["state"] })}>
          <option value="">open and closed</option>
          <option value="open">open</option>
          <option value="closed">closed</option>
        </select>
        <button type="submit">Search</button>
      </form>
      <Problem error={error} />
      <table id="rooms">
        <thead>
          <tr>
            <th>Name</th>
            <th>Kind / state</th>
            <th>Members</th>
            <th>Messages</th>
            <th>Owner</th>
            <th>Created</th>
          </tr>
        </thead>
        <tbody>
          {rooms.map((r) => (
            <tr key={r.room_id} class="clickable" data-room-id={r.room_id} onClick={() => navigate(`rooms/${r.room_id}`)}>
              <td>
                <Link to={`rooms/${r.room_id}`} navigate={navigate}>
                  {r.name}
                </Link>
                {r.topic && <div class="muted small">{r.topic}</div>}
              </td>
              <td>
                <RoomBadges room={r} />
              </td>
              <td>{r.members}</td>
              <td>{r.kind === "private" && r.messages === 0 ? <span class="muted">encrypted</span> : r.messages}</td>
              <td>
                <UserName api={api} id={r.owner} navigate={navigate} />
              </td>
              <td>{when(r.created_at)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {loaded && rooms.length === 0 && <p class="muted">No room matches.</p>}
      {next && (
        <button class="secondary" onClick={() => void more()}>
          More
        </button>
      )}
    </section>
  );
}

export function RoomPage({ api, id, navigate }: { api: Api; id: string; navigate: Navigate }) {
  const [room, setRoom] = useState<AdminRoom | null>(null);
  const [members, setMembers] = useState<RoomMember[]>([]);
  const [nextMembers, setNextMembers] = useState<number | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [notice, setNotice] = useState("");
  const [reason, setReason] = useState(""); // for the room actions (the audit log)
  const [busy, run] = useBusy(); // one room action at a time
  const [fetching, fetchRun] = useBusy(); // one page of members at a time

  const refresh = async () => {
    try {
      setRoom(await api.room(id));
      const page = await api.members(id);
      setMembers(page.members);
      setNextMembers(page.next_after);
      setError(null);
    } catch (e) {
      setError(e);
    }
  };
  useEffect(() => void refresh(), [id]);

  const moreMembers = () =>
    fetchRun(async () => {
      try {
        const page = await api.members(id, nextMembers);
        setMembers((shown) => [...shown, ...page.members]);
        setNextMembers(page.next_after);
      } catch (e) {
        setError(e);
      }
    });

  const act = noticeAction(run, refresh, setNotice, setError);

  if (!room)
    return (
      <section>
        <p>
          <Link to="rooms" navigate={navigate}>← Rooms</Link>
        </p>
        <Problem error={error} />
      </section>
    );
  const deleted = room.deleted_at !== null;
  const other = room.kind === "public" ? "private" : "public";
  return (
    <section>
      <p>
        <Link to="rooms" navigate={navigate}>← Rooms</Link>
      </p>
      <h1>
        {room.name}{" "}
        <span id="room-state">
          <RoomBadges room={room} />
        </span>
      </h1>
      {notice && (
        <p class="notice" role="status">
          {notice}
        </p>
      )}
      <Problem error={error} />
      <dl class="facts">
        <dt>Room id</dt>
        <dd>
          <code>{room.room_id}</code>
        </dd>
        <dt>Topic</dt>
        <dd>{room.topic || <span class="muted">none</span>}</dd>
        <dt>Owner</dt>
        <dd id="room-owner">{room.owner ? <UserName api={api} id={room.owner} navigate={navigate} /> : <span class="muted">none (admins and moderators manage it)</span>}</dd>
        <dt>Created</dt>
        <dd>
          {when(room.created_at)}
          {room.created_by && (
            <>
              {" by "}
              <UserName api={api} id={room.created_by} navigate={navigate} />
            </>
          )}
        </dd>
        <dt>Members</dt>
        <dd>{room.members}</dd>
        <dt>Messages</dt>
        <dd>
          {room.kind === "private" && room.messages === 0
            ? "end-to-end encrypted: the server holds none it can read"
            : `${room.messages} on the public timeline`}
        </dd>
        <dt>Version</dt>
        <dd>{room.version}</dd>
        {deleted && (
          <>
            <dt>Deleted</dt>
            <dd>{when(room.deleted_at)}</dd>
          </>
        )}
      </dl>

      {deleted ? (
        <p class="notice">
          This room was deleted: it answers <code>room_not_found</code> to everyone. Its records stay for admins and
          the audit log.
        </p>
      ) : (
        <>
          <h2>Actions</h2>
          <p class="muted small">
            The audit log records who did what and when, and the reason below if you give one. Members are told at
            once (<code>room_changed</code>).
          </p>
          <label for="room-reason">
            Reason (optional, for the audit log)
            <input id="room-reason" maxLength={500} value={reason} onInput={(e) => setReason(e.currentTarget.value)} />
          </label>
          <div class="actions">
            {room.state === "open" ? (
              <button id="close" disabled={busy} onClick={() => void act(() => api.closeRoom(id, reason), "Closed: no new messages or members.")}>
                Close
              </button>
            ) : (
              <button id="reopen" disabled={busy} onClick={() => void act(() => api.reopenRoom(id, reason), "Reopened.")}>
                Reopen
              </button>
            )}
            <Confirm
              id="kind"
              danger={false}
              disabled={busy}
              label={`Make ${other}`}
              yes={`Yes, make it ${other}`}
              question={
                other === "private"
                  ? "Messages are end-to-end encrypted from now on; what was posted while public stays readable by members only."
                  : "New messages are server-readable from now on; past encrypted messages stay unreadable."
              }
              onConfirm={() => act(() => api.setKind(id, other, reason), `Now ${other}.`)}
            />
            <Confirm
              id="delete"
              label="Delete room"
              disabled={busy}
              yes="Yes, delete it"
              question={`Delete “${room.name}” for everyone? The console cannot undo it.`}
              onConfirm={() => act(() => api.deleteRoom(id, reason), "Deleted.")}
            />
          </div>
        </>
      )}

      <h2>Members ({room.members})</h2>
      <table id="members">
        <thead>
          <tr>
            <th>User</th>
            <th>Role</th>
            <th>Joined</th>
            <th></th>
          </tr>
        </thead>
        <tbody>
          {members.map((m) => (
            <tr key={m.user_id} id={`member-${m.user_id}`}>
              <td>
                <UserName api={api} id={m.user_id} navigate={navigate} />
              </td>
              <td class="role">{m.role}</td>
              <td>{when(m.joined_at)}</td>
              <td>
                <div class="actions">
                  {!deleted && m.role !== "owner" && (
                    <Confirm
                      id={`owner-${m.user_id}`}
                      danger={false}
                      disabled={busy}
                      label="Make owner"
                      yes="Yes, make owner"
                      question={
                        room.owner
                          ? "Make this member the owner? The current owner becomes a moderator; the members are told."
                          : "Make this member the owner of this room, which has none? The members are told."
                      }
                      onConfirm={() => act(() => api.setOwner(id, m.user_id, reason), "Owner changed.")}
                    />
                  )}
                  {!deleted && (
                    <Confirm
                      id={`remove-${m.user_id}`}
                      label="Remove"
                      disabled={busy}
                      yes="Yes, remove"
                      question={
                        m.role === "owner"
                          ? "Remove the owner? The room is left without one."
                          : room.kind === "private"
                            ? "Remove this member? The others' devices change keys: they read nothing sent afterwards."
                            : "Remove this member from the room?"
                      }
                      onConfirm={() => act(() => api.removeMember(id, m.user_id, reason), "Member removed.")}
                    />
                  )}
                </div>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {nextMembers !== null && (
        <button class="secondary" disabled={fetching} onClick={() => void moreMembers()}>
          More members
        </button>
      )}

      {room.kind === "public" && !deleted && <PostAsModerator api={api} room={room} onPosted={refresh} />}
      {room.messages > 0 && !deleted && <Timeline api={api} room={room} navigate={navigate} />}
      {room.messages > 0 && deleted && (
        <p class="muted">A deleted room's timeline cannot be read through the API.</p>
      )}
    </section>
  );
}

function PostAsModerator({ api, room, onPosted }: { api: Api; room: AdminRoom; onPosted: () => Promise<void> }) {
  const [text, setText] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, run] = useBusy();
  // The draft's idempotency key: a retry of the same text (its answer lost) is the same
  // post, and the server returns the one it has; another text is another post.
  const draft = useRef<{ text: string; clientId: string } | null>(null);
  return (
    <>
      <h2>Post as the room's moderator</h2>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            if (draft.current?.text !== text) draft.current = { text, clientId: newClientId() };
            const { clientId } = draft.current;
            try {
              await api.postAsModerator(room.room_id, text, clientId);
              draft.current = null;
              setText("");
              setError(null);
              await onPosted();
            } catch (err) {
              setError(err);
            }
          });
        }}
      >
        <input
          id="post-text"
          placeholder="Shown to members from “moderator” (closed rooms too)"
          value={text}
          disabled={busy}
          onInput={(e) => setText(e.currentTarget.value)}
        />
        <button type="submit" disabled={busy}>
          Post
        </button>
      </form>
      <Problem error={error} />
    </>
  );
}

/** A public room's messages (the members' timeline route), newest first, with moderation. */
function Timeline({ api, room, navigate }: { api: Api; room: AdminRoom; navigate: Navigate }) {
  const [messages, setMessages] = useState<RoomMessage[]>([]);
  const [next, setNext] = useState<number | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [open, setOpen] = useState<number | null>(null);
  const [fetching, fetchRun] = useBusy(); // one older page at a time

  const load = async (before?: number | null) => {
    try {
      const page = await api.timeline(room.room_id, before);
      setMessages((shown) => (before ? [...shown, ...page.messages] : page.messages));
      setNext(page.next_before);
      setError(null);
    } catch (e) {
      setError(e);
    }
  };
  useEffect(() => void load(), [room.room_id, room.messages]);
  const changed = (m: RoomMessage) => setMessages((shown) => shown.map((x) => (x.seq === m.seq ? m : x)));

  return (
    <>
      <h2>Recent messages</h2>
      <Problem error={error} />
      <table id="timeline">
        <thead>
          <tr>
            <th>#</th>
            <th>From</th>
            <th>Sent</th>
            <th>Text</th>
            <th></th>
          </tr>
        </thead>
        <tbody>
          {messages.map((m) => [
            <tr key={m.seq} id={`msg-${m.seq}`} data-marker={m.marker ?? ""}>
              <td>{m.seq}</td>
              <td>{m.sender === "moderator" ? <span class="badge">moderator</span> : <UserName api={api} id={m.sender} navigate={navigate} />}</td>
              <td>{when(m.sent_at)}</td>
              <td class="text">
                {gone(m.marker) ? null : m.text}{" "}
                {m.marker && <span class={gone(m.marker) ? "badge bad marker" : "badge marker"}>{MARKERS[m.marker]}</span>}
              </td>
              <td>
                <button class="secondary moderate" onClick={() => setOpen(open === m.seq ? null : m.seq)}>
                  {open === m.seq ? "Collapse" : m.marker === "deleted_by_author" ? "History" : "Moderate"}
                </button>
              </td>
            </tr>,
            open === m.seq && (
              <tr key={`${m.seq}-tools`} class="tools">
                <td colSpan={5}>
                  <MessageTools api={api} room={room} message={m} navigate={navigate} onChanged={changed} />
                </td>
              </tr>
            ),
          ])}
        </tbody>
      </table>
      {next && (
        <button class="secondary" disabled={fetching} onClick={() => void fetchRun(() => load(next))}>
          Older
        </button>
      )}
    </>
  );
}

/**
 * One message: every revision (the original first); hide or edit it with a reason, or
 * restore it with a reason when a moderator or an admin removed it (an author's own
 * deletion is final).
 */
function MessageTools({
  api,
  room,
  message,
  navigate,
  onChanged,
}: {
  api: Api;
  room: AdminRoom;
  message: RoomMessage;
  navigate: Navigate;
  onChanged: (m: RoomMessage) => void;
}) {
  const [history, setHistory] = useState<RevisionHistory | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [reason, setReason] = useState("");
  const [text, setText] = useState(message.text);
  const [notice, setNotice] = useState("");
  const [busy, run] = useBusy();
  // A restore brings back a text the panel never had when it opened on the removed message.
  useEffect(() => setText(message.text), [message.seq, message.rev]);
  const loadHistory = async () => {
    try {
      setHistory(await api.revisions(room.room_id, message.seq));
    } catch (e) {
      setError(e);
    }
  };
  useEffect(() => void loadHistory(), [message.seq, message.rev]);
  const change = (what: () => Promise<RoomMessage>, done: string) =>
    run(async () => {
      setNotice("");
      try {
        onChanged(await what());
        setError(null);
        setReason(""); // each reason goes with one change (a hide's is not the restore's)
        setNotice(done);
      } catch (e) {
        setError(e);
      }
    });

  const reasonField = (
    <label>
      Reason (kept in the history and the audit log, not shown to members)
      <input id="msg-reason" maxLength={500} value={reason} onInput={(e) => setReason(e.currentTarget.value)} />
    </label>
  );

  return (
    <div class="panel">
      {notice && (
        <p class="notice" role="status">
          {notice}
        </p>
      )}
      <Problem error={error} />
      {message.marker === "removed_by_moderator" && (
        <div class="grid">
          {reasonField}
          <Confirm
            id="restore"
            danger={false}
            disabled={busy}
            label="Restore message"
            yes="Yes, restore it"
            question="Members see it again as it was before its removal; the removal stays in the history."
            onConfirm={() => change(() => api.restoreMessage(room.room_id, message.seq, reason), "Restored.")}
          />
        </div>
      )}
      {message.marker === "deleted_by_author" && (
        <p class="muted small">Deleted by its author: that is final, it cannot be restored.</p>
      )}
      {!gone(message.marker) && (
        <div class="grid">
          {reasonField}
          <Confirm
            id="hide"
            label="Hide message"
            disabled={busy}
            yes="Yes, hide it"
            question="Members see “removed by a moderator”; the original stays in the history."
            onConfirm={() => change(() => api.hideMessage(room.room_id, message.seq, reason), "Hidden.")}
          />
          <label>
            New text
            <input id="msg-text" value={text} onInput={(e) => setText(e.currentTarget.value)} />
          </label>
          <button
            id="edit"
            class="secondary"
            disabled={busy}
            onClick={() => void change(() => api.editMessage(room.room_id, message.seq, text, reason), "Edited.")}
          >
            Save the edit
          </button>
        </div>
      )}
      <h3>History</h3>
      {history && (
        <table class="revisions">
          <thead>
            <tr>
              <th>Rev</th>
              <th>When</th>
              <th>By</th>
              <th>Text</th>
              <th>Reason</th>
            </tr>
          </thead>
          <tbody>
            {history.revisions.map((r, i) => (
              <tr key={r.rev}>
                <td>{r.rev}</td>
                <td>{when(r.at)}</td>
                <td>
                  <UserName api={api} id={r.by} navigate={navigate} /> <span class="muted">({r.role})</span>
                </td>
                <td class="text">
                  {r.text} {r.marker && <span class={gone(r.marker) ? "badge bad marker" : "badge marker"}>{MARKERS[r.marker]}</span>}{" "}
                  {restores(r, history.revisions[i - 1]) && <span class="badge marker restored">restored</span>}
                </td>
                <td>{r.reason ?? ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
