/**
 * A fake Parley server for driving the real ParleyClient (src/app/client.ts) in
 * Node: the HTTP routes the client calls while signing up and syncing (a stub of
 * `fetch`), the WebSocket (a stub of the `WebSocket` class: frames go through
 * `setTimeout`, in order, as a socket's would), one device inbox that answers `sync`
 * pages and deletes what a cumulative `ack` covers, as docs/protocol.md says, and an
 * in-memory vault (vault.ts's interface, no IndexedDB: the test mocks the module).
 *
 * The inbox records what it sent on a socket, and an item an ack deleted before it
 * was ever sent is `lost`: what the client acknowledged without having processed it.
 * A contact (`Peer`) writes real messages (PQXDH, then the ratchet) to the client's
 * published keys, so what the client processed shows in its history; its bundle can be
 * claimed, so the client can write to it.
 *
 * The client's `send` and `room_send` frames are recorded (`sends`) and answered as the
 * gateway does: its send bucket (`limits`, shared by the user's sockets) refuses those
 * past it with `rate_limited` and closes a socket after min(4 × burst, 400) such
 * refusals (4009); the others are `accepted`, unless `answerSend` says otherwise.
 */

import {
  AccountKey,
  Device,
  DeviceEntry,
  DeviceList,
  PrekeyBundle,
  Session,
  b64encode,
  utf8,
} from '../../src/crypto/index.ts';
import type * as W from '../../src/generated/contract.ts';
import { messageServerId, tombstoneSignedBytes } from '../../src/app/moderation.ts';

// -- the vault --------------------------------------------------------------------------
/** vault.ts `Vault` in memory (rows kept as JSON text, so a read is a copy). */
export class MemoryVault {
  static readonly stores = new Map<string, Map<string, string>>();
  readonly username: string;
  readonly #rows: Map<string, string>;
  /** While set, every row written through putMany: its name and the length of its JSON
   * (0: deleted). Tests count what a change writes. */
  writes: [name: string, bytes: number][] | null = null;

  private constructor(username: string, rows: Map<string, string>) {
    this.username = username;
    this.#rows = rows;
  }

  static async exists(username: string): Promise<boolean> {
    return MemoryVault.stores.has(username);
  }

  static async create(username: string, _passphrase: string): Promise<MemoryVault> {
    const rows = new Map<string, string>();
    MemoryVault.stores.set(username, rows);
    return new MemoryVault(username, rows);
  }

  static async open(username: string, _passphrase: string): Promise<MemoryVault> {
    const rows = MemoryVault.stores.get(username);
    if (rows === undefined) throw new Error(`no local store for ${username}`);
    return new MemoryVault(username, rows);
  }

