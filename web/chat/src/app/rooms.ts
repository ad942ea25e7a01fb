/**
 * Rooms' pure rules, the same as client/parley/rooms.py and client/parley/messenger.py
 * (docs/crypto.md "Sender keys in rooms"): the control payload that carries a sender
 * key over a pairwise session, member names in a GroupSession, the per-room state a
 * device keeps between sends, when its sender key is rotated, the member devices a
 * message names (`device_digest`) and which lists to read again when the gateway says
 * they changed, and the cursor a device keeps in each private room's log (RoomLogs).
 * ParleyClient (client.ts) does the I/O around them.
 */

import { b64encode, fromUtf8, utf8 } from '../crypto/index.ts';
import { sha256 } from '../crypto/primitives.ts';
import { SHOWN } from './history.ts';

/** Plaintexts that start with these bytes are control payloads (JSON after them),
 * never chat lines (messenger.py CONTROL_PREFIX). */
export const CONTROL_PREFIX = utf8('\x00parley-control\x00');

/** Members' device lists are read again before a send when the room's version changed
 * or when they were last read longer ago than this (rooms.py DEVICE_RECHECK_S). */
export const DEVICE_RECHECK_MS = 30_000;
/** Room messages kept per room while their sender key has not arrived (rooms.py
 * MAX_PENDING). Past it a message is not kept but not lost either: the room remembers
 * the lowest number not kept per sender device (`room_unkept`, {@link Unkept}), and
 * when that device's sender key arrives the cursor goes back before it and the room's
 * log brings it (and those after it) again (client.ts `#onControl`). */
export const MAX_PENDING = 1000;
/** The cap in force ({@link MAX_PENDING}; tests lower it). */
export const PENDING = { max: MAX_PENDING };
export const MAX_MENTIONS = 20;

export const ROOM_ID = /^[0-9a-f]{24}$/;

/** The history "conversation" of a room (as the server names it). */
export function roomConversation(roomId: string): string {
  return `room:${roomId}`;
}

/** The name of a member device in a GroupSession. */
export function memberKey(userId: string, deviceId: number): string {
  return `${userId}:${deviceId}`;
}

/** A room's `room_unkept` row: the lowest log number of the messages not kept (past
 * `MAX_PENDING`) per sender device ({@link memberKey}), as rooms.py `_unkept_map`. */
export type Unkept = Record<string, number>;
/** The key, in {@link Unkept}, of a number for every device: a row written as a plain
 * number (before it was kept per device), taken by the next sender key of any. */
export const UNKEPT_ANY = '*';

/** A `room_unkept` row as stored (undefined: none; a plain number: the old row, for
 * every device) read as {@link Unkept}. */
export function unkeptRow(value: unknown): Unkept {
  if (typeof value === 'number') return { [UNKEPT_ANY]: value };
  if (value === null || typeof value !== 'object') return {};
  const out: Unkept = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
  return out;
}

/** The lowest number of an {@link Unkept} row (null: none). */
export function lowestUnkept(row: Unkept): number | null {
  const values = Object.values(row);
  return values.length === 0 ? null : Math.min(...values);
}

/** What a sender key of `member` does to the room's {@link Unkept} row: where the log is
 * to be read again from (the lowest number not kept of that device's, or of every
 * device's, less one; null: none of its was left out, nothing is read) and the row left
 * (the others' numbers stay: a key of one device never makes the log be read again for
 * another's, so one chain whose key never comes does not make every later key, or the
 * same key sent again, read the log from its first message; rooms.py `_reread_unkept`). */
export function takeUnkept(row: Unkept, member: string): { from: number | null; rest: Unkept } {
  const mine = [member, UNKEPT_ANY].filter((k) => Object.hasOwn(row, k));
  if (mine.length === 0) return { from: null, rest: row };
  const rest = { ...row };
  for (const k of mine) delete rest[k];
  return { from: Math.min(...mine.map((k) => row[k] as number)) - 1, rest };
}

/** The user and device of a member name (memberKey's inverse: user ids hold no ':'). */
export function memberDevice(key: string): [string, number] {
  const at = key.lastIndexOf(':');
  return [key.slice(0, at), Number(key.slice(at + 1))];
}

/** `json.dumps(obj, separators=(",", ":"))` as Python writes it (ensure_ascii: every
 * code unit outside space..~ escaped as \uXXXX, lower-case hex). */
