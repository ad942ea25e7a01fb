/**
 * The browser client: account, this device's keys, contacts, the WebSocket,
 * sending and receiving (the port of client/parley: account.py, keys.py,
 * messenger.py, rooms.py). Protocol version 3 (docs/protocol.md, docs/devices.md): one
 * ciphertext per device of the contact and of our other devices, `devices_changed`
 * answered by encrypting again for the current lists, device lists verified with
 * the account key trusted on first use; a private room's messages pushed once as
 * `room_message` and read again from the room's log after a cursor kept per room.
 *
 * State lives in the encrypted vault (vault.ts). Every change runs in a
 * transaction: the rows it changes are written together to IndexedDB, or none
 * (a ratchet step, the history entry it produced, the prekeys consumed and the
 * last sequence number processed go together), one transaction at a time.
 */

import {
  AccountKey,
  CryptoError,
  Device,
  DeviceEntry,
  GroupSession,
  DeviceList,
  type KemPrekeyJson,
  type LinkRequest,
  type OneTimePrekeyJson,
  PrekeyBundle,
  ReplayedMessage,
  RetiredSenderKey,
  SignedDeviceList,
  UnknownSenderKey,
  b64decode,
  b64encode,
  commitmentFromMessage,
  fromUtf8,
  utf8,
} from '../crypto/index.ts';
import type * as W from '../generated/contract.ts';
import {
  Api,
  ApiError,
  type Challenge,
  type Listed,
  type Membership,
  type Preferences,
  type Room,
  type RoomBan,
  type RoomLogPage,
  type RoomLogsAnswer,
  type RoomMember,
  type RoomMessage,
  type Tokens,
  type UserBrief,
  socketUrl,
} from './api.ts';
import { chunkName, type Head, History, inRoomOrder, migrate, topPlace } from './history.ts';
import { type PeerJson, PeerState } from './peers.ts';
import type { NoticePage } from './notifications.ts';
import {
  BANS_PAGE,
  LOG_PAGE,
  MAX_MENTIONS,
  PENDING,
  REDO_MAX,
  ROOM_ID,
  RoomLogs,
  type HeldState,
  type LogAsk,
  type RoomState,
  type Unkept,
  aboveCursor,
  deviceDigest,
  distributionUsers,
  isStale,
  listsBehind,
  lowestUnkept,
  memberDevice,
  memberKey,
  mentionNames,
  parseControl,
  planDistribution,
  readBans,
  roomConversation,
  roomState,
  skdPayload,
  takeUnkept,
  unkeptRow,
} from './rooms.ts';
import {
  displayText,
  messageServerId,
  type ReportFields,
  removedText,
  reportBody,
  reportFields,
  roomMessageMeta,
  roomServerId,
  type KeptTombstone,
  keepTombstone,
  type TombstoneFrame,
  TOMBSTONE_RETRY,
  tombstonesDueIn,
  triedAgain,
  unsendPath,
  verifyTombstone,
} from './moderation.ts';
import {
  type ConversationItem,
  conversationList,
  encryptCopies,
  startSessions,
  listsToRead,
  MissingKeys,
  otherParty,
  receiptCounts,
  sendRefusal,
  sendUsers,
  targetDevices,
} from './direct.ts';
import {
  type DeviceRow,
  type KeyDirectory,
  type PendingDevice,
  type WaitOptions,
  approveLink,
  awaitApproval,
  defaultDeviceName,
  deviceName,
  deviceRows,
  fingerprint,
  namesDevice,
  openApproval,
  publishList,
  readPending,
  removing,
  renaming,
  startLink,
  underOwnKey,
  verifyOwnList,
} from './devices.ts';
import { revokeOutcome } from './sessions.ts';
import { TypingBoard, TypingThrottle } from './typing.ts';
import { Vault } from './vault.ts';
import { ASIDE_ASK, ASIDE_MAX, ASIDE_RETRY, ASIDE_ROW, Aside, nextWait } from './aside.ts';
import { Transactions, type Tx } from './transactions.ts';
import { DEAD_TOKEN, TOKEN_SAVE_RETRY, expiresAt, jwtClaim, refused } from './tokens.ts';
import {
  type PendingEntry,
  type PendingRoomMessage,
  addPending,
  distributionChars,
  migratePending,
  pendingCount,
  pendingHolds,
  pendingIndex,
  pendingNumbers,
  pendingRow,
  setChain,
} from './pending.ts';
import { Pacer, SEND_AGAIN, THROTTLED_CLOSES, sendAgainIn } from './pacing.ts';

/** Refusals that fail a room's key send (a control send) at once instead of holding it
 * (SEND_AGAIN): the recipient's inbox is full (messenger.py `send_control`). */
const KEY_SEND_FAILS = new Set(['inbox_full', 'too_many_pending']);

export const PREKEY_BATCH = 100;
const PREKEY_ROTATION_MS = 7 * 24 * 3600 * 1000; // signed and last-resort prekeys, weekly
const MAX_UPLOAD = 100;
/** The vault row of a batch of one-time prekeys made and not yet all uploaded (topUp). */
const PREKEYS_UNSENT = 'prekeys_unsent';
/** A batch of one-time prekeys made (their private halves in `device`) and not all
 * uploaded: the public JSON of each kind, and how many of each the directory took. */
interface UnsentPrekeys {
  one_time: OneTimePrekeyJson[];
  kem: KemPrekeyJson[];
  one_time_sent?: number;
  kem_sent?: number;
}
/** The vault row saying whether the key directory holds this browser's account key:
 * `true`, or the key and first list still to publish (a PUT that failed or never went:
 * ParleyClient #publishAccount). Absent: a store from before the row (#checkPublished). */
const ACCOUNT_PUBLISHED = 'account_published';
interface PendingAccount {
  account_key: string;
  /** The signed first list (`{device_list, signature}`). */
  signed: ReturnType<SignedDeviceList['toJson']>;
  /** The account key the directory held when this one was made (a new identity), else null. */
  replaces: string | null;
}
type AccountPublished = true | PendingAccount;

/** The key directory's refusals of a user who has no account key. */
function notRegistered(error: unknown): boolean {
  return error instanceof ApiError && ['identity_not_found', 'user_not_found', 'not_found'].includes(error.code);
}

function needsLink(): NeedsLink {
  return new NeedsLink(
    'This account already has devices and this browser is not one of them. ' +
      'Link it from a device of the account ("Link this browser to an existing account"), or start a new identity here (your contacts will see a new safety number).',
  );
}

const TOKEN_MARGIN_MS = 120_000;
/** How often an open socket's token is renewed in place (an `auth` frame with a fresh
 * one: docs/protocol.md), in ms. Tests shorten it. */
export const REAUTH_EVERY = { ms: 240_000 };
const ACK_DELAY_MS = 200;
const DEFAULT_MAX_FRAME_BYTES = 64 * 1024;
const LISTS_PER_READ = 1000; // users per bulk device-list read (the key directory's MAX_LIST_USERS)
const CLAIMS_PER_REQUEST = 100; // users per bulk claim (the key directory's MAX_CLAIM_USERS)
const CLAIMS_AT_ONCE = 3; // bulk claims in flight (the directory works on each 16 users at a time)
// A room's key sends encrypted at a time (their handshakes run side by side): all of a
// thousand at once shared the CPU until each was nearly done, and the first send left
// only when they all had; a few dozen at a time, the first ones leave at once and the
// server checks them while the rest are encrypted.
const ENCRYPT_AT_ONCE = 32;
/** Public posts whose sending failed kept with their client_id (ParleyClient #unsent),
 * the newest ones, until known posted; and their vault row (a reload keeps them). */
const UNSENT_POSTS_KEPT = 300;
const UNSENT_POSTS = 'posts_unsent';
/** How long a room's key send (#sendControl) may go unanswered, in ms: counted from when
 * its frame is written to the socket (again at each write), not while it waits in the
 * outbox or for the pacer behind older sends. Tests shorten it. */
export const KEY_SEND_ACCEPTED_WITHIN = { ms: 30_000 };
/** Verified tombstones of messages no history holds, remembered (the `removed_ids` row:
 * server id and who removed it, the newest last): a message kept aside, or a private
 * room's waiting for its sender key, is shown as removed when it is read at last. A
 * sender may unsend made-up ids (docs/moderation-messages.md), so only the newest are. */
export const REMOVED_KEPT = 5_000;
type RemovedRow = [serverId: string, by: 'sender' | 'admin'][];
const STATUS_RANK: Record<string, number> = { queued: 0, accepted: 1, stored: 2, delivered: 3, failed: -1 };

export class ParleyError extends Error {
  override name = 'ParleyError';
}

function checkText(text: string): void {
  if (!text.trim()) throw new ParleyError('The message is empty: there is nothing to send.');
  // Plaintexts that start with NUL are control payloads (rooms.ts CONTROL_PREFIX).
  if (text.startsWith('\x00')) throw new ParleyError('A message cannot start with a NUL character.');
}

/** The message is in the outbox, encrypted, but the server has not accepted it yet (no
 * answer in time): it goes by itself, with the same id, when the server takes it (at
 * the latest at the next connection). Not a refusal: sending its text again would
 * send it twice. */
export class StillQueued extends ParleyError {
  override name = 'StillQueued';
}

/** A room's sender key could not be handed out to every member in time: one of its key
 * sends was written but not accepted (StillQueued; it still goes by itself), the
 * distribution outlasted sendRoom's bound, or the client was closed. The room's message
 * was not queued for it by sendRoom (send it again); a redo of a queued one leaves it
 * queued and tries again later (#redoRoom). */
export class KeyNotHandedOut extends ParleyError {
  override name = 'KeyNotHandedOut';
}

/** What #openRoomMessage says of a room message it could not keep for its sender key
 * (MAX_PENDING kept already): its number is remembered (`room_unkept`), not the message. */
const UNKEPT: unique symbol = Symbol('unkept');

/** A sender key names a room this browser does not know: thrown out of #onControl's
 * transaction (nothing of it kept) for #readMessage to ask the rooms service first. */
class RoomToCheck extends Error {
  override name = 'RoomToCheck';
  constructor(readonly roomId: string) {
    super(`room ${roomId} is to be checked`);
  }
}

export class NeedsLink extends ParleyError {
  override name = 'NeedsLink';
}

/** This browser was removed from the account's devices ("Remove this browser"): it can
 * be linked again (a new device, a new store) or start a new identity, not log in. */
export class DeviceRemoved extends NeedsLink {
  override name = 'DeviceRemoved';
}

/** The key directory's answer fails the checks against what this device holds: our own
 * account's list under another account key than ours (messenger.py `_trust_checked`
 * raises UntrustedKeys for it). A CryptoError, as a list that does not verify is: a send
 * fails with it, nothing trusted or queued; a device it would have named is unknown (its
 * messages "could not decrypt"). */
export class UntrustedKeys extends CryptoError {
  override name = 'UntrustedKeys';
}

/** What UntrustedKeys says when the directory holds another account key for ours (the
 * SDK's words). */
export const OTHER_ACCOUNT_KEY =
  'The key directory holds another account key for this account: the identity was reset from another install, or the directory is not to be trusted. Nothing was sent; link this device again.';

/** The contact's identity key changed and the user has not accepted the new one. */
export class SafetyNumberChanged extends ParleyError {
  override name = 'SafetyNumberChanged';
  constructor(
    readonly userId: string,
    readonly username: string,
    readonly oldSafetyNumber: string | null,
    readonly newSafetyNumber: string,
    readonly verified: boolean,
  ) {
    super(`${username}'s safety number changed: sending is paused until you compare it or accept the new key.`);
  }
}

export interface AccountRow {
  user_id: string;
  username: string;
  device_id: number;
  access_token: string | null;
  refresh_token: string | null;
  session_id: string | null;
  /** When this device was set up, in the server's time (Unix ms; 0: unknown): it reads
   * rooms' logs from then (docs/protocol.md "Private rooms", `since`). */
  linked_at?: number;
  /** When this browser removed itself from the account's devices (Unix ms): its tokens
   * and keys are gone, its history is kept; it can only be linked again. */
  removed_at?: number;
}

export interface Contact {
  user_id: string;
  username: string;
  /** false: made only to give a room's member our sender key (or to read theirs), with
   * no conversation: not in the conversations list until a message is exchanged (or it
   * is added by name). Absent: listed (every contact before this flag was one). */
  listed?: false;
  /** true: its name could not be looked up when it was made (the auth service did not
   * answer): shown by its id's first characters, and looked up again at its next
   * message (kept, the hex stood for the name for good). */
  unnamed?: true;
}

export interface HistoryEntry {
  dir: 'in' | 'out' | 'system';
  kind: 'message' | 'error' | 'key_changed' | 'removed';
  peer: string;
  text: string;
  at: number;
  client_id?: string;
  server_id?: string;
  seq?: number;
  pos?: number; // a private room's entry without a seq: its place (history.ts inRoomOrder)
  status?: string;
  devices?: Record<string, string>;
  error?: string;
  sender?: string; // rooms: who wrote it
  report?: ReportFields; // a received message: what reporting it needs (moderation.ts)
  removed_by?: 'sender' | 'admin'; // a tombstone removed it (its text is gone)
  reported?: string; // the report's id, once reported
}

interface Queued {
  /** Its place in the outbox (sent again in this order at the next connect). */
  n?: number;
  send: W.Send | W.RoomSend;
  peer: string; // a user id, or a room's conversation (room:<id>)
  text: string;
  control?: string; // a control payload (base64url) instead of a text: never in the history
  /** A `room_send`: the times it was encrypted again after `devices_changed` (rooms.py
   * `redo`, at most REDO_MAX); its room and mentions are the frame's. */
  redo?: number;
}

export type ClientEvent =
  | { type: 'message'; peer: string; text: string }
  | { type: 'receipt'; peer: string; clientId: string; status: string }
  | { type: 'key_changed'; peer: string; username: string; safetyNumber: string; oldSafetyNumber: string | null }
  | { type: 'connection'; state: 'connecting' | 'connected' | 'disconnected' | 'stopped'; detail: string | undefined }
  | { type: 'error'; code: string; message: string }
  | { type: 'room_message'; room: string; sender: string; text: string }
  | { type: 'room_post'; post: W.RoomPost }
  | { type: 'room_message_changed'; change: W.RoomMessageChanged }
  | { type: 'room_changed'; room: string }
  | { type: 'typing'; room: string }
  | { type: 'notification'; notice: W.Notification }
  | { type: 'show_message'; room: string } // a room's view is asked to show a message (takeShowRequest)
  | { type: 'removed'; peer: string; serverId: string; by: 'sender' | 'admin' }
  | { type: 'resync' } // the server lost frames it meant to push: live views read again
  | { type: 'changed' };

/** This browser's preferences for the account (the vault's `settings` row). */
export interface Settings {
  /** Say `typing` in rooms while the user writes (default on). */
  tell_typing?: boolean;
}

/** The ids of `typing` frames: a refusal of one (`rate_limited`...) is not news. */
const TYPING_ID = 'typing-';

export type SecondFactorPrompt = (challenge: Challenge) => Promise<{ method: string; code: string }>;

/** When a device is set up, in the server's time (Unix ms): its first token's `iat`,
 * which is in whole seconds, refined within that second by this clock (never moved out
 * of it), as account.py `_linked_at`; 0 when the token says nothing. */
function linkedAt(token: string): number {
  const iat = Math.floor(jwtClaim(token, 'iat') * 1000);
  if (!iat) return 0;
  return Math.min(Math.max(Date.now(), iat), iat + 999);
}

/** The (user, device) pairs a pairwise send's copies are encrypted for. */
function copiesOf(frame: W.Send): [string, number][] {
  return frame.copies.map((c) => [c.user, c.device]);
}

function randomId(): string {
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** What a log-in in a browser that removed itself from the account is told. */
function removedError(account: AccountRow): DeviceRemoved {
  const day = new Date(account.removed_at as number).toISOString().slice(0, 10);
  return new DeviceRemoved(
    `This browser was removed from ${account.username}'s devices on ${day}: it can no longer log in as that device. ` +
      'Link it again from a device of the account ("Link this browser to an existing account"): it starts as a new device, ' +
      'and the old history kept in this browser is replaced.',
  );
}

function randomDeviceId(): number {
  return (crypto.getRandomValues(new Uint32Array(1))[0] as number) % (2 ** 31 - 2) + 1;
}

export { otherParty };

/**
 * One page at a time per account: two tabs would each ratchet from their own copy
 * of the state and reuse message keys. A Web Lock held while the client is open.
 */
function holdAccountLock(username: string): Promise<() => void> {
  return new Promise((resolve, reject) => {
    void navigator.locks.request(`parley-chat:${username}`, { ifAvailable: true }, (lock) => {
      if (lock === null) {
        reject(new ParleyError('Parley is already open for this account in another tab or window: use that one.'));
        return undefined;
      }
      return new Promise<void>((release) => resolve(release));
    });
  });
}

/** At most `size` runs at a time; the others wait, in order. */
class Gate {
  #free: number;
  readonly #waiting: (() => void)[] = [];
  constructor(size: number) {
    this.#free = size;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    try {
      return await fn();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }
}

class Mutex {
  #tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn, fn);
    this.#tail = result.catch(() => undefined);
    return result;
  }
}