  async ref(kind: string, id: string): Promise<string> {
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', utf8(`${kind}\u0000${id}`) as Uint8Array<ArrayBuffer>));
    return `${kind}:${[...digest.slice(0, 16)].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
  }

  async get<T>(name: string): Promise<T | undefined> {
    const raw = this.#rows.get(name);
    return raw === undefined ? undefined : (JSON.parse(raw) as T);
  }

  async names(prefix: string): Promise<string[]> {
    return [...this.#rows.keys()].filter((n) => n.startsWith(prefix)).sort();
  }

  async putMany(rows: Iterable<[string, unknown]>): Promise<void> {
    for (const [name, value] of rows) {
      const json = value === undefined ? undefined : JSON.stringify(value);
      this.writes?.push([name, json?.length ?? 0]);
      if (json === undefined) this.#rows.delete(name);
      else this.#rows.set(name, json);
    }
  }
}

// -- the socket -------------------------------------------------------------------------
type InboxItem = W.Message | W.Tombstone | W.KeyChanged;

/** The `WebSocket` the client makes: its frames go to the current FakeServer. */
export class FakeSocket {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  static server: FakeServer | null = null;

  readyState = FakeSocket.CONNECTING;
  onopen: (() => void) | null = null;
  onmessage: ((ev: { data: string }) => void) | null = null;
  onclose: ((ev: { code: number }) => void) | null = null;
  /** The code this side closed with (null: open, or closed by the server). */
  closedWith: number | null = null;
  /** The code the server closed with (null: open, or closed by the client). */
  droppedWith: number | null = null;
  authed = false;
  violations = 0; // sends refused rate_limited on this socket
  readonly server: FakeServer;

  constructor(_url: string) {
    if (FakeSocket.server === null) throw new Error('no FakeServer');
    this.server = FakeSocket.server;
    this.server.sockets.push(this);
    setTimeout(() => {
      if (this.readyState !== FakeSocket.CONNECTING) return;
      this.readyState = FakeSocket.OPEN;
      this.onopen?.();
    }, 0);
  }

  /** Client -> server. */
  send(data: string): void {
    if (this.readyState !== FakeSocket.OPEN) return; // a closing socket's frames go nowhere
    const frame = JSON.parse(data) as W.ClientFrame;
    setTimeout(() => void this.server.receive(this, frame), 0);
  }

  close(code = 1000): void {
    if (this.readyState >= FakeSocket.CLOSING) return;
    this.closedWith = code;
    this.readyState = FakeSocket.CLOSING;
    setTimeout(() => {
      this.readyState = FakeSocket.CLOSED;
      this.onclose?.({ code });
    }, 0);
  }

  /** The server closes the socket (a pod going away: 1001). */
  drop(code = 1001): void {
    if (this.readyState >= FakeSocket.CLOSING) return;
    this.droppedWith = code;
    this.readyState = FakeSocket.CLOSING;
    setTimeout(() => {
      this.readyState = FakeSocket.CLOSED;
      this.onclose?.({ code });
    }, 0);
  }

  /** Server -> client (in order, each in its own task). */
  deliver(frame: W.ServerFrame): void {
    if (this.readyState !== FakeSocket.OPEN) return;
    if (frame.op === 'message' || frame.op === 'tombstone' || frame.op === 'key_changed') this.server.inbox.sent.add(frame.seq);
    const data = JSON.stringify(frame);
    setTimeout(() => {
      if (this.readyState === FakeSocket.OPEN) this.onmessage?.({ data });
    }, 0);
  }
}

// -- the inbox --------------------------------------------------------------------------
/** One device inbox: numbered items, pages, cumulative acks (docs/protocol.md). */
export class Inbox {
  readonly items = new Map<number, InboxItem>();
  issued = 0;
  acked = 0;
  readonly acks: number[] = [];
  /** Seqs sent on a socket (in a page or pushed). */
  readonly sent = new Set<number>();
  /** Seqs an ack deleted before they were ever sent: acknowledged unprocessed. */
  readonly lost: number[] = [];

  add<T extends InboxItem>(item: Omit<T, 'seq'>): T {
    const stored = { ...item, seq: ++this.issued } as T;
    this.items.set(stored.seq, stored);
    return stored;
  }

  page(after: number, limit: number): { items: InboxItem[]; more: boolean } {
    const above = [...this.items.keys()].filter((s) => s > after).sort((a, b) => a - b);
    const take = above.slice(0, Math.min(limit, PAGE_MAX));
    return { items: take.map((s) => this.items.get(s) as InboxItem), more: above.length > take.length };
  }

  ack(seq: number): void {
    this.acks.push(seq);
    if (seq <= this.acked) return;
    this.acked = seq;
    for (const s of [...this.items.keys()]) {
      if (s > seq) continue;
      if (!this.sent.has(s)) this.lost.push(s);
      this.items.delete(s);
    }
  }
}

export const PAGE_MAX = 200; // PARLEY_SYNC_PAGE_MAX's default

/** What a test may do around a sync page: `before` runs before the page is read (it may
 * wait), `between` after its items were sent and before its `synced` (a push there is
 * read by the client before the page's end), `answer` replaces the answer. */
export interface SyncHooks {
  before?: (n: number, socket: FakeSocket) => Promise<void> | void;
  between?: (n: number, socket: FakeSocket) => void;
  answer?: (n: number, socket: FakeSocket, frame: W.Sync) => W.Error | null;
}

// -- the server -------------------------------------------------------------------------
export interface FakeUser {
  user_id: string;
  username: string;
}

function jwt(claims: Record<string, unknown>): string {
  const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${part({ alg: 'none' })}.${part(claims)}.sig`;
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

function refusal(status: number, code: string): Response {
  return json(status, { error: { code, message: code } });
}

/** What `answerSend` may say of a send: refuse it (an error, its id filled in), leave it
 * unanswered (`silent`), or accept it (null). */
export type SendAnswer = Omit<W.Error, 'id'> | 'silent' | null;

export class FakeServer {
  readonly users = new Map<string, FakeUser>(); // by id and by name
  /** What `counts` answers for the client's device (100 each: it uploads none). */
  prekeyCounts = { one_time: 100, kem_one_time: 100 };
  /** The one-time X25519 and KEM prekeys the client uploaded, in order. */
  readonly oneTimePrekeys: { id: number; key: string }[] = [];
  readonly kemPrekeys: { id: number; key: string; sig: string }[] = [];
  /** Uploads of one-time prekeys to fail, in order: the next upload of `kind` (of
   * either kind when unset) takes the first that fits and answers 503, storing nothing,
   * or (`stored`) after storing its batch (an answer lost). */
  readonly failUploads: { kind?: 'one-time-prekeys' | 'kem-prekeys'; stored?: boolean }[] = [];
  /** Every upload of one-time prekeys: its kind, ids and keys, and its answer's status. */
  readonly uploads: { kind: string; ids: number[]; keys: string[]; status: number }[] = [];
  /** `ready.limits`; `sends_per_s` and `send_burst` are the send bucket's. */
  limits: W.Limits = { max_frame_bytes: 65536, sends_per_s: 10, send_burst: 100 };
  /** Every `send`/`room_send` received, in order, with its socket and when (ms). */
  readonly sends: { socket: FakeSocket; frame: W.Send | W.RoomSend; at: number }[] = [];
  /** The ids accepted (a repeat is accepted again, as the server's dedup answers it). */
  readonly accepted = new Set<string>();
  rateLimited = 0; // sends refused rate_limited
  /** How a send within the bucket is answered (`n`: the how-manieth send of its id). */
  answerSend?: (frame: W.Send | W.RoomSend, socket: FakeSocket, n: number) => SendAnswer;
  /** Run (and awaited) when a send or room_send arrives, before it is answered: what
   * happens between a frame's encryption and its answer. */
  beforeAnswer?: (frame: W.Send | W.RoomSend, socket: FakeSocket) => Promise<void> | void;
  /** Contacts' bundles (what a claim answers), by user id. */
  readonly bundles = new Map<string, unknown[]>();
  /** Private rooms the client is a member of (GET of the room and of its members):
   * `version` (1 unless set); `memberReads`, lists a members read answers once each, in
   * order, before `members` (a read between the version's bump and the membership's
   * write, as services/rooms/members.py does them). */
  readonly rooms = new Map<string, { name: string; members: string[]; version?: number; memberReads?: string[][] }>();
  /** `GET /rooms/v1/rooms` lists `rooms` (as private rooms) while true, so a connect reads
   * their logs (`POST /delivery/v1/rooms/logs`); none otherwise. */
  listRooms = false;
  /** Private rooms' logs, by room id (`GET /delivery/v1/rooms/{id}/log`, `POST
   * /delivery/v1/rooms/logs`, paged as services/delivery pages them: after a number,
   * oldest first, `next` and `more`): the messages, numbered 1, 2, 3... (`roomMessage`). */
  readonly roomLogs = new Map<string, W.RoomMessage[]>();
  /** Every log read: `[room, after]` (a batch's rooms each, in its order). */
  readonly logReads: [string, number][] = [];
  /** Run (and awaited) when a log read comes (`one`: a room's own read; else a batch),
   * after its pages are made and before they are answered: a read under way. */
  beforeLog?: (asks: { room: string; after: number }[], one: boolean) => Promise<void> | void;
  #tokens: number | null = null; // the user's send bucket (full at the first send)
  #tokensAt = 0;
  readonly lists = new Map<string, { user_id: string; account_key: string; device_list: unknown; signature: string }>();
  readonly keys = new Map<string, unknown>(); // the client's published keys, by path
  readonly inbox = new Inbox();
  readonly sockets: FakeSocket[] = [];
  readonly unknown: string[] = []; // routes the fake does not know
  readonly sync: SyncHooks = {};
  syncs = 0; // sync frames answered (or refused)
  me: FakeUser | null = null;
  deviceId = 0; // the client's device (its keys' routes)
  /** GET /delivery/v1/moderation/keys answers 503 while true. */
  moderationDown = false;
  /** `GET /keys/v1/users/{id}/devices` answers 503 (the key directory is down). */
  listsDown = false;
  /** Device lists asked while `listsDown` (each refused 503) or `listsHang`. */
  listsRefused = 0;
  /** The directory takes device-list reads and never answers. */
  listsHang = false;
  /** `GET /auth/v1/users/{id}` answers 503 (the auth service is down). */
  usersDown = false;
  /** The rooms service answers 503 (GET of a room). */
  roomsDown = false;
  /** The rooms service refuses a GET of a room with this status and code (a revoked
   * token's 401, a 403...) while set. */
  roomsRefuse: { status: number; code: string } | null = null;
  moderationCalls = 0;
  /** Signing keys (kid) GET /delivery/v1/moderation/keys leaves out while listed (an
   * old delivery task of a rolling deploy, which does not have the new key yet). */
  readonly unpublished = new Set<string>();
  readonly #moderation = new Map<string, { kid: string; pair: CryptoKeyPair; public_key: string }>();

  fetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = new URL(String(input));
    const method = init?.method ?? 'GET';
    const body = init?.body ? (JSON.parse(String(init.body)) as Record<string, unknown>) : {};
    const path = url.pathname;
    const parts = path.split('/').filter(Boolean);
    if (method === 'POST' && (path === '/auth/v1/signup' || path === '/auth/v1/token/refresh')) {
      const user = path === '/auth/v1/signup' ? this.#addUser(String(body['username'])) : (this.me as FakeUser);
      if (path === '/auth/v1/signup') this.me = user;
      const now = Math.floor(Date.now() / 1000);
      return json(200, {
        access_token: jwt({ sub: user.user_id, did: 7, iat: now, exp: now + 3600 }),
        refresh_token: 'refresh',
        session_id: 'session',
        user: { user_id: user.user_id, username: user.username },
      });
    }
    if (method === 'GET' && parts[0] === 'auth' && parts[2] === 'users') {
      if (this.usersDown) return refusal(503, 'service_unavailable');
      const user = this.users.get(decodeURIComponent(parts[3] ?? ''));
      return user ? json(200, user) : refusal(404, 'user_not_found');
    }
    if (parts[0] === 'keys') {
      if (method === 'PUT' && parts[2] === 'devices') {
        this.deviceId = Number(parts[3]);
        this.keys.set(parts[4] as string, body);
        return json(200, {});
      }
      if (method === 'GET' && parts[2] === 'devices' && parts[4] === 'counts') return json(200, this.prekeyCounts);
      if (method === 'POST' && parts[2] === 'devices' && (parts[4] === 'one-time-prekeys' || parts[4] === 'kem-prekeys')) {
        const kind = parts[4];
        const prekeys = body['prekeys'] as { id: number; key: string; sig?: string }[];
        const held: { id: number; key: string; sig?: string }[] = kind === 'kem-prekeys' ? this.kemPrekeys : this.oneTimePrekeys;
        const at = this.failUploads.findIndex((f) => f.kind === undefined || f.kind === kind);
        const failure = at < 0 ? undefined : this.failUploads.splice(at, 1)[0];
        const answer = (status: number): Response => {
          this.uploads.push({ kind, ids: prekeys.map((p) => p.id), keys: prekeys.map((p) => p.key), status });
          return status === 200 ? json(200, {}) : refusal(status, 'service_unavailable');
        };
        if (failure && !failure.stored) return answer(503);
        // As services/keys/devices.py `_upload`: all or nothing; the same batch again,
        // every prekey of it still held as sent, is a retry (nothing stored twice); ids
        // of prekeys it holds otherwise are `duplicate_prekey`.
        const stored = held.filter((p) => prekeys.some((q) => q.id === p.id));
        const same = stored.length === prekeys.length && prekeys.every((q) => stored.some((p) => p.id === q.id && p.key === q.key && p.sig === q.sig));
        if (stored.length && !same) {
          this.uploads.push({ kind, ids: prekeys.map((p) => p.id), keys: prekeys.map((p) => p.key), status: 409 });
          return json(409, { error: { code: 'duplicate_prekey', message: 'duplicate_prekey', details: { ids: stored.map((p) => p.id) } } });
        }
        if (!stored.length) held.push(...(prekeys as never[]));
        return answer(failure ? 503 : 200); // failure.stored: stored, then the answer lost
      }
      if (method === 'POST' && parts[2] === 'devices' && parts[4] === 'check') return json(200, { match: true });
      if (method === 'PUT' && path === '/keys/v1/account') {
        const me = this.me as FakeUser;
        this.lists.set(me.user_id, { user_id: me.user_id, ...(body as { account_key: string; device_list: unknown; signature: string }) });
        return json(200, {});
      }
      if (method === 'GET' && parts[2] === 'users' && parts[4] === 'bundles') {
        const user = decodeURIComponent(parts[3] ?? '');
        const listed = this.lists.get(user);
        return listed ? json(200, { ...listed, bundles: this.bundles.get(user) ?? [] }) : refusal(404, 'identity_not_found');
      }
      if (method === 'GET' && parts[2] === 'users' && parts[4] === 'devices') {
        if (this.listsHang) {
          this.listsRefused++;
          return new Promise<Response>(() => {}); // takes the request, never answers
        }
        if (this.listsDown) {
          this.listsRefused++;
          return refusal(503, 'service_unavailable');
        }
        const listed = this.lists.get(decodeURIComponent(parts[3] ?? ''));
        return listed ? json(200, listed) : refusal(404, 'identity_not_found');
      }
      if (method === 'POST' && path === '/keys/v1/users/bundles') {
        const users = body['users'] as Record<string, { device_ids?: number[] }>;
        const claimed = Object.entries(users).flatMap(([u, want]) => {
          const listed = this.lists.get(u);
          if (!listed) return [];
          const bundles = (this.bundles.get(u) ?? []) as { device_id: number }[];
          return [{ ...listed, bundles: bundles.filter((b) => !want.device_ids || want.device_ids.includes(b.device_id)) }];
        });
        const failed = Object.keys(users).filter((u) => !this.lists.has(u)).map((user_id) => ({ user_id, code: 'identity_not_found', message: 'no keys' }));
        return json(200, { claimed, failed });
      }
      if (method === 'POST' && path === '/keys/v1/users/device-lists') {
        const ids = body['user_ids'] as string[];
        return json(200, { lists: ids.flatMap((u) => this.lists.get(u) ?? []), missing: ids.filter((u) => !this.lists.has(u)) });
      }
    }
    if (method === 'GET' && path === '/rooms/v1/rooms') {
      const rooms = this.listRooms ? [...this.rooms.keys()].map((room_id) => ({ room_id, kind: 'private', name: this.rooms.get(room_id)?.name })) : [];
      return json(200, { rooms, next_before: null });
    }
    if (method === 'GET' && parts[0] === 'delivery' && parts[2] === 'rooms' && parts[4] === 'log') {
      const room = decodeURIComponent(parts[3] ?? '');
      if (!this.roomLogs.has(room)) return refusal(404, 'room_not_found');
      const ask = { room, after: Number(url.searchParams.get('after') ?? 0) };
      const page = { room, ...this.#logPage(ask.room, ask.after, Number(url.searchParams.get('limit') ?? 200)) };
      this.logReads.push([room, ask.after]);
      await this.beforeLog?.([ask], true);
      return json(200, page);
    }
    if (method === 'POST' && path === '/delivery/v1/rooms/logs') {
      const asks = body['rooms'] as { room: string; after: number }[];
      const limit = Number(body['limit'] ?? 200);
      const pages = asks.filter((a) => this.roomLogs.has(a.room)).map((a) => ({ room: a.room, ...this.#logPage(a.room, a.after, limit) }));
      for (const a of asks) this.logReads.push([a.room, a.after]);
      await this.beforeLog?.(asks, false);
      return json(200, { pages, refused: asks.filter((a) => !this.roomLogs.has(a.room)).map((a) => a.room) });
    }
    const room = parts[0] === 'rooms' && parts[2] === 'rooms' ? this.rooms.get(decodeURIComponent(parts[3] ?? '')) : undefined;
    if (method === 'GET' && parts[0] === 'rooms' && parts[2] === 'rooms' && parts.length === 4 && this.roomsDown) return refusal(503, 'service_unavailable');
    if (method === 'GET' && parts[0] === 'rooms' && parts[2] === 'rooms' && parts.length === 4 && this.roomsRefuse) return refusal(this.roomsRefuse.status, this.roomsRefuse.code);
    // A room that is not there, or not ours (private: not a member nor invited), as
    // services/rooms answers it.
    if (method === 'GET' && parts[0] === 'rooms' && parts[2] === 'rooms' && parts.length === 4 && !room) return refusal(404, 'room_not_found');
    if (method === 'GET' && room && parts.length === 4) {
      return json(200, { room_id: parts[3], name: room.name, kind: 'private', state: 'open', role: 'owner', version: room.version ?? 1, members: room.members.length });
    }
    if (method === 'GET' && room && parts[4] === 'members') {
      const members = (room.memberReads?.shift() ?? room.members).map((user_id) => ({ user_id, role: 'member', joined_at: 0, online: false, username: this.users.get(user_id)?.username }));
      return json(200, { members, next_after: null });
    }
    if (method === 'GET' && path === '/delivery/v1/moderation/keys') {
      this.moderationCalls++;
      if (this.moderationDown) return refusal(503, 'service_unavailable');
      await this.#moderationKey();
      const keys = [...this.#moderation.values()].filter((k) => !this.unpublished.has(k.kid));
      return json(200, { keys: keys.map((k) => ({ kid: k.kid, public_key: k.public_key })) });
    }
    this.unknown.push(`${method} ${path}`);
    return refusal(404, 'not_found');
  };

  /** A page of the room's log after `after`, as the log is now. */
  #logPage(room: string, after: number, limit: number): { messages: W.RoomMessage[]; next: number; more: boolean } {
    const log = this.roomLogs.get(room) ?? [];
    const messages = log.filter((m) => m.seq > after).slice(0, limit);
    const last = messages.at(-1)?.seq;
    return { messages, next: last ?? after, more: last !== undefined && last < (log.at(-1) as W.RoomMessage).seq };
  }

  /** Store a private room's message in its log (numbered next): `body` the sender-key
   * ciphertext of `from`'s device `device`; its frame, to push or to leave for a read. */
  roomMessage(room: string, from: string, device: number, body: Uint8Array): W.RoomMessage {
    const log = this.roomLogs.get(room) ?? [];
    this.roomLogs.set(room, log);
    const seq = log.length + 1;
    const frame: W.RoomMessage = { op: 'room_message', room, seq, server_id: `${room}-${seq}`, from, from_device: device, body: b64encode(body), sent_at: 1_700_000_000_000 + seq };
    log.push(frame);
    return frame;
  }

  #addUser(username: string): FakeUser {
    const user = { user_id: [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join(''), username };
    this.users.set(user.user_id, user);
    this.users.set(username, user);
    return user;
  }

  /** A user who is not the client (a contact to write from). */
  addUser(username: string): FakeUser {
    return this.#addUser(username);
  }

  async #moderationKey(kid = 'k1'): Promise<{ kid: string; pair: CryptoKeyPair; public_key: string }> {
    let key = this.#moderation.get(kid);
    if (key === undefined) {
      const pair = (await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])) as CryptoKeyPair;
      const raw = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
      key = { kid, pair, public_key: b64encode(raw) };
      this.#moderation.set(kid, key);
    }
    return key;
  }

  /** A tombstone for `serverId` (sent by `from`), signed by the server's key `kid` unless
   * `forged` (then the signature is another message's). */
  async tombstone(serverId: string, from: string, conversation: string, forged = false, kid = 'k1'): Promise<Omit<W.Tombstone, 'seq'>> {
    const key = await this.#moderationKey(kid);
    const at = Date.now();
    const signed = tombstoneSignedBytes({ kid: key.kid, server_id: serverId, sender: from, conversation, by: 'sender', at: forged ? at + 1 : at });
    const signature = new Uint8Array(await crypto.subtle.sign('Ed25519', key.pair.privateKey, signed as Uint8Array<ArrayBuffer>));
    return { op: 'tombstone', kind: 'tombstone', server_id: serverId, from, conversation, by: 'sender', at, kid: key.kid, signature: b64encode(signature) };
  }

  /** A token of the user's send bucket (the gateway's hub bucket), if there is one. */
  #take(): boolean {
    const now = performance.now();
    const { sends_per_s: rate, send_burst: burst } = this.limits;
    this.#tokens = this.#tokens === null ? burst : Math.min(burst, this.#tokens + ((now - this.#tokensAt) / 1000) * rate);
    this.#tokensAt = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  #send(socket: FakeSocket, frame: W.Send | W.RoomSend): void {
    this.sends.push({ socket, frame, at: performance.now() });
    const id = frame.id;
    if (!this.#take()) {
      this.rateLimited++;
      socket.violations++;
      if (socket.violations > Math.min(4 * this.limits.send_burst, 400)) {
        socket.deliver({ op: 'error', code: 'rate_limited', message: 'Flooding; closing.', id });
        socket.drop(4009);
        return;
      }
      socket.deliver({ op: 'error', code: 'rate_limited', message: 'Too many messages; slow down.', id });
      return;
    }
    const n = this.sends.filter((s) => s.frame.id === id).length;
    const answer = this.answerSend?.(frame, socket, n) ?? null;
    if (answer === 'silent') return;
    if (answer !== null) {
      socket.deliver({ ...answer, id });
      return;
    }
    this.accepted.add(id);
    const me = (this.me as FakeUser).user_id;
    const conversation = frame.op === 'send' ? `dm:${[me, frame.to].sort().join(':')}` : `room:${frame.room}`;
    socket.deliver({ op: 'accepted', id, server_id: `s-${id}`, conversation });
  }

  /** The sockets open now (authenticated). */
  get open(): FakeSocket[] {
    return this.sockets.filter((s) => s.readyState === FakeSocket.OPEN && s.authed);
  }

  /** Store an item and push it to every open socket (the fast path). */
  push<T extends InboxItem>(item: Omit<T, 'seq'>): T {
    const stored = this.inbox.add<T>(item);
    for (const socket of this.open) socket.deliver(stored);
    return stored;
  }

  async receive(socket: FakeSocket, frame: W.ClientFrame): Promise<void> {
    if (socket.readyState !== FakeSocket.OPEN) return;
    switch (frame.op) {
      case 'auth': {
        socket.authed = true;
        const me = this.me as FakeUser;
        socket.deliver({
          op: 'ready', protocol: 3, user_id: me.user_id, session_id: 'session', gateway: 'fake', id: frame.id ?? null,
          limits: this.limits,
        });
        return;
      }
      case 'send':
      case 'room_send':
        await this.beforeAnswer?.(frame, socket);
        if (socket.readyState !== FakeSocket.OPEN) return;
        this.#send(socket, frame);
        return;
      case 'sync': {
        const n = ++this.syncs;
        await this.sync.before?.(n, socket);
        if (socket.readyState !== FakeSocket.OPEN) return;
        const refused = this.sync.answer?.(n, socket, frame) ?? null;
        if (refused !== null) {
          socket.deliver({ ...refused, id: frame.id ?? null });
          return;
        }
        const after = frame.after ?? 0;
        const page = this.inbox.page(after, frame.limit ?? 100);
        for (const item of page.items) socket.deliver(item);
        this.sync.between?.(n, socket);
        const last = page.items.length ? (page.items[page.items.length - 1] as InboxItem).seq : after;
        socket.deliver({ op: 'synced', id: frame.id ?? null, last, more: page.more });
        return;
      }
      case 'ack':
        this.inbox.ack(frame.seq);
        return;
      default:
        return;
    }
  }
}

// -- a contact ----------------------------------------------------------------------------
/** What a claim answers for one device (its last-resort KEM prekey, no one-time one). */
function bundleOf(user: FakeUser, deviceId: number, device: Device): unknown {
  return {
    user_id: user.user_id,
    device_id: deviceId,
    identity: device.publicIdentity(),
    signed_prekey: device.signedPrekey(),
    one_time_prekey: null,
    kem_prekey: { ...device.lastResortKemPrekey(), last_resort: true },
  };
}

/** A contact with one device, writing real messages to the client's device. */
export class Peer {
  readonly user: FakeUser;
  readonly device: Device;
  readonly deviceId = 1;
  #session: Session | null = null;
  #sent = 0;
  #accountKey: AccountKey;
  readonly #entries: DeviceEntry[];