export function pythonJson(value: unknown): string {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** messenger.encode_control. */
export function encodeControl(obj: Record<string, unknown>): Uint8Array {
  const body = utf8(pythonJson(obj));
  const out = new Uint8Array(CONTROL_PREFIX.length + body.length);
  out.set(CONTROL_PREFIX);
  out.set(body, CONTROL_PREFIX.length);
  return out;
}

/** messenger.parse_control: the control payload in a decrypted plaintext, or null for a
 * chat message (`{"t": "invalid"}` for a control prefix without a JSON object). */
export function parseControl(plaintext: Uint8Array): Record<string, unknown> | null {
  if (plaintext.length < CONTROL_PREFIX.length || !CONTROL_PREFIX.every((b, i) => plaintext[i] === b)) return null;
  try {
    const obj: unknown = JSON.parse(fromUtf8(plaintext.subarray(CONTROL_PREFIX.length)));
    return typeof obj === 'object' && obj !== null && !Array.isArray(obj) ? (obj as Record<string, unknown>) : { t: 'invalid' };
  } catch {
    return { t: 'invalid' };
  }
}

/** The sender-key distribution payload: `{"t": "skd", "room", "d"}`. */
export function skdPayload(roomId: string, distribution: string): Uint8Array {
  return encodeControl({ t: 'skd', room: roomId, d: distribution });
}

/** What a device remembers of a private room between sends (rooms.py _RoomState). */
export interface RoomState {
  members_seen: string[];
  version_seen: number;
  has_key: string[]; // member devices that got the current chain
  chain_id: number | null;
  devices_read_at: number; // seconds, as Python's time.time()
}

export function roomState(obj: Partial<RoomState> | undefined): RoomState {
  return {
    members_seen: [...(obj?.members_seen ?? [])],
    version_seen: obj?.version_seen ?? -1,
    has_key: [...(obj?.has_key ?? [])],
    chain_id: obj?.chain_id ?? null,
    devices_read_at: obj?.devices_read_at ?? 0,
  };
}

/** Whether the members' device lists must be read again before a send. */
export function isStale(state: RoomState, version: number, nowMs: number): boolean {
  return state.version_seen !== version || nowMs - state.devices_read_at * 1000 > DEVICE_RECHECK_MS;
}

/**
 * The decision of rooms.py `_distribute`, inside its transaction: given the state,
 * the session's chain id, the current members and the member devices that should
 * hold our key (`targets`, our own sending device excluded), whether to rotate, the
 * new state (before the rotation's chain id is known: the caller sets `chain_id`),
 * and which devices lack the key.
 */
export function planDistribution(
  state: RoomState,
  chainId: number,
  members: string[],
  version: number,
  targets: Set<string>,
): { rotate: boolean; state: RoomState } {
  const next = roomState(state);
  const departed = state.members_seen.some((m) => !members.includes(m));
  const lostDevices = state.has_key.some((k) => !targets.has(k));
  let rotate = false;
  if (state.chain_id !== chainId) {
    next.has_key = [];
  } else if (departed || lostDevices) {
    rotate = true;
    next.has_key = [];
  }
  next.members_seen = [...members];
  next.version_seen = version;
  return { rotate, state: next };
}

/** Times one room message is encrypted again after `devices_changed` before it fails
 * (rooms.py REDO_MAX). */
export const REDO_MAX = 3;

/**
 * A private room's member devices as one short string, `room_send.device_digest`
 * (parley_contract.frames.device_digest): SHA-256 over the sorted `"<user id>:<device id>"`
 * lines joined by `\n`, in UTF-8, its first 16 bytes in base64url without padding. The
 * devices are those the sender's current chain went to: every device of every member,
 * the sender's own user included, but the sending device. The gateway refuses a message
 * whose digest is not that of the members' devices as it knows them (`devices_changed`).
 */
export async function deviceDigest(devices: Iterable<[string, number]>): Promise<string> {
  // Plain string order, as Python's sorted(): user ids are ASCII, device ids decimal.
  const lines = [...devices].map(([user, device]) => `${user}:${device}`).sort();
  return b64encode((await sha256(utf8(lines.join('\n')))).subarray(0, 16));
}

/**
 * The users whose device list in a `devices_changed` answer to a `room_send` is not the
 * one this device holds (rooms.py `redo_room_send`): their lists are read again from the
 * key directory, signed (the error's lists only say which to read). `known(user)`: the
 * devices this device knows for the user; for `me` the sending device is left out, as
 * the gateway leaves it out of the sender's own list. Sorted, each once.
 */
export function listsBehind(
  lists: readonly { user: string; devices: readonly number[] }[],
  known: (user: string) => Iterable<number>,
  me: string,
  myDevice: number,
): string[] {
  const behind = new Set<string>();
  for (const { user, devices } of lists) {
    const mine = new Set(known(user));
    if (user === me) mine.delete(myDevice);
    const theirs = new Set(devices);
    if (mine.size !== theirs.size || [...theirs].some((d) => !mine.has(d))) behind.add(user);
  }
  return [...behind].sort();
}

/** The users to send the distribution to, given the member devices that lack it
 * (rooms.py `_distribute`): every other user among them, sorted, since a pairwise send
 * always covers our other devices too; when only our own other devices lack it (we are
 * alone in the room, or just linked one), ourselves: one note to self, which goes to
 * them alone. */
export function distributionUsers(lacking: Set<string>, me: string): string[] {
  const users = [...new Set([...lacking].map((k) => k.slice(0, k.lastIndexOf(':'))))].filter((u) => u !== me).sort();
  return users.length ? users : [me];
}

const MENTION = /(?<![\p{L}\p{N}_@./])@([A-Za-z0-9._-]{1,64})/gu;

/** The @names in a text (rooms.py _MENTION, trailing ._- dropped, each once). */
export function mentionNames(text: string): string[] {
  const out = new Set<string>();
  for (const m of text.matchAll(MENTION)) {
    const raw = (m[1] as string).replace(/[._-]+$/, '');
    if (raw) out.add(raw); // "@..." mentions no one; those after it may
  }
  return [...out];
}

/** A public room's message as far as editing it goes (the timeline's `sender`,
 * `marker`). */
export interface PostState {
  sender: string;
  marker?: string | null | undefined;
}

/** Markers after which the author can no longer edit a post (services/rooms/moderation.py
 * `by_member`: a removed or deleted message changes no more, and a moderator's edit
 * stays as they left it). */
const FINAL_FOR_AUTHOR = new Set(['removed_by_moderator', 'deleted_by_author', 'edited_by_moderator']);

/** Whether `me` may edit this public-room post as its author (`PATCH .../messages/{seq}`,
 * marked `edited`); the server still refuses it in a closed room (`room_closed`). */
export function canEditPost(post: PostState, me: string): boolean {
  return post.sender === me && !FINAL_FOR_AUTHOR.has(post.marker ?? '');
}

/** Markers of a post that is gone (services/rooms/moderation.py `_refuse_removed`):
 * its text is empty, it changes no more (`message_removed`). */
const REMOVED = new Set(['removed_by_moderator', 'deleted_by_author']);

/** Whether a public-room post was removed by a moderator or deleted by its author. */
export function isRemovedPost(post: Pick<PostState, 'marker'>): boolean {
  return REMOVED.has(post.marker ?? '');
}

/** Whether `me` may delete this public-room post as its author (`DELETE
 * .../messages/{seq}`, marked `deleted_by_author`): one's own, not once removed or
 * deleted; after a moderator's edit and in a closed room too (the server allows both:
 * services/rooms/moderation.py `by_member` checks the room's state for edits only). */
export function canDeletePost(post: PostState, me: string): boolean {
  return post.sender === me && !isRemovedPost(post);
}

/** A change of a public-room message (a `room_message_changed` frame, or the answer
 * to an edit or a deletion) as far as the timeline goes. */
export interface PostChange {
  seq: number;
  rev: number;
  text: string;
  mentions: string[];
  marker?: string | null | undefined;
}

/** The timeline with `change` applied to its message, if the change is newer than what
 * is shown (clients keep the highest `rev`: docs/moderation.md); otherwise unchanged. */
export function applyPostChange<T extends { seq: number; rev?: number | undefined; text: string; mentions: string[]; marker?: string | null | undefined }>(
  timeline: T[],
  change: PostChange,
): T[] {
  return timeline.map((m) =>
    m.seq === change.seq && (m.rev ?? 1) < change.rev ? { ...m, text: change.text, mentions: change.mentions, rev: change.rev, marker: change.marker ?? null } : m,
  );
}

// -- a mention opened from the list (roomsView.tsx RoomView) ------------------------------

/** Jumping to a public room's post that is not loaded reads the timeline back from where
 * "Load earlier messages" would go on, in pages of this many (services/rooms PAGE_MAX)... */
export const JUMP_PAGE = 200;
/** ...and gives up after this many pages or messages read (then: not found). */
export const JUMP_MAX_PAGES = 50;
export const JUMP_MAX_MESSAGES = 10_000;

/** A page of a public room's timeline as ParleyClient.timeline gives it. */
export interface TimelinePage<T> {
  messages: T[];
  nextBefore: number | null;
}

/** Where post `seq` was looked for: `found`; or not, because the loaded part of the
 * timeline covers its place and it is not there (`missing`: no such post), because
 * the limits were reached first (`limit`), because a page on the way stayed held back
 * by a number still being written ({@link readPast} gave up: `pending`), or because the
 * search was called off (`stopped`: another room, another jump). `read`: the messages
 * read on the way. */
export interface FindResult {
  outcome: 'found' | 'missing' | 'limit' | 'pending' | 'stopped';
  pages: number;
  read: number;
}

/** A page asked for `before` a number that is taken but not written yet (a post in
 * flight; a dead writer's number, until a reader marks it a hole: about two graces,
 * ~10 s) ends before that number, and may come back empty with `nextBefore === before`
 * (docs/rooms.md "Numbers in flight"). That is "not yet", never the timeline's end:
 * {@link readPast} asks again after STALLED_FIRST_MS, the wait doubling up to
 * STALLED_MAX_MS, and gives up once STALLED_GIVE_UP_MS have been waited. */
export const STALLED_FIRST_MS = 250;
export const STALLED_MAX_MS = 2_000;
export const STALLED_GIVE_UP_MS = 15_000;

/** Whether a page read `before` does not go further back (held back by a number in
 * flight: ask again later). */
export function stalled(before: number | null, page: TimelinePage<unknown>): boolean {
  return before !== null && page.nextBefore !== null && page.nextBefore >= before;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The page `before`, asked again while it does not go further back ({@link stalled});
 * `pending` once {@link STALLED_GIVE_UP_MS} have been waited, `stopped` if `stop()` says
 * so before a wait. A page it returns is read from its `nextBefore` on (null: the start
 * was reached), even when it is empty (numbers that were holes). `wait`: the tests'. */
export async function readPast<T>(
  read: (before: number | null) => Promise<TimelinePage<T>>,
  before: number | null,
  opts: { stop?: (() => boolean) | undefined; wait?: ((ms: number) => Promise<void>) | undefined } = {},
): Promise<TimelinePage<T> | 'pending' | 'stopped'> {
  const wait = opts.wait ?? sleep;
  let waited = 0;
  let next = STALLED_FIRST_MS;
  for (;;) {
    const page = await read(before);
    if (!stalled(before, page)) return page;
    if (waited >= STALLED_GIVE_UP_MS) return 'pending';
    if (opts.stop?.()) return 'stopped';
    await wait(next);
    waited += next;
    next = Math.min(2 * next, STALLED_MAX_MS);
  }
}

/**
 * Read a public room's timeline from its newest page down until a page meets the
 * loaded part (a post at or below `top + 1`, a `nextBefore` at or below it, or the
 * start), each page handed to `onPage` (not `older`: it does not continue the loaded
 * part downwards); at most `maxPages` / `maxMessages` (`limit`). After a reconnect or a
 * `resync` the posts written meanwhile came as no live frame (`room_post` is live only:
 * docs/protocol.md): this fills that gap. `want`: a post to tell whether it was read
 * (`found`), stopping there. A page held back by a number in flight is asked again
 * ({@link readPast}; `pending` if it stays so): an empty page is not the end.
 */
export async function readDownTo<T extends { seq: number }>(opts: {
  top: number;
  read: (before: number | null) => Promise<TimelinePage<T>>;
  onPage: (page: TimelinePage<T>, older: boolean) => void;
  stop?: () => boolean;
  maxPages?: number;
  maxMessages?: number;
  want?: number;
  wait?: (ms: number) => Promise<void>;
}): Promise<{ outcome: 'reached' | 'limit' | 'pending' | 'stopped'; found: boolean; pages: number; read: number }> {
  const maxPages = opts.maxPages ?? JUMP_MAX_PAGES;
  const maxMessages = opts.maxMessages ?? JUMP_MAX_MESSAGES;
  const stop = opts.stop ?? (() => false);
  let before: number | null = null;
  let pages = 0;
  let count = 0;
  for (;;) {
    if (pages >= maxPages || count >= maxMessages) return { outcome: 'limit', found: false, pages, read: count };
    const page: TimelinePage<T> | 'pending' | 'stopped' = await readPast(opts.read, before, { stop, wait: opts.wait });
    if (page === 'pending' || page === 'stopped') return { outcome: page, found: false, pages, read: count };
    pages += 1;
    count += page.messages.length;
    if (stop()) return { outcome: 'stopped', found: false, pages, read: count };
    opts.onPage(page, false);
    const found = opts.want !== undefined && page.messages.some((m) => m.seq === opts.want);
    const oldest = Math.min(Infinity, ...page.messages.map((m) => m.seq));
    // Every number from nextBefore up was read: the gap is filled once it is at or below top + 1.
    const met = oldest <= opts.top + 1 || page.nextBefore === null || page.nextBefore <= opts.top + 1;
    // A post wanted below this page's oldest is not in the gap: no need to go on for it.
    const passed = opts.want !== undefined && opts.want > oldest;
    if (found || met || passed) return { outcome: 'reached', found, pages, read: count };
    before = page.nextBefore; // further back (readPast): an empty page goes on too
  }
}

/**
 * Look for post `seq` of a public room whose view holds `loaded` (every post from the
 * newest down to `nextBefore`, exclusive; null: down to the start). A post newer than
 * every loaded one (its live frame missed) is looked for in the newest page
 * (`read(null)`); an older one in the pages before `nextBefore`, read one after the other
 * (`read(before)`, the "Load earlier messages" call) until one holds it, the start is
 * reached, or `maxPages` / `maxMessages` are. Each page is handed to `onPage` as it
 * comes (`older`: it continues the loaded part, so its `nextBefore` is where "Load
 * earlier messages" goes on now); `stop()` is asked after each.
 */
export async function findPost<T extends { seq: number }>(opts: {
  seq: number;
  loaded: readonly T[];
  nextBefore: number | null;
  read: (before: number | null) => Promise<TimelinePage<T>>;
  onPage: (page: TimelinePage<T>, older: boolean) => void;
  stop?: () => boolean;
  maxPages?: number;
  maxMessages?: number;
  wait?: (ms: number) => Promise<void>;
}): Promise<FindResult> {
  const { seq, read, onPage, wait } = opts;
  const maxPages = opts.maxPages ?? JUMP_MAX_PAGES;
  const maxMessages = opts.maxMessages ?? JUMP_MAX_MESSAGES;
  const stop = opts.stop ?? (() => false);
  const result = (outcome: FindResult['outcome'], pages: number, count: number): FindResult => ({ outcome, pages, read: count });
  if (opts.loaded.some((m) => m.seq === seq)) return result('found', 0, 0);
  const newest = Math.max(0, ...opts.loaded.map((m) => m.seq));
  if (seq > newest) {
    // Newer than the loaded part (a reconnect or a resync left a gap above it): the
    // pages from the newest down, until the one that holds it or meets the loaded part
    // (reading only the newest page said "missing" for a post in the gap).
    const down = await readDownTo({ top: newest, read, onPage, stop, maxPages, maxMessages, want: seq, ...(wait ? { wait } : {}) });
    if (down.outcome !== 'reached') return result(down.outcome, down.pages, down.read);
    return result(down.found ? 'found' : 'missing', down.pages, down.read);
  }
  let before = opts.nextBefore;
  let pages = 0;
  let count = 0;
  for (;;) {
    // The loaded part goes down to `before`: a post at or above it would be there.
    if (before === null || seq >= before) return result('missing', pages, count);
    if (pages >= maxPages || count >= maxMessages) return result('limit', pages, count);
    // A page held back by a number in flight above the post is asked again: it was
    // "missing" while the loaded part did not cover its place.
    const page: TimelinePage<T> | 'pending' | 'stopped' = await readPast(read, before, { stop, wait });
    if (page === 'pending' || page === 'stopped') return result(page, pages, count);
    pages += 1;
    count += page.messages.length;
    if (stop()) return result('stopped', pages, count);
    onPage(page, true);
    if (page.messages.some((m) => m.seq === seq)) return result('found', pages, count);
    before = page.nextBefore; // further back (readPast), or null: the start
  }
}

/** The room's status line after looking for a mentioned public post (empty: found, or
 * called off). */
export function findNote(result: FindResult): string {
  if (result.outcome === 'missing') return 'That message is not in the room\'s timeline any more.';
  if (result.outcome === 'limit') {
    return `That message was not found in the ${result.read} earlier messages read: "Load earlier messages" goes further back.`;
  }
  if (result.outcome === 'pending') return 'That message cannot be reached yet: a later message is still being sent. Open it again in a moment.';
  return '';
}

/**
 * Fill the gap above a public room's loaded timeline (`loaded`) after a reconnect or a
 * `resync` (the posts written meanwhile came as no live frame): {@link readDownTo} from
 * the newest page down to what is loaded, each page handed to `onPage`. A timeline with
 * nothing loaded (a room that had no post, or whose first read failed) reads its newest
 * page alone, as opening the room does. Null: the pages met what is loaded (or the
 * start), nothing more to do; otherwise the limits came first (a long absence in a busy
 * room: or the newest page of an empty timeline, with more before it), or a page stayed
 * held back by a number in flight ({@link readPast} gave up): what was loaded below
 * `from` is to go, and "Load earlier messages" goes on from `nextBefore`, so that no gap
 * is left between the two.
 */
export async function readGap<T extends { seq: number }>(opts: {
  loaded: readonly T[];
  read: (before: number | null) => Promise<TimelinePage<T>>;
  onPage: (page: TimelinePage<T>) => void;
  stop?: () => boolean;
  wait?: (ms: number) => Promise<void>;
}): Promise<{ from: number; nextBefore: number | null } | null> {
  const top = opts.loaded.reduce((most, m) => Math.max(most, m.seq), 0);
  const pages: TimelinePage<T>[] = [];
  const down = await readDownTo({
    top,
    read: opts.read,
    onPage: (page) => {
      pages.push(page);
      opts.onPage(page);
    },
    ...(opts.stop ? { stop: opts.stop } : {}),
    ...(opts.wait ? { wait: opts.wait } : {}),
    ...(opts.loaded.length === 0 ? { maxPages: 1 } : {}),
  });
  if (down.outcome === 'reached' || down.outcome === 'stopped') return null;
  const from = pages.reduce((least, p) => p.messages.reduce((l, m) => Math.min(l, m.seq), least), Infinity);
  return { from, nextBefore: pages[pages.length - 1]?.nextBefore ?? null };
}

/** `task` run one at a time: a call while it runs makes it run once more after it (once,
 * however many calls came), and resolves then; what the call is for (a `resync`, a
 * reconnect) may have come after the running one read its pages. A rejection of `task`
 * ends that run alone. */
export function oneAtATime(task: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | null = null;
  let again = false;
  return () => {
    if (running !== null) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await task().catch(() => undefined);
        } while (again);
      } finally {
        running = null;
      }
    })();
    return running;
  };
}

