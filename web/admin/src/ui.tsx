// Pieces every page uses: times, the API's errors, confirmations, user names.
import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import type { Api, AuditEntry } from "./api";
import { ApiError } from "./api";
import { BASE } from "./auth";
import type { Navigate } from "./main";

/** An ISO 8601 string (auth) or Unix milliseconds (rooms, delivery), in the admin's locale. */
export function when(t: string | number | null | undefined): string {
  return t === null || t === undefined ? "–" : new Date(t).toLocaleString();
}

/** An error as the API gave it: its message and its stable code. */
export function Problem({ error }: { error: unknown }) {
  if (!error) return null;
  const code = error instanceof ApiError ? error.code : "internal";
  const msg = error instanceof Error ? error.message : String(error);
  return (
    <p class="error" role="alert" data-code={code}>
      {msg} <small>({code})</small>
    </p>
  );
}

/** A link inside the console (a real href, so it opens in a new tab too). */
export function Link({ to, navigate, children, id }: { to: string; navigate: Navigate; children: ComponentChildren; id?: string }) {
  return (
    <a
      id={id}
      href={BASE + to}
      onClick={(e) => {
        if (e.ctrlKey || e.metaKey || e.shiftKey) return;
        e.preventDefault();
        e.stopPropagation();
        navigate(to);
      }}
    >
      {children}
    </a>
  );
}

/**
 * A button for an action that is hard to undo: the first click asks, in place, and
 * only "Yes" does it. `id` names the button; the confirming one is `<id>-yes`.
 */
export function Confirm({
  id,
  label,
  question,
  yes,
  onConfirm,
  danger = true,
  disabled = false,
}: {
  id: string;
  label: string;
  question: ComponentChildren;
  yes: string;
  onConfirm: () => Promise<unknown> | void;
  danger?: boolean;
  disabled?: boolean;
}) {
  const [asking, setAsking] = useState(false);
  const [busy, run] = useBusy();
  if (!asking)
    return (
      <button type="button" id={id} class={danger ? "danger" : ""} disabled={disabled} onClick={() => setAsking(true)}>
        {label}
      </button>
    );
  return (
    <span class="confirm" role="group">
      <span>{question}</span>
      <button
        type="button"
        id={`${id}-yes`}
        class={danger ? "danger" : ""}
        // The page's other action under way too: a Yes then would do nothing, silently.
        disabled={busy || disabled}
        onClick={() =>
          void run(async () => {
            try {
              await onConfirm();
            } finally {
              setAsking(false);
            }
          })
        }
      >
        {yes}
      </button>
      <button type="button" class="secondary" onClick={() => setAsking(false)}>
        Cancel
      </button>
    </span>
  );
}

/**
 * An action that must not run twice at once (a double click, a second submit): `run(what)`
 * does nothing while an earlier one runs, and `busy` is for disabling its buttons. The
 * ref answers at once; the state only after the next render, too late for a double click.
 */
export function useBusy(): [boolean, (what: () => Promise<unknown>) => Promise<void>] {
  const [busy, setBusy] = useState(false);
  const running = useRef(false);
  const run = async (what: () => Promise<unknown>) => {
    if (running.current) return;
    running.current = true;
    setBusy(true);
    try {
      await what();
    } finally {
      running.current = false;
      setBusy(false);
    }
  };
  return [busy, run];
}

/**
 * A page's actions (with `run` from its useBusy: one at a time), each ending in its
 * notice and a refresh, or in the error. A notice is only ever the last action's: a
 * "Saved." of an earlier one must not stand next to the failure of this one.
 */
export function noticeAction(
  run: (what: () => Promise<unknown>) => Promise<void>,
  refresh: () => Promise<void>,
  setNotice: (notice: string) => void,
  setError: (error: unknown) => void,
) {
  return (what: () => Promise<unknown>, done: string) =>
    run(async () => {
      setNotice("");
      try {
        await what();
        setError(null);
        setNotice(done);
        await refresh();
      } catch (e) {
        setNotice("");
        setError(e);
      }
    });
}

// User ids → usernames, looked up once per page load (GET /auth/v1/users/{id}).
const names = new Map<string, Promise<string>>();

function nameOf(api: Api, userId: string): Promise<string> {
  let name = names.get(userId);
  if (!name) {
    name = api.username(userId).then((u) => u.username);
    names.set(userId, name);
    // A failed look-up is tried again on the next page that shows the user.
    name.catch(() => names.delete(userId));
  }
  return name;
}

/**
 * A user by name, linking to their page. The API gives user ids; a user that no longer
 * exists (or a failed look-up) shows the id, with the reason as its title.
 */
