import { useEffect, useState } from "preact/hooks";
import type { AdminSession, AdminUser, Api, AuditEntry, OAuthClient } from "./api";
import type { Navigate } from "./main";
import { AuditActor, Link, Problem, auditDetails, noticeAction, useBusy, usePagedList, when } from "./ui";

export function UsersPage({ api, navigate }: { api: Api; navigate: Navigate }) {
  const [q, setQ] = useState(""); // the field; "More" pages with the search submitted
  const { items: users, next, error, load, more } = usePagedList(async (query: string, cursor?: string | null) => {
    const page = await api.users(query, cursor);
    return { items: page.users, next: page.next_cursor };
  });
  useEffect(() => void load(""), []);

  return (
    <section>
      <h1>Users</h1>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          // The field as it is now, not as of the last render (see Rooms).
          const typed = (e.currentTarget.elements.namedItem("q") as HTMLInputElement).value;
          setQ(typed);
          void load(typed);
        }}
      >
        <input id="search" name="q" placeholder="Username or e-mail prefix" value={q} onInput={(e) => setQ(e.currentTarget.value)} />
        <button type="submit">Search</button>
      </form>
      <Problem error={error} />
      <table>
        <thead>
          <tr>
            <th>Username</th>
            <th>E-mail</th>
            <th>Roles</th>
            <th>State</th>
            <th>Sessions</th>
          </tr>
        </thead>
        <tbody>
          {users.map((u) => (
            <tr key={u.user_id} class="clickable" onClick={() => navigate(`users/${u.user_id}`)}>
              <td>
                <a href={`/admin/users/${u.user_id}`} onClick={(e) => e.preventDefault()}>
                  {u.username}
                </a>
              </td>
              <td>{u.email}</td>
              <td>{u.roles.join(", ")}</td>
              <td>{u.blocked ? <span class="badge bad">blocked</span> : <span class="badge">active</span>}</td>
              <td>{u.live_sessions}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {next && <button class="secondary" onClick={() => void more()}>More</button>}
    </section>
  );
}

export function UserPage({ api, id, navigate }: { api: Api; id: string; navigate: Navigate }) {
  const [user, setUser] = useState<AdminUser | null>(null);
  const [sessions, setSessions] = useState<AdminSession[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [reason, setReason] = useState("");
  const [edit, setEdit] = useState({ username: "", email: "", admin: false });
  const [notice, setNotice] = useState("");
  const [busy, run] = useBusy();

  const refresh = async () => {
    try {
      const u = await api.user(id);
      setUser(u);
      setEdit({ username: u.username, email: u.email, admin: u.roles.includes("admin") });
      setSessions((await api.sessions(id)).sessions);
      setError(null);
    } catch (e) {
      setError(e);
    }
  };
  useEffect(() => void refresh(), [id]);

  const act = noticeAction(run, refresh, setNotice, setError);

  if (!user) return <Problem error={error} />;
  return (
    <section>
      <p>
        <a href="/admin/" onClick={(e) => (e.preventDefault(), navigate(""))}>← Users</a>
      </p>
      <h1>
        {user.username} {user.blocked ? <span class="badge bad" id="state">blocked</span> : <span class="badge" id="state">active</span>}
      </h1>
      {notice && <p class="notice" role="status">{notice}</p>}
      <Problem error={error} />
      <dl class="facts">
        <dt>User id</dt>
        <dd><code>{user.user_id}</code></dd>
        <dt>Created</dt>
        <dd>{when(user.created_at)}</dd>
        <dt>Second factor</dt>
        <dd>{[user.two_factor.totp && "TOTP", user.two_factor.email && "e-mail"].filter(Boolean).join(", ") || "none"}</dd>
        {user.blocked && (
          <>
            <dt>Blocked</dt>
            <dd>{when(user.blocked_at)} {user.blocked_reason ? `— ${user.blocked_reason}` : ""}</dd>
          </>
        )}
      </dl>
      <h2>Edit</h2>
      <form
        class="grid"
        onSubmit={(e) => {
          e.preventDefault();
          // Only what this admin changed since the page loaded: the API writes every field
          // it is sent, so a field sent as loaded would undo another admin's change of it
          // made meanwhile (a revoked admin role given back, an address put back).
          const patch: Parameters<Api["edit"]>[1] = {};
          if (edit.username !== user.username) patch.username = edit.username;
          if (edit.email !== user.email) patch.email = edit.email;
          if (edit.admin !== user.roles.includes("admin")) {
            const others = user.roles.filter((r) => r !== "admin");
            patch.roles = edit.admin ? [...others, "admin"] : others;
          }
          if (!Object.keys(patch).length) {
            setError(null);
            setNotice("Nothing to change.");
            return;
          }
          // The notice, then the user as the API has it now (the refresh).
          void act(() => api.edit(id, patch), "Saved.");
        }}
      >
        <label>
          Username <input value={edit.username} onInput={(e) => setEdit({ ...edit, username: e.currentTarget.value })} />
        </label>
        <label>
          E-mail <input value={edit.email} onInput={(e) => setEdit({ ...edit, email: e.currentTarget.value })} />
        </label>
        <label class="check">
          <input type="checkbox" checked={edit.admin} onChange={(e) => setEdit({ ...edit, admin: e.currentTarget.checked })} /> Admin
        </label>
        <button type="submit" disabled={busy}>Save</button>
      </form>
      <h2>Block</h2>
      {user.blocked ? (
        <button id="unblock" disabled={busy} onClick={() => void act(() => api.unblock(id), "Unblocked.")}>Unblock</button>
      ) : (
        <form
          class="row"
          onSubmit={(e) => {
            e.preventDefault();
            void act(() => api.block(id, reason), "Blocked: every session ended.");
          }}
        >
          <input id="reason" placeholder="Reason (kept in the audit log)" value={reason} onInput={(e) => setReason(e.currentTarget.value)} />
          <button id="block" type="submit" class="danger" disabled={busy}>Block</button>
        </form>
      )}
      <h2>Live sessions ({sessions.length})</h2>
      <table>
        <thead>
          <tr>
            <th>Started</th>
            <th>Last used</th>
            <th>Device / app</th>
            <th>IP</th>
            <th></th>
          </tr>
        </thead>
        <tbody>
          {sessions.map((s) => (
            <tr key={s.session_id}>
              <td>{when(s.created_at)}</td>
              <td>{when(s.last_used_at)}</td>
              <td>{s.client_id ? `${s.device ?? ""} (${s.client_id})` : s.device ?? s.user_agent ?? "–"}</td>
              <td>{s.ip ?? "–"}</td>
              <td>
                <button class="secondary" disabled={busy} onClick={() => void act(() => api.endSession(id, s.session_id), "Session ended.")}>
                  End
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

export function AuditPage({ api, navigate }: { api: Api; navigate: Navigate }) {
  const [entries, setEntries] = useState<AuditEntry[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, run] = useBusy();
  // By cursor: a page by time (`before`) skips the entries of the last one's millisecond.
  const load = (cursor?: string | null) =>
    run(async () => {
      try {
        const page = await api.audit(undefined, cursor);
        setEntries((shown) => (cursor ? [...shown, ...page.entries] : page.entries));
        setNext(page.next_cursor);
        setError(null);
      } catch (e) {
        setError(e);
      }
    });
  useEffect(() => void load(), []);
  return (
    <section>
      <h1>Audit log</h1>
      <Problem error={error} />
      <table id="audit">
        <thead>
          <tr>
            <th>When</th>
            <th>Who</th>
            <th>Service</th>
            <th>Action</th>
            <th>Target</th>
            <th>Details</th>
          </tr>
        </thead>
        <tbody>
          {entries.map((a) => (
            <tr key={a.id}>
              <td>{when(a.at)}</td>
              <td class="who">
                <AuditActor api={api} entry={a} navigate={navigate} />
              </td>
              <td>{a.service}</td>
              <td><code>{a.action}</code></td>
              <td>
                <Target entry={a} navigate={navigate} />
              </td>
              <td class="details">
                {auditDetails(a).map((line, i) => (
                  <div key={i}>{line}</div>
                ))}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {next && <button class="secondary" disabled={busy} onClick={() => void load(next)}>Older</button>}
    </section>
  );
}

/** An audit entry's target, linked to its page where the console has one. */
function Target({ entry, navigate }: { entry: AuditEntry; navigate: Navigate }) {
  const id = entry.target_id;
  if (!id) return <>–</>;
  const short = id.length > 12 ? `${id.slice(0, 8)}…` : id;
  const type = entry.target_type ?? (entry.action.startsWith("user.") ? "user" : null);
  const pages: Record<string, string> = { user: `users/${id}`, room: `rooms/${id}`, report: `reports/${id}` };
  // A public room's message is "<room>/<seq>": its room's page shows the timeline
  // (an end-to-end encrypted message is a bare server id, with no page).
  if (type === "message" && id.includes("/")) pages["message"] = `rooms/${id.split("/")[0]}`;
  const to = type ? pages[type] : undefined;
  const label = (
    <span title={id}>
      {type && type !== "user" ? `${type} ` : ""}
      {short}
    </span>
  );
  return to ? <Link to={to} navigate={navigate}>{label}</Link> : label;
}

export function ClientsPage({ api }: { api: Api }) {
  const [list, setList] = useState<OAuthClient[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [made, setMade] = useState<OAuthClient | null>(null);
  const [form, setForm] = useState({ name: "", type: "confidential", redirect: "", scopes: "openid profile email" });
  // A second submit while the first runs would register a second app (whose secret is lost).
  const [busy, run] = useBusy();
  const load = async () => {
    try {
      setList((await api.clients()).clients);
    } catch (e) {
      setError(e);
    }
  };
  useEffect(() => void load(), []);
  return (
    <section>
      <h1>Apps (OpenID clients)</h1>
      <Problem error={error} />
      <table>
        <thead>
          <tr>
            <th>Name</th>
            <th>Client id</th>
            <th>Type</th>
            <th>Redirect URIs</th>
            <th>Scopes</th>
          </tr>
        </thead>
        <tbody>
          {list.map((c) => (
            <tr key={c.client_id}>
              <td>{c.name} {c.built_in && <span class="badge">built-in</span>}</td>
              <td><code>{c.client_id}</code></td>
              <td>{c.type}</td>
              <td>{c.redirect_uris.join(" ")}</td>
              <td>{c.scopes.join(" ")}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h2>Register an app</h2>
      <form
        class="grid"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            try {
              setMade(
                await api.createClient({
                  name: form.name,
                  type: form.type,
                  redirect_uris: [form.redirect],
                  scopes: form.scopes.split(/\s+/).filter(Boolean),
                }),
              );
              setError(null);
              await load();
            } catch (err) {
              setError(err);
            }
          });
        }}
      >
        <label>Name <input value={form.name} onInput={(e) => setForm({ ...form, name: e.currentTarget.value })} /></label>
        <label>
          Type
          <select value={form.type} onChange={(e) => setForm({ ...form, type: e.currentTarget.value })}>
            <option value="confidential">confidential (server, has a secret)</option>
            <option value="public">public (browser or native app)</option>
          </select>
        </label>
        <label>Redirect URI (exact) <input value={form.redirect} onInput={(e) => setForm({ ...form, redirect: e.currentTarget.value })} /></label>
        <label>Scopes <input value={form.scopes} onInput={(e) => setForm({ ...form, scopes: e.currentTarget.value })} /></label>
        <button type="submit" disabled={busy}>Register</button>
      </form>
      {made?.client_secret && (
        <p class="notice">
          Secret of <code>{made.client_id}</code> (shown once): <code>{made.client_secret}</code>
        </p>
      )}
    </section>
  );
}