// -- a public room's timeline as its view holds it (roomsView.tsx RoomView) ----------------

/**
 * A public room's posts as the room view holds them, oldest first, each `seq` once (its
 * highest revision): every post from `nextBefore` (null: the room's start) to the newest
 * held; the earlier ones are read by "Load earlier messages" (`before: nextBefore`).
 * `keep`: how many are kept as live posts come, the newest {@link SHOWN} (as a private
 * room shows its newest), or as many as the user asked to see (earlier pages, a post
 * looked for). `reading`: reads of pages under way (asked for, or a gap's fill), during
 * which nothing is let go (a page's `nextBefore` must meet what is held).
 */
export interface Feed<T> {
  posts: T[];
  nextBefore: number | null;
  keep: number;
  reading: number;
}

export function emptyFeed<T>(): Feed<T> {
  return { posts: [], nextBefore: null, keep: SHOWN, reading: 0 };
}

/** How posts come into a {@link Feed}: `live` (a live frame, the newest page read after a
 * send or when the room opens, a post changed): past `keep` the oldest go and "Load
 * earlier messages" goes on from the oldest kept (unless pages are being read); `asked`
 * (pages the user asked for: earlier ones, those read to find a post): all kept, `keep`
 * grows to them; `fill` (the pages read down after a reconnect): kept, let go past `keep`
 * at the next live post. */
