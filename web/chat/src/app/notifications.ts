/** Mention notifications: the pure rules (docs/rooms.md "Mentions"; `GET
 * /rooms/v1/notifications`, `POST /rooms/v1/notifications/read`, the `notification`
 * frame). The server numbers a user's notifications 1, 2, 3… and keeps one read mark
 * ("read up to n", moved forward only), so unread = newest number − read mark. */

/** A notification as the list shows it (the page's fields; a live frame is unread). */
export interface Notice {
  seq: number;
  kind: string;
  room_id: string;
  room_name: string;
  sender: string;
  excerpt: string;
  at: number;
  message_seq?: number | null;
  server_id?: string | null;
  read: boolean;
}

/** One page of `GET /rooms/v1/notifications` (newest first). */
export interface NoticePage {
  notifications: Notice[];
  unread: number;
  next_before: number | null;
}

/** The list as this page holds it: entries newest first, the newest number known
 * (`top`), the server's read mark as far as it is known (`read`), the entries this
 * page opened above the mark (the mark cannot pass an older unread one), and where
 * the next older page starts. */
export interface NoticeState {
  items: Notice[];
  top: number;
  read: number;
  opened: number[];
  nextBefore: number | null;
  loaded: boolean;
}

export const emptyNotices = (): NoticeState => ({ items: [], top: 0, read: 0, opened: [], nextBefore: null, loaded: false });

/** Entries by number, newest first, one per number (a later copy of a number keeps
 * `read` if either says so: the mark only moves forward). */
function mergeItems(old: Notice[], more: Notice[], read: number): Notice[] {
  const by = new Map(old.map((n) => [n.seq, n]));
  for (const n of more) {
    const had = by.get(n.seq);
    by.set(n.seq, { ...n, read: n.read || (had?.read ?? false) });
  }
  return [...by.values()].map((n) => (n.seq <= read && !n.read ? { ...n, read: true } : n)).sort((a, b) => b.seq - a.seq);
}

/** A page from the server merged in. The first page (`first`: no `before`) says the
 * unread count: the read mark is its newest number minus that count (and at least
 * the newest entry it says is read). A live frame merged before or after the page
 * is the same number, counted once. */
export function withPage(state: NoticeState, page: NoticePage, first: boolean): NoticeState {
  const seqs = page.notifications.map((n) => n.seq);
  const newest = seqs.length ? Math.max(...seqs) : 0;
  const readFlagged = Math.max(0, ...page.notifications.filter((n) => n.read).map((n) => n.seq));
  let read = Math.max(state.read, readFlagged);
  if (first) read = Math.max(read, newest - page.unread);
  const top = Math.max(state.top, newest, read);
  return {
    items: mergeItems(state.items, page.notifications, read),
    top,
    read,
    opened: state.opened.filter((s) => s > read),
    nextBefore: first ? (state.loaded ? state.nextBefore : page.next_before) : page.next_before,
    loaded: true,
  };
}

/** A live `notification` frame merged in (unread, unless the mark is past it). */
export function withLive(state: NoticeState, frame: Omit<Notice, 'read'> & { op?: string }): NoticeState {
  const { op: _op, ...fields } = frame;
  const notice: Notice = { ...fields, read: frame.seq <= state.read };
  return { ...state, items: mergeItems(state.items, [notice], state.read), top: Math.max(state.top, frame.seq) };
}

/** The server's answer to a read: everything up to `upTo` is read. */
export function withRead(state: NoticeState, upTo: number): NoticeState {
  const read = Math.max(state.read, upTo);
  return { ...state, read, top: Math.max(state.top, read), items: mergeItems(state.items, [], read), opened: state.opened.filter((s) => s > read) };
}

/** The entries shown as unread: above the read mark and not opened here (before the
 * first page has come, the mark is not known: the live entries held). */
export function unreadCount(state: NoticeState): number {
  if (!state.loaded) return state.items.filter((n) => isUnread(state, n)).length;
  const opened = new Set(state.opened.filter((s) => s > state.read && s <= state.top));
  return Math.max(0, state.top - state.read - opened.size);
}

export function isUnread(state: NoticeState, n: Notice): boolean {
  return !n.read && n.seq > state.read && !state.opened.includes(n.seq);
}

/** Opening entry `seq`: it counts as read on this page; the number to send as
 * `up_to` (the mark moved over every entry opened in a row from it), or null when an
 * older one is still unread (the mark cannot skip it) or it was read already. */
export function openNotice(state: NoticeState, seq: number): { state: NoticeState; upTo: number | null } {
  if (seq <= state.read) return { state, upTo: null };
  const opened = state.opened.includes(seq) ? state.opened : [...state.opened, seq];
  let upTo = state.read;
  while (opened.includes(upTo + 1)) upTo += 1;
  return { state: { ...state, opened }, upTo: upTo > state.read ? upTo : null };
}

/** "Mark all read": the number to send (the newest known), or null when nothing is unread. */
export function markAllUpTo(state: NoticeState): number | null {
  return state.top > state.read ? state.top : null;
}

/** "alice mentioned you in #general". */
export function noticeTitle(n: Pick<Notice, 'room_name'>, senderName: string): string {
  return `${senderName} mentioned you in #${n.room_name}`;
}