  private constructor(user: FakeUser, device: Device, accountKey: AccountKey, entries: DeviceEntry[]) {
    this.user = user;
    this.device = device;
    this.#accountKey = accountKey;
    this.#entries = entries;
  }

  /** Link another device: the directory's list (signed, its version + 1) and bundles
   * name it from now on. Its id. `device`: keys of someone else's device (public,
   * self-signed) listed as this account's, as a lying account and directory can. */
  async linkDevice(server: FakeServer, device?: Device): Promise<number> {
    const id = this.#entries.length + 1;
    device ??= await Device.generate();
    this.#entries.push(DeviceEntry.of(id, `${this.user.username} ${id}`, device.identity));
    const signed = await new DeviceList(this.user.user_id, this.#entries.length, this.#entries).sign(this.#accountKey);
    server.lists.set(this.user.user_id, { user_id: this.user.user_id, account_key: b64encode(this.#accountKey.public), ...signed.toJson() });
    server.bundles.set(this.user.user_id, [...(server.bundles.get(this.user.user_id) ?? []), bundleOf(this.user, id, device)]);
    return id;
  }

  /** A new identity (a reinstall): a new account key, and a new device linked under it;
   * the directory's list is signed by the new key from now on (the contact's safety
   * number changes). */
  async resetIdentity(server: FakeServer): Promise<void> {
    this.#accountKey = await AccountKey.generate();
    await this.linkDevice(server);
  }

  static async create(server: FakeServer, username: string): Promise<Peer> {
    const user = server.addUser(username);
    const accountKey = await AccountKey.generate();
    const device = await Device.generate();
    const entries = [DeviceEntry.of(1, username, device.identity)];
    const signed = await new DeviceList(user.user_id, 1, entries).sign(accountKey);
    server.lists.set(user.user_id, { user_id: user.user_id, account_key: b64encode(accountKey.public), ...signed.toJson() });
    server.bundles.set(user.user_id, [bundleOf(user, 1, device)]);
    return new Peer(user, device, accountKey, entries);
  }

  /** A `message` item (without its seq) carrying `text` (or a control payload's bytes)
   * to the client's device. `oneTime`: a first message's session is started with the
   * first one-time prekeys the client uploaded (each time the same: a directory that
   * hands them out twice), not its last-resort KEM prekey. */
  async message(server: FakeServer, text: string | Uint8Array, options: { oneTime?: boolean } = {}): Promise<Omit<W.Message, 'seq'>> {
    const me = server.me as FakeUser;
    const plaintext = typeof text === 'string' ? utf8(text) : text;
    let wire: Uint8Array;
    if (this.#session === null) {
      const identity = server.keys.get('identity');
      const oneTime = options.oneTime === true;
      if (oneTime && (!server.oneTimePrekeys.length || !server.kemPrekeys.length)) throw new Error('the client uploaded no one-time prekeys');
      const bundle = await PrekeyBundle.fromJson({
        user_id: me.user_id,
        device_id: server.deviceId,
        identity,
        signed_prekey: server.keys.get('signed-prekey'),
        one_time_prekey: oneTime ? server.oneTimePrekeys[0] : null,
        kem_prekey: oneTime
          ? { ...server.kemPrekeys[0], last_resort: false }
          : { ...(server.keys.get('kem-last-resort') as object), last_resort: true },
      });
      // Bound to the ids the envelope below names (the client binds its own the same way).
      const binding = { initiatorUser: this.user.user_id, initiatorDevice: this.deviceId, responderUser: me.user_id, responderDevice: server.deviceId };
      [this.#session, wire] = await Session.initiate(this.device, bundle, plaintext, { binding });
    } else {
      wire = await this.#session.encrypt(plaintext);
    }
    const [a, b] = [this.user.user_id, me.user_id].sort();
    return {
      op: 'message',
      kind: 'message',
      server_id: await messageServerId(this.user.user_id, `c-${++this.#sent}-${typeof text === 'string' ? text : 'control'}`),
      from: this.user.user_id,
      from_device: this.deviceId,
      conversation: `dm:${a}:${b}`,
      body: b64encode(wire),
      commitment: null,
      sent_at: Date.now(),
      room: null,
      mentions: null,
      franking_tag: null,
    };
  }
}