export type FeedMerge = 'live' | 'asked' | 'fill';

type Post = { seq: number; rev?: number | undefined };

export function withPosts<T extends Post>(feed: Feed<T>, more: readonly T[], how: FeedMerge): Feed<T> {
  const by = new Map(feed.posts.map((m) => [m.seq, m]));
  for (const m of more) if ((by.get(m.seq)?.rev ?? 0) <= (m.rev ?? 1)) by.set(m.seq, m);
  const posts = [...by.values()].sort((a, b) => a.seq - b.seq);
  if (how === 'asked') return { ...feed, posts, keep: Math.max(feed.keep, posts.length) };
  if (how === 'fill' || feed.reading > 0 || posts.length <= feed.keep) return { ...feed, posts };
  const kept = posts.slice(posts.length - feed.keep);
  return { ...feed, posts: kept, nextBefore: (kept[0] as T).seq };
}

/** An earlier page read from `before` (the feed's `nextBefore` then): merged (`asked`),
 * and "Load earlier messages" goes on from the page's `nextBefore`; unchanged if the feed
 * no longer goes on from `before` (another page came first). */
export function withEarlier<T extends Post>(feed: Feed<T>, before: number, page: TimelinePage<T>): Feed<T> {
  if (feed.nextBefore !== before) return feed;
  return { ...withPosts(feed, page.messages, 'asked'), nextBefore: page.nextBefore };
}

