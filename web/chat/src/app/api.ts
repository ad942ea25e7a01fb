/** HTTP to the auth and key services, same origin (through the load balancer). */
import type * as W from '../generated/contract.ts';
import type { LinkState } from './devices.ts';
import type { NoticePage } from './notifications.ts';
import type { LogAsk, LogPage, LogPages } from './rooms.ts';

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
    readonly details?: unknown,
  ) {
    super(message);
  }

  /** No answer, or one that says "later" (429, 5xx): the same call may work again. */
  get transient(): boolean {
    return this.code === 'network' || this.status === 429 || this.status >= 500;
  }
}

export interface UserBrief {
  user_id: string;
  username: string;
}

export interface Tokens {
  access_token: string;
  refresh_token: string;
  session_id: string;
  user: UserBrief;
  /** The access token's lifetime in seconds (tokens.ts expiresAt, when it has no `iat`). */
  expires_in?: number;
}

export interface Challenge {
  second_factor_required: true;
  challenge_id: string;
  methods: ('totp' | 'email' | 'recovery')[];
  email_code_sent?: boolean;
}

export interface Listed {
  user_id: string;
  account_key: string;
  device_list: unknown;
  signature: string;
}

export interface BundleJson {
  user_id: string;
  device_id: number;
  identity: unknown;
  signed_prekey: unknown;
  one_time_prekey: unknown;
  kem_prekey: unknown;
}

function describe(details: unknown): string {
  if (!Array.isArray(details)) return '';
  const parts = details
    .map((d: { field?: string; problem?: string; message?: string }) => (d.field ? `${d.field}: ${d.problem ?? d.message ?? 'invalid'}` : ''))
    .filter(Boolean);
  return parts.length ? ` (${parts.join('; ')})` : '';
}

/** A room as the rooms service answers it (docs/rooms.md). */
export interface Room {
  room_id: string;
  name: string;
  topic?: string | null;
  kind: 'public' | 'private';
  state: string;
  owner?: string;
  members?: number;
  role: string | null;
  invited?: boolean;
  version?: number;
  invited_by?: string | null;
}

/** The account's preferences (the auth service's, every browser's; docs/auth.md). */
export interface Preferences {
  /** A digest of @mentions is e-mailed while no device is connected. */
  mention_emails: boolean;
  /** Members of my rooms see me online while a device of mine is connected. */
  show_presence: boolean;
}

/** One of the account's live sessions (`GET /auth/v1/sessions`; docs/auth.md). */
export interface SessionInfo {
  session_id: string;
  created_at: string;
  last_used_at: string;
  expires_at: string;
  /** The label the log-in gave (`parley-web`, `parley-cli`), null for a sign-up or a
   * log-in without one. */
  device: string | null;
  user_agent: string | null;
  ip: string | null;
  /** The session of the token that asked. */
  current: boolean;
}

/** Which second factors are on (`GET /auth/v1/2fa`, and `two_factor` in `/me`). */
export interface TwoFactorStatus {
  totp: boolean;
  email: boolean;
  recovery_codes_left: number;
}

/** The caller's account (`GET /auth/v1/me`). */
export interface Me {
  user_id: string;
  username: string;
  email: string;
  roles: string[];
  created_at: string;
  two_factor: TwoFactorStatus;
}

/** TOTP enrolment started (`POST /auth/v1/2fa/totp/setup`): the base32 secret and the
 * `otpauth://` URI an authenticator app takes. */
export interface TotpSetup {
  secret: string;
  provisioning_uri: string;
  algorithm: string;
  digits: number;
  period: number;
}

/** A room's member as the members list answers it (docs/rooms.md, "Presence"). */
export interface RoomMember {
  user_id: string;
  role: 'owner' | 'moderator' | 'member';
  joined_at: number;
  /** A device of the member's is connected now, and the member shows it. */
  online: boolean;
  /** The member's username now (null: the account is gone). */
  username?: string | null;
}

/** A membership as the rooms service answers a role change (docs/rooms.md). */
export interface Membership {
  room_id: string;
  user_id: string;
  role: 'owner' | 'moderator' | 'member';
  joined_at: number;
}

/** A room's ban (`PUT .../bans/{user_id}`, `GET .../bans`; docs/rooms.md "A ban"). */
export interface RoomBan {
  room_id: string;
  user_id: string;
  /** Who banned them (the owner or a moderator). */
  banned_by: string;
  /** When (Unix ms). */
  at: number;
}

/** A public room's timeline message. */
export interface RoomMessage {
  room_id: string;
  seq: number;
  sender: string;
  client_id: string;
  text: string;
  mentions: string[];
  sent_at: number;
  rev?: number;
  marker?: string | null;
}