export function UserName({ api, id, navigate }: { api: Api; id: string | null; navigate: Navigate }) {
  const [name, setName] = useState<string | null>(null);
  const [failed, setFailed] = useState<string | null>(null);
  useEffect(() => {
    if (!id) return;
    let live = true;
    setName(null);
    setFailed(null);
    nameOf(api, id).then(
      (n) => live && setName(n),
      (e) => live && setFailed(e instanceof Error ? e.message : String(e)),
    );
    return () => {
      live = false;
    };
  }, [id]);
  if (!id) return <span class="muted">–</span>;
  return (
    <span class="user" data-user-id={id} title={failed ? `${id}: ${failed}` : id}>
      <Link to={`users/${id}`} navigate={navigate}>
        {name ?? (failed ? <code>{id}</code> : <span class="muted">{id.slice(0, 8)}…</span>)}
      </Link>
    </span>
  );
}

/**
 * Who did an audit entry's action. The auth service records the admin's username; the
 * rooms and delivery services only the id (then ``actor`` is the id): that one is looked
 * up like any user. An operator (the CLI) is shown as recorded.
 */
export function AuditActor({ api, entry, navigate }: { api: Api; entry: AuditEntry; navigate: Navigate }) {
  if (entry.actor !== entry.actor_id || entry.actor_role === "operator") return <>{entry.actor}</>;
  return <UserName api={api} id={entry.actor_id} navigate={navigate} />;
}

// A value of a before/after: a string as it is (unless empty), anything else as JSON.
const shown = (v: unknown) => (v === undefined ? "–" : typeof v === "string" && v ? v : JSON.stringify(v));

/**
 * What an audit entry says changed, readably: "field: old → new" for each field of its
 * before/after, then the rest of its details. The auth service repeats before/after in
 * details; the rooms and delivery services keep them only in the entry's fields.
 */
export function auditDetails(entry: AuditEntry): string[] {
  const { before: b, after: a, ...rest } = entry.details;
  const obj = (v: unknown) => (v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : null);
  const before = entry.before ?? obj(b);
  const after = entry.after ?? obj(a);
  const lines: string[] = [];
  if (before && after) {
    if (!Object.keys(before).length && !Object.keys(after).length) lines.push("no change");
    for (const k of new Set([...Object.keys(before), ...Object.keys(after)])) {
      lines.push(`${k}: ${shown(before[k])} → ${shown(after[k])}`);
    }
  } else if (before) {
    lines.push(`before: ${JSON.stringify(before)}`);
  } else if (after) {
    lines.push(`after: ${JSON.stringify(after)}`);
  }
  // A before/after of details that is no object (no service writes one) is kept as it is.
  const others: Record<string, unknown> = { ...rest };
  if (b !== undefined && !obj(b)) others["before"] = b;
  if (a !== undefined && !obj(a)) others["after"] = a;
  if (Object.keys(others).length) lines.push(JSON.stringify(others));
  return lines;
}

/** A page of a list, as the admin APIs answer: the items and where the next page starts. */
export interface Paged<T> {
  items: T[];
  next: string | null;
}

/**
 * A paged list (Users, Rooms, Reports): ``load(query)`` fills it, ``more()`` adds the
 * next page. Only the latest request may fill it: the first (unfiltered) page can arrive
 * after a search the admin typed meanwhile, and must not overwrite it. A cursor belongs
 * to the query of the items shown, so ``more()`` pages with that query (not with a search
 * typed and not submitted), and does nothing while a request is under way.
 */
export function usePagedList<Q, T>(fetch: (query: Q, cursor?: string | null) => Promise<Paged<T>>) {
  const [items, setItems] = useState<T[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [loaded, setLoaded] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const latest = useRef(0);
  const settled = useRef(0); // the latest request that answered: none under way when equal
  const shown = useRef<{ query: Q } | null>(null); // the query of the items shown
  const load = async (query: Q, cursor?: string | null) => {
    const ticket = ++latest.current;
    try {
      const page = await fetch(query, cursor);
      if (ticket !== latest.current) return;
      shown.current = { query };
      setItems((had) => (cursor ? [...had, ...page.items] : page.items));
      setNext(page.next);
      setError(null);
      setLoaded(true);
    } catch (e) {
      if (ticket === latest.current) setError(e);
    } finally {
      if (ticket === latest.current) settled.current = ticket;
    }
  };
  const more = async () => {
    if (!next || !shown.current || settled.current !== latest.current) return;
    await load(shown.current.query, next);
  };
  return { items, next, loaded, error, load, more };
}