/** A read of pages starts (`+1`) or ends (`-1`): nothing is let go while one is under way. */
export function feedReading<T>(feed: Feed<T>, by: 1 | -1): Feed<T> {
  return { ...feed, reading: Math.max(0, feed.reading + by) };
}

/** A gap's fill that met the limits ({@link readGap}): the posts below `from` go, and
 * "Load earlier messages" goes on from `nextBefore`. */
export function cutFeed<T extends Post>(feed: Feed<T>, cut: { from: number; nextBefore: number | null }): Feed<T> {
  return { ...feed, posts: feed.posts.filter((m) => m.seq >= cut.from), nextBefore: cut.nextBefore };
}

/** What the room view offers for a member whose safety number changed (a private room's
 * send refused with SafetyNumberChanged: room members are contacts the list does not
 * show): comparing the new number with them (`verify`), and, for a member the user had
 * not verified, accepting the new key without comparing (`accept`; the SDK's
 * `accept_new_identity`); a verified member's change is verified again. Then the message
 * can be sent again. */
export function keyChangeChoices(change: { verified: boolean }): ('verify' | 'accept')[] {
  return change.verified ? ['verify'] : ['verify', 'accept'];
}

/** Where this browser holds a private room's message: decrypted in its history
 * (`held`), waiting for its sender's key (`pending`), or not at all (`absent`). */