/** A page of a private room's log (`GET /delivery/v1/rooms/{id}/log`, docs/protocol.md
 * "Private rooms"): its messages in the shape of the `room_message` frame. */
export interface RoomLogPage extends LogPage<W.RoomMessage> {
  room: string;
}

/** The answer to `POST /delivery/v1/rooms/logs` (docs/protocol.md "Private rooms"): a page
 * of each room asked for that the caller may read, in the order asked, and the ids of
 * the others (no such room, not a member, a public room). */
export interface RoomLogsAnswer extends LogPages<W.RoomMessage> {
  pages: RoomLogPage[];
}

/** Where the APIs and the WebSocket are: '' for the page's own origin (HAProxy serves
 * the web client and the APIs together: `make run`, docker-compose), or the origin
 * `/config.json` names (`api_url`: on AWS the web client is on CloudFront's domain and
 * the APIs on the load balancer's, which allows it with PARLEY_CORS_ORIGINS). */
let apiOrigin = '';

export function setApiOrigin(url: string): void {
  apiOrigin = url.replace(/\/+$/, '');
}

export const apiUrl = (path: string): string => apiOrigin + path;

/** The gateway's WebSocket URL: on the API's origin, else on the page's. */
export function socketUrl(page: { protocol: string; host: string } = location): string {
  if (apiOrigin) return `${apiOrigin.replace(/^http/, 'ws')}/ws`;
  return `${page.protocol === 'https:' ? 'wss' : 'ws'}://${page.host}/ws`;
}

/** Read `/config.json` once, before anything is called. None (404): the page's origin.
 * Anything else that fails (a timeout, a 5xx, a 403, not JSON) is tried again, `tries`
 * times in all, then thrown: on AWS the page's own origin is CloudFront, which would
 * answer every API call with the app's page. */
