import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import type { User, UserManager } from "oidc-client-ts";
import { Api } from "./api";
import { BASE, isAdmin, loadConfig, userManager } from "./auth";
import { AuditPage, ClientsPage, UserPage, UsersPage } from "./pages";
import { ReportPage, ReportsPage } from "./reports";
import { RoomPage, RoomsPage } from "./rooms";
import "./style.css";

export type Navigate = (path: string) => void;

function currentPath(): string {
  const p = window.location.pathname;
  return p.startsWith(BASE) ? p.slice(BASE.length) : "";
}

function App() {
  const [mgr, setMgr] = useState<UserManager | null>(null);
  const [user, setUser] = useState<User | null>(null);
  const [ready, setReady] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [path, setPath] = useState(currentPath());

  const navigate: Navigate = (to) => {
    window.history.pushState(null, "", BASE + to);
    setPath(to);
  };

  useEffect(() => {
    const onPop = () => setPath(currentPath());
    window.addEventListener("popstate", onPop);
    (async () => {
      try {
        const m = userManager(await loadConfig());
        setMgr(m);
        m.events.addUserLoaded((u) => setUser(u));
        m.events.addUserUnloaded(() => setUser(null));
        if (currentPath() === "callback") {
          const u = await m.signinRedirectCallback();
          setUser(u);
          const back = typeof u.state === "string" ? u.state : "";
          window.history.replaceState(null, "", BASE + back);
          setPath(back);
        } else {
          const u = await m.getUser();
          setUser(u && !u.expired ? u : null);
        }
      } catch (e) {
        setError(e instanceof Error ? e.message : String(e));
      } finally {
        setReady(true);
      }
    })();
    return () => window.removeEventListener("popstate", onPop);
  }, []);

  if (!ready) return <p class="center muted">Loading…</p>;
  if (error)
    return (
      <main class="center card">
        <h1>Parley admin</h1>
        <p class="error" data-code="sign_in_failed">Sign-in failed: {error}</p>
        <button onClick={() => mgr?.signinRedirect({ state: "" })}>Try again</button>
      </main>
    );
  if (!user || !mgr)
    return (
      <main class="center card">
        <h1>Parley admin</h1>
        <p class="muted">Sign in with your Parley account. Only admins are let in.</p>
        <button id="sign-in" onClick={() => mgr?.signinRedirect({ state: path === "callback" ? "" : path })}>
          Sign in with Parley
        </button>
      </main>
    );
  if (!isAdmin(user))
    return (
      <main class="center card" id="refused">
        <h1>Not an admin</h1>
        <p class="error" data-code="forbidden">
          {String(user.profile["preferred_username"] ?? user.profile.sub)} is signed in, but this console is only
          for accounts with the admin role.
        </p>
        <button onClick={() => mgr.signoutRedirect({ id_token_hint: user.id_token })}>Sign out</button>
      </main>
    );

  const api = new Api(() => user.access_token);
  const page = path.split("/");
  let body;
  if (page[0] === "users" && page[1]) body = <UserPage key={page[1]} api={api} id={page[1]} navigate={navigate} />;
  else if (page[0] === "audit") body = <AuditPage api={api} navigate={navigate} />;
  else if (page[0] === "clients") body = <ClientsPage api={api} />;
  else if (page[0] === "rooms" && page[1]) body = <RoomPage key={page[1]} api={api} id={page[1]} navigate={navigate} />;
  else if (page[0] === "rooms") body = <RoomsPage api={api} navigate={navigate} />;
  else if (page[0] === "reports" && page[1]) body = <ReportPage key={page[1]} api={api} id={page[1]} navigate={navigate} />;
  else if (page[0] === "reports") body = <ReportsPage api={api} navigate={navigate} />;
  else body = <UsersPage api={api} navigate={navigate} />;

  const link = (to: string, label: string) => (
    <a
      href={BASE + to}
      class={page[0] === to || (to === "" && (page[0] === "" || page[0] === "users")) ? "active" : ""}
      onClick={(e) => {
        e.preventDefault();
        navigate(to);
      }}
    >
      {label}
    </a>
  );
  return (
    <div class="layout">
      <nav>
        <p class="brand">Parley admin</p>
        {link("", "Users")}
        {link("audit", "Audit log")}
        {link("rooms", "Rooms")}
        {link("reports", "Reports")}
        {link("clients", "Apps (OpenID clients)")}
        <div class="me">
          <span>{String(user.profile["preferred_username"] ?? "")}</span>
          <button class="secondary" onClick={() => mgr.signoutRedirect({ id_token_hint: user.id_token })}>
            Sign out
          </button>
        </div>
      </nav>
      <main class="content">{body}</main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);