export type HeldState = 'held' | 'pending' | 'absent';

/** The room's status line for a mentioned private-room message that cannot be shown. */
export function heldNote(state: HeldState): string {
  if (state === 'pending') return "That message is on this browser but cannot be read yet: it waits for its sender's key.";
  if (state === 'absent') {
    return 'That message is not on this browser: a private room\'s history is kept on each device, and this one did not receive it (it may have been sent before this browser joined the room).';
  }
  return '';
}

// -- a private room's log and this device's cursor in it (rooms.py on_room_message, read_log) --

/** Messages asked for per page of a room's log (rooms.py LOG_PAGE). */
export const LOG_PAGE = 200;

/** A page of a private room's log (`GET /delivery/v1/rooms/{id}/log`): the messages after
 * `after`, oldest first, removed ones left out; `next`, the number the page covered up to
 * (removed ones included): where the cursor goes; `more`, whether there may be more. */
export interface LogPage<M> {
  messages: M[];
  next: number;
  more: boolean;
}

/** What a pushed `room_message` numbered `seq` is to a device whose cursor is `cursor`:
 * the `next` one (take it, the cursor moves to it), a `repeat` (at or below the cursor:
 * drop it), or a `gap` (further ahead: some are missing, a push lost or a message
 * removed; leave it and read the log after the cursor, which brings it too, in order). */
export function pushKind(cursor: number, seq: number): 'next' | 'repeat' | 'gap' {
  if (seq <= cursor) return 'repeat';
  return seq === cursor + 1 ? 'next' : 'gap';
}

/** The messages of a push or a page that are still to take: those above the cursor
 * (one at or below it was taken already, pushed while the page was read, say). */
export function aboveCursor<M extends { seq: number }>(cursor: number, messages: readonly M[]): M[] {
  return messages.filter((m) => m.seq > cursor);
}

/** Rooms whose logs one `POST /delivery/v1/rooms/logs` reads (the server's most; rooms.py
 * LOGS_AT_ONCE). */
export const LOGS_AT_ONCE = 100;
/** Rooms that go on reading their logs alone at the same time after a batch (those whose
 * page said `more`). */
export const READS_AT_ONCE = 4;

/** One room of a batch read: its id and the number to read after (its cursor). */
export interface LogAsk {
  room: string;
  after: number;
}

/** The answer to a batch read (`POST /delivery/v1/rooms/logs`): a page of each room the
 * device may read, in the order asked (each as one room's read gives it, with its
 * `room`), and the ids of those it may not read (no such room, not a member, public). */
