// The admin API of the auth service (docs/auth.md); errors carry a stable code.
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
  actor: string;
  action: string;
  target_id: string | null;
  details: Record<string, unknown>;
  request_id: string | null;
  ip: string | null;
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

export class Api {
  constructor(private token: () => string | undefined) {}

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token() ?? ""}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(`/auth/v1/admin${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (resp.status === 204) return undefined as T;
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = data?.error ?? {};
      throw new ApiError(resp.status, err.code ?? "internal", err.message ?? resp.statusText);
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
  audit(targetId?: string, before?: string | null) {
    const params = new URLSearchParams({ limit: "50" });
    if (targetId) params.set("target_id", targetId);
    if (before) params.set("before", before);
    return this.call<{ entries: AuditEntry[]; next_before: string | null }>("GET", `/audit?${params}`);
  }
  clients() {
    return this.call<{ clients: OAuthClient[] }>("GET", "/clients");
  }
  createClient(body: unknown) {
    return this.call<OAuthClient>("POST", "/clients", body);
  }
}
