/** Mentions in the sidebar: a button with the unread count, and the list (`GET
 * /rooms/v1/notifications`, live `notification` frames) whose entries open their room
 * at the message that mentions the user (roomsView.tsx RoomView finds and highlights it).
 * The rules (merging, counting, what a read sends) are in notifications.ts. */
import { useEffect, useState } from 'preact/hooks';
import type { Room } from './api.ts';
import type { ClientEvent, ParleyClient } from './client.ts';
import { dayAndTime, hourMinute } from './format.ts';
import {
  emptyNotices,
  isUnread,
  markAllUpTo,
  type Notice,
  type NoticeState,
  noticeTitle,
  openNotice,
  unreadCount,
  withLive,
  withPage,
  withRead,
} from './notifications.ts';

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function when(at: number): string {
  const d = new Date(at);
  const today = d.toDateString() === new Date().toDateString();
  return today ? hourMinute(d) : dayAndTime(d);
}

/** What opening an entry asks of the page: this room, and the public message to show
 * (a private room's, named by its `server_id`, goes through ParleyClient.showRoomMessage:
 * its room's view finds it in this browser's history). */
export interface NoticeTarget {
  room: Room;
  seq: number | null;
}

export function Notifications(props: { client: ParleyClient; onOpen: (target: NoticeTarget) => void }) {
  const { client } = props;
  const [state, setState] = useState<NoticeState>(emptyNotices);
  const [open, setOpen] = useState(false);
  const [names, setNames] = useState<Record<string, string>>({});
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const fail = (e: unknown) => setError(`Mentions: ${message(e)}`);
  const first = () =>
    client.notifications(null).then((page) => setState((s) => withPage(s, page, true)), fail);
  useEffect(() => {
    void first();
    return client.on((e: ClientEvent) => {
      if (e.type === 'notification') setState((s) => withLive(s, e.notice));
      // Frames sent while the socket was down are in the list: read its first page again.
      else if (e.type === 'connection' && e.state === 'connected') void first();
    });
  }, [client]);
  const senders = [...new Set(state.items.map((n) => n.sender))];
  useEffect(() => {
    for (const s of senders) if (!(s in names)) void client.nameOf(s).then((n) => setNames((old) => ({ ...old, [s]: n })));
  }, [senders.join(',')]);
  const unread = unreadCount(state);
  const read = (upTo: number) =>
    client.readNotifications(upTo).then(() => setState((s) => withRead(s, upTo)), fail);
  const openEntry = (n: Notice) => {
    setError('');
    const { state: next, upTo } = openNotice(state, n.seq);
    setState(next);
    if (upTo !== null) void read(upTo);
    const kind = n.message_seq != null ? 'public' : 'private';
    if (kind === 'private' && n.server_id) client.showRoomMessage(n.room_id, n.server_id);
    props.onOpen({ room: { room_id: n.room_id, name: n.room_name, kind, state: 'open', role: null }, seq: n.message_seq ?? null });
  };
  return (
    <section class="notifications" aria-labelledby="notifications-title">
      <h2 id="notifications-title" class="visually-hidden">
        Mentions
      </h2>
      <button type="button" id="notifications-toggle" class="contact" aria-expanded={open} aria-controls="notifications" onClick={() => setOpen(!open)}>
        Mentions
        {unread > 0 && (
          <span id="notifications-badge" class="count" aria-label={`${unread} unread`}>
            {unread}
          </span>
        )}
      </button>
      {open && (
        <div id="notifications">
          <div class="row">
            <button
              type="button"
              id="notifications-read-all"
              class="small"
              disabled={busy || unread === 0}
              aria-busy={busy}
              onClick={() => {
                const upTo = markAllUpTo(state);
                if (upTo === null) return;
                setError('');
                setBusy(true);
                void read(upTo).finally(() => setBusy(false));
              }}
            >
              Mark all read
            </button>
          </div>
          {state.loaded && state.items.length === 0 && <p class="hint">Nobody has mentioned you yet.</p>}
          <ol aria-label="Mentions of you, newest first" id="notification-list">
            {state.items.map((n) => {
              const fresh = isUnread(state, n);
              return (
                <li class={`notice${fresh ? ' unread' : ''}`} data-seq={n.seq} data-room-id={n.room_id}>
                  <button type="button" class="notice-open" onClick={() => openEntry(n)}>
                    <span class="notice-title">
                      {fresh && <span class="visually-hidden">Unread: </span>}
                      {noticeTitle(n, names[n.sender] ?? client.username(n.sender))}
                    </span>
                    <q class="excerpt">{n.excerpt}</q>
                    <time>{when(n.at)}</time>
                  </button>
                </li>
              );
            })}
          </ol>
          {state.nextBefore !== null && (
            <button
              type="button"
              id="notifications-older"
              class="small secondary"
              onClick={() => {
                setError('');
                client.notifications(state.nextBefore).then((page) => setState((s) => withPage(s, page, false)), fail);
              }}
            >
              Older mentions
            </button>
          )}
        </div>
      )}
      {error && (
        <p class="error" role="alert" id="notifications-error">
          {error}
        </p>
      )}
    </section>
  );
}