export interface LogPages<M> {
  pages: (LogPage<M> & { room: string })[];
  refused: string[];
}

/** What {@link RoomLogs} asks of the client. */
export interface RoomLogIo<M> {
  /** The room's cursor: the number up to which this device has every message. */
  cursor(room: string): number;
  /** Take `messages`, the room's messages after `start` up to `upto` (those above the
   * cursor; each decrypted, or kept until its sender's key comes), and move the cursor to
   * `upto`, together; only if the cursor is within `start` .. `upto` - 1 (rooms.py
   * `_take`): one put back meanwhile (a sender key came for messages that were not
   * kept) stays where it was put, for the read that follows. */
  take(room: string, messages: M[], start: number, upto: number): Promise<void>;
  /** A page of the room's log after `after`. */
  page(room: string, after: number): Promise<LogPage<M>>;
  /** A page of each of these rooms' logs after its `after`, in one call (at most
   * {@link LOGS_AT_ONCE} rooms, each once). */
  pages(asks: LogAsk[]): Promise<LogPages<M>>;
  /** A read of the room's log failed (it stops; the next push or sync reads again). */
  failed(room: string, error: unknown): void;
  /** A batch read failed: none of its rooms was read (the next sync reads them). */
  batchFailed(rooms: string[], error: unknown): void;
}

/**
 * Each private room's cursor rule (docs/protocol.md "Private rooms"; the SDK's
 * client/parley/rooms.py): a push numbered cursor + 1 is taken and moves the cursor; one
 * at or below it is a repeat; one further ahead starts a read of the log after the
 * cursor, page by page, each page taken and the cursor moved to its `next`, until a page
 * says no `more`. One read per room at a time: a read asked for while one runs (a gap
 * pushed meanwhile, a sync) makes it read once more when it ends, since it may have
 * passed the log's end before the message that asks was stored.
 *
 * A sync ({@link RoomLogs.sync}) reads many rooms' first pages in one call
 * ({@link LOGS_AT_ONCE} rooms a call): a room being read already is left out, and each
 * room asked for counts as being read from the call until its page is taken (and, when
 * it says `more` or a read was asked for meanwhile, until it has been read on alone to
 * the log's end), so a batch page and a room's own read never run side by side. Every
 * page, a batch's or a room's own, is taken through `take`, which skips what is at or
 * below the cursor and never moves it back. The cursor goes back in one place only: a
 * sender key came for messages of its device not kept (past `MAX_PENDING`), and the
 * client puts it before the first of them and asks for a read; a take of a read already
 * under way (its page asked from further on) then leaves it there (`start`), and that
 * read reads once more from it.
 */
export class RoomLogs<M extends { seq: number }> {
  readonly #reading = new Map<string, Promise<number>>();
  readonly #again = new Set<string>();

  constructor(private readonly io: RoomLogIo<M>) {}

  /** A pushed message: taken, dropped, or a read of the log started. */
  async push(room: string, message: M): Promise<'next' | 'repeat' | 'gap'> {
    const kind = pushKind(this.io.cursor(room), message.seq);
    if (kind === 'next') await this.io.take(room, [message], message.seq - 1, message.seq);
    else if (kind === 'gap') void this.read(room);
    return kind;
  }

  /** Whether a read of the room's log is under way (its own, or a batch's). */
  reading(room: string): boolean {
    return this.#reading.has(room);
  }

  /** Read the room's log from the cursor to its end (or once more after the read under
   * way); how many messages the pages held. Never rejects: a failure goes to `failed`. */
  read(room: string): Promise<number> {
    const running = this.#reading.get(room);
    if (running !== undefined) {
      this.#again.add(room);
      return running;
    }
    const task = this.#read(room).finally(() => this.#ended(room, task));
    this.#reading.set(room, task);
    return task;
  }

