/** "Sessions" in the account's settings (docs/auth.md): where the account is signed in,
 * this browser first and marked; "Sign out" on any of them (this browser's own signs it
 * out here, as "Log out"), "Sign out everywhere else". Each behind a confirmation; a
 * refusal shows the server's code and message and the list stays as it was. The rules
 * are sessions.ts's. */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { SessionInfo } from './api.ts';
import type { ParleyClient } from './client.ts';
import { othersSignedIn, type SessionRow, sessionRows, signedOutElsewhere } from './sessions.ts';
import { refusalText } from './twoFactor.ts';

/** What the log-in page says after this browser signed its own session out. */
const SIGNED_OUT = 'You signed this browser out (its session is ended). Its keys and history stay here: log in again to go on.';

export function SessionsView(props: { client: ParleyClient; onSignedOut: (notice: string) => void }) {
  const { client } = props;
  const [sessions, setSessions] = useState<SessionInfo[] | null>(null);
  const [reload, setReload] = useState(0);
  const [status, setStatus] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const [confirming, setConfirming] = useState<SessionRow | 'others' | null>(null);
  const backTo = useRef<HTMLElement | null>(null);
  useEffect(() => {
    let live = true;
    client
      .authApi()
      .then((api) => api.sessions())
      .then(
        (answer) => live && setSessions(answer.sessions),
        (err: unknown) => live && setError(`Sessions: ${refusalText(err)}`),
      );
    return () => {
      live = false;
    };
  }, [client, reload]);
  const again = () => setReload((r) => r + 1);
  const ask = (what: SessionRow | 'others', e: Event) => {
    backTo.current = e.currentTarget as HTMLElement;
    setStatus('');
    setError('');
    setConfirming(what);
  };
  const cancel = () => {
    setConfirming(null);
    backTo.current?.focus();
  };

  const revoke = (row: SessionRow) => {
    setBusy(true);
    setError('');
    client.revokeSession(row.id).then(
      (outcome) => {
        if (outcome === 'signed_out') return props.onSignedOut(SIGNED_OUT);
        setBusy(false);
        setConfirming(null);
        setStatus(`Signed out ${row.title}${row.agent && row.agent !== row.title ? ` (${row.agent})` : ''}.`);
        again();
      },
      (err: unknown) => {
        setBusy(false);
        setError(refusalText(err));
      },
    );
  };

  const revokeOthers = () => {
    setBusy(true);
    setError('');
    client.signOutEverywhereElse().then(
      (n) => {
        setBusy(false);
        setConfirming(null);
        setStatus(signedOutElsewhere(n));
        again();
      },
      (err: unknown) => {
        setBusy(false);
        setError(refusalText(err));
      },
    );
  };

  const rows = sessions === null ? null : sessionRows(sessions, Date.now());
  const others = sessions === null ? 0 : othersSignedIn(sessions);
  return (
    <div class="sessions">
      <div class="conv-head">
        <h3 id="sessions-title">Where you are signed in</h3>
        <button type="button" class="secondary small" id="sessions-refresh" onClick={again}>
          Refresh
        </button>
      </div>
      <p class="hint">
        Each log-in is a session: this browser, the terminal client, another browser. Signing one out ends it at once; to go on, it logs in
        again with your password. Your devices stay linked.
      </p>
      {rows === null ? (
        !error && <p>Reading your sessions…</p>
      ) : (
        <ul id="session-list" aria-labelledby="sessions-title">
          {rows.map((row) => {
            return (
              <li class={`session${row.current ? ' current' : ''}`} data-session-id={row.id} key={row.id}>
                <span class="session-title">{row.title}</span>
                {row.current && <strong class="this-device">this browser</strong>}
                <span class="session-meta">{row.details}</span>
                {confirming !== 'others' && confirming?.id === row.id ? (
                  <span class="confirm" role="group" aria-label={row.current ? 'Confirm signing this browser out' : `Confirm signing out ${row.title}`}>
                    <span>
                      {row.current
                        ? 'Sign this browser out? Its keys and history stay here; you log in again with your password and passphrase.'
                        : `Sign out ${row.title}? It has to log in again with your password to go on.`}
                    </span>{' '}
                    <button type="button" class="small" id="session-revoke-yes" disabled={busy} autoFocus onClick={() => revoke(row)}>
                      Sign out
                    </button>{' '}
                    <button type="button" class="small secondary" id="session-revoke-no" onClick={cancel}>
                      Cancel
                    </button>
                  </span>
                ) : (
                  <button
                    type="button"
                    class="small secondary session-revoke"
                    aria-label={row.current ? 'Sign out of this browser' : `Sign out ${row.title}: ${row.details}`}
                    onClick={(e) => ask(row, e)}
                  >
                    Sign out
                  </button>
                )}
              </li>
            );
          })}
        </ul>
      )}
      {rows !== null &&
        (confirming === 'others' ? (
          <div class="confirm" role="group" aria-label="Confirm signing out everywhere else">
            <p>
              Sign out {others === 1 ? 'the other session' : `all ${others} other sessions`}? Each has to log in again with your password; your
              devices stay linked, and this browser stays signed in.
            </p>
            <button type="button" class="small" id="sessions-others-yes" disabled={busy} autoFocus onClick={revokeOthers}>
              Sign out everywhere else
            </button>{' '}
            <button type="button" class="small secondary" id="sessions-others-no" onClick={cancel}>
              Cancel
            </button>
          </div>
        ) : (
          <button type="button" class="secondary" id="sessions-others" disabled={others === 0} onClick={(e) => ask('others', e)}>
            Sign out everywhere else
          </button>
        ))}
      <p role="status" id="sessions-status">
        {status}
      </p>
      {error && (
        <p class="error" role="alert" id="sessions-error">
          {error}
        </p>
      )}
    </div>
  );
}