export async function loadApiOrigin(tries = 5, backoffMs = 1000): Promise<void> {
  let config: unknown;
  for (let attempt = 1; ; attempt++) {
    try {
      const resp = await fetch('/config.json', { cache: 'no-cache', credentials: 'omit', signal: AbortSignal.timeout(10_000) });
      if (resp.status === 404) return;
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      config = await resp.json();
      break;
    } catch (error) {
      if (attempt >= tries) throw new Error(`Cannot read /config.json (${String((error as Error).message ?? error)}).`);
      await new Promise((resolve) => setTimeout(resolve, backoffMs * 2 ** (attempt - 1)));
    }
  }
  const url = (config as { api_url?: unknown } | null)?.api_url;
  if (typeof url === 'string' && /^https?:\/\/[^/?#]+\/?$/.test(url)) setApiOrigin(url);
  else if (url !== undefined) console.warn('config.json: api_url is not an origin (https://host); using this page\'s');
}

const roomPath = (roomId: string) => `/rooms/v1/rooms/${encodeURIComponent(roomId)}`;

export class Api {
  token: string | null = null;

  async request<T>(method: string, path: string, body?: unknown, auth = true): Promise<T> {
    const headers: Record<string, string> = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (auth && this.token) headers['Authorization'] = `Bearer ${this.token}`;
    let resp: Response;
    try {
      resp = await fetch(apiUrl(path), { method, headers, body: body === undefined ? null : JSON.stringify(body), credentials: 'omit' });
    } catch {
      throw new ApiError('network', 'Cannot reach the Parley server.', 0);
    }
    if (resp.status === 204) return undefined as T;
    let data: unknown = null;
    try {
      data = await resp.json();
    } catch {
      data = null;
    }
    if (!resp.ok) {
      const err = (data as { error?: { code?: string; message?: string; details?: unknown } } | null)?.error;
      const code = err?.code ?? `http_${resp.status}`;
      throw new ApiError(code, (err?.message ?? resp.statusText) + describe(err?.details), resp.status, err?.details);
    }
    return data as T;
  }

  // -- auth
  signup(username: string, email: string, password: string, deviceId: number): Promise<Tokens> {
    return this.request('POST', '/auth/v1/signup', { username, email, password, device_id: deviceId }, false);
  }
  login(username: string, password: string, deviceId: number): Promise<Tokens | Challenge> {
    return this.request('POST', '/auth/v1/login', { username, password, device: 'parley-web', device_id: deviceId }, false);
  }
  login2fa(challengeId: string, method: string, code: string): Promise<Tokens> {
    return this.request('POST', '/auth/v1/login/2fa', { challenge_id: challengeId, method, code }, false);
  }
  sendEmailCode(challengeId: string): Promise<unknown> {
    return this.request('POST', '/auth/v1/login/2fa/email', { challenge_id: challengeId }, false);
  }
  refresh(refreshToken: string): Promise<Tokens> {
    return this.request('POST', '/auth/v1/token/refresh', { refresh_token: refreshToken }, false);
  }
  logout(): Promise<void> {
    return this.request('POST', '/auth/v1/logout');
  }
  requestReset(email: string): Promise<unknown> {
    return this.request('POST', '/auth/v1/password/reset', { email }, false);
  }
  confirmReset(token: string, newPassword: string): Promise<void> {
    return this.request('POST', '/auth/v1/password/reset/confirm', { token, new_password: newPassword }, false);
  }
  preferences(): Promise<Preferences> {
    return this.request('GET', '/auth/v1/me/preferences');
  }
  setPreferences(changes: Partial<Preferences>): Promise<Preferences> {
    return this.request('PATCH', '/auth/v1/me/preferences', changes);
  }
  me(): Promise<Me> {
    return this.request('GET', '/auth/v1/me');
  }
  /** The account's live sessions (`current` marks this one). */
  sessions(): Promise<{ sessions: SessionInfo[] }> {
    return this.request('GET', '/auth/v1/sessions');
  }
  /** End one of the account's sessions (`session_not_found` for one that is not). */
  revokeSession(sid: string): Promise<void> {
    return this.request('DELETE', `/auth/v1/sessions/${encodeURIComponent(sid)}`);
  }
  /** End every session of the account but this one: how many were ended. */
  revokeOtherSessions(): Promise<{ revoked: number }> {
    return this.request('DELETE', '/auth/v1/sessions');
  }
  totpSetup(password: string): Promise<TotpSetup> {
    return this.request('POST', '/auth/v1/2fa/totp/setup', { password });
  }
  /** The first code of the authenticator: TOTP is on; the recovery codes (none when
   * another factor was on already: they were shown then). */
  totpConfirm(code: string): Promise<{ recovery_codes: string[] }> {
    return this.request('POST', '/auth/v1/2fa/totp/confirm', { code });
  }
  totpDisable(password: string): Promise<void> {
    return this.request('POST', '/auth/v1/2fa/totp/disable', { password });
  }
  /** A code is mailed to the account's address (202). */
  emailSetup(password: string): Promise<{ message: string }> {
    return this.request('POST', '/auth/v1/2fa/email/setup', { password });
  }
  emailConfirm(code: string): Promise<{ recovery_codes: string[] }> {
    return this.request('POST', '/auth/v1/2fa/email/confirm', { code });
  }
  emailDisable(password: string): Promise<void> {
    return this.request('POST', '/auth/v1/2fa/email/disable', { password });
  }
  /** New recovery codes: the old ones stop working. */
  newRecoveryCodes(password: string): Promise<{ recovery_codes: string[] }> {
    return this.request('POST', '/auth/v1/2fa/recovery-codes', { password });
  }
  user(usernameOrId: string): Promise<UserBrief> {
    return this.request('GET', `/auth/v1/users/${encodeURIComponent(usernameOrId.toLowerCase())}`);
  }

  // -- keys
  putIdentity(did: number, identity: unknown): Promise<unknown> {
    return this.request('PUT', `/keys/v1/devices/${did}/identity`, identity);
  }
  putSignedPrekey(did: number, prekey: unknown): Promise<unknown> {
    return this.request('PUT', `/keys/v1/devices/${did}/signed-prekey`, prekey);
  }
  putLastResort(did: number, prekey: unknown): Promise<unknown> {
    return this.request('PUT', `/keys/v1/devices/${did}/kem-last-resort`, prekey);
  }
  uploadOneTime(did: number, prekeys: unknown[]): Promise<unknown> {
    return this.request('POST', `/keys/v1/devices/${did}/one-time-prekeys`, { prekeys });
  }
  uploadKem(did: number, prekeys: unknown[]): Promise<unknown> {
    return this.request('POST', `/keys/v1/devices/${did}/kem-prekeys`, { prekeys });
  }
  counts(did: number): Promise<{ one_time: number; kem_one_time: number }> {
    return this.request('GET', `/keys/v1/devices/${did}/counts`);
  }
  async checkKeys(did: number, digest: string): Promise<boolean> {
    const r = await this.request<{ match: boolean }>('POST', `/keys/v1/devices/${did}/check`, { digest });
    return r.match;
  }
  claimBundles(userId: string, deviceIds: number[]): Promise<Listed & { bundles: BundleJson[] }> {
    return this.request('GET', `/keys/v1/users/${encodeURIComponent(userId)}/bundles?device_id=${deviceIds.join(',')}`);
  }
  /** Claim the bundles of many users at once (at most 100; per user every listed
   * device, or these): each user's answer as claimBundles gives it, or why not. */
  claimMany(users: Record<string, number[] | null>): Promise<{ claimed: (Listed & { bundles: BundleJson[] })[]; failed: { user_id: string; code: string; message: string }[] }> {
    const body = Object.fromEntries(Object.entries(users).map(([u, d]) => [u, d === null ? {} : { device_ids: d }]));
    return this.request('POST', '/keys/v1/users/bundles', { users: body });
  }
  /** Many users' signed device lists (at most 1,000); `missing`: those with no account key. */
  deviceLists(userIds: string[]): Promise<{ lists: Listed[]; missing: string[] }> {
    return this.request('POST', '/keys/v1/users/device-lists', { user_ids: userIds });
  }
  userDevices(userId: string): Promise<Listed> {
    return this.request('GET', `/keys/v1/users/${encodeURIComponent(userId)}/devices`);
  }
  putAccount(accountKey: string, signed: unknown): Promise<unknown> {
    return this.request('PUT', '/keys/v1/account', { account_key: accountKey, ...(signed as object) });
  }
  /** The next version of this account's device list (docs/devices.md; dropped devices
   * are removed): `conflict` unless it is the current version + 1. */
  putDeviceList(signed: unknown): Promise<unknown> {
    return this.request('PUT', '/keys/v1/device-list', signed);
  }
  /** Post a link for this (pending) device, to be approved by another device. */
  createLink(linkId: string, deviceId: number, name: string, ePub?: string): Promise<unknown> {
    // e_pub: the code's key part, for the approver's typo check (docs/keys.md).
    return this.request('POST', '/keys/v1/links', { link_id: linkId, device_id: deviceId, name, ...(ePub === undefined ? {} : { e_pub: ePub }) });
  }
  /** A link of this account, with its approval once there is one. */
  getLink(linkId: string): Promise<LinkState> {
    return this.request('GET', `/keys/v1/links/${encodeURIComponent(linkId)}`);
  }
  /** Withdraw this device's link (linking given up): its code can no longer be approved. */
  cancelLink(linkId: string): Promise<void> {
    return this.request('DELETE', `/keys/v1/links/${encodeURIComponent(linkId)}`);
  }
  /** Approve a link: the account key sealed for the new device (once). */
  approveLink(linkId: string, sealed: string): Promise<void> {
    return this.request('PUT', `/keys/v1/links/${encodeURIComponent(linkId)}/approval`, { sealed });
  }

  // -- rooms (docs/rooms.md; the same calls as client/parley/api.py)
  createRoom(name: string, kind: 'public' | 'private'): Promise<Room> {
    return this.request('POST', '/rooms/v1/rooms', { name, kind });
  }
  rooms(before?: unknown): Promise<{ rooms: Room[]; next_before: unknown }> {
    return this.request('GET', `/rooms/v1/rooms?limit=200${before == null ? '' : `&before=${encodeURIComponent(String(before))}`}`);
  }
  room(roomId: string): Promise<Room> {
    return this.request('GET', roomPath(roomId));
  }
  directory(q: string, limit = 50): Promise<{ rooms: Room[]; next_after: unknown }> {
    return this.request('GET', `/rooms/v1/directory?limit=${limit}${q ? `&q=${encodeURIComponent(q)}` : ''}`);
  }
  joinRoom(roomId: string): Promise<unknown> {
    return this.request('POST', `${roomPath(roomId)}/join`);
  }
  leaveRoom(roomId: string): Promise<void> {
    return this.request('POST', `${roomPath(roomId)}/leave`);
  }
  roomMembers(roomId: string, after?: unknown): Promise<{ members: RoomMember[]; next_after: unknown }> {
    return this.request('GET', `${roomPath(roomId)}/members?limit=500${after == null ? '' : `&after=${encodeURIComponent(String(after))}`}`);
  }
  /** Close or reopen the room, rename it or set its topic (owner and moderators). */
  updateRoom(roomId: string, changes: { state?: 'open' | 'closed'; name?: string; topic?: string }): Promise<Room> {
    return this.request('PATCH', roomPath(roomId), changes);
  }
  /** Remove a member (the owner anyone but themself; moderators plain members). */
  removeMember(roomId: string, userId: string): Promise<void> {
    return this.request('DELETE', `${roomPath(roomId)}/members/${encodeURIComponent(userId)}`);
  }
  /** Ban a user from the room (owner and moderators, the removal's rules): a member is
   * removed, an invitation withdrawn, and joining, accepting and invitations are refused
   * (`banned`) until the ban is lifted. */
  banUser(roomId: string, userId: string): Promise<RoomBan> {
    return this.request('PUT', `${roomPath(roomId)}/bans/${encodeURIComponent(userId)}`);
  }
  /** Lift a ban (owner and moderators; `user_not_found` when they are not banned). */
  liftBan(roomId: string, userId: string): Promise<void> {
    return this.request('DELETE', `${roomPath(roomId)}/bans/${encodeURIComponent(userId)}`);
  }
  /** A page of the room's bans in user id order (owner and moderators); `next_after`:
   * where the next page starts, null at the end. */
  roomBans(roomId: string, after?: string | null, limit = 500): Promise<{ bans: RoomBan[]; next_after: string | null }> {
    return this.request('GET', `${roomPath(roomId)}/bans?limit=${limit}${after == null ? '' : `&after=${encodeURIComponent(after)}`}`);
  }
  /** Make a member a moderator (`on`) or a plain member again (the owner). */
  setModerator(roomId: string, userId: string, on: boolean): Promise<Membership> {
    return this.request(on ? 'PUT' : 'DELETE', `${roomPath(roomId)}/moderators/${encodeURIComponent(userId)}`);
  }
  /** Hand the room over to another member (the owner, who becomes a moderator). */
  handOver(roomId: string, userId: string): Promise<Room> {
    return this.request('PUT', `${roomPath(roomId)}/owner`, { user_id: userId });
  }
  invite(roomId: string, user: string): Promise<unknown> {
    return this.request('POST', `${roomPath(roomId)}/invitations`, { user });
  }
  acceptInvitation(roomId: string): Promise<unknown> {
    return this.request('POST', `${roomPath(roomId)}/invitation/accept`);
  }
  declineInvitation(roomId: string): Promise<void> {
    return this.request('POST', `${roomPath(roomId)}/invitation/decline`);
  }
  invitations(): Promise<{ invitations: { room_id: string; invited_by: string }[]; rooms: Room[] }> {
    return this.request('GET', '/rooms/v1/invitations?limit=200');
  }
  postRoomMessage(roomId: string, clientId: string, text: string): Promise<RoomMessage> {
    return this.request('POST', `${roomPath(roomId)}/messages`, { client_id: clientId, text });
  }
  editRoomMessage(roomId: string, seq: number, text: string): Promise<RoomMessage> {
    return this.request('PATCH', `${roomPath(roomId)}/messages/${seq}`, { text });
  }
  deleteRoomMessage(roomId: string, seq: number): Promise<RoomMessage> {
    return this.request('DELETE', `${roomPath(roomId)}/messages/${seq}`);
  }
  /** Undo a moderator's removal of a public-room message (owner or moderator): the
   * message as it was before the removal. */
  restoreRoomMessage(roomId: string, seq: number): Promise<RoomMessage> {
    return this.request('POST', `${roomPath(roomId)}/messages/${seq}/restore`);
  }
  notifications(before: number | null, limit = 50): Promise<NoticePage> {
    return this.request('GET', `/rooms/v1/notifications?limit=${limit}${before == null ? '' : `&before=${before}`}`);
  }
  readNotifications(upTo: number): Promise<{ unread: number }> {
    return this.request('POST', '/rooms/v1/notifications/read', { up_to: upTo });
  }
  /** A page of a private room's log: the messages after `after`, stored since `since`
   * (Unix ms; and since we joined), oldest first. */
  roomLog(roomId: string, after: number, since: number, limit: number): Promise<RoomLogPage> {
    return this.request('GET', `/delivery/v1/rooms/${encodeURIComponent(roomId)}/log?after=${after}&since=${since}&limit=${limit}`);
  }
  /** A page of each of several private rooms' logs in one call (1 to 100 rooms, each
   * once; `cursors`: each room with the number to read after): the messages stored since
   * `since` (Unix ms; and since we joined), at most `limit` (1 to 1000) per room. A page
   * that says `more` is read on with {@link roomLog}. */
  roomLogs(cursors: readonly LogAsk[], since: number, limit: number): Promise<RoomLogsAnswer> {
    return this.request('POST', '/delivery/v1/rooms/logs', {
      rooms: cursors.map(({ room, after }) => ({ room, after })),
      since,
      limit,
    });
  }
  roomMessages(roomId: string, before: number | null, limit = 50): Promise<{ messages: RoomMessage[]; next_before: number | null }> {
    return this.request('GET', `${roomPath(roomId)}/messages?limit=${limit}${before == null ? '' : `&before=${before}`}`);
  }
}