  /** The read `task` of the room has ended: the room is free, and read again if a read
   * was asked for after the task's last look (`#again`, set between its end and now). */
  #ended(room: string, task: Promise<number>): void {
    if (this.#reading.get(room) !== task) return;
    this.#reading.delete(room);
    if (this.#again.has(room)) void this.read(room);
  }

  /**
   * Read these rooms' logs from their cursors (on connect, and on `resync`; rooms.py
   * `sync_rooms`): the list (each room once) in chunks of {@link LOGS_AT_ONCE}, one
   * `pages` call a chunk, one after the other, for the rooms of the chunk not being read
   * at that moment. Each page is taken in the order of the answer and the cursor moved
   * to its `next`; a room whose page says `more` is read on alone (`page`, as a gap
   * would read it), at most {@link READS_AT_ONCE} at a time; a refused room is left as
   * it is. A room being read at that moment is read once more after that read (rooms.py
   * `_read_soon`): it may have passed the log's end before what this sync is for (a push
   * lost while offline) was stored. A failed call goes to `batchFailed` and its chunk is
   * skipped, cursors unchanged (the next connect or resync reads them), but a read asked
   * for while it ran (a gap pushed) is made then. How many messages came; never rejects.
   */
  async sync(rooms: readonly string[]): Promise<number> {
    const all = [...new Set(rooms)];
    let got = 0;
    for (let i = 0; i < all.length; i += LOGS_AT_ONCE) {
      const chunk: string[] = [];
      for (const room of all.slice(i, i + LOGS_AT_ONCE)) {
        if (this.#reading.has(room)) this.#again.add(room); // read on after the read under way
        else chunk.push(room);
      }
      if (chunk.length > 0) got += await this.#batch(chunk);
    }
    return got;
  }

  /** Mark the room as being read until the returned function is called (with how many
   * messages its read brought, what a `read` asked for meanwhile resolves to); a read
   * asked for then and not made yet (`#again`) starts then. */
  #hold(room: string): (got: number) => void {
    let done: (got: number) => void = () => undefined;
    const held = new Promise<number>((resolve) => (done = resolve));
    this.#reading.set(room, held);
    return (got) => {
      this.#ended(room, held);
      done(got);
    };
  }

  async #batch(chunk: string[]): Promise<number> {
    // The cursors asked from, and each room held from now (before the call goes out).
    const asks = chunk.map((room) => ({ room, after: this.io.cursor(room) }));
    const held = new Map(asks.map(({ room, after }) => [room, { after, release: this.#hold(room) }]));
    // The rooms not read by the call: released, and those a read was asked for
    // meanwhile (a gap pushed while it ran) read alone then; a refused one is not.
    const letGo = (refused: ReadonlySet<string>) => {
      for (const [room, { release }] of held) {
        if (refused.has(room)) this.#again.delete(room);
        release(0);
      }
      held.clear();
    };
    let answer: LogPages<M>;
    try {
      answer = await this.io.pages(asks);
    } catch (error) {
      letGo(new Set());
      this.io.batchFailed(chunk, error);
      return 0;
    }
    let got = 0;
    const readOn: { room: string; release: (got: number) => void; taken: number }[] = [];
    for (const page of answer.pages) {
      const ask = held.get(page.room);
      if (ask === undefined) continue; // not asked for (or a second page of a room)
      held.delete(page.room);
      try {
        await this.io.take(page.room, page.messages, ask.after, page.next);
      } catch (error) {
        this.#again.delete(page.room);
        ask.release(0);
        this.io.failed(page.room, error);
        continue;
      }
      got += page.messages.length;
      const next = Math.max(ask.after, page.next, this.io.cursor(page.room));
      // Read on alone: the log has more, or a read was asked for while the call ran (a
      // gap pushed meanwhile). A page may say `more` without going on: the answer's
      // byte budget (PARLEY_SYNC_PAGE_BYTES) ran out before this room (its `next` is
      // where it was); a read alone always moves on (its first message always comes).
      if (page.more || this.#again.has(page.room)) {
        readOn.push({ room: page.room, release: ask.release, taken: page.messages.length });
      } else {
        ask.release(page.messages.length);
      }
    }
    letGo(new Set(answer.refused)); // refused (or left out of the answer): nothing read, the cursor as it was
    let at = 0;
    const worker = async () => {
      while (at < readOn.length) {
        const { room, release, taken } = readOn[at++] as (typeof readOn)[number];
        const more = await this.#read(room);
        got += more;
        release(taken + more);
      }
    };
    await Promise.all(Array.from({ length: Math.min(READS_AT_ONCE, readOn.length) }, worker));
    return got;
  }

  async #read(room: string): Promise<number> {
    let got = 0;
    try {
      do {
        this.#again.delete(room);
        let after = this.io.cursor(room);
        for (;;) {
          const page = await this.io.page(room, after);
          await this.io.take(room, page.messages, after, page.next);
          got += page.messages.length;
          const next = Math.max(after, page.next, this.io.cursor(room));
          if (!page.more || next <= after) break; // a page that does not go on ends it
          after = next;
        }
      } while (this.#again.has(room));
    } catch (error) {
      this.#again.delete(room);
      this.io.failed(room, error);
    }
    return got;
  }
}

// -- a room's bans (roomsView.tsx Members; docs/rooms.md "A ban") ---------------------------

/** Bans read per page (`GET .../bans`: at most 500, as member pages). */
export const BANS_PAGE = 500;
/** Pages read at most for one list (a million bans: far beyond any room). */
export const BANS_MAX_PAGES = 2000;

/**
 * Every ban of a room, every page read: `read(after)` is `GET .../bans?after=`, from the
 * start (`null`) and then from each page's `next_after` until it is null. Each user once,
 * in the server's order (user ids); a page whose `next_after` does not go further on (not
 * the server's way) ends the list rather than reading it forever.
 */
export async function readBans<B extends { user_id: string }>(
  read: (after: string | null) => Promise<{ bans: B[]; next_after?: string | null | undefined }>,
  maxPages = BANS_MAX_PAGES,
): Promise<B[]> {
  const out: B[] = [];
  const seen = new Set<string>();
  let after: string | null = null;
  for (let pages = 0; pages < maxPages; pages++) {
    const page = await read(after);
    for (const ban of page.bans) {
      if (seen.has(ban.user_id)) continue;
      seen.add(ban.user_id);
      out.push(ban);
    }
    const next = page.next_after ?? null;
    if (next === null || (after !== null && next <= after)) break;
    after = next;
  }
  return out;
}