export class ParleyClient {
  readonly api = new Api();
  readonly vault: Vault;
  readonly #cache = new Map<string, unknown>();
  readonly #refs = new Map<string, string>(); // user id -> row suffix (HMAC)
  readonly #memberRefs = new Map<string, string>(); // room id NUL member -> its sender-key row's HMAC
  #modKeys: Map<string, string> | null = null; // moderation keys (kid -> Ed25519 key)
  /** The `removed_ids` row as a map, made again when the row changes (#removedBy). */
  #removedIndex: { row: RemovedRow; by: Map<string, 'sender' | 'admin'> } | null = null;
  readonly #seen = new Set<string>(); // server ids shown
  readonly #inOrder = new WeakMap<HistoryEntry[], HistoryEntry[]>(); // a room's entries -> in its order
  #outboxNext = 0; // the next queued message's place (outbox rows' `n`)
  #sendingDevice: { raw: string; device: Promise<Device> } | null = null; // #deviceToSend's
  readonly #history = new History<HistoryEntry>((name) => this.#cache.get(name) as never); // conversations' entries, in chunks
  readonly #transactions = new Transactions({
    cache: this.#cache,
    write: (rows) => this.vault.putMany(rows),
    changed: (names) => this.#history.changed(names),
  });
  readonly #listeners = new Set<(e: ClientEvent) => void>();
  #refreshing: Promise<string> | null = null;
  /** The tokens as this page last got them (a log-in, a refresh) or dropped them: ahead
   * of the vault's `account` row while a write of them failed (#saveTokens tries it
   * again); null: the row's. The access token's expiry by this device's clock
   * (tokens.ts expiresAt), for that token only. */
  #tokens: { access_token: string | null; refresh_token: string | null } | null = null;
  #accessExpiry: { token: string; at: number } | null = null;
  #tokenSaveTimer: ReturnType<typeof setTimeout> | null = null;
  #tokenSaveWait = TOKEN_SAVE_RETRY.first;
  #toppingUp: Promise<void> | null = null; // the top-up under way (topUp)
  #ws: WebSocket | null = null;
  #running = false;
  #synced = false; // this socket's first sync is done
  #syncing = 0; // syncs running: pushed items then move neither last_seq nor acks (see sync)
  readonly #dropped = new WeakSet<WebSocket>(); // sockets given up after a failure (see #drop)
  #backoff = 500;
  #chain: Promise<void> = Promise.resolve();
  #receipts: (W.Accepted | W.Stored | W.Delivered)[] = []; // waiting for the chain, handled together
  #pending = new Map<string, (frame: W.Synced | W.Error) => void>();
  #ackPending = 0;
  #acked = 0; // the highest seq acknowledged on this socket
  #ackTimer: ReturnType<typeof setTimeout> | null = null;
  #reauthTimer: ReturnType<typeof setInterval> | null = null;
  #reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  #maxFrameBytes = DEFAULT_MAX_FRAME_BYTES;
  /** The server's send bucket, as `ready.limits` says (pacing.ts): every `send` and
   * `room_send` waits for a token. */
  readonly #pacer = new Pacer();
  /** The socket whose outbox was sent after its first sync (#flush): new sends go out on
   * it themselves. Until then they only enter the outbox, and the flush sends them
   * after the older ones, once (sent during the sync as well, they went twice and
   * overtook the messages queued before them). */
  #flushed: WebSocket | null = null;
  /** Queued sends the server refused for now (SEND_AGAIN): when each goes again
   * (Date.now() ms), and how often each was refused; one timer sends them (#sendHeld),
   * on the socket that refused them (#heldOn) only. */
  readonly #held = new Map<string, number>();
  readonly #refusals = new Map<string, number>();
  #heldOn: WebSocket | null = null;
  #heldTimer: ReturnType<typeof setTimeout> | null = null;
  #heldAt = 0; // when #heldTimer fires
  #heldRound = false; // a round of #sendHeld is sending
  /** Signed out (#signedOut): this instance writes nothing to the vault any more. */
  #ended = false;
  /** Client id -> who waits for its `accepted` (#accepted); `written`/`unwritten`: its
   * frame went on the socket / that socket closed (a wait counted from the write). */
  readonly #waiting = new Map<string, { resolve: () => void; reject: (e: Error) => void; written?: () => void; unwritten?: () => void }>();
  /** The devices each waiting control send (#sendControl) was last encrypted for, by its
   * client id (null: not encrypted yet); a `devices_changed` redo replaces them. */
  readonly #copies = new Map<string, [string, number][] | null>();
  readonly #roomLocks = new Map<string, Mutex>();
  /** 1:1 messages kept aside (aside.ts): their index, the lock of whoever reads or adds
   * to them (a frame's handler, a round of #readAside: one at a time, so a device's are
   * read once and in order), and the timer of the next round and its wait. */
  readonly #aside = new Aside();
  readonly #asideLock = new Mutex();
  #asideTimer: ReturnType<typeof setTimeout> | null = null;
  #asideWait = ASIDE_RETRY.first;
  /** Tombstones kept for a key not published yet (the `tombstones_kept` row): the timer
   * of the next round and when it fires, the wait after a round whose keys could not be
   * read (moderation.ts TOMBSTONE_RETRY), whether a round runs (one at a time) and
   * whether another was asked for meanwhile (a sync). */
  #tombstoneTimer: ReturnType<typeof setTimeout> | null = null;
  #tombstoneAt = 0;
  #tombstoneWait = TOMBSTONE_RETRY.first;
  #tombstoneRunning = false;
  #tombstoneAgain = false;
  /** When a device list could not be read: none is asked for before this (ms since the epoch). */
  #unansweredUntil = 0;
  #asideTurn = 0; // where the next round of #readAside starts
  readonly #peerLocks = new Map<string, Mutex>();
  readonly #names = new Map<string, string>(); // user id -> username, for room members who are not contacts
  /** Public posts whose sending failed, by room and text (the vault's ref of
   * `<room>\n<text>`): their client_id, the latest UNSENT_POSTS_KEPT, oldest first,
   * kept in the vault (UNSENT_POSTS) too. A network error or a 502/504 may come after
   * the rooms service stored the post: sent again, however much later and after a
   * reload, the same text goes with the same client_id, which the service deduplicates
   * for good (docs/rooms.md), so a resend never posts it twice. Forgotten once it is
   * known posted: its answer, its live post, or a timeline page showing it. */
  readonly #unsent = new Map<string, string>();
  readonly #typists = new TypingBoard(); // who types in which room (typing notices)
  readonly #drafts = new Map<string, TypingThrottle>(); // room id -> when to say we type there
  #typingFrames = 0;
  /** The typing setting as last chosen here, ahead of the vault's write (null: read the vault). */
  #tellTypingChosen: boolean | null = null;
  #tellTypingChoices = 0;
  #show: { room: string; serverId: string; n: number } | null = null; // a private room's message to show
  #shows = 0;
  /** Each private room's cursor in its log, and its reads (rooms.ts RoomLogs). */
  readonly #logs = new RoomLogs<W.RoomMessage>({
    cursor: (room) => this.roomCursor(room),
    take: (room, messages, start, upto) => this.#takeRoomMessages(room, messages, start, upto),
    page: (room, after) => this.#roomLogPage(room, after),
    pages: (asks) => this.#roomLogPages(asks),
    failed: (room, error) => this.#roomLogFailed(room, error),
    batchFailed: (rooms, error) => this.#roomLogsFailed(rooms, error),
  });
  connectionState: 'connecting' | 'connected' | 'disconnected' | 'stopped' = 'disconnected';
  #release: () => void = () => undefined;
  /** A link in progress on this (new) device: its request (`E`: never stored), name and
   * fingerprint. */
  #link: { request: LinkRequest; name: string; fingerprint: string } | null = null;

  private constructor(vault: Vault) {
    this.vault = vault;
  }

  /** Give up this account's lock (after log-out): another tab may open it. */
  release(): void {
    this.#release();
  }

  // -- events ----------------------------------------------------------------------
  on(fn: (e: ClientEvent) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  #emit(e: ClientEvent): void {
    // Whoever wrote in a room has stopped typing there.
    if (e.type === 'room_message') this.#typists.wrote(e.room, e.sender);
    else if (e.type === 'room_post') this.#typists.wrote(e.post.room_id, e.post.sender);
    for (const fn of this.#listeners) fn(e);
    if (e.type !== 'changed') for (const fn of this.#listeners) fn({ type: 'changed' });
  }

  // -- state -----------------------------------------------------------------------
  async #load(): Promise<void> {
    for (const name of ['account', 'device', 'account_key', ACCOUNT_PUBLISHED, 'device_list', 'last_seq', 'contacts', 'self_peer', 'prekeys_rotated_at', PREKEYS_UNSENT, 'rooms_known', 'settings', 'removed_ids', 'tombstones_kept']) {
      const value = await this.vault.get(name);
      if (value !== undefined) this.#cache.set(name, value);
    }
    // Our own devices trusted under another account key than ours (as they were before
    // #trustLists refused that): forgotten here, and read again, under ours, before the
    // next send (direct.ts listsToRead).
    const self = this.#read<PeerJson>('self_peer');
    const key = self?.account_key ? await this.accountKey() : null;
    if (self?.account_key && key !== null && !underOwnKey({ account_key: self.account_key }, key.public)) this.#cache.delete('self_peer');
    await this.#loadOutbox();
    for (const [ref, clientId] of (await this.vault.get<[string, string][]>(UNSENT_POSTS)) ?? []) this.#unsent.set(ref, clientId);
    for (const name of await this.vault.names(ASIDE_ROW)) {
      const frame = await this.vault.get<W.Message>(name);
      if (frame === undefined) continue;
      this.#cache.set(name, frame);
      this.#aside.add(name, frame);
    }
    for (const contact of this.contacts()) {
      const ref = await this.#ref(contact.user_id);
      const value = await this.vault.get(`peer:${ref}`);
      if (value !== undefined) this.#cache.set(`peer:${ref}`, value);
      await this.#loadHistory(`history:${ref}`);
    }
    const account = this.account;
    // Notes to self: our own conversation, which is no contact's.
    if (account) await this.#loadHistory(`history:${await this.#ref(account.user_id)}`);
    for (const roomId of this.#read<string[]>('rooms_known') ?? []) {
      const ref = await this.#ref(roomConversation(roomId));
      for (const name of [`group:${ref}`, `room:${ref}`, `room_unkept:${ref}`, `room_cursor:${ref}`]) {
        const value = await this.vault.get(name);
        if (value !== undefined) this.#cache.set(name, value);
      }
      // The room's sender keys in rows (#group): its index rows and a row per member device.
      for (const prefix of [`group_index:${ref}:`, `group_member:${ref}:`]) {
        const names = await this.vault.names(prefix);
        const values = await Promise.all(names.map((name) => this.vault.get(name)));
        names.forEach((name, i) => values[i] !== undefined && this.#cache.set(name, values[i]));
      }
      await this.#loadPending(`room_pending:${ref}`);
      await this.#loadHistory(`history:${ref}`);
    }
  }

  /** A room's messages waiting for their sender key into the cache: its index and a row
   * per message (pending.ts); the room's messages written as one row (an array, before a
   * row per message) are split into them first, in one write. A message whose row is
   * missing is left out of the index. */
  async #loadPending(base: string): Promise<void> {
    const value = await this.vault.get<unknown>(base);
    if (value === undefined) return;
    if (Array.isArray(value)) {
      const rows = migratePending(base, value);
      await this.vault.putMany(rows);
      for (const [name, row] of rows) if (row !== undefined) this.#cache.set(name, row);
      return;
    }
    const index = pendingIndex(value);
    for (const [chain, entries] of Object.entries(index.chains)) {
      const found: PendingEntry[] = [];
      for (const entry of entries) {
        const row = await this.vault.get(pendingRow(base, entry[0]));
        if (row === undefined) continue;
        this.#cache.set(pendingRow(base, entry[0]), row);
        found.push(entry);
      }
      setChain(index, chain, found);
    }
    if (pendingNumbers(index).length) this.#cache.set(base, index);
  }

  /** The outbox's rows into the cache, in their order; an outbox written as one row (before
   * a row per message) is split first, in one write. */
  async #loadOutbox(): Promise<void> {
    const old = await this.vault.get<Record<string, Queued>>('outbox');
    if (old !== undefined) {
      const rows: [string, unknown][] = Object.entries(old).map(([id, q], n) => [`outbox:${id}`, { ...q, n }]);
      await this.vault.putMany([...rows, ['outbox', undefined]]);
    }
    for (const name of await this.vault.names('outbox:')) {
      const queued = await this.vault.get<Queued>(name);
      if (queued === undefined) continue;
      this.#cache.set(name, queued);
      this.#outboxNext = Math.max(this.#outboxNext, (queued.n ?? 0) + 1);
    }
  }

  /** A message in the outbox (committed), by client id. */
  #queued(clientId: string): Queued | undefined {
    return this.#read<Queued>(`outbox:${clientId}`);
  }

  /** Put a frame into the outbox in `tx` (a message's row: a write costs one message's
   * size, not the outbox's); the same id keeps its place. */
  #enqueue(tx: Tx, clientId: string, queued: Queued): void {
    const name = `outbox:${clientId}`;
    const n = tx.get<Queued>(name)?.n ?? this.#outboxNext++;
    tx.put(name, { ...queued, n });
  }

  #dequeue(tx: Tx, clientId: string): void {
    if (tx.get<Queued>(`outbox:${clientId}`) !== undefined) tx.put(`outbox:${clientId}`, undefined);
  }

  /** A conversation's history rows into the cache (history.ts); a history written before
   * chunks (one array) is split into them first, in one write. */
  async #loadHistory(base: string): Promise<void> {
    const head = await this.vault.get<Head | HistoryEntry[]>(base);
    if (head === undefined) return;
    if (Array.isArray(head)) {
      const rows = migrate(base, head);
      await this.vault.putMany(rows);
      for (const [name, value] of rows) this.#cache.set(name, value);
    } else {
      this.#cache.set(base, head);
      for (let k = 0; k < head.chunks; k++) {
        const chunk = await this.vault.get(chunkName(base, k));
        if (chunk !== undefined) this.#cache.set(chunkName(base, k), chunk);
      }
    }
    this.#history.changed([base]);
    this.#history.learn(base);
    for (const e of this.#history.entries(base)) if (e.server_id) this.#seen.add(e.server_id);
  }

  async #ref(userId: string): Promise<string> {
    let ref = this.#refs.get(userId);
    if (ref === undefined) {
      ref = (await this.vault.ref('peer', userId)).slice('peer:'.length);
      this.#refs.set(userId, ref);
    }
    return ref;
  }

  #read<T>(name: string): T | undefined {
    return this.#cache.get(name) as T | undefined;
  }

  /** Run `fn` as one transaction: its writes reach IndexedDB together, or not at all;
   * one at a time, those waiting written together (transactions.ts). Refused once
   * signed out (checked when it runs, not when it was asked for): the account's lock
   * is given up then, and work still under way here (a room's key distribution, a
   * frame's handler, a resend) writing ratchet steps or outbox rows after it would
   * fork the state of the next log-in's page. */
  #transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    return this.#transactions.run(async (tx) => {
      if (this.#ended) throw new ParleyError('Signed out: nothing more is written here.');
      return fn(tx);
    });
  }

  get account(): AccountRow | undefined {
    return this.#read<AccountRow>('account');
  }

  get me(): string {
    const account = this.account;
    if (!account) throw new ParleyError('Not logged in.');
    return account.user_id;
  }

  get loggedIn(): boolean {
    return Boolean(this.#heldTokens().refresh_token);
  }

  /** The tokens this page holds (#tokens), else the vault's. */
  #heldTokens(): { access_token: string | null; refresh_token: string | null } {
    const account = this.account;
    return this.#tokens ?? { access_token: account?.access_token ?? null, refresh_token: account?.refresh_token ?? null };
  }

  /** New tokens, held from now on whatever becomes of their write. */
  #took(tokens: Tokens, arrivedAt: number): void {
    this.#tokens = { access_token: tokens.access_token, refresh_token: tokens.refresh_token };
    this.#accessExpiry = { token: tokens.access_token, at: expiresAt(tokens.access_token, arrivedAt, tokens.expires_in) };
    this.api.token = tokens.access_token;
  }

  settings(): Settings {
    return this.#read<Settings>('settings') ?? {};
  }

  /** Whether rooms' members are told when this user types (docs/protocol.md, "Typing"). */
  get tellTyping(): boolean {
    return this.#tellTypingChosen ?? this.settings().tell_typing ?? true;
  }

  /** Turn typing notices on or off (kept in the vault); off says a stop where a start
   * was said. The choice holds from this call on, not from the end of the vault's write:
   * a key pressed meanwhile says nothing (a failed write takes the choice back). */
  async setTellTyping(on: boolean): Promise<void> {
    this.#tellTypingChosen = on;
    const choice = ++this.#tellTypingChoices;
    if (!on) for (const room of this.#drafts.keys()) this.draftDone(room);
    try {
      await this.#transaction(async (tx) => tx.put('settings', { ...(tx.get<Settings>('settings') ?? {}), tell_typing: on }));
    } finally {
      if (choice === this.#tellTypingChoices) this.#tellTypingChosen = null; // a later choice holds
      this.#emit({ type: 'changed' });
    }
  }

  contacts(): Contact[] {
    return this.#read<Contact[]>('contacts') ?? [];
  }

  /** The conversations to list: ours (notes to self) first when it has history or
   * `open` is ours, then the contacts'. */
  conversations(open: string | null = null): ConversationItem[] {
    const account = this.account;
    const me = account ? { user_id: account.user_id, username: account.username } : null;
    return conversationList(
      this.contacts(),
      me,
      me !== null && (open === me.user_id || this.history(me.user_id).length > 0),
      (c) => c.listed !== false || c.user_id === open || this.#talkedTo(c.user_id),
    );
  }

  /** A conversation's entries, oldest first: a private room's in the room's order
   * (history.ts `inRoomOrder`), a 1:1 conversation's in the order they came. */
  history(peerId: string): HistoryEntry[] {
    const ref = this.#refs.get(peerId);
    if (ref === undefined) return [];
    const entries = this.#history.entries(`history:${ref}`);
    if (!peerId.startsWith('room:')) return entries;
    let ordered = this.#inOrder.get(entries);
    if (ordered === undefined) this.#inOrder.set(entries, (ordered = inRoomOrder(entries)));
    return ordered;
  }

  /** The messages waiting to go, in their order, as the vault holds them: one whose row
   * is being written (queued, encrypted again, taken out) is left out until that write
   * has committed. What is sent from the outbox is read here (#flush, #sendHeld): a
   * frame whose write has not committed yet may still be taken back (the storage full,
   * the tab closed), and its ratchet step with it, and the next message would reuse its
   * message key. */
  outbox(): Queued[] {
    return this.#outboxRows()
      .filter(([name]) => !this.#transactions.writing(name))
      .map(([, q]) => q)
      .sort((a, b) => (a.n ?? 0) - (b.n ?? 0));
  }

  /** The outbox's rows (name, message) in the cache, a write under way included. */
  #outboxRows(): [string, Queued][] {
    return [...this.#cache].filter((row): row is [string, Queued] => row[0].startsWith('outbox:'));
  }

  /** A message to send from the outbox, as the vault holds it (see {@link outbox}): none
   * while a write of its row is under way (whoever wrote it sends it once it committed:
   * #sendNew, #sendAgain). */
  #sendable(clientId: string): Queued | undefined {
    const name = `outbox:${clientId}`;
    return this.#transactions.writing(name) ? undefined : this.#read<Queued>(name);
  }

  #peerRow(userId: string): string {
    return userId === this.account?.user_id ? 'self_peer' : `peer:${this.#refs.get(userId) as string}`;
  }

  #peer(tx: Tx | null, userId: string): PeerState {
    const name = this.#peerRow(userId);
    const raw = tx ? tx.get<PeerJson>(name) : this.#read<PeerJson>(name);
    return raw === undefined ? new PeerState(userId) : PeerState.fromJson(raw);
  }

  peer(userId: string): PeerState {
    return this.#peer(null, userId);
  }

  /** The name of a conversation's history (its head row; history.ts). */
  #historyName(peerId: string): string {
    return `history:${this.#refs.get(peerId) as string}`;
  }

  #addHistory(tx: Tx, peerId: string, entry: HistoryEntry): void {
    const name = this.#historyName(peerId);
    if (peerId.startsWith('room:') && entry.seq === undefined) {
      // Its place until it has a number (history.ts `inRoomOrder`).
      entry.pos = topPlace(this.#history.entries(name), this.#history.tail(tx, name));
    }
    this.#history.append(tx, name, entry);
  }

  #updateHistory(tx: Tx, peerId: string, clientId: string, change: (e: HistoryEntry) => void): void {
    this.#history.updateClient(tx, this.#historyName(peerId), clientId, change);
  }

  /** Whether the conversation holds an entry of this client id (one chunk read). */
  #hasClientId(peerId: string, clientId: string): boolean {
    return this.#refs.has(peerId) && this.#history.hasClient(this.#historyName(peerId), clientId);
  }

  #hasServerId(peerId: string, serverId: string): boolean {
    return this.#refs.has(peerId) && this.#history.hasServer(this.#historyName(peerId), serverId);
  }

  /** A contact for `userId` (the sessions and trust a message needs); `listed` when the
   * user added it by name (it shows in the conversations list even with no message). */
  /** #ensureContact for many users at once (a room's members given our sender key):
   * those not yet contacts are added, unlisted, in one transaction, named as we know
   * them (a room's member list names them). */
  async #ensureContacts(userIds: string[]): Promise<void> {
    const me = this.me;
    const known = new Set(this.contacts().map((c) => c.user_id));
    const fresh = [...new Set(userIds)].filter((u) => u !== me && !known.has(u));
    if (!fresh.length) return;
    for (const user of fresh) await this.#ref(user);
    await this.#transaction(async (tx) => {
      const contacts = tx.get<Contact[]>('contacts') ?? [];
      const have = new Set(contacts.map((c) => c.user_id));
      for (const user of fresh) {
        if (have.has(user)) continue;
        const name = this.#names.get(user);
        contacts.push({ user_id: user, username: name ?? user.slice(0, 8), listed: false, ...(name === undefined ? { unnamed: true as const } : {}) });
      }
      tx.put('contacts', contacts);
    });
  }

  async #ensureContact(userId: string, username?: string, listed = false): Promise<void> {
    await this.#ref(userId);
    const known = this.contacts().find((c) => c.user_id === userId);
    if (known && !known.unnamed && (!username || known.username === username) && !(listed && known.listed === false)) return;
    let name = username ?? (known?.unnamed ? undefined : known?.username);
    if (name === undefined) {
      name = await this.api.user(userId).then((u) => u.username).catch(() => undefined);
      if (name === undefined && known) return; // still no answer: asked again at the next message
    }
    const unnamed = name === undefined;
    const shown = name ?? userId.slice(0, 8);
    if (!unnamed) this.#names.set(userId, shown);
    await this.#transaction(async (tx) => {
      const before = tx.get<Contact[]>('contacts') ?? [];
      const was = before.find((c) => c.user_id === userId);
      const hidden = !listed && (was === undefined || was.listed === false);
      const contacts = before.filter((c) => c.user_id !== userId);
      contacts.push({ user_id: userId, username: shown, ...(hidden ? { listed: false as const } : {}), ...(unnamed ? { unnamed: true as const } : {}) });
      tx.put('contacts', contacts);
    });
  }

  /** Whether a message was exchanged with the user (their conversation has a line). */
  #talkedTo(userId: string): boolean {
    return this.history(userId).some((e) => e.dir !== 'system');
  }

  username(userId: string): string {
    if (userId === this.account?.user_id) return this.account.username;
    return this.contacts().find((c) => c.user_id === userId)?.username ?? this.#names.get(userId) ?? userId.slice(0, 8);
  }

  /** The names of `userIds`: the known ones (contacts', or asked before) at once, the
   * others asked of the server once each (as `nameOf`), a few at a time; given to
   * `onNames` in batches as they come, so that a long list fills in as it goes. */
  async namesOf(userIds: Iterable<string>, onNames: (names: Record<string, string>) => void, parallel = 6): Promise<void> {
    const contacts = new Map(this.contacts().map((c) => [c.user_id, c.username]));
    const account = this.account;
    if (account) contacts.set(account.user_id, account.username);
    const known: Record<string, string> = {};
    const unknown: string[] = [];
    for (const id of new Set(userIds)) {
      const name = contacts.get(id) ?? this.#names.get(id);
      if (name === undefined) unknown.push(id);
      else known[id] = name;
    }
    if (Object.keys(known).length) onNames(known);
    let batch: Record<string, string> = {};
    let size = 0;
    let flushed = Date.now();
    const flush = () => {
      if (size === 0) return;
      onNames(batch);
      batch = {};
      size = 0;
      flushed = Date.now();
    };
    let next = 0;
    const worker = async () => {
      while (next < unknown.length) {
        const id = unknown[next++] as string;
        batch[id] = await this.nameOf(id);
        size += 1;
        if (size >= 50 || Date.now() - flushed > 250) flush();
      }
    };
    await Promise.all(Array.from({ length: Math.min(parallel, unknown.length) }, worker));
    flush();
  }

  /** A user's name (a contact's, or asked once of the server). */
  async nameOf(userId: string): Promise<string> {
    const contact = this.contacts().find((c) => c.user_id === userId);
    const known = (contact?.unnamed ? undefined : contact?.username) ?? this.#names.get(userId);
    if (known !== undefined) return known;
    await this.accessToken();
    const name = await this.api.user(userId).then((u) => u.username, () => undefined);
    if (name === undefined) return userId.slice(0, 8); // not kept: asked again next time
    this.#names.set(userId, name);
    return name;
  }

  // -- account -----------------------------------------------------------------------
  static async signup(username: string, email: string, password: string, passphrase: string): Promise<ParleyClient> {
    const api = new Api();
    const deviceId = randomDeviceId();
    const tokens = await api.signup(username, email, password, deviceId); // refused: no vault is made
    const release = await holdAccountLock(tokens.user.username);
    try {
      const client = new ParleyClient(await Vault.create(tokens.user.username, passphrase));
      client.#release = release;
      await client.#loggedIn(tokens, deviceId);
      await client.setup({ newAccount: true });
      return client;
    } catch (error) {
      release();
      throw error;
    }
  }

  /** Log in; `newIdentity` starts a new account identity on a browser that is not one
   * of the account's devices (contacts see a new safety number). */
  static async login(
    username: string,
    password: string,
    passphrase: string,
    secondFactor: SecondFactorPrompt,
    options: { newIdentity?: boolean } = {},
  ): Promise<ParleyClient> {
    const name = username.trim().toLowerCase();
    const release = await holdAccountLock(name);
    try {
      return await ParleyClient.#login(name, password, passphrase, secondFactor, options, release);
    } catch (error) {
      release();
      throw error;
    }
  }

  static async #login(
    name: string,
    password: string,
    passphrase: string,
    secondFactor: SecondFactorPrompt,
    options: { newIdentity?: boolean },
    release: () => void,
  ): Promise<ParleyClient> {
    const existing = await Vault.exists(name);
    const vault = existing ? await Vault.open(name, passphrase) : null; // wrong passphrase: refused before the network
    let client = vault ? new ParleyClient(vault) : null;
    if (client) await client.#load();
    if (client?.account?.removed_at) {
      // This browser removed itself from the account: it is no device of it any more.
      if (!options.newIdentity) throw removedError(client.account);
      client = null; // a new identity starts a new store (the old one is replaced once signed in)
    }
    if (!password) {
      // Reopen this browser's session (after a reload): the passphrase opened the
      // vault, which holds the refresh token; no password is sent.
      if (!client?.loggedIn) throw new ParleyError('Enter your password: this browser has no open session for this account.');
      client.#release = release;
      await client.accessToken(true);
      await client.setup(options);
      return client;
    }
    const deviceId = client?.account?.device_id ?? randomDeviceId();
    const tokens = await ParleyClient.#authenticate(name, password, deviceId, secondFactor);
    const c = client ?? new ParleyClient(await Vault.create(tokens.user.username, passphrase));
    c.#release = release;
    await c.#loggedIn(tokens, deviceId);
    await c.setup(options);
    return c;
  }

  /** `POST /auth/v1/login` as device `deviceId`, with the second factor when the
   * server asks (a wrong code asked again, up to five times): the tokens. */
  static async #authenticate(name: string, password: string, deviceId: number, secondFactor: SecondFactorPrompt): Promise<Tokens> {
    const api = new Api();
    let result = await api.login(name, password, deviceId);
    let attempts = 0;
    while ('second_factor_required' in result) {
      const challenge: Challenge = result;
      const { method, code } = await secondFactor(challenge);
      if (method === 'email' && !code) {
        await api.sendEmailCode(challenge.challenge_id);
        result = { ...challenge, email_code_sent: true };
        continue;
      }
      try {
        result = await api.login2fa(challenge.challenge_id, method, code);
      } catch (error) {
        attempts += 1;
        if (!(error instanceof ApiError) || error.code !== 'invalid_code' || attempts >= 5) throw error;
        result = { ...challenge, email_code_sent: false };
      }
    }
    return result;
  }

  /**
   * Link this browser to an existing account as a new device (keys.py `start_link`;
   * docs/devices.md "Linking a new device"): log in (password, second factor), make and
   * publish this device's keys as a *pending* device, and post a link; show
   * {@link linkCode} (and {@link linking}: its name and fingerprint), then {@link waitLinked} until a device
   * of the account approves it. This browser's store for the account is reused when it
   * has one that is not linked yet (a log-in that was told to link, say).
   */
  static async linkDevice(
    username: string,
    password: string,
    passphrase: string,
    secondFactor: SecondFactorPrompt,
    name?: string,
  ): Promise<ParleyClient> {
    const who = username.trim().toLowerCase();
    const release = await holdAccountLock(who);
    try {
      const existing = await Vault.exists(who);
      const vault = existing ? await Vault.open(who, passphrase) : null; // wrong passphrase: refused before the network
      let client = vault ? new ParleyClient(vault) : null;
      if (client) {
        await client.#load();
        // Removed from the account before: linked again as a new device, in a new store
        // (the old one, with its history, is replaced once the log-in succeeds).
        if (client.account?.removed_at) client = null;
        else if (client.#read<string>('account_key') !== undefined) {
          throw new ParleyError('This browser is a device of this account already: log in instead.');
        }
      }
      const deviceId = client?.account?.device_id ?? randomDeviceId();
      const tokens = await ParleyClient.#authenticate(who, password, deviceId, secondFactor);
      const c = client ?? new ParleyClient(await Vault.create(tokens.user.username, passphrase));
      c.#release = release;
      await c.#loggedIn(tokens, deviceId);
      await c.accessToken();
      const device = await c.#ensureDeviceKeys(deviceId);
      const deviceLabel = deviceName(name, defaultDeviceName(globalThis.navigator?.platform));
      c.#link = { request: await startLink(c.#directory(), deviceId, deviceLabel), name: deviceLabel, fingerprint: fingerprint(device.identity.signingKey) };
      return c;
    } catch (error) {
      release();
      throw error;
    }
  }

  /** The link code of {@link linkDevice} to enter on a device of the account (null when
   * no link is in progress). */
  get linkCode(): string | null {
    return this.#link?.request.code ?? null;
  }

  /** The pending link's device name and this device's fingerprint (the approving device
   * shows the same, to compare). */
  get linking(): { name: string; fingerprint: string; deviceId: number } | null {
    const link = this.#link;
    return link && this.account ? { name: link.name, fingerprint: link.fingerprint, deviceId: this.account.device_id } : null;
  }

  /**
   * Wait until a device of the account approves {@link linkCode} (keys.py `finish_link`):
   * open the approval with `E` (the account key, for this account), keep the key, read
   * the account's list and check it is signed by it and names this device's keys (else
   * the key is dropped again and linking failed). `E` is forgotten either way.
   */
  async waitLinked(options: WaitOptions = {}): Promise<void> {
    const link = this.#link;
    if (link === null) throw new ParleyError('No link in progress: start linking first.');
    const sealed = await awaitApproval(this.#directory(), link.request, options);
    const device = (await this.#device(null)) as Device;
    const did = (this.account as AccountRow).device_id;
    const accountKey = await openApproval(link.request, device.identity.signingKey, sealed, this.me);
    await this.#transaction(async (tx) => {
      tx.put('account_key', b64encode(accountKey.seed()));
      tx.put(ACCOUNT_PUBLISHED, true); // the account's key, which the directory holds
    });
    const unlink = () =>
      this.#transaction(async (tx) => {
        tx.put('account_key', undefined);
        tx.put('device_list', undefined);
      });
    let signed: SignedDeviceList | null;
    try {
      signed = await this.refreshOwnList();
    } catch (error) {
      await unlink(); // not linked until the list says so (the approval can be read again)
      throw error;
    }
    if (signed === null || !namesDevice(signed, did, device.identity.signingKey)) {
      await unlink();
      throw new ParleyError('The device list does not name this device: the link failed.');
    }
    this.#link = null; // E is forgotten
  }

  /** The key directory's calls, each with a valid access token (a link is waited for up
   * to 10 minutes, longer than a token lives). */
  #directory(): KeyDirectory {
    const api = this.api;
    const fresh = async <T>(call: () => Promise<T>): Promise<T> => {
      await this.accessToken();
      return call();
    };
    return {
      userDevices: (userId) => fresh(() => api.userDevices(userId)),
      putDeviceList: (signed) => fresh(() => api.putDeviceList(signed)),
      createLink: (linkId, deviceId, name, ePub) => fresh(() => api.createLink(linkId, deviceId, name, ePub)),
      getLink: (linkId) => fresh(() => api.getLink(linkId)),
      approveLink: (linkId, sealed) => fresh(() => api.approveLink(linkId, sealed)),
      cancelLink: (linkId) => fresh(() => api.cancelLink(linkId)),
    };
  }

  async #loggedIn(tokens: Tokens, deviceId: number): Promise<void> {
    const arrivedAt = Date.now();
    await this.#transaction(async (tx) => {
      const previous = tx.get<AccountRow>('account');
      if (previous && previous.user_id !== tokens.user.user_id) {
        throw new ParleyError(`This browser's store for ${previous.username} belongs to another account.`);
      }
      tx.put('account', {
        user_id: tokens.user.user_id,
        username: tokens.user.username,
        device_id: deviceId,
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        session_id: tokens.session_id,
        // Set once, when this browser's store is made: rooms' logs are read from then.
        linked_at: previous ? (previous.linked_at ?? 0) : linkedAt(tokens.access_token),
      } satisfies AccountRow);
    });
    this.#took(tokens, arrivedAt);
  }

  /** A valid access token, refreshed when it expires within two minutes (by this
   * device's clock, measured against the server's when the token arrived: tokens.ts
   * expiresAt), or within `within` ms more (the socket's renewal: valid until the next
   * one). The new tokens are held here from the refresh's answer on: a failed
   * write of them (the storage full) neither fails the call nor loses them (#saveTokens
   * tries again; the refresh token the vault holds is used up). */
  accessToken(force = false, within = 0): Promise<string> {
    if (this.#refreshing) return this.#refreshing;
    const held = this.#heldTokens();
    const refreshToken = held.refresh_token;
    if (!refreshToken) return Promise.reject(new ParleyError('You are logged out: log in again.'));
    const access = held.access_token;
    if (!force && access) {
      // (one this page did not get, read from the vault: its exp against this clock)
      const expiry = this.#accessExpiry?.token === access ? this.#accessExpiry.at : jwtClaim(access, 'exp') * 1000;
      if (expiry > Date.now() + TOKEN_MARGIN_MS + within) {
        this.api.token = access;
        return Promise.resolve(access);
      }
    }
    this.#refreshing = (async () => {
      try {
        const tokens = await this.api.refresh(refreshToken);
        // Signed out while it was asked: the answer is not taken (it made a signed-out
        // client logged in again, its API calls with a live token).
        if (this.#ended) throw new ParleyError('Signed out: nothing more is written here.');
        this.#took(tokens, Date.now());
        await this.#saveTokens();
        return tokens.access_token;
      } catch (error) {
        if (error instanceof ApiError && DEAD_TOKEN.has(error.code)) {
          this.#tokens = { access_token: null, refresh_token: null };
          this.#accessExpiry = null;
          this.api.token = null;
          await this.#saveTokens();
        }
        throw error;
      } finally {
        this.#refreshing = null;
      }
    })();
    return this.#refreshing;
  }

  /** The tokens held here (#tokens) into the vault's `account` row. A failed write is
   * tried again later (TOKEN_SAVE_RETRY), until one succeeds (a later refresh's write
   * does too), and the user is told once: the refresh token the vault still holds was
   * used up by the refresh, and a page loaded with it would end the session. Never
   * throws. */
  async #saveTokens(): Promise<void> {
    if (this.#tokenSaveTimer !== null) clearTimeout(this.#tokenSaveTimer);
    this.#tokenSaveTimer = null;
    if (this.#tokens === null || this.#ended) return;
    try {
      await this.#transaction(async (tx) => {
        const row = tx.get<AccountRow>('account') as AccountRow;
        tx.put('account', { ...row, ...this.#tokens });
      });
      this.#tokenSaveWait = TOKEN_SAVE_RETRY.first;
    } catch (error) {
      if (this.#ended) return; // signed out meanwhile: the row says so
      if (this.#tokenSaveWait === TOKEN_SAVE_RETRY.first) {
        this.#emit({
          type: 'error',
          code: 'storage',
          message: `This browser did not save your session (${String((error as Error).message ?? error)}): it is tried again. Free some disk space, and keep this tab open until then.`,
        });
      }
      if (this.#tokenSaveTimer === null) this.#tokenSaveTimer = setTimeout(() => void this.#saveTokens(), this.#tokenSaveWait);
      this.#tokenSaveWait = Math.min(this.#tokenSaveWait * 2, TOKEN_SAVE_RETRY.max);
    }
  }

  async logout(): Promise<void> {
    this.close();
    try {
      await this.accessToken();
      await this.api.logout();
    } catch {
      // the session may be gone already: forget the tokens anyway
    }
    await this.#signedOut();
  }

  /** Signed out here: the socket closed, the tokens forgotten (keys and history stay),
   * the account's lock given up. `also` writes more in the same transaction. */
  async #signedOut(also: (tx: Tx) => void = () => undefined): Promise<void> {
    this.close();
    // From now on no other transaction of this instance runs (#transaction), those
    // already waiting included: this one is the last write before the lock goes.
    this.#ended = true;
    this.#tokens = { access_token: null, refresh_token: null };
    this.#accessExpiry = null;
    if (this.#tokenSaveTimer !== null) clearTimeout(this.#tokenSaveTimer);
    this.#tokenSaveTimer = null;
    await this.#transactions.run(async (tx) => {
      const row = tx.get<AccountRow>('account') as AccountRow;
      tx.put('account', { ...row, access_token: null, refresh_token: null });
      also(tx);
    });
    this.api.token = null;
    this.release();
  }

  // -- sessions and two-step verification (the auth service; docs/auth.md) -------------
  /** The API with a fresh access token, for the auth service's account calls (sessions,
   * two-step verification), whose answers and refusals the settings show as they are. */
  async authApi(): Promise<Api> {
    await this.accessToken();
    return this.api;
  }

  /** The session of this browser's tokens. */
  get sessionId(): string | null {
    return this.account?.session_id ?? null;
  }

  /** End one of the account's sessions (`DELETE /auth/v1/sessions/{sid}`). This browser's
   * own: it is then signed out here, as by "Log out" (`signed_out`). A refusal
   * (`session_not_found`...) changes nothing here. */
  async revokeSession(sid: string): Promise<'signed_out' | 'ended'> {
    const outcome = revokeOutcome(sid, this.sessionId);
    await (await this.authApi()).revokeSession(sid);
    if (outcome === 'signed_out') await this.#signedOut();
    return outcome;
  }

  /** End every session of the account but this browser's: how many were ended. */
  async signOutEverywhereElse(): Promise<number> {
    return (await (await this.authApi()).revokeOtherSessions()).revoked;
  }

  // -- keys ---------------------------------------------------------------------------
  async #device(tx: Tx | null): Promise<Device | null> {
    const raw = tx ? tx.get<string>('device') : this.#read<string>('device');
    return raw === undefined ? null : Device.fromBytes(b64decode(raw));
  }

  /** This device's keys to start sessions with, parsed once per stored state (importing
   * its dozens of keys into WebCrypto cost ~3 ms a message, every message of a room's
   * first distribution to a thousand members). Read only: starting a session changes
   * nothing of it; an answer to a first message, which uses up a prekey, reads its own
   * copy (#device). */
  /** The rows as committed, read outside a transaction (nothing can be written). */
  readonly #now: Tx = {
    get: <V>(name: string) => this.#read<V>(name),
    put: () => {
      throw new Error('not in a transaction');
    },
  };

  /** Whether we have no session with the device `<user>.<device id>` (as committed). */
  #lacksSession(key: string): boolean {
    const dot = key.lastIndexOf('.');
    return !this.peer(key.slice(0, dot)).hasSession(Number(key.slice(dot + 1)));
  }

  #deviceToSend(tx: Tx): Promise<Device> {
    const raw = tx.get<string>('device');
    if (raw === undefined) return Promise.reject(new ParleyError('This browser has no device keys.'));
    if (this.#sendingDevice?.raw !== raw) this.#sendingDevice = { raw, device: Device.fromBytes(b64decode(raw)) };
    return this.#sendingDevice.device;
  }

  async accountKey(): Promise<AccountKey | null> {
    const raw = this.#read<string>('account_key');
    return raw === undefined ? null : AccountKey.fromSeed(b64decode(raw));
  }

  async #myAccountPublic(): Promise<Uint8Array> {
    const key = await this.accountKey();
    if (key === null) throw new ParleyError('This browser is not linked to its account yet.');
    return key.public;
  }

  /** Make this device's keys on first use and publish them; make sure the directory
   * holds them; top up one-time prekeys; (first device) create the account's list and
   * publish it, and publish again an account key whose publication did not finish
   * (#publishAccount). */
  async setup(options: { newIdentity?: boolean; newAccount?: boolean } = {}): Promise<void> {
    await this.accessToken();
    const did = (this.account as AccountRow).device_id;
    const device = await this.#ensureDeviceKeys(did);
    if (await this.accountKey()) {
      const mark = this.#read<AccountPublished>(ACCOUNT_PUBLISHED);
      if (mark === undefined) await this.#checkPublished(did, device);
      else if (mark !== true) await this.#publishAccount(mark, true);
      return;
    }
    let exists = !options.newAccount; // a new account has no devices: no need to ask
    let replaces: string | null = null;
    if (exists) {
      try {
        replaces = (await this.api.userDevices(this.me)).account_key;
      } catch (error) {
        if (!notRegistered(error)) throw error;
        exists = false;
      }
    }
    if (exists && !options.newIdentity) throw needsLink();
    const accountKey = await AccountKey.generate();
    const signed = await new DeviceList(this.me, 1, [DeviceEntry.of(did, 'parley-web', device.identity)]).sign(accountKey);
    const pending: PendingAccount = { account_key: b64encode(accountKey.public), signed: signed.toJson(), replaces };
    // The key, and that it is not published yet, in one write: a PUT that fails (a
    // 503, no answer, the tab closed before it went) is sent again at the next log-in.
    await this.#transaction(async (tx) => {
      tx.put('account_key', b64encode(accountKey.seed()));
      tx.put('device_list', signed.toJson());
      tx.put(ACCOUNT_PUBLISHED, pending);
    });
    await this.#publishAccount(pending, false);
  }

  /**
   * Publish an account key this browser made (`PUT /keys/v1/account`, its first list),
   * then mark it published. The same key again changes nothing in the key directory
   * (docs/keys.md): a retry is harmless. `check` (a retry): the directory is asked
   * first; holding neither our key nor the one we replaced (a new identity), another
   * device registered its own since: ours, never published, is dropped and this
   * browser is no device of the account (NeedsLink), rather than resetting theirs.
   */
  async #publishAccount(pending: PendingAccount, check: boolean): Promise<void> {
    let current: string | null = null;
    if (check) {
      try {
        current = (await this.api.userDevices(this.me)).account_key;
      } catch (error) {
        if (!notRegistered(error)) throw error;
      }
    }
    if (current !== pending.account_key) {
      if (current !== null && current !== pending.replaces) {
        await this.#transaction(async (tx) => {
          tx.put('account_key', undefined);
          tx.put('device_list', undefined);
          tx.put(ACCOUNT_PUBLISHED, undefined);
        });
        throw needsLink();
      }
      await this.api.putAccount(pending.account_key, pending.signed);
    }
    await this.#transaction(async (tx) => tx.put(ACCOUNT_PUBLISHED, true));
  }

  /** A store from before the ACCOUNT_PUBLISHED mark: asked once whether the directory
   * holds an account key for us; none (a sign-up whose PUT failed), ours is published
   * with a first list naming this device. Another key: left as it is (ours may be the
   * older one, replaced by another device's reset). */
  async #checkPublished(did: number, device: Device): Promise<void> {
    try {
      await this.api.userDevices(this.me);
    } catch (error) {
      if (!notRegistered(error)) throw error;
      const accountKey = (await this.accountKey()) as AccountKey;
      const signed = await new DeviceList(this.me, 1, [DeviceEntry.of(did, 'parley-web', device.identity)]).sign(accountKey);
      await this.#transaction(async (tx) => tx.put('device_list', signed.toJson()));
      await this.api.putAccount(b64encode(accountKey.public), signed.toJson());
    }
    await this.#transaction(async (tx) => tx.put(ACCOUNT_PUBLISHED, true));
  }

  /** This device's keys, made on first use and published (private halves first); the
   * directory's copy checked (keys check) and published again if it differs; week-old
   * signed and last-resort prekeys rotated; one-time prekeys topped up (keys.py
   * `_ensure_device_keys`). */
  async #ensureDeviceKeys(did: number): Promise<Device> {
    let device = await this.#device(null);
    const fresh = device === null;
    if (device === null) {
      const made = await Device.generate();
      device = made;
      await this.#transaction(async (tx) => {
        tx.put('device', b64encode(made.toBytes()));
        tx.put('prekeys_rotated_at', Date.now());
        tx.put(PREKEYS_UNSENT, undefined); // another device's batch, if any
      });
    } else if (Date.now() - (this.#read<number>('prekeys_rotated_at') ?? 0) >= PREKEY_ROTATION_MS) {
      // Weekly, as the Python client: new signed and last-resort prekeys (the previous
      // ones are kept for initial messages in flight); the keys check below then
      // finds the directory out of date and publishes them.
      device = await this.#transaction(async (tx) => {
        const current = (await this.#device(tx)) as Device;
        await current.rotateSignedPrekey();
        await current.rotateLastResortKemPrekey();
        tx.put('device', b64encode(current.toBytes()));
        tx.put('prekeys_rotated_at', Date.now());
        return current;
      });
    }
    if (fresh || !(await this.#directoryHolds(did, device))) {
      await this.api.putIdentity(did, device.publicIdentity());
      await this.api.putSignedPrekey(did, device.signedPrekey());
      await this.api.putLastResort(did, device.lastResortKemPrekey());
    }
    await this.topUp();
    return device;
  }

  // -- the account's devices (keys.py; docs/devices.md) ---------------------------------
  /** The list this device holds (null: not linked yet). */
  ownList(): SignedDeviceList | null {
    const raw = this.#read<unknown>('device_list');
    return raw === undefined ? null : SignedDeviceList.fromJson(raw);
  }

  /** Read the account's current list, verify it with our account key, keep it
   * (keys.py `refresh_own_list`); null when this device has no account key. */
  async refreshOwnList(): Promise<SignedDeviceList | null> {
    const accountKey = await this.accountKey();
    if (accountKey === null) return null;
    await this.accessToken();
    const answer = await this.api.userDevices(this.me);
    const signed = await verifyOwnList(answer, accountKey, this.me, this.ownList());
    await this.#transaction(async (tx) => tx.put('device_list', signed.toJson()));
    return signed;
  }

  /** This account's devices, from the verified list: id, name, fingerprint, and which
   * is this one (keys.py `devices`). */
  async devices(): Promise<DeviceRow[]> {
    const signed = await this.refreshOwnList();
    return signed === null ? [] : deviceRows(signed, (this.account as AccountRow).device_id);
  }

  /** Sign and publish the next list made by `change` (keys.py `_publish_list`). */
  async #publishList(change: (devices: readonly DeviceEntry[]) => DeviceEntry[]): Promise<SignedDeviceList> {
    const accountKey = await this.accountKey();
    if (accountKey === null) throw new NeedsLink('This browser is not linked to the account.');
    const signed = await publishList(
      accountKey,
      this.me,
      async () => (await this.refreshOwnList()) as SignedDeviceList,
      (next) => this.#directory().putDeviceList(next.toJson()),
      async (next) => this.#transaction(async (tx) => tx.put('device_list', next.toJson())),
      change,
    );
    this.#emit({ type: 'changed' });
    return signed;
  }

  /** What a link code asks to link: the new device's name and fingerprint. */
  async pendingDevice(code: string): Promise<PendingDevice> {
    return (await readPending(this.#directory(), code)).pending;
  }

  /** Link the device that shows `code` (keys.py `approve`): `confirm` sees its name and
   * fingerprint first; then the next list names it and it gets the account key, sealed. */
  async approveDevice(code: string, confirm: (pending: PendingDevice) => Promise<boolean>): Promise<PendingDevice> {
    const accountKey = await this.accountKey();
    if (accountKey === null) throw new NeedsLink('This browser is not linked to the account.');
    return approveLink(this.#directory(), code, accountKey, this.me, confirm, (change) => this.#publishList(change));
  }

  /** Remove a device of this account (keys.py `remove`): a list without it, signed; its
   * tokens stop working and its inbox is dropped. Never the only device. */
  async removeDevice(deviceId: number): Promise<void> {
    await this.#publishList(removing(deviceId));
  }

  /** Rename a device of this account, this one or another (keys.py `rename`): the next
   * list with the new name (its first 64 characters), signed. */
  async renameDevice(deviceId: number, name: string): Promise<void> {
    await this.#publishList(renaming(deviceId, name));
  }

  /**
   * Remove this browser from the account's devices (`parley devices remove` of its own id:
   * keys.py `remove`): the next list without it, signed, never the only device. The key
   * directory then ends this device's tokens and drops its keys and inbox. A refusal
   * changes nothing. Then this browser is signed out and keeps no key of the account: the
   * tokens, the account key, this device's keys and the outbox (which can no longer go
   * out) leave the store in one transaction; the history stays, sealed with the local
   * passphrase, and the store says it was removed (a log-in then says so, and linking
   * starts a new store).
   */
  async removeThisDevice(): Promise<void> {
    await this.#publishList(removing((this.account as AccountRow).device_id));
    await this.#signedOut((tx) => {
      const row = tx.get<AccountRow>('account') as AccountRow;
      tx.put('account', { ...row, access_token: null, refresh_token: null, removed_at: Date.now() });
      for (const name of ['account_key', 'device_list', 'device', 'prekeys_rotated_at', PREKEYS_UNSENT]) tx.put(name, undefined);
      for (const [name] of this.#outboxRows()) tx.put(name, undefined);
      for (const name of this.#aside.names()) tx.put(name, undefined); // no keys to read them with
    });
    this.#aside.clear();
  }

  async #directoryHolds(did: number, device: Device): Promise<boolean> {
    try {
      return await this.api.checkKeys(did, b64encode(await device.keysDigest()));
    } catch (error) {
      if (error instanceof ApiError && error.code === 'device_not_found') return false;
      throw error;
    }
  }

  /**
   * Upload one-time X25519 and ML-KEM prekeys up to the batch size (private halves
   * first). One at a time: a call while one runs (a log-in's and `prekeys_low`'s) gets
   * that one's promise.
   *
   * A batch is stored with its private halves and remembered as unsent
   * (`prekeys_unsent`, its public JSON) in one transaction, before it is uploaded. A top-up
   * sends a remembered batch again, the same ids and keys (the directory takes the same
   * batch again as a retry: docs/keys.md), and makes none while one is unsent: each failed
   * upload made a new batch, and the newest kept pushed out the private halves of prekeys
   * claimed before, and of prekeys the directory still held. Only once the whole batch is
   * uploaded are old one-time prekeys forgotten (docs/crypto.md, "One-time prekeys kept"),
   * and the row cleared with it; a failure before then forgets nothing.
   */
  topUp(): Promise<void> {
    this.#toppingUp ??= this.#topUp().finally(() => {
      this.#toppingUp = null;
    });
    return this.#toppingUp;
  }

  async #topUp(): Promise<void> {
    const did = (this.account as AccountRow).device_id;
    const counts = await this.api.counts(did);
    let unsent = this.#read<UnsentPrekeys>(PREKEYS_UNSENT);
    const resent = unsent !== undefined;
    if (unsent === undefined) {
      const needOt = Math.max(0, PREKEY_BATCH - counts.one_time);
      const needKem = Math.max(0, PREKEY_BATCH - counts.kem_one_time);
      if (!needOt && !needKem) return;
      unsent = await this.#transaction(async (tx) => {
        const device = (await this.#device(tx)) as Device;
        const batch: UnsentPrekeys = {
          one_time: await device.generateOneTimePrekeys(needOt),
          kem: await device.generateKemPrekeys(needKem),
          one_time_sent: 0,
          kem_sent: 0,
        };
        tx.put('device', b64encode(device.toBytes()));
        tx.put(PREKEYS_UNSENT, batch);
        return batch;
      });
    }
    const batch = unsent;
    for (const kind of ['one_time', 'kem'] as const) {
      const prekeys = batch[kind];
      const sentName = kind === 'one_time' ? 'one_time_sent' : 'kem_sent';
      for (let i = batch[sentName] ?? 0; i < prekeys.length; i += MAX_UPLOAD) {
        const chunk = prekeys.slice(i, i + MAX_UPLOAD);
        try {
          if (kind === 'one_time') await this.api.uploadOneTime(did, chunk);
          else await this.api.uploadKem(did, chunk);
        } catch (error) {
          // Sent again and refused for ids the directory holds: an earlier send stored
          // it (its answer lost) and some of it was claimed since (a retry must find
          // every one still held). Ids only count upwards, so they are this batch's.
          if (!(resent && error instanceof ApiError && error.code === 'duplicate_prekey')) throw error;
        }
        // What the directory took is not sent again: once some of it is claimed, the same
        // chunk is refused; once all of it is, it would be stored, and handed out, again.
        // (The last chunk needs no mark: the row goes with the retirement below.)
        const sent = Math.min(prekeys.length, i + MAX_UPLOAD);
        if (kind === 'one_time' || sent < prekeys.length) {
          await this.#transaction(async (tx) => {
            const row = tx.get<UnsentPrekeys>(PREKEYS_UNSENT);
            if (row !== undefined) tx.put(PREKEYS_UNSENT, { ...row, [sentName]: sent });
          });
        }
      }
    }
    // All uploaded: what the directory held before it, the batch, and a batch of those
    // claimed more are kept of each kind: the newest (it hands them out in id order);
    // older claimed ones are forgotten (a prekey claimed by someone who never writes was
    // kept for ever: ~1,440 of each kind a day).
    await this.#transaction(async (tx) => {
      const device = (await this.#device(tx)) as Device;
      device.retireOneTimePrekeys(
        counts.one_time + batch.one_time.length + PREKEY_BATCH,
        counts.kem_one_time + batch.kem.length + PREKEY_BATCH,
      );
      tx.put('device', b64encode(device.toBytes()));
      tx.put(PREKEYS_UNSENT, undefined);
    });
  }

  // -- contacts and trust --------------------------------------------------------------
  /** A user by username or user id (`GET /auth/v1/users/{username_or_id}`, any case):
   * their id and username, or the auth service's `user_not_found`. What "Add contact"
   * and a room's "Ban a user" look names up with. */
  async lookupUser(usernameOrId: string): Promise<UserBrief> {
    await this.accessToken();
    const user = await this.api.user(usernameOrId.trim());
    this.#names.set(user.user_id, user.username);
    return user;
  }

  /** Add a contact by username (GET /auth/v1/users/{username}): their user id. */
  async addContact(username: string): Promise<Contact> {
    const user = await this.lookupUser(username);
    if (user.user_id === this.me) {
      // Our own conversation: notes to self, for our other devices (not a contact).
      await this.#ref(user.user_id);
      this.#emit({ type: 'changed' });
      return { user_id: user.user_id, username: user.username };
    }
    await this.#ensureContact(user.user_id, user.username, true);
    try {
      await this.#refreshPeer(user.user_id);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error; // no devices yet: fetched again at the first send
    }
    this.#emit({ type: 'changed' });
    return { user_id: user.user_id, username: user.username };
  }

  async #refreshPeer(userId: string, answer?: Listed): Promise<PeerState> {
    await this.accessToken();
    const listed = answer ?? (await this.api.userDevices(userId));
    if (userId !== this.me) await this.#ensureContact(userId);
    const [state] = await this.#trustLists([{ ...listed, user_id: userId }]);
    return state as PeerState;
  }

  /** Users' signed device lists (from the directory, or from claims' answers) trusted
   * in one transaction: a changed account key is reported (event and history line).
   * Users not yet contacts become unlisted ones (#ensureContacts). */
  async #trustLists(answers: Listed[]): Promise<PeerState[]> {
    const me = this.me;
    const mine = await this.#myAccountPublic();
    // Our own list only under the account key this device holds, never trusted on first
    // use as a contact's: another key's list would add its devices to "our other devices"
    // (a copy of every message, every private room's sender key), silently. The whole
    // answer is refused, nothing trusted (messenger.py `_trust_checked`).
    if (answers.some((a) => a.user_id === me && !underOwnKey(a, mine))) throw new UntrustedKeys(OTHER_ACCOUNT_KEY);
    await this.#ensureContacts(answers.map((a) => a.user_id));
    const signed = answers.map((a) => SignedDeviceList.fromJson(a));
    const names = new Map(this.contacts().map((c) => [c.user_id, c.username]));
    const warnings: ClientEvent[] = [];
    const states = await this.#transaction(async (tx) => {
      const out: PeerState[] = [];
      for (const [i, listed] of answers.entries()) {
        const userId = listed.user_id;
        let state = this.#peer(tx, userId);
        // Ours under another key (taken before this was checked): forgotten, not a change.
        if (userId === me && state.accountKey !== listed.account_key) state = new PeerState(me);
        const name = names.get(userId) ?? this.username(userId);
        if (userId !== me) state.username = name;
        const changed = await state.trust(listed.account_key, signed[i] as SignedDeviceList, mine, me);
        if (changed !== null && userId !== me) {
          warnings.push({ type: 'key_changed', peer: userId, username: name, safetyNumber: changed.newSafetyNumber, oldSafetyNumber: changed.oldSafetyNumber });
          this.#addHistory(tx, userId, {
            dir: 'system',
            kind: 'key_changed',
            peer: userId,
            at: Date.now(),
            text: `${name}'s safety number changed. New safety number: ${changed.newSafetyNumber}`,
          });
        }
        tx.put(this.#peerRow(userId), state.toJson());
        out.push(state);
      }
      return out;
    });
    for (const warning of warnings) this.#emit(warning);
    return states;
  }

  /** #refreshPeer for many users: their lists read in bulk (LISTS_PER_READ a request)
   * and trusted in one transaction per read. A user with no account key is skipped
   * (no device to reach). */
  async #refreshPeers(userIds: string[]): Promise<void> {
    for (let at = 0; at < userIds.length; at += LISTS_PER_READ) {
      await this.accessToken();
      const answer = await this.api.deviceLists(userIds.slice(at, at + LISTS_PER_READ));
      await this.#trustLists(answer.lists);
    }
  }

  /** The bundles of every device of `users` (and of ours but this one) we have no
   * session with, claimed in bulk (CLAIMS_PER_REQUEST users a request, CLAIMS_AT_ONCE
   * requests at a time): what #sendControl takes, so that a private room's first
   * message claims for 1,000 members in 10 requests. `bundles` fills as the answers
   * come; `ready(user)` resolves once that user's answer (and ours, asked first) is in,
   * so a user's send need not wait for the other requests (or rejects with its
   * request's error). Users the directory refused are left out: their own send claims
   * again and says why. */
  #claimMissing(users: string[]): { bundles: Map<string, PrekeyBundle>; ready: (user: string) => Promise<void> } {
    const me = this.me;
    const myDevice = (this.account as AccountRow).device_id;
    const wanted = new Map<string, number[]>();
    for (const user of new Set([me, ...users])) {
      const missing = targetDevices(user, this.peer(user).missingSessions(), me, myDevice);
      if (missing.length) wanted.set(user, missing);
    }
    const ids = [...wanted.keys()];
    const bundles = new Map<string, PrekeyBundle>();
    const answered = new Map<string, Promise<void>>();
    const gate = new Gate(CLAIMS_AT_ONCE);
    const claim = async (chunk: string[]): Promise<void> => {
      await this.accessToken();
      const answer = await this.api.claimMany(Object.fromEntries(chunk.map((u) => [u, wanted.get(u) as number[]])));
      const states = await this.#trustLists(answer.claimed);
      const parsed = await Promise.all(answer.claimed.map((got) => Promise.all(got.bundles.map((raw) => PrekeyBundle.fromJson(raw)))));
      for (const [i, got] of answer.claimed.entries()) {
        for (const [j, raw] of got.bundles.entries()) {
          const bundle = (parsed[i] as PrekeyBundle[])[j] as PrekeyBundle;
          (states[i] as PeerState).checkDevice(raw.device_id, bundle.identity);
          bundles.set(`${got.user_id}.${raw.device_id}`, bundle);
        }
      }
    };
    for (let at = 0; at < ids.length; at += CLAIMS_PER_REQUEST) {
      const chunk = ids.slice(at, at + CLAIMS_PER_REQUEST);
      const done = gate.run(() => claim(chunk));
      done.catch(() => undefined); // raised to the sends that wait for it
      for (const user of chunk) answered.set(user, done);
    }
    const ours = answered.get(me) ?? Promise.resolve();
    return { bundles, ready: async (user) => void (await Promise.all([ours, answered.get(user)])) };
  }

  /** The safety number with a contact (of the account key we trust; fetched if none yet). */
  async safetyNumber(userId: string): Promise<string | null> {
    const mine = await this.#myAccountPublic();
    let state = this.peer(userId);
    if (state.accountKey === null) state = await this.#refreshPeer(userId);
    return state.safetyNumber(mine, this.me);
  }

  identityStatus(userId: string): { verified: boolean; pendingChange: boolean; wasVerified: boolean; oldSafetyNumber: string | null } {
    const state = this.peer(userId);
    return {
      verified: state.verified,
      pendingChange: state.pendingChange !== null,
      wasVerified: Boolean(state.pendingChange?.was_verified),
      oldSafetyNumber: state.pendingChange?.old_safety_number ?? null,
    };
  }

  /** Accept a changed key without comparing: sending resumes, the contact is unverified. */
  async acceptIdentity(userId: string): Promise<void> {
    await this.#transaction(async (tx) => {
      const state = this.#peer(tx, userId);
      state.accept();
      tx.put(this.#peerRow(userId), state.toJson());
    });
    this.#emit({ type: 'changed' });
  }

  /** The user compared `number` with the contact's: it must be the current key's. */
  async verify(userId: string, number: string): Promise<void> {
    const mine = await this.#myAccountPublic();
    await this.#transaction(async (tx) => {
      const state = this.#peer(tx, userId);
      const current = await state.safetyNumber(mine, this.me);
      if (state.accountKey === null || current === null) throw new ParleyError('This contact has no keys yet: nothing to verify.');
      if (number.replace(/\s/g, '') !== current.replace(/\s/g, '')) {
        throw new ParleyError("The safety number changed while you were comparing it: compare the new one.");
      }
      state.markVerified(state.accountKey);
      tx.put(this.#peerRow(userId), state.toJson());
    });
    this.#emit({ type: 'changed' });
  }

  async #checkIdentity(state: PeerState): Promise<void> {
    const change = state.pendingChange;
    if (change === null) return;
    const number = (await state.safetyNumber(await this.#myAccountPublic(), this.me)) as string;
    throw new SafetyNumberChanged(state.userId, this.username(state.userId), change.old_safety_number, number, change.was_verified);
  }

  // -- sending ------------------------------------------------------------------------
  get maxFrameBytes(): number {
    return this.#maxFrameBytes;
  }

  /** Encrypt `text` for every device of the contact and our other devices, queue it
   * and send it; returns the client message id. SafetyNumberChanged (nothing queued)
   * while the contact's changed identity is not accepted. To our own id it is a note
   * to self, for our other devices only: refused (nothing queued or kept) when this is
   * the account's only device (direct.ts). */
  async send(peerId: string, text: string): Promise<string> {
    checkText(text);
    const clientId = randomId();
    const frame = await this.#encrypt(peerId, text, clientId, false);
    this.#emit({ type: 'changed' });
    this.#sendNew(frame);
    return clientId;
  }

  /** One encryption at a time per contact (client/parley/messenger.py does the same):
   * concurrent first sends to a new contact would each claim its bundles, spending a
   * one-time prekey each, although one session serves them all. */
  #encrypt(peerId: string, text: string, clientId: string, refresh: boolean, payload?: Uint8Array, claimed?: Map<string, PrekeyBundle>): Promise<W.Send> {
    let lock = this.#peerLocks.get(peerId);
    if (lock === undefined) this.#peerLocks.set(peerId, (lock = new Mutex()));
    return lock.run(() => this.#encryptNow(peerId, text, clientId, refresh, payload, claimed));
  }

  /** `claimed`: bundles claimed already (#claimMissing); the devices it has a bundle
   * for are not claimed again. */
  async #encryptNow(peerId: string, text: string, clientId: string, refresh: boolean, payload?: Uint8Array, claimed?: Map<string, PrekeyBundle>): Promise<W.Send> {
    const me = this.me;
    const myDevice = (this.account as AccountRow).device_id;
    if (peerId === me) await this.#ref(me); // a note to self: our own conversation, no contact
    else await this.#ensureContact(peerId);
    // A note to self with no other device of ours known reads our list first: a device
    // may have been linked since (direct.ts listsToRead).
    for (const user of listsToRead(peerId, me, myDevice, refresh, (u) => this.peer(u).devices.keys())) await this.#refreshPeer(user);
    await this.#checkIdentity(this.peer(peerId));
    const users = sendUsers(peerId, me);
    const bundles = new Map<string, PrekeyBundle>();
    for (const user of claimed ? users : []) {
      for (const d of this.peer(user).devices.keys()) {
        const got = claimed?.get(`${user}.${d}`);
        if (got !== undefined) bundles.set(`${user}.${d}`, got);
      }
    }
    for (const user of users) {
      for (let round = 0; round < 3; round++) {
        const missing = targetDevices(user, this.peer(user).missingSessions(), me, myDevice).filter((d) => !bundles.has(`${user}.${d}`));
        if (!missing.length) break;
        const answer = await this.api.claimBundles(user, missing);
        const state = await this.#refreshPeer(user, answer);
        for (const raw of answer.bundles) {
          const bundle = await PrekeyBundle.fromJson(raw);
          state.checkDevice(raw.device_id, bundle.identity);
          bundles.set(`${user}.${raw.device_id}`, bundle);
        }
      }
    }
    const plaintext = payload ?? utf8(text);
    const started = startSessions(me, myDevice, () => this.#deviceToSend(this.#now), bundles, (key) => this.#lacksSession(key), plaintext);
    return this.#transaction(async (tx) => {
      await this.#checkIdentity(this.#peer(tx, peerId)); // a change seen meanwhile stops it here
      const states = new Map(users.map((user) => [user, this.#peer(tx, user)]));
      let copies: W.Copy[];
      try {
        copies = await encryptCopies(peerId, me, myDevice, () => this.#deviceToSend(tx), plaintext, (user) => states.get(user) as PeerState, bundles, started);
      } catch (error) {
        throw error instanceof MissingKeys ? new ParleyError(error.message) : error;
      }
      const refused = sendRefusal(copies, peerId, me);
      if (refused !== null) throw new ParleyError(refused); // nothing is kept: the transaction is dropped
      for (const [user, state] of states) tx.put(this.#peerRow(user), state.toJson());
      const frame: W.Send = { op: 'send', id: clientId, to: peerId, copies: copies as W.Send['copies'] };
      const size = utf8(JSON.stringify(frame)).length;
      if (size > this.#maxFrameBytes) {
        throw new ParleyError(`Message too long: ${size} bytes encrypted, the server accepts ${this.#maxFrameBytes} per frame. Nothing was sent.`);
      }
      if (payload === undefined && !this.#hasClientId(peerId, clientId)) {
        const serverId = await messageServerId(this.me, clientId);
        this.#addHistory(tx, peerId, { dir: 'out', kind: 'message', peer: peerId, text, at: Date.now(), client_id: clientId, server_id: serverId, status: 'queued' });
      }
      this.#enqueue(tx, clientId, payload === undefined ? { send: frame, peer: peerId, text } : { send: frame, peer: peerId, text: '', control: b64encode(payload) });
      return frame;
    });
  }

  // -- rooms (client/parley/rooms.py) -----------------------------------------------------
  /** My rooms (the most recently joined first) and the rooms I am invited to. */
  async rooms(): Promise<{ rooms: Room[]; invitations: Room[] }> {
    await this.accessToken();
    const rooms: Room[] = [];
    let before: unknown = null;
    do {
      const page = await this.api.rooms(before);
      rooms.push(...page.rooms);
      before = page.next_before;
    } while (before !== null && before !== undefined);
    const invited = await this.api.invitations();
    const by = new Map(invited.invitations.map((i) => [i.room_id, i.invited_by]));
    return { rooms, invitations: invited.rooms.map((r) => ({ ...r, invited_by: by.get(r.room_id) ?? null })) };
  }

  /** Public rooms whose name contains `query`, in name order. */
  async directory(query: string): Promise<Room[]> {
    await this.accessToken();
    return (await this.api.directory(query.trim())).rooms;
  }

  async room(roomId: string): Promise<Room> {
    await this.accessToken();
    return this.api.room(roomId);
  }

  async createRoom(name: string, kind: 'public' | 'private'): Promise<Room> {
    await this.accessToken();
    const room = await this.api.createRoom(name.trim(), kind);
    this.#emit({ type: 'changed' });
    return room;
  }

  async joinRoom(roomId: string): Promise<void> {
    await this.accessToken();
    await this.api.joinRoom(roomId);
    this.#emit({ type: 'changed' });
  }

  async acceptInvitation(roomId: string): Promise<void> {
    await this.accessToken();
    await this.api.acceptInvitation(roomId);
    this.#emit({ type: 'changed' });
  }

  async declineInvitation(roomId: string): Promise<void> {
    await this.accessToken();
    await this.api.declineInvitation(roomId);
    this.#emit({ type: 'changed' });
  }

  async leaveRoom(roomId: string): Promise<void> {
    await this.accessToken();
    await this.api.leaveRoom(roomId);
    this.#emit({ type: 'changed' });
  }

  async invite(roomId: string, user: string): Promise<void> {
    await this.accessToken();
    await this.api.invite(roomId, user.trim().replace(/^@/, ''));
  }

  // -- roles and the room's state (docs/rooms.md "Roles"; the rules: roles.ts) ----------
  // The server tells every member of a close or reopen (`room_changed`, change `state`),
  // a role change (`role`), a removal (`member_removed`) and a leave (`member_left`);
  // after each of these that succeeds here, this page is also told `room_changed` at
  // once (its own socket's frame may come a moment later), so that it goes the way of a
  // change seen from elsewhere: the room and its members read again. A private room's
  // sender key needs nothing more: the removal
  // raised the room's version, so the next send from any member device (this one
  // included) reads the members again, finds someone gone and rotates its chain before
  // it sends (#distribute, rooms.ts planDistribution), as after a leave.

  /** Close (`closed`) or reopen (`open`) the room: the owner and moderators. The room as
   * it is now. */
  async setRoomState(roomId: string, state: 'open' | 'closed'): Promise<Room> {
    await this.accessToken();
    const room = await this.api.updateRoom(roomId, { state });
    this.#emit({ type: 'room_changed', room: roomId });
    return room;
  }

  /** Remove a member from the room (the owner: anyone but themself; a moderator: a
   * plain member). */
  async removeMember(roomId: string, userId: string): Promise<void> {
    await this.accessToken();
    await this.api.removeMember(roomId, userId);
    this.#emit({ type: 'room_changed', room: roomId });
  }

  /** Make a member a moderator (`on`), or a moderator a plain member (the owner). */
  async setModerator(roomId: string, userId: string, on: boolean): Promise<Membership> {
    await this.accessToken();
    const membership = await this.api.setModerator(roomId, userId, on);
    this.#emit({ type: 'room_changed', room: roomId });
    return membership;
  }

  /** Hand the room over to another member (the owner, who becomes a moderator); the
   * room as it is now (our role in it: `moderator`). */
  async handOver(roomId: string, userId: string): Promise<Room> {
    await this.accessToken();
    const room = await this.api.handOver(roomId, userId);
    this.#emit({ type: 'room_changed', room: roomId });
    return room;
  }

  /** Ban a user, a member or not, from the room (the owner and moderators, under the
   * removal's rules: nobody bans the owner or themself, only the owner bans a
   * moderator; docs/rooms.md "A ban"): a member is removed (as by
   * {@link removeMember}), an invitation withdrawn, and joining, accepting and being
   * invited are refused (`banned`) until the ban is lifted. The ban as the server
   * answers it (banned already: the same ban). */
  async banUser(roomId: string, userId: string): Promise<RoomBan> {
    await this.accessToken();
    const ban = await this.api.banUser(roomId, userId);
    this.#emit({ type: 'room_changed', room: roomId });
    return ban;
  }

  /** Lift a ban (the owner and moderators; `user_not_found` when they are not banned):
   * they may join, accept and be invited again. */
  async liftBan(roomId: string, userId: string): Promise<void> {
    await this.accessToken();
    await this.api.liftBan(roomId, userId);
    this.#emit({ type: 'room_changed', room: roomId });
  }

  /** Every ban of the room in user id order, every page read (the owner and
   * moderators; rooms.ts readBans). */
  async roomBans(roomId: string): Promise<RoomBan[]> {
    return readBans(async (after) => {
      await this.accessToken();
      return this.api.roomBans(roomId, after, BANS_PAGE);
    });
  }

  /** A page of a public room's timeline, oldest first; `before` from the previous page. */
  async timeline(roomId: string, before: number | null, limit = 50): Promise<{ messages: RoomMessage[]; nextBefore: number | null }> {
    await this.accessToken();
    const page = await this.api.roomMessages(roomId, before, limit);
    const me = this.account?.user_id;
    if (this.#unsent.size) this.#posted(page.messages.filter((m) => m.sender === me).map((m) => m.client_id));
    return { messages: [...page.messages].reverse(), nextBefore: page.next_before };
  }

  // -- mention notifications (docs/rooms.md "Mentions") ---------------------------------
  /** A page of my notifications, newest first, with the unread count. */
  async notifications(before: number | null, limit = 50): Promise<NoticePage> {
    await this.accessToken();
    return this.api.notifications(before, limit);
  }

  /** Mark my notifications up to `upTo` read (the server's mark moves forward only). */
  async readNotifications(upTo: number): Promise<number> {
    await this.accessToken();
    return (await this.api.readNotifications(upTo)).unread;
  }

  /** The account's mention e-mail preference (the auth service's, every browser's). */
  async mentionEmails(): Promise<boolean> {
    await this.accessToken();
    return (await this.api.preferences()).mention_emails;
  }

  async setMentionEmails(on: boolean): Promise<boolean> {
    await this.accessToken();
    return (await this.api.setPreferences({ mention_emails: on })).mention_emails;
  }

  /** The account's preferences (mention e-mails, presence): the auth service's, the
   * same in every browser. */
  async preferences(): Promise<Preferences> {
    await this.accessToken();
    return this.api.preferences();
  }

  /** Whether members of my rooms see me online while a device of mine is connected
   * (`show_presence`; off: I always look offline). The server's answer. */
  async setShowPresence(on: boolean): Promise<boolean> {
    await this.accessToken();
    return (await this.api.setPreferences({ show_presence: on })).show_presence;
  }

  /** Every member of the room in join order (`role`, and `online`: a device of theirs
   * is connected and they show it), every page read. Presence is never pushed: ask
   * again to see it now. */
  async roomMembers(roomId: string): Promise<RoomMember[]> {
    await this.accessToken();
    const by = new Map<string, RoomMember>();
    let after: unknown = null;
    do {
      const page = await this.api.roomMembers(roomId, after);
      for (const m of page.members) {
        by.set(m.user_id, m);
        // The server names the members: no look-up per member for the list.
        if (m.username) this.#names.set(m.user_id, m.username);
      }
      after = page.next_after;
    } while (after !== null && after !== undefined);
    return [...by.values()];
  }

  /** What this device decrypted of a private room (its history is local only). */
  roomHistory(roomId: string): HistoryEntry[] {
    return this.history(roomConversation(roomId));
  }

  // -- typing (docs/protocol.md "Typing"; src/app/typing.ts) -------------------------------
  /** The room's draft is now `text`: say `typing` (at most every 3 s) while it holds
   * something, `typing: false` once it is cleared; nothing if the user said not to. */
  draftChanged(roomId: string, text: string): void {
    let draft = this.#drafts.get(roomId);
    if (draft === undefined) this.#drafts.set(roomId, (draft = new TypingThrottle()));
    if (!this.tellTyping && text.trim() !== '') return;
    this.#sayTyping(roomId, draft.changed(text, Date.now()));
  }

  /** The room's draft was sent, or left: `typing: false` if a start was said. */
  draftDone(roomId: string): void {
    this.#sayTyping(roomId, this.#drafts.get(roomId)?.done(Date.now()) ?? null);
  }

  #sayTyping(roomId: string, say: 'start' | 'stop' | null): void {
    if (say === null) return;
    this.#typingFrames += 1;
    this.#sendFrame({ op: 'typing', room: roomId, typing: say === 'start', id: `${TYPING_ID}${this.#typingFrames}` } satisfies W.Typing);
  }

  /** The members typing in the room now (user ids, never ours). */
  typists(roomId: string): string[] {
    return this.#typists.typists(roomId, Date.now());
  }

  /** When the next typist of the room expires (ms since the epoch), or null. */
  typingExpiry(roomId: string): number | null {
    return this.#typists.nextExpiry(roomId, Date.now());
  }

  /** Room messages kept until their sender's key arrives. */
  roomPending(roomId: string): number {
    const ref = this.#refs.get(roomConversation(roomId));
    return ref === undefined ? 0 : pendingCount(pendingIndex(this.#read<unknown>(`room_pending:${ref}`)));
  }

  /** The lowest log number of the room's messages that waited for their sender key past
   * the 1,000 kept (`MAX_PENDING`), over all their senders' devices: not kept, read again
   * from the log when their device's sender key comes (rooms.py `unkept`); null: none. */
  roomUnkept(roomId: string): number | null {
    const ref = this.#refs.get(roomConversation(roomId));
    return ref === undefined ? null : lowestUnkept(unkeptRow(this.#read<unknown>(`room_unkept:${ref}`)));
  }

  /** Where this browser holds a private room's message (the `server_id` of its `message`
   * frame, which the history entries keep): decrypted, waiting for its sender's key, or
   * not at all (it came before this device was a member, or the history was cleared). */
  roomMessageState(roomId: string, serverId: string): HeldState {
    if (this.#hasServerId(roomConversation(roomId), serverId)) return 'held';
    const ref = this.#refs.get(roomConversation(roomId));
    const held = ref !== undefined && pendingHolds(pendingIndex(this.#read<unknown>(`room_pending:${ref}`)), serverId);
    return held ? 'pending' : 'absent';
  }

  /** Ask the room's view to show one of its private messages (a mention opened from the
   * list names it by `server_id`): kept until the view of that room takes it. */
  showRoomMessage(roomId: string, serverId: string): void {
    this.#show = { room: roomId, serverId, n: ++this.#shows };
    this.#emit({ type: 'show_message', room: roomId });
  }

  /** The message the room's view was asked to show, once (null: none for this room). */
  takeShowRequest(roomId: string): { serverId: string; n: number } | null {
    const show = this.#show;
    if (show === null || show.room !== roomId) return null;
    this.#show = null;
    return { serverId: show.serverId, n: show.n };
  }

  /** Make the rows of a room known (its row names are keyed HMACs, as a contact's). */
  async openRoom(roomId: string): Promise<void> {
    if (!ROOM_ID.test(roomId)) throw new ParleyError('Not a room id.');
    await this.#ref(roomConversation(roomId));
    if (!(this.#read<string[]>('rooms_known') ?? []).includes(roomId)) {
      await this.#transaction(async (tx) => this.#knowRoom(tx, roomId));
    }
  }

  #knowRoom(tx: Tx, roomId: string): void {
    const known = tx.get<string[]>('rooms_known') ?? [];
    if (!known.includes(roomId)) tx.put('rooms_known', [...known, roomId]);
  }

  #roomRow(kind: 'group' | 'room' | 'room_pending' | 'room_unkept' | 'room_cursor', roomId: string): string {
    return `${kind}:${this.#refs.get(roomConversation(roomId)) as string}`;
  }

  // A room's sender keys are rows (as rooms.py since 2026-12-08; README "Private rooms"):
  // `group:<ref>` holds this device's own chain, `group_member:<ref>:<hmac>` one member
  // device's chains and retired ids, `group_index:<ref>:<bucket>` (GROUP_INDEX_BUCKETS
  // rows, by a keyed hash of the name) the names of the members with a row. A message
  // reads and writes its sender's row only; a key, its member's; a send, the own row.
  // Before, the whole state was the one `group:<ref>` row (base64 of `toBytes()`), read
  // and written again for every message, key and send: ~1.3 MB a message in a room of
  // 1,000 member devices. Such a row is split into rows at its first use (#group).

  /** Index rows a room's members with a sender-key row are listed in: a member new to the
   * room rewrites one of them, ~1/32 of the names (rooms.py GROUP_INDEX_BUCKETS). */
  static readonly #GROUP_INDEX_BUCKETS = 32;

  /** `member`'s sender-key row in the room, and its index bucket (both keyed: the HMAC of
   * the room and member names, as every row name of a contact's). */
  async #memberRow(roomId: string, member: string): Promise<{ name: string; bucket: number }> {
    const key = `${roomId}\u0000${member}`;
    let mac = this.#memberRefs.get(key);
    if (mac === undefined) {
      mac = (await this.vault.ref('group_member', key)).slice('group_member:'.length);
      this.#memberRefs.set(key, mac);
    }
    const bucket = Number.parseInt(mac.slice(0, 8), 16) % ParleyClient.#GROUP_INDEX_BUCKETS;
    return { name: `group_member:${this.#refs.get(roomConversation(roomId)) as string}:${mac}`, bucket };
  }

  #groupIndexRow(roomId: string, bucket: number): string {
    return `group_index:${this.#refs.get(roomConversation(roomId)) as string}:${bucket}`;
  }

  /** The room's sender-key state with `members`' rows loaded (null: every member's, the
   * whole state; otherwise only those can be used). Made on first use (written by
   * #putGroup). A state stored whole (one `group:` row, base64, before rows) is split into
   * rows first, in `tx`: a transaction that fails leaves the old row as it was. */
  async #group(tx: Tx, roomId: string, members: Iterable<string> | null): Promise<GroupSession> {
    const raw = tx.get<string>(this.#roomRow('group', roomId));
    if (raw === undefined) return GroupSession.create(roomId);
    let own: Uint8Array | string = raw.startsWith('{') ? raw : b64decode(raw);
    if (GroupSession.isWhole(own)) {
      const whole = await GroupSession.fromBytes(own);
      await this.#splitGroup(tx, whole);
      if (members === null) return whole;
      own = await whole.ownRow();
    }
    let names: string[];
    if (members === null) {
      names = [];
      for (let b = 0; b < ParleyClient.#GROUP_INDEX_BUCKETS; b++) names.push(...(tx.get<string[]>(this.#groupIndexRow(roomId, b)) ?? []));
    } else {
      names = [...new Set(members)];
    }
    const rows = new Map<string, string | null>();
    for (const member of names) rows.set(member, tx.get<string>((await this.#memberRow(roomId, member)).name) ?? null);
    return GroupSession.fromRows(own, rows, { every: members === null });
  }

  /** Write a whole state as rows (the `group:` row becomes the own row), in `tx`. */
  async #splitGroup(tx: Tx, whole: GroupSession): Promise<void> {
    const roomId = whole.groupId;
    const buckets = new Map<number, string[]>();
    for (const member of whole.rowMembers()) {
      const row = await whole.memberRow(member);
      if (row === null) continue;
      const { name, bucket } = await this.#memberRow(roomId, member);
      tx.put(name, fromUtf8(row));
      buckets.set(bucket, [...(buckets.get(bucket) ?? []), member]);
    }
    for (const [bucket, names] of buckets) tx.put(this.#groupIndexRow(roomId, bucket), names.sort());
    tx.put(this.#roomRow('group', roomId), fromUtf8(await whole.ownRow()));
    whole.markSaved();
  }

  /** Write what changed in `session`: its own row, its changed members' rows, and the
   * index rows of members new to it (or without a row now). */
  async #putGroup(tx: Tx, session: GroupSession): Promise<void> {
    const roomId = session.groupId;
    if (session.ownChanged) tx.put(this.#roomRow('group', roomId), fromUtf8(await session.ownRow()));
    const added = new Map<number, Set<string>>();
    const gone = new Map<number, Set<string>>();
    const note = (into: Map<number, Set<string>>, bucket: number, member: string) => into.set(bucket, (into.get(bucket) ?? new Set()).add(member));
    for (const member of session.changedMembers()) {
      const [row, had] = [await session.memberRow(member), session.hadRow(member)];
      const { name, bucket } = await this.#memberRow(roomId, member);
      if (row === null) {
        tx.put(name, undefined);
        if (had) note(gone, bucket, member);
        continue;
      }
      tx.put(name, fromUtf8(row));
      if (!had) note(added, bucket, member);
    }
    for (const bucket of new Set([...added.keys(), ...gone.keys()])) {
      const name = this.#groupIndexRow(roomId, bucket);
      const names = (tx.get<string[]>(name) ?? []).filter((m) => !gone.get(bucket)?.has(m));
      for (const m of [...(added.get(bucket) ?? [])].sort()) if (!names.includes(m)) names.push(m);
      tx.put(name, names.length ? names : undefined);
    }
    session.markSaved();
  }

  /** Wait for the `accepted` of a frame sent with `clientId` (queued in the outbox):
   * past `timeoutMs`, StillQueued. Counted from now, or with `fromWrite` from each time
   * its frame is written to the socket (#sendOn), stopped while it is not on one (its
   * socket closed: the next one's flush writes it again): the time it waits in the
   * outbox behind older sends, or for the pacer, is not the server's. */
  #accepted(clientId: string, timeoutMs = 30_000, fromWrite = false): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | null = null;
      const stop = () => {
        if (timer !== null) clearTimeout(timer);
        timer = null;
      };
      const start = () => {
        stop();
        timer = setTimeout(() => {
          this.#waiting.delete(clientId);
          reject(new StillQueued('The server has not accepted the message yet: it waits in the outbox and goes by itself (do not send it again).'));
        }, timeoutMs);
      };
      this.#waiting.set(clientId, {
        resolve: () => (stop(), resolve()),
        reject: (e) => (stop(), reject(e)),
        ...(fromWrite ? { written: start, unwritten: stop } : {}),
      });
      if (!fromWrite) start();
    });
  }

  /** The socket closed: the waits counted from a write stop until the frame is written
   * again; with the client stopped (`close`), none is written again: StillQueued now. */
  #unwritten(stopped: boolean): void {
    for (const [clientId, waiter] of [...this.#waiting]) {
      if (waiter.unwritten === undefined) continue;
      if (!stopped) {
        waiter.unwritten();
        continue;
      }
      this.#waiting.delete(clientId);
      waiter.reject(new StillQueued('Disconnected before the server accepted the message: it waits in the outbox and goes at the next connection.'));
    }
  }

  /** Send a control payload (a room's sender key) to every device of `userId` and our
   * other devices over the pairwise sessions (`userId` ours: a note to self, for our
   * other devices only); resolves at its `accepted` with the (user, device) pairs the
   * accepted frame's copies were encrypted for (after any `devices_changed` redo):
   * those got it, which the device lists as they are by then need not say (a device
   * linked meanwhile and learned of by another route did not; messenger.py
   * `send_control`). */
  async #sendControl(userId: string, payload: Uint8Array, claimed?: Map<string, PrekeyBundle>, gate?: Gate): Promise<[string, number][]> {
    // Closed (close, a 4003, signed out): nothing writes a frame any more, nor rejects a
    // wait registered now (#unwritten ran already): refused at once, not left waiting.
    const closed = () => new KeyNotHandedOut("Disconnected: the room's key was not handed out; nothing was sent.");
    if (!this.#running || this.#ended) throw closed();
    const clientId = randomId();
    this.#copies.set(clientId, null);
    try {
      const encrypt = () => this.#encrypt(userId, '', clientId, false, payload, claimed);
      const frame = await (gate ? gate.run(encrypt) : encrypt());
      if (this.#copies.get(clientId) === null) this.#copies.set(clientId, copiesOf(frame)); // (unless redone meanwhile)
      if (!this.#running || this.#ended) throw closed(); // (queued: it goes at the next connection)
      // Counted from its write: a new send goes after the whole outbox (#flush, paced),
      // and a room's key sends are its newest entries.
      const accepted = this.#accepted(clientId, KEY_SEND_ACCEPTED_WITHIN.ms, true);
      this.#sendNew(frame);
      await accepted;
      return this.#copies.get(clientId) ?? [];
    } finally {
      this.#copies.delete(clientId);
    }
  }

  /** Send `text` to a room. A public room's message is posted to its timeline (the
   * same text sent again after a failure goes with the same client_id: #post); a
   * private room's is encrypted with this device's sender key (distributed, or
   * rotated first, as client/parley/rooms.py does) and sent as `room_send`;
   * resolves at its `accepted`. Bounded by `timeoutMs` from the call: not accepted by
   * then (it is queued), StillQueued: the message goes later by itself. A failure
   * before it was queued (its key could not be handed out by then, KeyNotHandedOut...)
   * is any other error: nothing was sent. */
  async sendRoom(roomId: string, text: string, timeoutMs = 30_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    checkText(text);
    const room = await this.room(roomId);
    if (room.role === null || room.role === undefined) throw new ParleyError(`You are not a member of #${room.name}.`);
    if (room.kind !== 'private') return this.#post(roomId, text);
    if (this.connectionState !== 'connected') throw new ParleyError("Not connected: a private room's message needs the socket.");
    await this.openRoom(roomId);
    // The whole send is bounded from its call: a key send's own wait stops while its
    // socket is down (#unwritten), so a distribution under way when the network goes
    // could otherwise wait out the outage. Past the deadline before the message is
    // queued: not sent (its key sends go on by themselves and are recorded when
    // accepted); once it is queued, the deadline no longer applies to that part. The
    // room's lock is held by the distribution, not by the caller: it is released only
    // once that has settled, so no two distributions of a room ever run at once (one
    // given up on, planning after a later one from the members it read, could give a
    // removed member the new key, or rotate twice). A later send waiting for it still
    // gives up at its own deadline.
    const tooLate = () => new KeyNotHandedOut("The room's key could not be handed out to every member in time: nothing was sent; send it again.");
    let late = false;
    let expire: (error: Error) => void = () => undefined;
    const expired = new Promise<never>((_, reject) => (expire = reject));
    expired.catch(() => undefined);
    const timer = setTimeout(() => {
      late = true;
      expire(tooLate());
    }, Math.max(0, deadline - Date.now()));
    let frame: W.RoomSend;
    try {
      const run = this.#roomLock(roomId).run(async () => {
        if (late) throw tooLate();
        const version = room.version ?? 0;
        const members = await this.#roomMembers(roomId, version);
        const keyed = await this.#distribute(roomId, version, members); // given up on (late): it still ends under the lock
        const mentions = await this.#mentions(roomId, text, members);
        if (late) throw tooLate();
        clearTimeout(timer); // (in the same turn as the check: it cannot fire once the message is queued)
        return this.#encryptRoom(roomId, text, mentions, keyed);
      });
      run.catch(() => undefined); // given up on (late): its key sends are recorded as they are accepted
      // Late while waiting for the lock: that run gives up at its start; late during the
      // distribution: the caller is told now, the lock is released when it ends.
      frame = await Promise.race([run, expired]);
    } finally {
      clearTimeout(timer);
    }
    this.#emit({ type: 'changed' });
    // A `devices_changed` answer sends the message again with the same id (#redoRoom):
    // this waits for the last answer, `accepted` or a failure, until the deadline.
    const accepted = this.#accepted(frame.id, Math.max(0, deadline - Date.now()));
    this.#sendNew(frame);
    await accepted;
    return frame.id;
  }

  /** A public post (`POST .../messages`): with the client_id of a failed send of the
   * same text to the room if there is one (#unsent), so that sending it again is
   * idempotent; kept with it while it fails, and forgotten once it is known posted
   * (else the same "ok" typed later would be taken as that post again, and never
   * shown). */
  async #post(roomId: string, text: string): Promise<string> {
    const ref = await this.vault.ref('post', `${roomId}\n${text}`);
    const kept = this.#unsent.get(ref);
    const clientId = kept ?? randomId();
    try {
      await this.api.postRoomMessage(roomId, clientId, text);
    } catch (error) {
      this.#unsent.delete(ref);
      this.#unsent.set(ref, clientId); // the newest last
      while (this.#unsent.size > UNSENT_POSTS_KEPT) this.#unsent.delete(this.#unsent.keys().next().value as string);
      await this.#saveUnsent();
      throw error;
    }
    if (kept !== undefined) this.#posted([clientId]);
    return clientId;
  }

  /** Posts known stored (by client_id): no longer kept as unsent. */
  #posted(clientIds: Iterable<string>): void {
    const ids = new Set(clientIds);
    let changed = false;
    for (const [ref, id] of this.#unsent) {
      if (ids.has(id)) {
        this.#unsent.delete(ref);
        changed = true;
      }
    }
    if (changed) void this.#saveUnsent();
  }

  /** The unsent posts (#unsent) into the vault, as they are when the write runs. A failed
   * write is not retried: the page keeps them, a reload may not. Never throws. */
  async #saveUnsent(): Promise<void> {
    try {
      await this.#transaction(async (tx) => tx.put(UNSENT_POSTS, this.#unsent.size ? [...this.#unsent] : undefined));
    } catch {
      // signed out, or the storage full: the page still holds them
    }
  }

  /** One send (or redo) at a time per room: the chain, its distribution and the room's
   * state change together. */
  #roomLock(roomId: string): Mutex {
    let lock = this.#roomLocks.get(roomId);
    if (lock === undefined) this.#roomLocks.set(roomId, (lock = new Mutex()));
    return lock;
  }

  /** The room's members at `version`: every membership change raises the version, so an
   * unchanged one means the members we saw at our last send are still the members;
   * otherwise they are read again. */
  async #roomMembers(roomId: string, version: number): Promise<string[]> {
    const seen = roomState(this.#read<RoomState>(this.#roomRow('room', roomId)));
    return seen.version_seen === version && seen.members_seen.length ? seen.members_seen : this.#memberIds(roomId);
  }

  /**
   * The gateway refused a `room_send` with `devices_changed` (rooms.py `redo_room_send`):
   * the room's member devices are not the ones this device gave its sender key to (a
   * device linked or removed, a member joined). Nothing was stored. Under the room's
   * lock: the lists that differ from ours are read again from the key directory (signed:
   * the error's `lists` only say which), the members (always: the list kept for the
   * room's version may have been read while a membership change was half written), the
   * key goes to the member devices that lack it (#distribute), and the text is encrypted
   * again, a new step of the chain (a device given the key now cannot read the old
   * ciphertext), and sent with the same id, replacing the outbox entry. At most
   * REDO_MAX times for one id; then, or if it cannot be done, the message fails. A key
   * not handed out in time, or a transient error of a service it reads (#redoLater),
   * leaves it queued, and held (#hold) on `ws`, the socket that refused it: sent again
   * later on it (refused again, redone again), not only by the next socket's flush.
   */
  async #redoRoom(ws: WebSocket, clientId: string, lists: W.DeviceList[]): Promise<void> {
    const first = this.#queued(clientId);
    if (first === undefined || first.send.op !== 'room_send') return;
    const roomId = first.send.room;
    try {
      const frame = await this.#roomLock(roomId).run(async () => {
        // Read again under the lock: it may have been accepted, failed or redone meanwhile.
        const queued = this.#queued(clientId);
        if (queued === undefined || queued.send.op !== 'room_send') return null;
        const redo = (queued.redo ?? 0) + 1;
        if (redo > REDO_MAX) throw new ParleyError(`The room's devices kept changing (${REDO_MAX} tries): the message was not sent.`);
        const room = await this.room(roomId);
        if (room.role === null || room.role === undefined) {
          throw new ParleyError(`You are no longer a member of #${room.name}: the message was not sent.`);
        }
        const me = this.me;
        const myDevice = (this.account as AccountRow).device_id;
        const behind = listsBehind(lists, (user) => this.peer(user).devices.keys(), me, myDevice);
        await this.#refreshPeers(behind);
        const version = room.version ?? 0;
        // The members read fresh, never the list kept for this version (rooms.py reads
        // them fresh too): the rooms service raises the version before it adds or
        // removes the membership, so a list read in between is kept under the new
        // version while stale (a leaver still in it, a joiner not yet), and every redo
        // from it would name the same wrong devices until the version moved again.
        // #distribute keeps this one for the version.
        const members = await this.#memberIds(roomId);
        const keyed = await this.#distribute(roomId, version, members);
        // The server refuses a mention of someone who is no longer a member.
        const mentions = (queued.send.mentions ?? []).filter((m) => members.includes(m));
        return this.#encryptRoom(roomId, queued.text, mentions, keyed, { clientId, redo });
      });
      if (frame === null) return;
      this.#emit({ type: 'changed' });
      this.#sendAgain(frame); // not connected: it goes out with the outbox at the next connect
    } catch (error) {
      if (this.#redoLater(ws, clientId, error)) return;
      await this.#fail(clientId, first.peer, String((error as Error).message));
    }
  }

  /** A `devices_changed` redo that could not be made now: a room's key send not accepted
   * yet (KeyNotHandedOut: it is queued and goes by itself), or a transient error reading
   * the members, the device lists or claiming bundles (no answer, 429, 5xx). The message
   * is not failed; it stays queued as it was and is sent again on this socket after a
   * wait, as a `service_unavailable` is (1 s, doubling to 30 s; refused again, it is
   * redone then), or by the next socket's flush if this one goes. False for any other
   * error (SafetyNumberChanged, a list that does not verify...): the caller fails it. */
  #redoLater(ws: WebSocket, clientId: string, error: unknown): boolean {
    if (!(error instanceof KeyNotHandedOut) && !(error instanceof ApiError && error.transient)) return false;
    this.#hold(ws, clientId, 'service_unavailable');
    this.#emit({ type: 'error', code: 'client', message: `Not sent yet (${error.message}): the message waits in the outbox and is sent again later.` });
    return true;
  }

  async #memberIds(roomId: string): Promise<string[]> {
    const out: string[] = [];
    let after: unknown = null;
    do {
      const page = await this.api.roomMembers(roomId, after);
      out.push(...page.members.map((m) => m.user_id));
      for (const m of page.members) if (m.username) this.#names.set(m.user_id, m.username); // (#ensureContacts names them)
      after = page.next_after;
    } while (after !== null && after !== undefined);
    return [...new Set(out)];
  }

  /** Rotate if someone left (or a device that had our key is gone), then give the
   * current sender key to every member device that lacks it, pairwise, each send
   * `accepted` before we go on (rooms.py `_distribute`); when only our own other devices
   * lack it, in a note to self (rooms.ts distributionUsers). Returns the member devices
   * (memberKey) as read here: every device of every member and of ours but this one,
   * those the key is meant for, which the `room_send` names (`device_digest`). */
  async #distribute(roomId: string, version: number, members: string[]): Promise<Set<string>> {
    const me = this.me;
    const myDevice = (this.account as AccountRow).device_id;
    const stale = isStale(roomState(this.#read<RoomState>(this.#roomRow('room', roomId))), version, Date.now());
    const refresh = members.filter((u) => stale || this.peer(u).devices.size === 0);
    if (!members.includes(me)) refresh.push(me);
    await this.#refreshPeers(refresh); // in bulk: 1,000 lists a request
    const targets = (tx: Tx, users: Iterable<string>): Set<string> => {
      const out = new Set<string>();
      for (const user of new Set(users)) {
        for (const d of this.#peer(tx, user).devices.keys()) if (!(user === me && d === myDevice)) out.add(memberKey(user, d));
      }
      return out;
    };
    const { now, lacking, dist } = await this.#transaction(async (tx) => {
      const state = roomState(tx.get<RoomState>(this.#roomRow('room', roomId)));
      const session = await this.#group(tx, roomId, []); // our chain: no member's row
      const now = targets(tx, [...members, me]);
      const plan = planDistribution(state, session.chainId, members, version, now);
      if (plan.rotate) await session.rotate();
      plan.state.chain_id = session.chainId;
      if (stale) plan.state.devices_read_at = Date.now() / 1000;
      await this.#putGroup(tx, session);
      tx.put(this.#roomRow('room', roomId), plan.state);
      this.#knowRoom(tx, roomId);
      const has = new Set(plan.state.has_key);
      return { now, lacking: new Set([...now].filter((k) => !has.has(k))), dist: b64encode(await session.distributionMessage()) };
    });
    if (lacking.size === 0) return now;
    const payload = skdPayload(roomId, dist);
    const users = distributionUsers(lacking, me);
    const claims = this.#claimMissing(users); // in bulk: 100 users a request
    // Who has the key now, recorded as the `accepted` come: those that come while a
    // write is waiting join it (one write for many, not one per member). Exactly the
    // devices each accepted key send was encrypted for, not the lists as they are now:
    // a device linked meanwhile (and learned of by another route) would be recorded as
    // keyed without the key, and could not read this device's messages until the next
    // rotation (rooms.py `_distribute`).
    const got: [string, number][] = [];
    let recording: Promise<void> | null = null;
    const record = (copies: [string, number][]): Promise<void> => {
      got.push(...copies);
      recording ??= this.#transaction(async (tx) => {
        recording = null; // later ones make the next write
        const keyed = got.splice(0).filter(([u, d]) => !(u === me && d === myDevice)).map(([u, d]) => memberKey(u, d));
        const state = roomState(tx.get<RoomState>(this.#roomRow('room', roomId)));
        state.has_key = [...new Set([...state.has_key, ...keyed])].sort();
        tx.put(this.#roomRow('room', roomId), state);
      });
      return recording;
    };
    const gate = new Gate(ENCRYPT_AT_ONCE);
    const results = await Promise.allSettled(
      users.map(async (user) => {
        await claims.ready(user); // its claim's answer, not all ten
        await record(await this.#sendControl(user, payload, claims.bundles, gate));
      }),
    );
    for (const r of results) {
      if (r.status !== 'rejected') continue; // the others' are recorded; the next send retries
      if (r.reason instanceof StillQueued) {
        // A key send not accepted in time: the room's message itself was never queued
        // by sendRoom, so its sender must not be told it goes later (sending again is
        // safe); a redo leaves the queued one queued (#redoRoom).
        throw new KeyNotHandedOut("The room's key could not be handed out to every member in time (the server did not accept it): nothing was sent; send it again.");
      }
      throw r.reason;
    }
    return now;
  }

  /** User ids of the room's members that `text` @mentions (not ours), at most
   * MAX_MENTIONS, by user id or by username matched here against the members' names
   * (rooms.py `_mentions`): no word of the text is asked of a server (looked up, "@home"
   * told the auth service a word of an encrypted message, one request per word). Names
   * not known here come from the member list, read once (the rooms service knows who is
   * in the room, not what is written). */
  async #mentions(roomId: string, text: string, members: string[]): Promise<string[]> {
    const ids = new Set(members);
    const found: string[] = [];
    let names: Map<string, string> | null = null; // lower-case username -> user id
    for (const raw of mentionNames(text)) {
      if (found.length >= MAX_MENTIONS) break;
      let userId: string | undefined = ids.has(raw.toLowerCase()) ? raw.toLowerCase() : undefined;
      if (userId === undefined) {
        names ??= await this.#memberNames(roomId, ids);
        userId = names.get(raw.toLowerCase());
      }
      if (userId !== undefined && userId !== this.me && !found.includes(userId)) found.push(userId);
    }
    return found;
  }

  /** The members' usernames known here (the account's, contacts', those member lists
   * gave: #names), by lower-case name; when some member's is not known, the member list
   * is read once (it names them, and #memberIds remembers them), for those still in it. */
  async #memberNames(roomId: string, members: Set<string>): Promise<Map<string, string>> {
    const contacts = new Map(this.contacts().filter((c) => !c.unnamed).map((c) => [c.user_id, c.username]));
    const nameOf = (user: string): string | undefined => (user === this.me ? this.account?.username : (contacts.get(user) ?? this.#names.get(user)));
    const byName = (among: Iterable<string>): Map<string, string> => {
      const out = new Map<string, string>();
      for (const user of among) {
        const name = nameOf(user);
        if (name !== undefined) out.set(name.toLowerCase(), user);
      }
      return out;
    };
    if ([...members].every((m) => nameOf(m) !== undefined)) return byName(members);
    try {
      const listed = new Set(await this.#memberIds(roomId));
      return byName([...members].filter((m) => listed.has(m)));
    } catch {
      return byName(members); // the list not read now: the names known here
    }
  }

  /** Encrypt `text` with this device's chain and queue the `room_send` in the outbox
   * (rooms.py `_encrypt`); `keyed`: the member devices #distribute has just given the
   * chain to (under the same room lock), named in `device_digest`; `again`: the same
   * message encrypted again after `devices_changed`, its id kept and its one history
   * entry left as it is. */
  async #encryptRoom(roomId: string, text: string, mentions: string[], keyed: Set<string>, again?: { clientId: string; redo: number }): Promise<W.RoomSend> {
    const clientId = again?.clientId ?? randomId();
    const conv = roomConversation(roomId);
    const me = this.me;
    const serverId = await roomServerId(roomId, me, clientId); // what unsend and tombstones name
    // The set #distribute worked from, not the peer rows as they are now: a device read
    // meanwhile (another send's refresh) may lack the key, and must make the gateway
    // refuse the message (then the redo gives it the key) rather than accept it unreadable.
    const digest = await deviceDigest([...keyed].map(memberDevice));
    return this.#transaction(async (tx) => {
      const session = await this.#group(tx, roomId, []); // our chain: no member's row
      const body = await session.encrypt(utf8(text));
      const frame: W.RoomSend = {
        op: 'room_send',
        id: clientId,
        room: roomId,
        body: b64encode(body),
        commitment: b64encode(commitmentFromMessage(body)),
        mentions: mentions as NonNullable<W.RoomSend['mentions']>,
        device_digest: digest,
      };
      const size = utf8(JSON.stringify(frame)).length;
      if (size > this.#maxFrameBytes) {
        throw new ParleyError(`Message too long: ${size} bytes encrypted, the server accepts ${this.#maxFrameBytes} per frame. Nothing was sent.`);
      }
      await this.#putGroup(tx, session);
      if (!this.#hasClientId(conv, clientId)) {
        this.#addHistory(tx, conv, { dir: 'out', kind: 'message', peer: conv, sender: me, text, at: Date.now(), client_id: clientId, server_id: serverId, status: 'queued' });
      }
      this.#seen.add(serverId);
      this.#enqueue(tx, clientId, { send: frame, peer: conv, text, redo: again?.redo ?? 0 });
      return frame;
    });
  }

  /** The room log's number up to which this device has every message of the room
   * (0: none yet, or a room this browser does not know). */
  roomCursor(roomId: string): number {
    const ref = this.#refs.get(roomConversation(roomId));
    return ref === undefined ? 0 : (this.#read<number>(`room_cursor:${ref}`) ?? 0);
  }

  /** A private room's pushed message (never acknowledged: its `seq` is the room log's):
   * the next one after the cursor is taken, a repeat dropped, one further ahead makes
   * the log be read from the cursor (rooms.py `on_room_message`). */
  async #onRoomPush(frame: W.RoomMessage): Promise<void> {
    if (!ROOM_ID.test(frame.room)) return;
    await this.openRoom(frame.room);
    await this.#logs.push(frame.room, frame);
  }

  /** A room's copy in this device's inbox (protocol 2; the server sends none now): an
   * inbox item like any other, acknowledged and dropped (rooms have logs). */
  async #onInboxRoomCopy(frame: W.Message): Promise<void> {
    await this.#transaction(async (tx) => this.#processed(tx, frame.seq));
    this.#ackSoon(frame.seq);
  }

  /** Take a room's messages after `start` up to `upto` (a push, or a page of its log)
   * and move its cursor to `upto`, in one transaction with the sender-key steps and the
   * history: each message above the cursor is decrypted with its sender device's chain,
   * or kept until that chain's key arrives (or, past `MAX_PENDING`, its number
   * remembered: `room_unkept`); this device's own are in the history since they were
   * sent, and one already held (same `server_id`) is not taken twice (rooms.py `_take`).
   * The cursor moves only if it is within `start` .. `upto` - 1: one put back meanwhile
   * (#rereadUnkept) stays there for the read that follows. */
  async #takeRoomMessages(roomId: string, frames: W.RoomMessage[], start: number, upto: number): Promise<void> {
    const me = this.me;
    const myDevice = (this.account as AccountRow).device_id;
    const conv = roomConversation(roomId);
    const events: ClientEvent[] = [];
    // The ids this take handled (above the cursor, and held now: decrypted, kept for its
    // key, or held already); not those at or below the cursor, which another take had
    // (one it could not keep among them: marked seen here, the read again after its key
    // would pass over it, lost for good), nor those it could not keep (MAX_PENDING),
    // which the log brings again once their key comes.
    const handled: string[] = [];
    await this.#transaction(async (tx) => {
      const row = this.#roomRow('room_cursor', roomId);
      const cursor = tx.get<number>(row) ?? 0;
      let session: GroupSession | null = null;
      const taken = aboveCursor(cursor, frames);
      // The page's senders' rows only, once for the page (not the room's every chain).
      const senders = taken.filter((f) => !(f.from === me && f.from_device === myDevice)).map((f) => memberKey(f.from, f.from_device));
      for (const frame of taken) {
        handled.push(frame.server_id);
        if (frame.from === me && frame.from_device === myDevice) {
          // This device's own, in the history since it was sent: placed now.
          this.#history.updateServer(tx, this.#historyName(conv), frame.server_id, (e) => (e.seq = frame.seq), (e) => e.seq === undefined);
          continue;
        }
        // Held already: seen, or in the history a transaction before this one (of the same
        // group) wrote, as a push and a page read again after the cursor went back.
        if (this.#seen.has(frame.server_id) || this.#hasServerId(conv, frame.server_id)) continue;
        const item: PendingRoomMessage = {
          server_id: frame.server_id,
          seq: frame.seq,
          from: frame.from,
          device: frame.from_device,
          body: frame.body,
          sent_at: frame.sent_at,
          conversation: conv,
          commitment: frame.commitment ?? null,
          franking_tag: frame.franking_tag ?? null,
        };
        session ??= await this.#group(tx, roomId, senders);
        const event = await this.#openRoomMessage(tx, session, roomId, item, true);
        if (event === UNKEPT) handled.pop(); // not held: not seen
        else if (event !== null) events.push(event);
      }
      if (session !== null) await this.#putGroup(tx, session);
      if (start <= cursor && cursor < upto) tx.put(row, upto);
    });
    for (const id of handled) this.#seen.add(id);
    for (const e of events) this.#emit(e);
    if (events.length === 0 && frames.length > 0) this.#emit({ type: 'changed' });
  }

  async #roomLogPage(roomId: string, after: number): Promise<RoomLogPage> {
    await this.accessToken();
    const since = this.account?.linked_at ?? 0;
    return this.api.roomLog(roomId, after, since, LOG_PAGE);
  }

  /** A page of each of these rooms' logs in one call (`POST /delivery/v1/rooms/logs`),
   * with the same `since` as a room's own read. */
  async #roomLogPages(asks: LogAsk[]): Promise<RoomLogsAnswer> {
    await this.accessToken();
    const since = this.account?.linked_at ?? 0;
    return this.api.roomLogs(asks, since, LOG_PAGE);
  }

  #roomLogFailed(roomId: string, error: unknown): void {
    // Not (or no longer) in the room: nothing to read. Anything else: the next push
    // that leaves a gap, or the next connect, reads again.
    if (error instanceof ApiError && ['room_not_found', 'not_a_member', 'forbidden'].includes(error.code)) return;
    if (error instanceof ApiError && error.code === 'network') return;
    this.#emit({ type: 'error', code: 'room_log', message: `Could not read a private room's messages: ${String((error as Error).message ?? error)}` });
  }

  #roomLogsFailed(rooms: string[], error: unknown): void {
    // Those rooms were not read: the next connect (or resync) reads them again.
    if (error instanceof ApiError && error.code === 'network') return;
    this.#emit({
      type: 'error',
      code: 'room_log',
      message: `Could not read the messages of ${rooms.length} private room${rooms.length === 1 ? '' : 's'}: ${String((error as Error).message ?? error)}`,
    });
  }

  /** Read a private room's log from this device's cursor to its end (one read per room
   * at a time); how many messages its pages held. */
  async readRoomLog(roomId: string): Promise<number> {
    await this.openRoom(roomId);
    return this.#logs.read(roomId);
  }

  /** Read the log of every private room I am a member of from its cursor (after the
   * inbox sync when the socket is ready, and on `resync`; rooms.py `sync_rooms`): 100
   * rooms a call (`POST /delivery/v1/rooms/logs`), a room with more than a page read on
   * alone, a room being read already left out (rooms.ts `RoomLogs.sync`). */
  async syncRooms(): Promise<number> {
    await this.accessToken();
    const ids: string[] = [];
    let before: unknown = null;
    do {
      const page = await this.api.rooms(before);
      for (const r of page.rooms) if (r.kind === 'private' && ROOM_ID.test(r.room_id)) ids.push(r.room_id);
      before = page.next_before;
    } while (before !== null && before !== undefined);
    for (const id of ids) await this.openRoom(id); // its vault rows (and cursor) known
    return this.#logs.sync(ids);
  }

  /** Decrypt one room message into the history; its event. Without the sender's key
   * it is kept pending (`keep`) and null is returned; with `MAX_PENDING` kept already,
   * its number is remembered instead (`room_unkept`, by sender device: the log is read
   * again from there when that device's sender key comes) and UNKEPT is returned
   * (rooms.py `_open`). */
  async #openRoomMessage(tx: Tx, session: GroupSession, roomId: string, item: PendingRoomMessage, keep: boolean): Promise<ClientEvent | typeof UNKEPT | null> {
    const own = item.from === this.me;
    const conv = roomConversation(roomId);
    const entry: HistoryEntry = {
      dir: own ? 'out' : 'in',
      kind: 'message',
      peer: conv,
      sender: item.from,
      text: '',
      at: item.sent_at ?? Date.now(),
      server_id: item.server_id,
      seq: item.seq,
    };
    try {
      const message = await session.decryptMessage(memberKey(item.from, item.device), b64decode(item.body));
      entry.text = displayText(message.plaintext); // as Python's errors="replace"
      if (own) entry.status = 'sent';
      else {
        // What reporting it needs, as rooms.py `_open` keeps it (null: the server gave no tag).
        const report = reportFields(roomMessageMeta(item), message.frankingKey, message.plaintext, entry.text);
        if (report) entry.report = report;
      }
      // Unsent (or removed by an admin) while it waited for its sender key: a marker.
      return this.#addRoomEntry(tx, conv, entry, item.server_id, { type: 'room_message', room: roomId, sender: item.from, text: entry.text });
    } catch (error) {
      if (error instanceof UnknownSenderKey) {
        if (keep) {
          // The oldest MAX_PENDING are kept (a newer one must not push an older one out:
          // the cursor is past both); past them the lowest number is remembered. Kept in
          // its own row, with the room's index (pending.ts): no other message's is written.
          const base = this.#roomRow('room_pending', roomId);
          const index = pendingIndex(tx.get<unknown>(base));
          if (pendingHolds(index, item.server_id)) return null; // kept already (the log read again)
          if (pendingCount(index) < PENDING.max) {
            tx.put(pendingRow(base, addPending(index, item)), item);
            tx.put(base, index);
            return null;
          }
          // Per sender device: only its key reads the log again from there (#rereadUnkept).
          const marker = this.#roomRow('room_unkept', roomId);
          const lowest = unkeptRow(tx.get<unknown>(marker));
          const chain = memberKey(item.from, item.device);
          const known = lowest[chain];
          if (known === undefined || item.seq < known) {
            const row: Unkept = { ...lowest, [chain]: item.seq };
            tx.put(marker, row);
          }
          return UNKEPT;
        }
        return null;
      }
      if (error instanceof RetiredSenderKey) {
        // Its chain was dropped here (CHAINS_KEPT_PER_SENDER newer ones came, or the sender
        // was removed): it never opens, so it is shown as such, not kept waiting for a key
        // that cannot be taken again (rooms.py `_open`). One an earlier version kept waiting
        // under a chain it had dropped is shown so at that sender's next key (#onControl).
        entry.kind = 'error';
        entry.text = '[could not decrypt: its sender key was dropped]';
      } else if (error instanceof ReplayedMessage) {
        // Not one read before (#takeRoomMessages passes over what is at or below the
        // cursor and what #seen holds; #onControl opens each pending one once): the key
        // held starts at a later point of the chain, so it was sent before this device
        // was given the sender's key (a device linked meanwhile, or a later key that came
        // before the log's older message). Said in the history: read from the log, it
        // went by with no trace (rooms.py `_open`).
        entry.kind = 'error';
        entry.text = "[sent before this device had the sender's key]";
      } else if (error instanceof CryptoError || error instanceof RangeError) {
        entry.kind = 'error';
        entry.text = `[could not decrypt: ${error.name}]`;
      } else {
        throw error;
      }
      // Removed anyway: a marker, nothing to say it could not be read.
      return this.#addRoomEntry(tx, conv, entry, item.server_id, { type: 'error', code: 'decrypt_failed', message: `A room message from ${this.username(item.from)} could not be decrypted.` });
    }
  }

  /** A control payload from a pairwise session (inside its transaction): a room's
   * sender key is stored, and the pending messages it opens are decrypted
   * (rooms.py `on_control`). Only for a room this browser knows, or one `members` says
   * we are a member of (a room not asked about yet: RoomToCheck); a key for any other
   * room is dropped, nothing stored. If messages of the key's sender device were not
   * kept (`MAX_PENDING`), the room's cursor goes back before the first of them
   * (#rereadUnkept) and `reread` names the room: its log is to be read once the
   * transaction is written (what this key opens is decrypted, what still waits for a key
   * is kept or remembered). */
  async #onControl(tx: Tx, sender: string, device: number, control: Record<string, unknown>, members: Map<string, boolean>): Promise<{ events: ClientEvent[]; reread: string | null }> {
    const none = { events: [], reread: null };
    const roomId = control['room'];
    if (control['t'] !== 'skd' || typeof roomId !== 'string' || !ROOM_ID.test(roomId)) return none;
    // No longer than a real distribution message for the room (pending.ts): anything
    // else is dropped before the rooms service is asked, or anything is read for it.
    const d = control['d'];
    if (typeof d !== 'string' || d.length > distributionChars(roomId)) return none;
    if (!(tx.get<string[]>('rooms_known') ?? []).includes(roomId)) {
      // A room this browser does not know (joined on another device, or since the last
      // read of the rooms): its key is taken only if the rooms service says we are a
      // member. Anyone may send a key naming any room id; each taken would add a room to
      // `rooms_known` and its rows, read at every log-in, for good.
      const member = members.get(roomId);
      if (member === undefined) throw new RoomToCheck(roomId); // asked outside the transaction (#readMessage)
      if (!member) return none;
    }
    await this.#ref(roomConversation(roomId));
    this.#knowRoom(tx, roomId);
    const session = await this.#group(tx, roomId, [memberKey(sender, device)]); // its row only
    try {
      await session.processDistribution(memberKey(sender, device), b64decode(d));
    } catch (error) {
      if (error instanceof CryptoError || error instanceof RangeError || error instanceof TypeError) return none;
      throw error;
    }
    const events: ClientEvent[] = [];
    // This device's messages kept, oldest first: the index names them, and only their rows
    // are read (pending.ts).
    const base = this.#roomRow('room_pending', roomId);
    const index = pendingIndex(tx.get<unknown>(base));
    const chain = memberKey(sender, device);
    const mine = index.chains[chain] ?? [];
    const still: PendingEntry[] = [];
    for (const entry of mine) {
      const name = pendingRow(base, entry[0]);
      const item = tx.get<PendingRoomMessage>(name);
      if (item === undefined) continue; // no row: nothing to open
      const event = await this.#openRoomMessage(tx, session, roomId, item, false);
      if (event !== null && event !== UNKEPT) events.push(event);
      else if (!this.#hasServerId(roomConversation(roomId), item.server_id)) {
        still.push(entry); // another chain's of that device
        continue;
      }
      tx.put(name, undefined);
    }
    if (still.length !== mine.length) tx.put(base, setChain(index, chain, still));
    await this.#putGroup(tx, session);
    return { events, reread: this.#rereadUnkept(tx, roomId, memberKey(sender, device)) ? roomId : null };
  }

  /** Put the room's cursor back before the first message not kept of `member` (the
   * device whose sender key came), if any (in `tx`, that device's number dropped from the
   * marker, the others' left); whether the room's log is to be read again then (rooms.py
   * `_reread_unkept`). A key of a device with nothing left out reads nothing: one chain
   * whose key never comes does not make every other key (or the same one sent again)
   * read the log from its first message, for as long as the log keeps it. The read again
   * meets the other devices' messages still without a key and marks them again (at the
   * same number, or a lower one). It starts once `tx` is written (#readMessage): it
   * reads from the cursor put back, and a read under way reads once more after it ends
   * (its takes leave the cursor where it was put: #takeRoomMessages' `start`). */
  #rereadUnkept(tx: Tx, roomId: string, member: string): boolean {
    const marker = this.#roomRow('room_unkept', roomId);
    const { from, rest } = takeUnkept(unkeptRow(tx.get<unknown>(marker)), member);
    if (from === null) return false;
    tx.put(marker, Object.keys(rest).length === 0 ? undefined : rest);
    const row = this.#roomRow('room_cursor', roomId);
    if ((tx.get<number>(row) ?? 0) > from) tx.put(row, from);
    return true;
  }

  /** A frame that is no message (`typing`): now, if connected, unpaced. */
  #sendFrame(frame: W.ClientFrame): void {
    if (this.#ws !== null && this.#ws.readyState === WebSocket.OPEN && this.connectionState === 'connected') {
      this.#ws.send(JSON.stringify(frame));
    }
  }

  /** A message just queued in the outbox: sent, paced, if this socket's outbox went out
   * already; otherwise (not connected, or the first sync or the outbox's resend still
   * under way) #flush sends it, after those queued before it. */
  #sendNew(frame: W.Send | W.RoomSend): void {
    const ws = this.#flushed;
    if (ws !== null && ws === this.#ws) void this.#sendOn(ws, frame);
  }

  /** A queued message encrypted again (`devices_changed`): sent, paced, once this
   * socket's first sync is done (before, the flush after it sends the outbox). */
  #sendAgain(frame: W.Send | W.RoomSend): void {
    const ws = this.#ws;
    if (ws !== null && this.#synced) void this.#sendOn(ws, frame);
  }

  /** Wait for a token of the server's send bucket (pacing.ts), then send on `ws` if it
   * is still the socket: one that dropped meanwhile sends nothing (the next one's flush
   * sends the outbox). */
  async #sendOn(ws: WebSocket, frame: W.Send | W.RoomSend): Promise<void> {
    await this.#pacer.take();
    if (this.#ws !== ws || ws.readyState !== WebSocket.OPEN || this.#dropped.has(ws)) return;
    ws.send(JSON.stringify(frame));
    this.#waiting.get(frame.id)?.written?.(); // a key send's wait counts from here
  }

  /** After this socket's first sync: the outbox, in its order, paced, each message's
   * frame as it is when its turn comes (one accepted or redone meanwhile is skipped or
   * sent as it is now). The messages queued meanwhile are in the outbox too: they are
   * sent after, until none is left; then new sends go out themselves (#sendNew). Only
   * what the vault holds (`outbox`, #sendable): a message whose write has not committed
   * yet is sent by its sender once it has (#sendNew: by then this flush has sent it, or
   * has ended and set #flushed), never before. */
  async #flush(ws: WebSocket): Promise<void> {
    const sent = new Set<string>();
    for (;;) {
      const todo = this.outbox().filter((q) => !sent.has(q.send.id));
      if (!todo.length) break;
      for (const q of todo) {
        if (this.#ws !== ws) return; // dropped: the next socket's flush sends the rest
        sent.add(q.send.id);
        const now = this.#sendable(q.send.id);
        if (now !== undefined) await this.#sendOn(ws, now.send);
      }
    }
    if (this.#ws === ws) this.#flushed = ws;
  }

  /** The server refused a queued message for now (SEND_AGAIN: nothing was stored): it
   * goes again on the same socket, at once but paced for `rate_limited` (the bucket
   * emptied), else after a wait that doubles with each refusal of it. */
  #hold(ws: WebSocket, clientId: string, code: string): void {
    if (code === 'rate_limited') this.#pacer.drain();
    if (ws !== this.#ws) return; // an old socket's answer: the current one's flush sends it
    if (this.#heldOn !== ws) this.#clearHeld();
    this.#heldOn = ws;
    const tries = (this.#refusals.get(clientId) ?? 0) + 1;
    this.#refusals.set(clientId, tries);
    const at = Date.now() + sendAgainIn(code, tries);
    this.#held.set(clientId, at);
    this.#armHeld();
  }

  /** One timer for every held message, set for the first one due (sooner if one due
   * earlier is held meanwhile); not while a round is sending (it sets the next). */
  #armHeld(): void {
    if (this.#heldRound || this.#held.size === 0) return;
    const next = Math.min(...this.#held.values());
    if (this.#heldTimer !== null) {
      if (this.#heldAt <= next) return;
      clearTimeout(this.#heldTimer);
    }
    this.#heldAt = next;
    this.#heldTimer = setTimeout(() => void this.#sendHeld(), Math.max(0, next - Date.now()));
  }

  /** A round: the held messages now due are sent again, paced, on the socket that
   * refused them, with the outbox read once (not once per refusal); those no longer in
   * it (accepted, failed) are forgotten. */
  async #sendHeld(): Promise<void> {
    this.#heldTimer = null;
    const ws = this.#heldOn;
    if (ws === null || ws !== this.#ws) {
      this.#clearHeld(); // the next socket's flush sends the whole outbox
      return;
    }
    const now = Date.now();
    const due = new Set<string>();
    for (const [id, at] of this.#held) {
      if (at > now) continue;
      due.add(id);
      this.#held.delete(id);
    }
    const outbox = this.outbox();
    const queued = new Set(outbox.map((q) => q.send.id));
    for (const id of [...this.#refusals.keys()]) if (!queued.has(id)) this.#refusals.delete(id);
    this.#heldRound = true;
    try {
      for (const q of outbox) {
        if (!due.has(q.send.id) || this.#ws !== ws) continue;
        const now = this.#sendable(q.send.id); // as it is when its turn comes (the pacer waits)
        if (now !== undefined) await this.#sendOn(ws, now.send);
      }
    } finally {
      this.#heldRound = false;
    }
    this.#armHeld(); // those held meanwhile (on this socket or, if it went, its successor)
  }

  /** No held message goes again from here (the socket went: its successor's flush
   * sends the outbox; the counts of refusals are kept, so the waits keep growing). */
  #clearHeld(): void {
    if (this.#heldTimer !== null) clearTimeout(this.#heldTimer);
    this.#heldTimer = null;
    this.#held.clear();
    this.#heldOn = null;
  }

  // -- the socket -----------------------------------------------------------------------
  /** Open the WebSocket; on `ready` it syncs the inbox and resends the outbox; it
   * reconnects by itself (backoff with jitter) until {@link close}. */
  connect(): void {
    if (this.#running || this.#ended) return;
    this.#running = true;
    void this.#open();
  }

  close(): void {
    this.#running = false;
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    if (this.#reauthTimer) clearInterval(this.#reauthTimer);
    if (this.#ackTimer) clearTimeout(this.#ackTimer);
    this.#ackTimer = null;
    this.#clearHeld();
    this.#clearAsideTimer();
    if (this.#tombstoneTimer !== null) clearTimeout(this.#tombstoneTimer);
    this.#tombstoneTimer = null;
    this.#unwritten(true);
    const ws = this.#ws;
    if (ws !== null) {
      // Its frames still waiting in the chain are not handled (the next connection's
      // sync reads them again): after a log-out they would write to the vault.
      this.#dropped.add(ws);
      ws.close(1000);
    }
    this.#ws = null;
    this.#flushed = null;
    // A sync waiting for its page ends now (its socket's close event is not ours any
    // more): left waiting, its count of running syncs stayed up, and after a connect()
    // again no push moved last_seq or was acknowledged.
    for (const resolve of this.#pending.values()) resolve({ op: 'error', code: 'closed', message: 'socket closed' } as W.Error);
    this.#pending.clear();
    this.#state('stopped');
  }

  #state(state: ParleyClient['connectionState'], detail?: string): void {
    this.connectionState = state;
    this.#emit({ type: 'connection', state, detail });
  }

  async #open(force = false): Promise<void> {
    if (!this.#running) return;
    this.#state('connecting');
    let token: string;
    try {
      token = await this.accessToken(force);
    } catch (error) {
      if (!this.#running) return;
      const detail = String((error as Error).message ?? error);
      if (!refused(error) && !(error instanceof ParleyError)) {
        // No answer, a 429 or a 5xx (the auth service down longer than the token
        // lives), or something of this side's: tried again after the backoff, as a
        // socket that did not open, still owing the refresh it was asked for.
        this.#state('disconnected', detail);
        return this.#retry(force);
      }
      // Refused (the session ended, the account blocked, logged out): for good.
      this.#running = false;
      this.#unwritten(true);
      this.#state('stopped', detail);
      return;
    }
    const ws = new WebSocket(socketUrl());
    this.#ws = ws;
    this.#flushed = null;
    this.#synced = false;
    this.#acked = 0;
    ws.onopen = () => ws.send(JSON.stringify({ op: 'auth', token } satisfies W.Auth));
    ws.onmessage = (ev: MessageEvent<string>) => {
      let frame: W.ServerFrame;
      try {
        frame = JSON.parse(ev.data) as W.ServerFrame;
      } catch {
        return;
      }
      const failed = (error: unknown) => {
        this.#emit({ type: 'error', code: 'client', message: String((error as Error).message ?? error) });
      };
      // A frame this side could not process gives the socket up: nothing after it is
      // handled, and no ack passes it (#drop).
      const dropped = (error: unknown) => this.#drop(ws, 'client', String((error as Error).message ?? error));
      if (frame.op === 'accepted' || frame.op === 'stored' || frame.op === 'delivered') {
        // Receipts that arrive while the chain is busy are handled together, in one
        // vault write (a room's key distribution: a thousand `accepted` in a second).
        this.#receipts.push(frame);
        if (this.#receipts.length === 1) this.#chain = this.#chain.then(() => this.#onReceipts(this.#receipts.splice(0))).catch(failed);
        return;
      }
      this.#chain = this.#chain.then(() => (this.#dropped.has(ws) ? undefined : this.#onFrame(ws, frame))).catch(dropped);
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      this.#flushed = null;
      this.#clearHeld(); // held messages go with the next socket's flush, not on it by a timer
      this.#unwritten(!this.#running || ev.code === 4003); // written again by the next socket's flush
      // A socket that synced was a good connection: the next one is tried after the
      // shortest wait. Not after 4009 (flooding) or 4010 (too many sockets): at once
      // would meet the same answer, so the backoff keeps growing.
      const synced = this.#synced;
      if (synced && !THROTTLED_CLOSES.has(ev.code)) this.#backoff = 500;
      // Not synced any more: a frame of this socket still on the chain (a push read
      // while a resync's page was awaited, that page now failed) must not move last_seq
      // past pages nobody read (the next socket would sync after it, and ack them away).
      this.#synced = false;
      if (this.#reauthTimer) clearInterval(this.#reauthTimer);
      for (const resolve of this.#pending.values()) resolve({ op: 'error', code: 'closed', message: 'socket closed' } as W.Error);
      this.#pending.clear();
      if (!this.#running) return;
      if (ev.code === 4003) {
        this.#running = false;
        this.#state('stopped', 'This session was ended (logged out elsewhere, or the account is blocked).');
        return;
      }
      this.#state('disconnected');
      if (ev.code === 4005 || ev.code === 4001) {
        // With a fresh token: at once after a socket that synced (its token ran out),
        // after the backoff otherwise (a gateway refusing every token, say its clock
        // behind the auth service's, made a refresh a close at once, for ever).
        if (synced) void this.#open(true);
        else this.#retry(true);
        return;
      }
      this.#retry();
    };
  }

  /** Open again after the backoff (with jitter); `force`: with a fresh token. */
  #retry(force = false): void {
    if (!this.#running) return;
    const delay = Math.random() * this.#backoff;
    this.#backoff = Math.min(this.#backoff * 2, 30_000);
    this.#reconnectTimer = setTimeout(() => void this.#open(force), delay);
  }

  async #onFrame(ws: WebSocket, frame: W.ServerFrame): Promise<void> {
    switch (frame.op) {
      case 'ready':
        if (this.connectionState !== 'connected') {
          if (frame.limits) {
            this.#maxFrameBytes = frame.limits.max_frame_bytes;
            this.#pacer.configure(frame.limits.sends_per_s, frame.limits.send_burst);
          } else {
            this.#pacer.configure(); // a new socket all the same: no debt from the last one
          }
          void this.#afterReady(ws);
        }
        return;
      case 'message':
        return frame.room ? this.#onInboxRoomCopy(frame) : this.#onMessage(frame);
      case 'room_message':
        return this.#onRoomPush(frame);
      case 'room_post':
        if (frame.sender === this.me) {
          this.#posted([frame.client_id]);
        }
        this.#emit({ type: 'room_post', post: frame });
        return;
      case 'room_message_changed':
        this.#emit({ type: 'room_message_changed', change: frame });
        return;
      case 'room_changed':
        this.#emit({ type: 'room_changed', room: frame.room_id });
        return;
      case 'notification':
        this.#emit({ type: 'notification', notice: frame });
        return;
      case 'typing':
        if (frame.user === this.me) return; // our own devices' (the server sends them too)
        this.#typists.on(frame.room_id, frame.user, frame.device, frame.typing, Date.now());
        this.#emit({ type: 'typing', room: frame.room_id });
        return;
      case 'key_changed':
        return this.#onKeyChanged(frame);
      case 'tombstone':
        return this.#onTombstone(frame);
      case 'accepted':
      case 'stored':
      case 'delivered':
        return this.#onReceipts([frame]);
      case 'synced': {
        const resolve = this.#pending.get(frame.id ?? '');
        this.#pending.delete(frame.id ?? '');
        resolve?.(frame);
        return;
      }
      case 'error': {
        const resolve = frame.id ? this.#pending.get(frame.id) : undefined;
        if (resolve && frame.id) {
          this.#pending.delete(frame.id);
          return resolve(frame);
        }
        return this.#onError(ws, frame);
      }
      case 'prekeys_low':
        void this.topUp().catch((e: unknown) => this.#emit({ type: 'error', code: 'prekeys', message: `Could not upload new prekeys: ${String(e)}` }));
        return;
      case 'resync':
        // The server lost frames it meant to push: the inbox, then every room's log;
        // an open public room's view reads its timeline again (room_post is live only).
        void this.#resync(ws);
        this.#emit({ type: 'resync' });
        return;
      case 'reconnect':
        ws.close(1000);
        return;
      default:
        return;
    }
  }

  async #afterReady(ws: WebSocket): Promise<void> {
    try {
      this.connectionState = 'connected';
      await this.sync();
      this.#synced = true;
      this.#ackProcessed(); // pushed during the sync
      // (the backoff starts again from the shortest when this socket closes: onclose)
      // The outbox, paced, while the rooms' logs are read.
      void this.#flush(ws).catch((error: unknown) => this.#emit({ type: 'error', code: 'client', message: String((error as Error).message ?? error) }));
      if (this.#reauthTimer) clearInterval(this.#reauthTimer);
      // The token the socket holds, again while it stays valid past the next renewal;
      // refreshed only then (as the Python SDK's _reauth_loop): each refresh rotates the
      // refresh token, and one whose answer is lost ends the session.
      this.#reauthTimer = setInterval(() => {
        void this.accessToken(false, REAUTH_EVERY.ms).then(
          (token) => {
            if (this.#ws === ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ op: 'auth', token } satisfies W.Auth));
          },
          // The auth service away (no answer, 429, 5xx): again at the next round, or the
          // socket's 4005 refreshes at reconnect. Refused: the gateway closes the socket
          // (4003), and the reconnect's refresh says so.
          () => undefined,
        );
      }, REAUTH_EVERY.ms);
      this.#state('connected');
    } catch (error) {
      this.#drop(ws, 'sync', String((error as Error).message));
      return;
    }
    await this.#syncRoomsAfter(ws);
  }

  /** Then what the private rooms' logs hold after each cursor (the sender keys came
   * through the inbox first); pushes are taken meanwhile. */
  async #syncRoomsAfter(ws: WebSocket): Promise<void> {
    try {
      await this.syncRooms();
    } catch (error) {
      if (this.#ws === ws && !(error instanceof ApiError && error.code === 'network')) {
        this.#emit({ type: 'error', code: 'room_log', message: `Could not read your rooms: ${String((error as Error).message)}` });
      }
    }
  }

  /** `resync`: the inbox from the last processed item, then the rooms' logs. A sync
   * that fails gives the socket up, as the first one's failure does: the next push's
   * cumulative ack would pass the items it did not read. */
  async #resync(ws: WebSocket): Promise<void> {
    try {
      await this.sync();
    } catch (error) {
      if (this.#ws === ws) this.#drop(ws, 'sync', String((error as Error).message));
      return;
    }
    await this.#syncRoomsAfter(ws);
  }

  /** Give the socket up after this side failed to process what it brought (a frame's
   * handler threw, or a sync failed): no frame of it is handled any more and no ack is
   * sent on it; it is closed (4000) and the client reconnects after the backoff, and
   * the next sync reads again from the last item processed. An item that fails every
   * time is read again at every connect (never acknowledged unprocessed). */
  #drop(ws: WebSocket, code: string, message: string): void {
    if (this.#dropped.has(ws)) return;
    this.#dropped.add(ws);
    this.#emit({ type: 'error', code, message });
    ws.close(4000);
  }

  /** Whether a pushed item may move `last_seq` and be acknowledged: once this socket's
   * first sync is done, and while no sync runs (see {@link sync}). */
  #mayAdvance(): boolean {
    return this.#synced && this.#syncing === 0;
  }

  /** An inbox item was processed (in `tx`): `last_seq` moves to it, unless a sync runs
   * (then the sync's page ends move it). */
  #processed(tx: Tx, seq: number): void {
    if (this.#mayAdvance() && seq > (tx.get<number>('last_seq') ?? 0)) tx.put('last_seq', seq);
  }

  /** Page through the inbox after the last processed item, acknowledging each page.
   *
   * The cursor is the pages' own (`synced.last`), never the highest `seq` processed: an
   * item pushed while a page is read has a later `seq` than the items still to page,
   * and moving the cursor (or `last_seq`, or a cumulative ack) past them would skip
   * them for good (the ack deletes them on the server). So while a sync runs, and on a
   * new socket until its first sync is done, pushed items move neither `last_seq` nor
   * acks; each page's end moves both, to what the pages read in order. A sync that
   * fails leaves them where its last page ended: its caller gives the socket up. */
  async sync(): Promise<void> {
    const ws = this.#ws;
    if (ws === null) throw new ParleyError('not connected');
    this.#syncing++;
    try {
      let after = this.#read<number>('last_seq') ?? 0;
      for (;;) {
        if (this.#ws !== ws || this.#dropped.has(ws)) throw new ParleyError('not connected');
        const id = randomId();
        const answer = await new Promise<W.Synced | W.Error>((resolve) => {
          this.#pending.set(id, resolve);
          ws.send(JSON.stringify({ op: 'sync', after, limit: 200, id } satisfies W.Sync));
        });
        if (answer.op === 'error') throw new ParleyError(`Sync failed: ${answer.message}`);
        if (answer.last > after) {
          const last = answer.last;
          await this.#transaction(async (tx) => {
            if (last > (tx.get<number>('last_seq') ?? 0)) tx.put('last_seq', last);
          });
          if (ws.readyState === WebSocket.OPEN && !this.#dropped.has(ws)) {
            ws.send(JSON.stringify({ op: 'ack', seq: last } satisfies W.Ack));
            this.#acked = Math.max(this.#acked, last);
          }
          after = last;
        }
        if (!answer.more) break;
      }
    } finally {
      this.#syncing--;
    }
    this.#ackProcessed();
    this.#asideSoon(true); // what is kept aside: the directory may answer again by now
    this.#tombstonesSoon(true); // tombstones kept for a key not published then: it may be now
  }

  /** Acknowledge the items pushed (and processed) while acks waited for a sync. */
  #ackProcessed(): void {
    if (this.#ackPending > this.#acked) this.#ackSoon(this.#ackPending);
  }

  #ackSoon(seq: number): void {
    this.#ackPending = Math.max(this.#ackPending, seq);
    if (!this.#mayAdvance() || this.#ackTimer !== null) return;
    this.#ackTimer = setTimeout(() => {
      this.#ackTimer = null;
      const ws = this.#ws;
      // A sync that started meanwhile acknowledges page by page (and this, after it).
      if (ws?.readyState === WebSocket.OPEN && !this.#dropped.has(ws) && this.#mayAdvance()) {
        ws.send(JSON.stringify({ op: 'ack', seq: this.#ackPending } satisfies W.Ack));
        this.#acked = Math.max(this.#acked, this.#ackPending);
      }
    }, ACK_DELAY_MS);
  }

  /** A 1:1 message (or a copy of one this account sent from another device). One from a
   * sending device not seen yet needs its device list first; if the key directory cannot
   * give it now (no answer, 429, 5xx), the message is **kept aside** (#keepAside) and
   * acknowledged, and the inbox reads on. So are the later ones of that device while
   * some of its are kept: they are read in order, once its list is read (#readKept: at
   * the device's next message, after every sync, and on a timer while some are kept).
   * Read as from an unknown device, the message would be a "could not decrypt" line,
   * acknowledged: lost for good to a short outage of the key directory. */
  async #onMessage(frame: W.Message): Promise<void> {
    const sender = frame.from;
    const device = frame.from_device;
    const peer = await this.#conversationOf(frame);
    if (this.peer(sender).devices.has(device) && !this.#aside.holds(sender, device)) return this.#readMessage(frame, peer);
    if (this.#aside.has(frame.server_id)) return this.#keepAside(frame); // a copy sent again: acknowledged, nothing asked
    await this.#asideLock.run(async () => {
      if (!(await this.#deviceKnown(sender, device))) return this.#keepAside(frame);
      await this.#readKept(sender, device); // the device's kept messages first, in order
      await this.#readMessage(frame, peer);
    });
  }

  /** The conversation a 1:1 message goes to (null: none), its contact made: a copy of
   * what we sent from another device goes to the conversation it names, a contact's or
   * ours (`dm:<me>:<me>`, a note to self), which is no contact. */
  async #conversationOf(frame: W.Message): Promise<string | null> {
    const me = this.me;
    const peer = frame.from === me ? otherParty(frame.conversation, me) : frame.from;
    if (peer === me) await this.#ref(me);
    else if (peer) await this.#ensureContact(peer);
    return peer;
  }

  /** Whether a sending device's messages can be read now: it is in its user's verified
   * list, or the key directory answered for good (refused, or a list that does not
   * verify: decrypting then fails with UnknownDevice, and says so). False when the list
   * cannot be read now (no answer, 429, 5xx). */
  async #deviceKnown(sender: string, device: number): Promise<boolean> {
    if (this.peer(sender).devices.has(device)) return true;
    // It could not answer a moment ago: a backlog synced during an outage asks once a second, not once a message.
    if (this.#unansweredUntil > Date.now()) return false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const slow = new Promise<'slow'>((resolve) => (timer = setTimeout(() => resolve('slow'), ASIDE_ASK.timeoutMs)));
    try {
      // Not for long: the frame chain (a sync page's reply with it) waits for this read.
      const answer = await Promise.race([this.#refreshPeer(sender).then(() => 'read' as const), slow]);
      if (answer === 'slow') throw new ParleyError('the key directory did not answer in time');
    } catch (error) {
      // Refused for good (4xx), or a list that does not verify: decrypting then fails and
      // says so. Anything else (no answer, 429, 5xx, too slow, the vault) is "not now".
      const final = (error instanceof ApiError && !error.transient) || error instanceof CryptoError || error instanceof RangeError || error instanceof SyntaxError;
      if (!final) {
        this.#unansweredUntil = Date.now() + ASIDE_ASK.everyMs;
        return false;
      }
    } finally {
      clearTimeout(timer);
    }
    return true;
  }

  /** Whether this account is a member of a private room (`GET /rooms/v1/rooms/{id}`
   * answers a role): asked for a sender key naming a room this browser does not know.
   * No only for a 404 `room_not_found` (no such room, or not ours) or an answer without
   * a role (invited, or a public room); anything else (no answer, 429, 5xx, and also a
   * refusal that says nothing of the room: 401 for a revoked or invalid token, 403...)
   * fails the frame's handler (the socket is given up, the next sync reads it again), as
   * a tombstone whose keys cannot be read now does: a real sender key is never dropped
   * for a failure of ours. */
  async #memberOf(roomId: string): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const slow = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new ApiError('network', 'the rooms service did not answer in time', 0)), ASIDE_ASK.timeoutMs)));
    try {
      // Not for long: the frame chain (a sync page's reply with it) waits for this.
      const room = await Promise.race([this.room(roomId), slow]);
      return room.role !== null && room.role !== undefined;
    } catch (error) {
      if (error instanceof ApiError && error.status === 404 && error.code === 'room_not_found') return false;
      throw new ParleyError(`A room's sender key could not be checked now (${String((error as Error).message ?? error)}); it will be read again.`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Keep a message aside (aside.ts), in the transaction that moves `last_seq`, and
   * acknowledge it: once (one already kept, or already in the history, is not kept
   * again). Past ASIDE_MAX kept, refused: the handler fails, the socket is given up
   * (#drop) and the next sync brings it again. */
  async #keepAside(frame: W.Message): Promise<void> {
    const fresh = !this.#seen.has(frame.server_id) && !this.#aside.has(frame.server_id);
    if (fresh && this.#aside.size >= ASIDE_MAX) {
      throw new ParleyError(`${ASIDE_MAX} messages from new devices wait for their device lists already; this one will be read again.`);
    }
    const name = fresh ? this.#aside.nextName() : null;
    await this.#transaction(async (tx) => {
      if (name !== null) tx.put(name, frame);
      this.#processed(tx, frame.seq);
    });
    if (name !== null) this.#aside.add(name, frame);
    this.#emit({ type: 'changed' });
    this.#ackSoon(frame.seq);
    this.#asideSoon();
  }

  /** Read a sending device's kept messages, oldest first, as pushed ones are read
   * (#readMessage), each leaving the aside rows in the transaction that records it; no
   * cursor moves and nothing is acknowledged (they were when kept). One that fails for
   * what it holds (it would every time) is dropped, and said; a failure of this side
   * (the vault, signed out) is thrown, and it stays for later. */
  async #readKept(sender: string, device: number): Promise<void> {
    for (const [name, frame] of this.#aside.of(sender, device)) {
      try {
        await this.#readMessage(frame, await this.#conversationOf(frame), name);
      } catch (error) {
        if (error instanceof ParleyError || error instanceof ApiError || error instanceof DOMException) throw error;
        await this.#transaction(async (tx) => tx.put(name, undefined));
        this.#aside.remove(name, frame);
        this.#emit({ type: 'error', code: 'client', message: `A message kept aside could not be read (${String((error as Error).message ?? error)}); it was dropped.` });
      }
    }
  }

  /** Read what is kept aside, each sending device's in order, those whose lists can be
   * read now; true if some are still kept. */
  async #readAside(): Promise<boolean> {
    let left = false;
    // Each round starts one further along: after a read that fails none is asked for a
    // moment, so one sender whose list keeps failing would hold every other's.
    const devices = this.#aside.devices();
    const turn = devices.length ? this.#asideTurn++ % devices.length : 0;
    for (const [sender, device] of [...devices.slice(turn), ...devices.slice(0, turn)]) {
      try {
        // The directory asked outside the lock: the frame chain, waiting on it for a new
        // device's message, would wait for every read (and a sync page with it).
        if (await this.#deviceKnown(sender, device)) await this.#asideLock.run(() => this.#readKept(sender, device));
        else left = true;
      } catch (error) {
        if (!(error instanceof ApiError) && !this.#ended) this.#emit({ type: 'error', code: 'client', message: `Messages kept aside could not be read now: ${String((error as Error).message ?? error)}` });
        left = true;
      }
    }
    return left;
  }

  /** Read what is kept aside after the current wait (`now`: at once: a sync is done, the
   * directory may answer again), and again, the wait doubling (aside.ts ASIDE_RETRY),
   * while some are kept and the client is connected. */
  #asideSoon(now = false): void {
    if (this.#aside.size === 0 || !this.#running) return;
    if (this.#asideTimer !== null) {
      if (!now) return;
      clearTimeout(this.#asideTimer);
    }
    this.#asideTimer = setTimeout(() => void this.#asideRound(), now ? 0 : this.#asideWait);
  }

  async #asideRound(): Promise<void> {
    this.#asideTimer = null;
    if (this.#ws === null || this.#ended) return; // not connected: the next sync starts again
    this.#asideWait = nextWait(this.#asideWait, await this.#readAside());
    this.#asideSoon();
  }

  #clearAsideTimer(): void {
    if (this.#asideTimer !== null) clearTimeout(this.#asideTimer);
    this.#asideTimer = null;
  }

  /** Number of messages kept aside (waiting for their sending device's list). */
  get keptAside(): number {
    return this.#aside.size;
  }

  /** Decrypt and record a 1:1 message in one transaction. Pushed (or paged), it moves
   * `last_seq` and is acknowledged; `kept` (its aside row: kept aside, so both were done
   * then), its row is deleted in that transaction instead. A room's sender key for a room
   * not known here is read twice: the first transaction is dropped, the rooms service is
   * asked whether we are a member (`members`, by room), and it is read again with that. */
  async #readMessage(frame: W.Message, peer: string | null, kept?: string, members = new Map<string, boolean>()): Promise<void> {
    const sender = frame.from;
    const own = sender === this.me;
    const settle = (tx: Tx) => (kept === undefined ? this.#processed(tx, frame.seq) : tx.put(kept, undefined));
    let event: ClientEvent | null = null;
    let roomEvents: ClientEvent[] = [];
    let reread: string | null = null; // a room whose log is read again (#onControl)
    try {
      await this.#transaction(async (tx) => {
        if (!this.#seen.has(frame.server_id)) {
          const state = this.#peer(tx, sender);
          let device: Device | null = null; // read for a first message only (peers.ts decrypt)
          const loadDevice = async () => (device ??= (await this.#device(tx)) as Device);
          const entry: HistoryEntry = {
            dir: own ? 'out' : 'in',
            kind: 'message',
            peer: peer ?? sender,
            text: '',
            at: frame.sent_at ?? Date.now(),
            server_id: frame.server_id,
            seq: frame.seq,
          };
          let wire: Uint8Array = new Uint8Array(0);
          try {
            wire = b64decode(frame.body);
          } catch {
            // an undecodable body is reported below as a failed decryption
          }
          try {
            // `state` is the envelope's sender's (frame.from): a new session is bound to it.
            const incoming = await state.decrypt(loadDevice, frame.from_device, wire, [this.me, (this.account as AccountRow).device_id]);
            const control = parseControl(incoming.plaintext);
            if (control !== null) {
              // A room's sender key (or another control payload): never a chat line.
              ({ events: roomEvents, reread } = await this.#onControl(tx, sender, frame.from_device, control, members));
              tx.put(this.#peerRow(sender), state.toJson());
              if (incoming.newSession) tx.put('device', b64encode((await loadDevice()).toBytes()));
              return settle(tx);
            }
            entry.text = displayText(incoming.plaintext);
            if (own) entry.status = 'sent';
            else {
              const report = reportFields(frame, incoming.frankingKey, incoming.plaintext, entry.text);
              if (report) entry.report = report;
            }
            // Unsent (or removed by an admin) while it waited (kept aside): a marker, not its text.
            const removedBy = this.#removedBy(frame.server_id);
            if (removedBy !== undefined) this.#markRemoved(entry, removedBy);
            if (peer) this.#addHistory(tx, peer, entry);
            tx.put(this.#peerRow(sender), state.toJson());
            if (incoming.newSession) tx.put('device', b64encode((await loadDevice()).toBytes()));
            if (removedBy !== undefined && peer) event = { type: 'removed', peer, serverId: frame.server_id, by: removedBy };
            else if (!own && peer) event = { type: 'message', peer, text: entry.text };
          } catch (error) {
            const removedBy = this.#removedBy(frame.server_id);
            if (!(error instanceof ReplayedMessage) && (error instanceof CryptoError || error instanceof RangeError) && removedBy !== undefined) {
              this.#markRemoved(entry, removedBy); // removed anyway: nothing to say it could not be read
              if (peer) this.#addHistory(tx, peer, entry);
            } else if (!(error instanceof ReplayedMessage) && (error instanceof CryptoError || error instanceof RangeError)) {
              entry.kind = 'error';
              entry.text = `[could not decrypt: ${error.name}]`;
              if (peer) this.#addHistory(tx, peer, entry);
              event = { type: 'error', code: 'decrypt_failed', message: `A message from ${this.username(sender)} could not be decrypted (${error.name}).` };
            } else if (!(error instanceof ReplayedMessage)) {
              throw error;
            }
          }
        }
        settle(tx);
      });
    } catch (error) {
      if (!(error instanceof RoomToCheck)) throw error;
      // A sender key for a room this browser does not know: nothing was written (the
      // transaction is dropped). Read again once the rooms service said whether we are a
      // member (the room known then), decrypted again from the same state.
      const member = await this.#memberOf(error.roomId);
      if (member) await this.openRoom(error.roomId);
      members.set(error.roomId, member);
      return this.#readMessage(frame, peer, kept, members);
    }
    this.#seen.add(frame.server_id);
    if (kept !== undefined) this.#aside.remove(kept, frame);
    for (const e of roomEvents) this.#emit(e);
    if (event) this.#emit(event);
    else this.#emit({ type: 'changed' });
    if (kept === undefined) this.#ackSoon(frame.seq);
    // Its messages that were not kept, from the cursor put back (never rejects: a failed
    // read says so, and the next sync reads from that cursor).
    if (reread !== null) void this.#logs.read(reread);
  }

  // -- moderation (client/parley/moderation.py; docs/moderation-messages.md) --------------
  /** The delivery service's published tombstone keys (kid -> base64url Ed25519 key),
   * read again for a kid not known. */
  async #moderationKeys(kid: string): Promise<Map<string, string>> {
    if (this.#modKeys === null || !this.#modKeys.has(kid)) await this.#readModerationKeys();
    return this.#modKeys ?? new Map();
  }

  /** Read the published keys again; those known are kept (as the SDK: during a rolling
   * deploy an old task's answer lacks the new key). */
  async #readModerationKeys(): Promise<void> {
    const answer = await this.api.request<{ keys: { kid: string; public_key: string }[] }>('GET', '/delivery/v1/moderation/keys');
    const keys = new Map(this.#modKeys ?? []);
    for (const k of answer.keys) keys.set(k.kid, k.public_key);
    this.#modKeys = keys;
  }

  /** A message was removed: once its signature verifies, its history entry becomes a
   * "removed" marker and its text (and report fields) leave this device. A tombstone
   * that does not verify is ignored (and acknowledged); one whose keys cannot be read
   * now (no answer, 429, 5xx) is not processed: the handler fails, the socket is given
   * up (#drop) and the next sync brings it again. One signed with a key not published,
   * even read again (a rolling deploy: an old delivery task answered), is kept in the
   * vault (`tombstones_kept`) and acknowledged, and tried again with the keys read
   * again (#tombstonesSoon), within moderation.ts TOMBSTONE_RETRY's bounds. */
  async #onTombstone(frame: W.Tombstone): Promise<void> {
    let keys: Map<string, string>;
    let refused = false;
    try {
      keys = await this.#moderationKeys(frame.kid);
    } catch (error) {
      if (error instanceof ApiError && error.transient) {
        throw new ParleyError(`A removed message could not be checked now (${error.message}); it will be checked again.`);
      }
      keys = new Map(); // refused, or an answer that is no list of keys: it cannot verify
      refused = true;
    }
    const unknownKey = !refused && !keys.has(frame.kid);
    const valid = !unknownKey && (await verifyTombstone({ ...frame, kind: 'tombstone' }, keys));
    const removed: ClientEvent[] = [];
    await this.#transaction(async (tx) => {
      if (valid) this.#applyTombstone(tx, frame, removed);
      else if (unknownKey) tx.put('tombstones_kept', keepTombstone(tx.get<KeptTombstone[]>('tombstones_kept') ?? [], { ...frame, kind: 'tombstone' }, Date.now()));
      this.#processed(tx, frame.seq);
    });
    for (const e of removed) this.#emit(e);
    if (removed.length === 0) this.#emit({ type: 'changed' });
    this.#ackSoon(frame.seq);
    if (unknownKey) this.#tombstonesSoon();
  }

  /** A verified tombstone in the history (in `tx`); the `removed` events go to `removed`. */
  #applyTombstone(tx: Tx, frame: W.Tombstone | TombstoneFrame, removed: ClientEvent[]): void {
    // Only the conversations whose entries hold that server id (history.ts hints).
    const holding = new Set(this.#history.withServer(frame.server_id));
    const before = removed.length;
    for (const [peerId, ref] of this.#refs) {
      if (!holding.has(`history:${ref}`)) continue;
      const done = this.#history.updateServer(
        tx,
        `history:${ref}`,
        frame.server_id,
        (entry) => this.#markRemoved(entry, frame.by),
        (e) => e.kind === 'message',
      );
      if (done) removed.push({ type: 'removed', peer: peerId, serverId: frame.server_id, by: frame.by });
    }
    // No history holds it (yet): a message kept aside or waiting for its room's
    // sender key, read later, is shown removed then (#removedBy), never with its text.
    if (removed.length === before && this.#removedBy(frame.server_id) === undefined) {
      const row = tx.get<RemovedRow>('removed_ids') ?? [];
      row.push([frame.server_id, frame.by]);
      tx.put('removed_ids', row.slice(-REMOVED_KEPT));
    }
  }

  /** Number of tombstones kept for a key not published yet. */
  get keptTombstones(): number {
    return this.#read<KeptTombstone[]>('tombstones_kept')?.length ?? 0;
  }

  /** Try the kept tombstones when the first of them is due (moderation.ts tombstoneDue;
   * `now`: at once, a sync is done: it counts a try only for those due; `wait`: after
   * this, the keys could not be read), and again while some are kept and the client runs.
   * One round at a time: asked while one runs, the next starts when it ends. */
  #tombstonesSoon(now = false, wait?: number): void {
    if (this.keptTombstones === 0 || !this.#running) return;
    if (this.#tombstoneRunning) {
      if (now) this.#tombstoneAgain = true;
      return; // the round schedules the next when it ends
    }
    const delay = now ? 0 : (wait ?? tombstonesDueIn(this.#read<KeptTombstone[]>('tombstones_kept') ?? [], Date.now()));
    const at = Date.now() + delay;
    if (this.#tombstoneTimer !== null) {
      if (at >= this.#tombstoneAt) return;
      clearTimeout(this.#tombstoneTimer);
    }
    this.#tombstoneAt = at;
    this.#tombstoneTimer = setTimeout(() => void this.#tombstoneRound(), delay);
  }

  /** One round of the kept tombstones: the keys read again (once); one that verifies is
   * applied, one whose signature fails under its (now known) key is dropped as at its
   * arrival, one whose key is still unknown counts a try if it is due (at most one per
   * wait), and is dropped past the tries or the age (moderation.ts triedAgain). Keys
   * that cannot be read now: no try counted (the age still checked), the next round
   * after a wait doubling from TOMBSTONE_RETRY.first. */
  async #tombstoneRound(): Promise<void> {
    this.#tombstoneTimer = null;
    if (this.#ws === null || this.#ended || this.#tombstoneRunning) return; // not connected: the next sync starts again
    this.#tombstoneRunning = true;
    let read = true;
    try {
      try {
        await this.#readModerationKeys();
      } catch (error) {
        read = !(error instanceof ApiError && error.transient); // refused, or no list: the keys known stay
      }
      const removed: ClientEvent[] = [];
      const keys = this.#modKeys ?? new Map<string, string>();
      const checked = new Map<string, boolean>(); // by the frame's JSON
      for (const kept of this.#read<KeptTombstone[]>('tombstones_kept') ?? []) {
        if (keys.has(kept.frame.kid)) checked.set(JSON.stringify(kept.frame), await verifyTombstone(kept.frame, keys));
      }
      try {
        await this.#transaction(async (tx) => {
          const now = Date.now();
          const still: KeptTombstone[] = [];
          for (const kept of tx.get<KeptTombstone[]>('tombstones_kept') ?? []) {
            const valid = checked.get(JSON.stringify(kept.frame));
            if (valid === true) this.#applyTombstone(tx, kept.frame, removed);
            else if (valid === false) console.warn(`A removal of ${kept.frame.server_id} does not verify under key ${kept.frame.kid}: ignored.`);
            else if (!keys.has(kept.frame.kid)) {
              const again = triedAgain(kept, now, read);
              if (again !== null) still.push(again);
              else console.warn(`A removal of ${kept.frame.server_id} signed with key ${kept.frame.kid}, never published: dropped.`);
            } else still.push(kept); // kept since the keys were read: the next round
          }
          tx.put('tombstones_kept', still.length > 0 ? still : undefined);
        });
      } catch {
        read = false; // signed out, or the vault: tried again after a wait (if still running)
      }
      for (const e of removed) this.#emit(e);
    } finally {
      this.#tombstoneRunning = false;
    }
    const again = this.#tombstoneAgain;
    this.#tombstoneAgain = false;
    if (read) {
      this.#tombstoneWait = TOMBSTONE_RETRY.first;
      this.#tombstonesSoon(again);
    } else {
      const wait = this.#tombstoneWait;
      this.#tombstoneWait = Math.min(wait * 2, TOMBSTONE_RETRY.longest);
      this.#tombstonesSoon(again, wait);
    }
  }

  /** Who removed the message `serverId` (a verified tombstone that came while no history
   * held it: #onTombstone), if one did. */
  #removedBy(serverId: string): 'sender' | 'admin' | undefined {
    const row = this.#read<RemovedRow>('removed_ids');
    if (row === undefined) return undefined;
    if (this.#removedIndex?.row !== row) this.#removedIndex = { row, by: new Map(row) };
    return this.#removedIndex.by.get(serverId);
  }

  /** A room's history entry added, made a "removed" marker if a verified tombstone came
   * for it while it waited (#removedBy); the `removed` event then, else `event`. */
  #addRoomEntry(tx: Tx, conv: string, entry: HistoryEntry, serverId: string, event: ClientEvent): ClientEvent {
    const by = this.#removedBy(serverId);
    if (by !== undefined) this.#markRemoved(entry, by);
    this.#addHistory(tx, conv, entry);
    return by === undefined ? event : { type: 'removed', peer: conv, serverId, by };
  }

  /** A history entry made a "removed" marker (as #onTombstone makes one): no text, no
   * report. */
  #markRemoved(entry: HistoryEntry, by: 'sender' | 'admin'): void {
    entry.kind = 'removed';
    entry.removed_by = by;
    entry.text = removedText(by);
    delete entry.report;
  }

  /** Remove a message this device sent (1:1 or a private room's), from every inbox and
   * device (tombstones follow, to this device too). */
  async unsend(entry: HistoryEntry): Promise<void> {
    let path: string;
    try {
      // The client id proves we sent it (the server id hashes it); the conversation says
      // whose devices get the tombstones (docs/moderation-messages.md).
      path = await unsendPath(this.me, entry);
    } catch (error) {
      throw new ParleyError((error as Error).message);
    }
    await this.accessToken();
    await this.api.request('DELETE', path);
  }

  /** Edit your own post in a public room (`PATCH .../messages/{seq}`, marked `edited`;
   * the server keeps every version). Returns the message's new revision. */
  async editRoomPost(roomId: string, seq: number, text: string): Promise<RoomMessage> {
    checkText(text);
    await this.accessToken();
    return this.api.editRoomMessage(roomId, seq, text);
  }

  /** Delete your own post in a public room (`DELETE .../messages/{seq}`, marked
   * `deleted_by_author`), or, as the room's owner or a moderator, remove a member's (the
   * same route, marked `removed_by_moderator`: roles.ts canRemovePost); its text is gone
   * for members, the original kept for admins. Returns the message's new revision
   * (empty text). */
  async deleteRoomPost(roomId: string, seq: number): Promise<RoomMessage> {
    await this.accessToken();
    return this.api.deleteRoomMessage(roomId, seq);
  }

  /** As the room's owner or a moderator, undo a moderator's removal of a member's public
   * post (`POST .../messages/{seq}/restore`, under the removal's rules: roles.ts
   * canRestorePost). Returns the message as it was before the removal (its text, and its
   * marker then: null, or `edited`...), a new revision; the removal stays in its history.
   * Refused: an admin's removal (`forbidden`), an author's own deletion (`conflict`). */
  async restoreRoomPost(roomId: string, seq: number): Promise<RoomMessage> {
    await this.accessToken();
    return this.api.restoreRoomMessage(roomId, seq);
  }

  /** Report a received message to the server's admins (its text is revealed to them,
   * nothing else); returns the report's id. */
  async report(peerId: string, entry: HistoryEntry): Promise<{ id: string; state?: string; duplicate?: boolean }> {
    if (entry.dir !== 'in') throw new ParleyError('Only a message you received can be reported.');
    if (entry.kind === 'removed') throw new ParleyError('That message was removed; it can no longer be reported.');
    if (!entry.report || !entry.server_id) throw new ParleyError('That message cannot be reported (the server gave it no tag).');
    await this.accessToken();
    const answer = await this.api.request<{ id: string; state?: string; duplicate?: boolean }>('POST', '/delivery/v1/reports', reportBody(entry.server_id, entry.report, entry.text));
    const serverId = entry.server_id;
    await this.#transaction(async (tx) => {
      this.#history.updateServer(tx, this.#historyName(peerId), serverId, (found) => {
        found.reported = answer.id;
      });
    });
    this.#emit({ type: 'changed' });
    return answer;
  }

  async #onKeyChanged(frame: W.KeyChanged): Promise<void> {
    if (this.contacts().some((c) => c.user_id === frame.user_id)) {
      try {
        await this.#refreshPeer(frame.user_id); // warns if the key is not the one we trust
      } catch {
        // the directory's answer does not verify: the next send refuses it
      }
    }
    await this.#transaction(async (tx) => this.#processed(tx, frame.seq));
    if (frame.seq) this.#ackSoon(frame.seq);
  }

  /** Receipts, in one transaction: `accepted` takes the message out of the outbox; each
   * raises its history line's status (and, past `accepted`, the device's). */
  async #onReceipts(frames: (W.Accepted | W.Stored | W.Delivered)[]): Promise<void> {
    const todo: { frame: W.Accepted | W.Stored | W.Delivered; peer: string }[] = [];
    for (const frame of frames) {
      // About the copies our other devices get of what we sent to a contact: not news (in
      // a note to self those devices are its recipients: direct.ts receiptCounts).
      if (!receiptCounts(frame, this.me)) continue;
      const queued = this.#queued(frame.id);
      const peer = queued?.peer ?? (frame.op === 'accepted' ? otherParty(frame.conversation, this.me) : frame.to);
      if (!peer) continue;
      if (frame.op === 'accepted') await this.#ref(peer);
      todo.push({ frame, peer });
    }
    if (!todo.length) return;
    await this.#transaction(async (tx) => {
      for (const { frame, peer } of todo) {
        const status = frame.op;
        const rank = STATUS_RANK[status] as number;
        if (status === 'accepted') this.#dequeue(tx, frame.id);
        this.#updateHistory(tx, peer, frame.id, (e) => {
          if ((STATUS_RANK[e.status ?? 'queued'] ?? 0) < rank) e.status = status;
          if (frame.op !== 'accepted') {
            e.devices ??= {};
            if ((STATUS_RANK[e.devices[String(frame.device)] ?? 'queued'] ?? 0) < rank) e.devices[String(frame.device)] = status;
          }
        });
      }
    });
    for (const { frame, peer } of todo) {
      if (frame.op === 'accepted') {
        this.#waiting.get(frame.id)?.resolve();
        this.#waiting.delete(frame.id);
      }
      this.#emit({ type: 'receipt', peer, clientId: frame.id, status: frame.op });
    }
  }

  async #onError(ws: WebSocket, frame: W.Error): Promise<void> {
    const { code, message } = frame;
    const clientId = frame.id ?? null;
    if (code === 'reauth_required') return;
    if (clientId?.startsWith(TYPING_ID)) return; // a hint refused (rate_limited, room_closed...): nothing to tell
    const queued = clientId ? this.#queued(clientId) : undefined;
    if (clientId && queued && code === 'devices_changed' && queued.send.op === 'room_send') {
      // A room's member devices are not those our key went to: give it, encrypt again,
      // same id. Not awaited: the redo waits for the `accepted` of the key's pairwise
      // sends, which come through the frame chain this handler runs in.
      void this.#redoRoom(ws, clientId, frame.devices ?? []).catch((error: unknown) => {
        this.#emit({ type: 'error', code: 'client', message: String((error as Error).message ?? error) });
      });
      return;
    }
    if (clientId && queued && code === 'devices_changed') {
      // Someone linked or removed a device: encrypt for the current lists, same id.
      try {
        const payload = queued.control === undefined ? undefined : b64decode(queued.control);
        const frame = await this.#encrypt(queued.peer, queued.text, clientId, true, payload);
        if (this.#copies.has(clientId)) this.#copies.set(clientId, copiesOf(frame)); // a control send waits: these get it now
        this.#sendAgain(frame);
      } catch (error) {
        if (this.#redoLater(ws, clientId, error)) return;
        const reason = String((error as Error).message);
        await this.#fail(clientId, queued.peer, reason);
        // Said, not only marked failed: the reason (a safety number changed, a list that
        // does not verify, another account key for ours) is what to act on. (A room's key
        // send: its room send is refused with it.)
        if (queued.control === undefined) this.#emit({ type: 'error', code: 'client', message: `Not sent to ${this.username(queued.peer)}: ${reason}` });
      }
      return;
    }
    if (clientId && queued && queued.control !== undefined && KEY_SEND_FAILS.has(code)) {
      // A room's key send refused for a full inbox: failed at once, not held (rooms.py:
      // the room send fails with the error). Held, every redo of the room's message
      // would queue another for the same device, filling that inbox more.
      await this.#fail(clientId, queued.peer, message, new ApiError(code, message, 0));
      this.#emit({ type: 'error', code, message });
      return;
    }
    if (clientId && queued && Object.hasOwn(SEND_AGAIN, code)) {
      // Nothing was stored (docs/protocol.md, "Errors"): it stays in the outbox, with its
      // status, and goes again with the same id, later (#hold), or with the next
      // socket's flush. Whoever waits for its `accepted` keeps waiting.
      this.#hold(ws, clientId, code);
      if (code !== 'rate_limited') {
        // The user should know why it has not gone yet (it is not failed).
        this.#emit({ type: 'error', code, message: `Not sent yet (${message}): the message waits in the outbox and is sent again later.` });
      }
      return;
    }
    if (clientId && queued) await this.#fail(clientId, queued.peer, message);
    this.#emit({ type: 'error', code, message });
  }

  async #fail(clientId: string, peer: string, reason: string, error: Error = new ParleyError(reason)): Promise<void> {
    this.#waiting.get(clientId)?.reject(error);
    this.#waiting.delete(clientId);
    await this.#transaction(async (tx) => {
      this.#dequeue(tx, clientId);
      this.#updateHistory(tx, peer, clientId, (e) => {
        e.status = 'failed';
        e.error = reason;
      });
    });
    this.#emit({ type: 'receipt', peer, clientId, status: 'failed' });
  }
}
