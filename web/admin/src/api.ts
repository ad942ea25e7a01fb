// The admin APIs of the auth, rooms and delivery services (docs/auth.md,
// docs/moderation.md, docs/moderation-messages.md); errors carry a stable code.
export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface TwoFactor {
  totp: boolean;
  email: boolean;
  recovery_codes_left: number;
}

export interface AdminUser {
  user_id: string;
  username: string;
  email: string;
  roles: string[];
  blocked: boolean;
  blocked_reason: string | null;
  blocked_at: string | null;
  created_at: string;
  updated_at: string;
  two_factor: TwoFactor;
  live_sessions: number;
}

export interface AdminSession {
  session_id: string;
  created_at: string;
  last_used_at: string;
  expires_at: string;
  device: string | null;
  user_agent: string | null;
  ip: string | null;
  client_id: string | null;
}

export interface AuditEntry {
  id: string;
  at: string;
  actor_id: string;
  actor: string; // the username where the service recorded it, else actor_id
  actor_role?: string | null; // admin, owner, moderator, operator (the CLI)
  action: string;
  target_id: string | null;
  target_type: string | null;
  service: string;
  details: Record<string, unknown>;
  before: Record<string, unknown> | null;
  after: Record<string, unknown> | null;
  request_id: string | null;
  ip: string | null;
}

// Rooms (services/rooms/models.py). Times are Unix milliseconds.
export type RoomKind = "private" | "public";
export type RoomState = "open" | "closed";

export interface AdminRoom {
  room_id: string;
  name: string;
  topic: string;
  kind: RoomKind;
  state: RoomState;
  owner: string | null;
  members: number;
  created_at: number;
  created_by: string | null;
  version: number;
  messages: number;
  deleted_at: number | null;
}

export interface RoomMember {
  user_id: string;
  role: "owner" | "moderator" | "member";
  joined_at: number;
}

export type Marker = "edited" | "edited_by_moderator" | "removed_by_moderator" | "deleted_by_author";

export interface RoomMessage {
  room_id: string;
  seq: number;
  sender: string;
  client_id: string;
  text: string;
  mentions: string[];
  sent_at: number;
  rev: number;
  marker: Marker | null;
  edited_at: number | null;
}

export interface Revision {
  rev: number;
  text: string;
  mentions: string[];
  marker: Marker | null;
  by: string;
  role: string;
  at: number;
  reason: string | null;
}

export interface RevisionHistory {
  room_id: string;
  seq: number;
  sender: string;
  current: RoomMessage;
  revisions: Revision[];
}

export interface RoomFilter {
  q: string;
  kind: "" | RoomKind;
  state: "" | RoomState;
}

// Reports of end-to-end encrypted messages (services/delivery/models.py).
export type ReportState = "open" | "actioned" | "dismissed";

export interface Report {
  id: string;
  state: ReportState;
  server_id: string;
  conversation: string | null;
  room: string | null;
  sender: string;
  sender_device: number;
  sent_at: number;
  reporter: string;
  reporter_device: number | null;
  text: string;
  created_at: number;
  resolution: { note: string; by: string; at: number } | null;
}

export interface Removed {
  server_id: string;
  by: string;
  at: number;
  inboxes: number;
}

export interface OAuthClient {
  client_id: string;
  name: string;
  type: "confidential" | "public";
  redirect_uris: string[];
  scopes: string[];
  built_in: boolean;
  disabled: boolean;
  client_secret?: string | null;
}

/** Where the APIs are: '' for the console's own origin (HAProxy serves both), or the
 * origin its config.json names (`api_url`: on AWS the console is on CloudFront's domain
 * and the APIs on the load balancer's, which allows it with PARLEY_CORS_ORIGINS). */
let apiOrigin = "";

