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

/** Numbers read in a row, from the newest page down: every number from `nextBefore`
 * (null: from 1) up to `top` (a page covers numbers, whether or not each still has an
 * entry: services/rooms/notifications.py `page`). */
export interface NoticeSpan {
  top: number;
  nextBefore: number | null;
}

/** The list as this page holds it: entries newest first, the newest number known
 * (`top`), the server's read mark as far as it is known (`read`), the entries this
 * page opened above the mark (the mark cannot pass an older unread one), and where
 * the next older page starts (`nextBefore`: every number from there up to `chainTop`
 * was read, down from the newest first page). `held`: spans read before a first page
 * that did not meet them (more mentions than a page while offline), newest first:
 * paging down reads the numbers between, and goes on below a span once it meets it. */
export interface NoticeState {
  items: Notice[];
  top: number;
  read: number;
  opened: number[];
  nextBefore: number | null;
  chainTop: number;
  held: NoticeSpan[];
  loaded: boolean;
}

export const emptyNotices = (): NoticeState => ({ items: [], top: 0, read: 0, opened: [], nextBefore: null, chainTop: 0, held: [], loaded: false });

/** The lowest number a span covers (0: down to the start). */
const bottom = (span: NoticeSpan): number => span.nextBefore ?? 0;

/** `chain` joined with the held spans it meets (overlapping, or one number apart), and
 * with those these meet in turn; the others stay held. */
function joined(chain: NoticeSpan, held: NoticeSpan[]): { chain: NoticeSpan; held: NoticeSpan[] } {
  let rest = held;
  for (;;) {
    const meets = (s: NoticeSpan) => bottom(chain) <= s.top + 1 && bottom(s) <= chain.top + 1;
    const met = rest.filter(meets);
    if (!met.length) return { chain, held: rest };
    for (const s of met) chain = { top: Math.max(chain.top, s.top), nextBefore: bottom(s) < bottom(chain) ? s.nextBefore : chain.nextBefore };
    rest = rest.filter((s) => !met.includes(s));
  }
}

/** Where paging goes on after a page: the first page (`first`) starts a chain from the
 * newest number; one that does not meet the chain read before (more entries came than
 * its page holds) keeps that chain as a held span, so the numbers between are read as
 * the user pages down. An older page moves the chain's end down. */
function paged(state: NoticeState, page: NoticePage, first: boolean, newest: number): Pick<NoticeState, 'nextBefore' | 'chainTop' | 'held'> {
  if (!first) {
    const next = joined({ top: state.chainTop, nextBefore: page.next_before }, state.held);
    return { nextBefore: next.chain.nextBefore, chainTop: next.chain.top, held: next.held };
  }
  const fresh: NoticeSpan = { top: newest, nextBefore: page.next_before };
  const before: NoticeSpan = { top: state.chainTop, nextBefore: state.nextBefore };
  const held = state.loaded && before.top > 0 ? [before, ...state.held] : state.held;
  const next = joined(fresh, held);
  return { nextBefore: next.chain.nextBefore, chainTop: next.chain.top, held: next.held };
}

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
    ...paged(state, page, first, newest),
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