export function setApiOrigin(url: string | undefined): void {
  apiOrigin = url && /^https?:\/\/[^/?#]+\/?$/.test(url) ? url.replace(/\/+$/, "") : "";
}

export class Api {
  constructor(private token: () => string | undefined) {}

  /** A call to the auth service's admin API (`path` below /auth/v1/admin). */
  call<T>(method: string, path: string, body?: unknown): Promise<T> {
    return this.request<T>(method, `/auth/v1/admin${path}`, body);
  }

  /** A call to any service through the load balancer; an error answer throws ApiError. */
  async request<T>(method: string, url: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token() ?? ""}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp: Response;
    try {
      resp = await fetch(apiOrigin + url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError(0, "network", `The server did not answer (${e instanceof Error ? e.message : String(e)}).`);
    }
    if (resp.status === 204) return undefined as T;
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = data?.error ?? {};
      throw new ApiError(resp.status, err.code ?? "internal", err.message ?? `HTTP ${resp.status} ${resp.statusText}`);
    }
    return data as T;
  }

  users(q: string, cursor?: string | null) {
    const params = new URLSearchParams({ limit: "25" });
    if (q) params.set("q", q);
    if (cursor) params.set("cursor", cursor);
    return this.call<{ users: AdminUser[]; next_cursor: string | null }>("GET", `/users?${params}`);
  }
  user(id: string) {
    return this.call<AdminUser>("GET", `/users/${encodeURIComponent(id)}`);
  }
  edit(id: string, patch: Partial<Pick<AdminUser, "username" | "email" | "roles">>) {
    return this.call<AdminUser>("PATCH", `/users/${encodeURIComponent(id)}`, patch);
  }
  block(id: string, reason: string) {
    return this.call<AdminUser>("POST", `/users/${encodeURIComponent(id)}/block`, { reason: reason || null });
  }
  unblock(id: string) {
    return this.call<AdminUser>("POST", `/users/${encodeURIComponent(id)}/unblock`);
  }
  sessions(id: string) {
    return this.call<{ sessions: AdminSession[] }>("GET", `/users/${encodeURIComponent(id)}/sessions`);
  }
  endSession(id: string, sid: string) {
    return this.call<void>("DELETE", `/users/${encodeURIComponent(id)}/sessions/${encodeURIComponent(sid)}`);
  }
  /** A page of the audit log, newest first; `cursor` is the previous page's `next_cursor`
   * (`before`/`next_before`, by time, would skip the entries of the page's last millisecond). */
  audit(targetId?: string, cursor?: string | null) {
    const params = new URLSearchParams({ limit: "50" });
    if (targetId) params.set("target_id", targetId);
    if (cursor) params.set("cursor", cursor);
    return this.call<{ entries: AuditEntry[]; next_before: string | null; next_cursor: string | null }>(
      "GET",
      `/audit?${params}`,
    );
  }
  clients() {
    return this.call<{ clients: OAuthClient[] }>("GET", "/clients");
  }
  createClient(body: unknown) {
    return this.call<OAuthClient>("POST", "/clients", body);
  }

  /** A user's public name (any signed-in caller may look one up; not an admin read). */
  username(userId: string) {
    return this.request<{ user_id: string; username: string }>("GET", `/auth/v1/users/${encodeURIComponent(userId)}`);
  }
  /** Audit entries filtered by the API (actor_id, action, target_type, target_id, service). */
  auditFor(filters: Record<string, string>, limit = 20) {
    const params = new URLSearchParams({ ...filters, limit: String(limit) });
    return this.call<{ entries: AuditEntry[] }>("GET", `/audit?${params}`);
  }

  // Rooms (docs/moderation.md, "Admin routes").
  rooms(filter: RoomFilter, cursor?: string | null) {
    const params = new URLSearchParams({ limit: "50" });
    if (filter.q) params.set("q", filter.q);
    if (filter.kind) params.set("kind", filter.kind);
    if (filter.state) params.set("state", filter.state);
    if (cursor) params.set("cursor", cursor);
    return this.request<{ rooms: AdminRoom[]; next_cursor: string | null }>("GET", `${ROOMS}?${params}`);
  }
  room(id: string) {
    return this.request<AdminRoom>("GET", roomUrl(id));
  }
  members(id: string, after?: number | null) {
    const params = new URLSearchParams({ limit: "50" });
    if (after) params.set("after", String(after));
    return this.request<{ members: RoomMember[]; next_after: number | null }>("GET", `${roomUrl(id)}/members?${params}`);
  }
  // `reason` (optional): why, kept in the audit entry (docs/moderation.md).
  closeRoom(id: string, reason = "") {
    return this.request<AdminRoom>("POST", `${roomUrl(id)}/close${why(reason)}`);
  }
  reopenRoom(id: string, reason = "") {
    return this.request<AdminRoom>("POST", `${roomUrl(id)}/reopen${why(reason)}`);
  }
  setKind(id: string, kind: RoomKind, reason = "") {
    return this.request<AdminRoom>("PUT", `${roomUrl(id)}/kind${why(reason)}`, { kind });
  }
  removeMember(id: string, userId: string, reason = "") {
    return this.request<void>("DELETE", `${roomUrl(id)}/members/${encodeURIComponent(userId)}${why(reason)}`);
  }
  /** Make a member the owner; the owner there was (if any) becomes a moderator. */
  setOwner(id: string, userId: string, reason = "") {
    return this.request<AdminRoom>("PUT", `${roomUrl(id)}/owner${why(reason)}`, { user_id: userId });
  }
  deleteRoom(id: string, reason = "") {
    return this.request<void>("DELETE", `${roomUrl(id)}${why(reason)}`);
  }
  /** A public room's timeline, newest first: the members' route (admins have no timeline read of their own). */
  timeline(id: string, before?: number | null) {
    const params = new URLSearchParams({ limit: "20" });
    if (before) params.set("before", String(before));
    return this.request<{ messages: RoomMessage[]; next_before: number | null }>(
      "GET",
      `/rooms/v1/rooms/${encodeURIComponent(id)}/messages?${params}`,
    );
  }
  /** `clientId` (from newClientId) is the post's idempotency key: a resend with the same one
   * returns the message posted first, whatever its text, so one per text posted. */
  postAsModerator(id: string, text: string, clientId: string) {
    return this.request<RoomMessage>("POST", `${roomUrl(id)}/messages`, { client_id: clientId, text });
  }
  hideMessage(id: string, seq: number, reason: string) {
    return this.request<RoomMessage>("POST", `${roomUrl(id)}/messages/${seq}/hide`, { reason: reason || null });
  }
  /** Undo a moderator's or an admin's removal: the message as it was before it (409 `conflict` otherwise). */
  restoreMessage(id: string, seq: number, reason = "") {
    return this.request<RoomMessage>("POST", `${roomUrl(id)}/messages/${seq}/restore`, { reason: reason || null });
  }
  editMessage(id: string, seq: number, text: string, reason: string) {
    return this.request<RoomMessage>("PATCH", `${roomUrl(id)}/messages/${seq}`, { text, reason: reason || null });
  }
  revisions(id: string, seq: number) {
    return this.request<RevisionHistory>("GET", `${roomUrl(id)}/messages/${seq}/revisions`);
  }

  // Reports (docs/moderation-messages.md).
  reports(state: "" | ReportState, after?: string | null) {
    const params = new URLSearchParams({ limit: "50" });
    if (state) params.set("state", state);
    if (after) params.set("after", after);
    return this.request<{ reports: Report[]; next: string | null }>("GET", `${REPORTS}?${params}`);
  }
  report(id: string) {
    return this.request<Report>("GET", `${REPORTS}/${encodeURIComponent(id)}`);
  }
  resolve(id: string, state: "actioned" | "dismissed", note: string) {
    return this.request<Report>("POST", `${REPORTS}/${encodeURIComponent(id)}/resolve`, { state, note });
  }
  removeMessage(serverId: string, reason: string) {
    return this.request<Removed>("POST", `/delivery/v1/admin/messages/${encodeURIComponent(serverId)}/remove`, { reason });
  }
}

/** A new idempotency key for a post (services/rooms/models.py MessageIn.client_id). */
export function newClientId(): string {
  return `admin-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

const ROOMS = "/rooms/v1/admin/rooms";
const REPORTS = "/delivery/v1/admin/reports";
/** The `?reason=` of a room action, or nothing when none is given. */
function why(reason: string): string {
  return reason.trim() ? `?${new URLSearchParams({ reason: reason.trim() })}` : "";
}

const roomUrl = (id: string) => `${ROOMS}/${encodeURIComponent(id)}`;
