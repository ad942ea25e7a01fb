import { type ComponentChildren, render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { Api, type Challenge, type Room, loadApiOrigin } from './api.ts';
import { type ClientEvent, type HistoryEntry, NeedsLink, ParleyClient, SafetyNumberChanged } from './client.ts';
import { Drafts, failedSend, holding } from './composer.ts';
import { hourMinute, localVoice } from './format.ts';
import { useShown } from './earlier.ts';
import { newest } from './history.ts';
import { LinkCancelled, defaultDeviceName } from './devices.ts';
import { NOTE_TO_SELF } from './direct.ts';
import { MessageActions } from './messageActions.tsx';
import { type NoticeTarget, Notifications } from './notificationsView.tsx';
import { RoomList, RoomView } from './roomsView.tsx';
import { AccountSettingsLinks, SettingsPanel, type SettingsTab } from './settingsView.tsx';
import './style.css';

type Screen = 'login' | 'signup' | 'reset' | 'link';

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function useForm<T extends Record<string, string>>(initial: T): [T, (name: keyof T) => (e: Event) => void] {
  const [values, setValues] = useState(initial);
  const bind = (name: keyof T) => (e: Event) => setValues((v) => ({ ...v, [name]: (e.target as HTMLInputElement).value }));
  return [values, bind];
}

function Field(props: {
  id: string;
  label: string;
  type?: 'text' | 'password' | 'email';
  value: string;
  onInput: (e: Event) => void;
  autocomplete?: string;
  hint?: string;
  optional?: boolean;
}) {
  return (
    <div class="field">
      <label for={props.id}>{props.label}</label>
      <input
        id={props.id}
        name={props.id}
        type={(props.type ?? 'text') as 'text'}
        value={props.value}
        onInput={props.onInput}
        {...(props.autocomplete ? { autocomplete: props.autocomplete } : {})}
        {...(props.hint ? { 'aria-describedby': `${props.id}-hint` } : {})}
        required={!props.optional}
      />
      {props.hint && (
        <small id={`${props.id}-hint`} class="hint">
          {props.hint}
        </small>
      )}
    </div>
  );
}

function Busy(props: { busy: boolean; label: string; id: string }) {
  return (
    <button id={props.id} type="submit" disabled={props.busy} aria-busy={props.busy}>
      {props.busy ? 'Please wait…' : props.label}
    </button>
  );
}

function ErrorLine(props: { error: string }) {
  return props.error ? (
    <p class="error" role="alert" id="form-error">
      {props.error}
    </p>
  ) : null;
}

/** A second factor the server asked for, and where its answer goes. */
type PendingChallenge = { c: Challenge; answer: (a: { method: string; code: string }) => void };

/** The page that asks for a second factor (signing in, or linking this browser). */
function SecondFactorCard(props: { pending: PendingChallenge; done: () => void; error: string }) {
  return (
    <main class="card">
      <SecondFactor
        challenge={props.pending.c}
        onAnswer={(method, code) => {
          props.pending.answer({ method, code });
          if (code) props.done();
        }}
      />
      <ErrorLine error={props.error} />
    </main>
  );
}

function SecondFactor(props: { challenge: Challenge; onAnswer: (method: string, code: string) => void }) {
  const [method, setMethod] = useState<string>(props.challenge.methods[0] ?? 'totp');
  const [code, setCode] = useState('');
  return (
    <form
      id="second-factor"
      aria-labelledby="second-factor-title"
      onSubmit={(e) => {
        e.preventDefault();
        props.onAnswer(method, code.trim());
      }}
    >
      <h2 id="second-factor-title">Second factor</h2>
      <p>This account asks for a second factor.</p>
      {props.challenge.email_code_sent && (
        <p role="status" id="email-code-sent">
          A code is on its way to your e-mail address.
        </p>
      )}
      <div class="field">
        <label for="method">Method</label>
        <select id="method" value={method} onChange={(e) => setMethod((e.target as HTMLSelectElement).value)}>
          {props.challenge.methods.map((m) => (
            <option value={m}>{m === 'totp' ? 'Authenticator app' : m === 'email' ? 'Code by e-mail' : 'Recovery code'}</option>
          ))}
        </select>
      </div>
      {method === 'email' && (
        <button type="button" id="send-email-code" onClick={() => props.onAnswer('email', '')}>
          E-mail me a code
        </button>
      )}
      <Field id="code" label="Code" value={code} onInput={(e) => setCode((e.target as HTMLInputElement).value)} autocomplete="one-time-code" />
      <button type="submit" id="code-submit">
        Continue
      </button>
    </form>
  );
}

function Login(props: { onClient: (c: ParleyClient) => void; go: (s: Screen) => void; notice?: string }) {
  const [v, bind] = useForm({ username: '', password: '', passphrase: '' });
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  const [challenge, setChallenge] = useState<PendingChallenge | null>(null);
  const [needsLink, setNeedsLink] = useState(false);

  async function submit(newIdentity: boolean) {
    setBusy(true);
    setError('');
    try {
      const client = await ParleyClient.login(
        v.username,
        v.password,
        v.passphrase,
        (c) => new Promise((resolve) => setChallenge({ c, answer: resolve })),
        { newIdentity },
      );
      props.onClient(client);
    } catch (e) {
      setChallenge(null);
      if (e instanceof NeedsLink) setNeedsLink(true);
      setError(message(e));
    } finally {
      setBusy(false);
    }
  }

  if (challenge) return <SecondFactorCard pending={challenge} done={() => setChallenge(null)} error={error} />;
  return (
    <main class="card">
      <h1>Parley</h1>
      <form
        id="login"
        aria-labelledby="login-title"
        onSubmit={(e) => {
          e.preventDefault();
          void submit(false);
        }}
      >
        <h2 id="login-title">Log in</h2>
        {props.notice && (
          <p role="status" id="signed-out-notice" class="notice">
            {props.notice}
          </p>
        )}
        <Field id="username" label="Username" value={v.username} onInput={bind('username')} autocomplete="username" />
        <Field
          id="password"
          label="Password"
          type="password"
          value={v.password}
          onInput={bind('password')}
          autocomplete="current-password"
          optional
          hint="Leave it empty to reopen this browser's session (after a reload): the passphrase is enough."
        />
        <Field
          id="passphrase"
          label="Local passphrase"
          type="password"
          value={v.passphrase}
          onInput={bind('passphrase')}
          autocomplete="off"
          hint="Encrypts your keys and history in this browser. It is never sent anywhere."
        />
        <Busy busy={busy} label="Log in" id="login-submit" />
        <ErrorLine error={error} />
        {needsLink && (
          <div class="links">
            <button type="button" id="link-instead" onClick={() => props.go('link')}>
              Link this browser instead
            </button>
            <button type="button" class="secondary" id="new-identity" onClick={() => void submit(true)}>
              Start a new identity in this browser
            </button>
          </div>
        )}
      </form>
      <nav aria-label="Other actions" class="links">
        <button type="button" class="link" id="go-link" onClick={() => props.go('link')}>
          Link this browser to an existing account
        </button>
        <button type="button" class="link" id="go-signup" onClick={() => props.go('signup')}>
          Create an account
        </button>
        <button type="button" class="link" id="go-reset" onClick={() => props.go('reset')}>
          Forgot your password?
        </button>
      </nav>
    </main>
  );
}

/** "Link this browser to an existing account" (docs/devices.md, "Linking a new
 * device"; `parley devices link`): log in as a new device of the account, show the link
 * code with this device's name and fingerprint, and wait until a device of the account
 * approves it; then this browser is a device like the others, its history starting now. */
function LinkDevice(props: { onClient: (c: ParleyClient) => void; go: (s: Screen) => void }) {
  const [v, bind] = useForm({ username: '', password: '', passphrase: '', name: defaultDeviceName(navigator.platform) });
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  const [challenge, setChallenge] = useState<PendingChallenge | null>(null);
  const [waiting, setWaiting] = useState<{ client: ParleyClient; stop: AbortController } | null>(null);
  const [leaving, setLeaving] = useState(false);
  const stopped = useRef(false);
  useEffect(
    () => () => {
      stopped.current = true;
    },
    [],
  );

  async function start() {
    setBusy(true);
    setError('');
    try {
      const client = await ParleyClient.linkDevice(
        v.username,
        v.password,
        v.passphrase,
        (c) => new Promise((resolve) => setChallenge({ c, answer: resolve })),
        v.name,
      );
      setChallenge(null);
      const stop = new AbortController();
      setWaiting({ client, stop });
      await client.waitLinked({ signal: stop.signal });
      if (!stopped.current) props.onClient(client);
    } catch (e) {
      setChallenge(null);
      if (!stopped.current && !(e instanceof LinkCancelled)) setError(message(e)); // Cancel: back to the form, quietly
    } finally {
      setBusy(false);
    }
  }

  /** Stop waiting and end this session (the keys stay in this browser for the next try,
   * which shows a new code); back to the form once the session is closed. */
  async function cancel() {
    const w = waiting;
    if (!w) return;
    setLeaving(true);
    w.stop.abort();
    await w.client.logout().catch(() => undefined);
    setLeaving(false);
    setWaiting(null);
    setError('');
  }

  if (challenge) return <SecondFactorCard pending={challenge} done={() => setChallenge(null)} error={error} />;
  const linking = waiting?.client.linking;
  if (waiting && linking) {
    return (
      <main class="card">
        <h1>Parley</h1>
        <section id="link-waiting" aria-labelledby="link-waiting-title">
          <h2 id="link-waiting-title">Approve this browser on another device</h2>
          <p>On a device already linked to {waiting.client.account?.username}, open Devices and enter this code (in the terminal: <code>parley devices approve CODE</code>):</p>
          <p id="link-code" class="number code">
            {waiting.client.linkCode}
          </p>
          <p>
            The other device shows this browser as <strong id="link-device-name">{linking.name}</strong> (device <span id="link-device-id">{linking.deviceId}</span>) with the
            fingerprint <span class="number" id="link-fingerprint">{linking.fingerprint}</span>: approve only if they match.
          </p>
          <p class="hint">The code expires after 10 minutes. This browser's history starts once it is linked: earlier messages stay on your other devices.</p>
          {!error && (
            <p role="status" id="link-status">
              Waiting for the approval…
            </p>
          )}
          <ErrorLine error={error} />
          <button type="button" class="secondary" id="link-cancel" disabled={leaving} onClick={() => void cancel()}>
            {error ? 'Back' : 'Cancel'}
          </button>
        </section>
      </main>
    );
  }
  return (
    <main class="card">
      <h1>Parley</h1>
      <form
        id="link-form"
        aria-labelledby="link-title"
        onSubmit={(e) => {
          e.preventDefault();
          if (v.passphrase.length < 8) return setError('The local passphrase needs at least 8 characters.');
          void start();
        }}
      >
        <h2 id="link-title">Link this browser to an existing account</h2>
        <p class="hint">This browser becomes another device of your account, approved from a device you already use.</p>
        <Field id="username" label="Username" value={v.username} onInput={bind('username')} autocomplete="username" />
        <Field id="password" label="Password" type="password" value={v.password} onInput={bind('password')} autocomplete="current-password" />
        <Field
          id="passphrase"
          label="Local passphrase"
          type="password"
          value={v.passphrase}
          onInput={bind('passphrase')}
          autocomplete="off"
          hint="At least 8 characters. Encrypts this browser's keys and history; never sent anywhere."
        />
        <Field id="device-name" label="Name of this device" value={v.name} onInput={bind('name')} autocomplete="off" hint="Shown in your devices list (up to 64 characters)." />
        <Busy busy={busy} label="Show the link code" id="link-submit" />
        <ErrorLine error={error} />
      </form>
      <nav aria-label="Other actions" class="links">
        <button type="button" class="link" id="go-login" onClick={() => props.go('login')}>
          Back to log in
        </button>
      </nav>
    </main>
  );
}

function Signup(props: { onClient: (c: ParleyClient) => void; go: (s: Screen) => void }) {
  const [v, bind] = useForm({ username: '', email: '', password: '', passphrase: '' });
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  return (
    <main class="card">
      <h1>Parley</h1>
      <form
        id="signup"
        aria-labelledby="signup-title"
        onSubmit={(e) => {
          e.preventDefault();
          if (v.passphrase.length < 8) return setError('The local passphrase needs at least 8 characters.');
          setBusy(true);
          setError('');
          ParleyClient.signup(v.username.trim(), v.email.trim(), v.password, v.passphrase)
            .then(props.onClient, (err: unknown) => setError(message(err)))
            .finally(() => setBusy(false));
        }}
      >
        <h2 id="signup-title">Create an account</h2>
        <Field id="username" label="Username" value={v.username} onInput={bind('username')} autocomplete="username" hint="3 to 32 of a-z 0-9 . _ -" />
        <Field id="email" label="E-mail" type="email" value={v.email} onInput={bind('email')} autocomplete="email" />
        <Field
          id="password"
          label="Password"
          type="password"
          value={v.password}
          onInput={bind('password')}
          autocomplete="new-password"
          hint="10 to 256 characters; sent to the server."
        />
        <Field
          id="passphrase"
          label="Local passphrase"
          type="password"
          value={v.passphrase}
          onInput={bind('passphrase')}
          autocomplete="off"
          hint="At least 8 characters. Encrypts your keys and history in this browser; never sent anywhere."
        />
        <Busy busy={busy} label="Create account" id="signup-submit" />
        <ErrorLine error={error} />
      </form>
      <nav aria-label="Other actions" class="links">
        <button type="button" class="link" id="go-login" onClick={() => props.go('login')}>
          I have an account
        </button>
      </nav>
    </main>
  );
}

function Reset(props: { go: (s: Screen) => void }) {
  const [v, bind] = useForm({ email: '', token: '', newPassword: '' });
  const [sent, setSent] = useState(false);
  const [done, setDone] = useState(false);
  const [error, setError] = useState('');
  return (
    <main class="card">
      <h1>Parley</h1>
      <form
        id="reset"
        aria-labelledby="reset-title"
        onSubmit={(e) => {
          e.preventDefault();
          setError('');
          new Api().requestReset(v.email.trim()).then(
            () => setSent(true),
            (err: unknown) => setError(message(err)),
          );
        }}
      >
        <h2 id="reset-title">Reset your password</h2>
        <Field id="email" label="E-mail" type="email" value={v.email} onInput={bind('email')} autocomplete="email" />
        <button type="submit" id="reset-submit">
          E-mail me a reset code
        </button>
        {sent && (
          <p role="status" id="reset-sent">
            If an account has this address, a mail with a reset code is on its way.
          </p>
        )}
      </form>
      {sent && (
        <form
          id="reset-confirm"
          aria-labelledby="reset-confirm-title"
          onSubmit={(e) => {
            e.preventDefault();
            setError('');
            new Api().confirmReset(v.token.trim(), v.newPassword).then(
              () => setDone(true),
              (err: unknown) => setError(message(err)),
            );
          }}
        >
          <h2 id="reset-confirm-title">Choose a new password</h2>
          <Field id="token" label="Reset code from the mail" value={v.token} onInput={bind('token')} autocomplete="off" />
          <Field id="new-password" label="New password" type="password" value={v.newPassword} onInput={bind('newPassword')} autocomplete="new-password" />
          <button type="submit">Set the new password</button>
          {done && <p role="status">Your password is changed: log in with it.</p>}
        </form>
      )}
      <ErrorLine error={error} />
      <nav aria-label="Other actions" class="links">
        <button type="button" class="link" id="go-login" onClick={() => props.go('login')}>
          Back to log in
        </button>
      </nav>
    </main>
  );
}

/** The browser's voices; an empty list (Chrome's answer until it has loaded them) is
 * asked again once it says they changed, or after a second. */
async function voices(): Promise<SpeechSynthesisVoice[]> {
  const now = speechSynthesis.getVoices();
  if (now.length > 0) return now;
  return new Promise((resolve) => {
    const done = () => {
      speechSynthesis.removeEventListener('voiceschanged', done);
      clearTimeout(timer);
      resolve(speechSynthesis.getVoices());
    };
    const timer = setTimeout(done, 1000);
    speechSynthesis.addEventListener('voiceschanged', done);
  });
}

/** Read `text` aloud with one of the device's own voices (a network voice would send
 * the text away); false when there is none. */
async function speak(text: string): Promise<boolean> {
  const voice = localVoice(await voices(), navigator.language);
  if (voice === null) return false;
  speechSynthesis.cancel();
  const utterance = new SpeechSynthesisUtterance(text);
  utterance.voice = voice;
  utterance.lang = voice.lang;
  speechSynthesis.speak(utterance);
  return true;
}

const STATUS_LABEL: Record<string, string> = {
  queued: 'waiting to be sent',
  accepted: 'sent',
  stored: 'stored',
  delivered: 'delivered',
  failed: 'failed',
};

function Entry(props: { entry: HistoryEntry; name: string; client: ParleyClient; peer: string }) {
  const e = props.entry;
  const [noVoice, setNoVoice] = useState(false);
  const time = hourMinute(e.at);
  if (e.dir === 'system') {
    return (
      <li class="system" role="note">
        {e.text}
      </li>
    );
  }
  return (
    <li class={`msg ${e.dir}${e.kind === 'error' ? ' failed' : ''}${e.kind === 'removed' ? ' removed' : ''}`} data-status={e.status ?? ''} data-server-id={e.server_id ?? ''}>
      <span class="who">{e.dir === 'out' ? 'You' : props.name}</span> <time>{time}</time>
      <p class="text">{e.text}</p>
      <div class="meta">
        {e.dir === 'out' && e.status && (
          <span class="status" aria-label={`status: ${STATUS_LABEL[e.status] ?? e.status}`}>
            {STATUS_LABEL[e.status] ?? e.status}
          </span>
        )}
        {e.kind === 'message' && (
          <button type="button" class="play" aria-label={`Play message: ${e.text.slice(0, 40)}`} onClick={() => void speak(e.text).then((spoken) => setNoVoice(!spoken))}>
            ▶ Play
          </button>
        )}
        {noVoice && <span role="status">No voice on this device to read it with</span>}
        <MessageActions client={props.client} peer={props.peer} entry={e} />
      </div>
    </li>
  );
}

function Safety(props: { client: ParleyClient; peer: string; onClose: () => void }) {
  const [number, setNumber] = useState<string | null>(null);
  const [error, setError] = useState('');
  const status = props.client.identityStatus(props.peer);
  useEffect(() => {
    props.client.safetyNumber(props.peer).then(setNumber, (e: unknown) => setError(message(e)));
  }, [props.peer, status.pendingChange]);
  return (
    <section id="safety" aria-labelledby="safety-title" class="panel">
      <h3 id="safety-title">Safety number with {props.client.username(props.peer)}</h3>
      <p>Compare these digits with {props.client.username(props.peer)} in person or on a call. They are the same on both sides unless someone is in the middle.</p>
      <p id="safety-number" class="number" aria-label={number ? `Safety number ${number}` : 'Safety number loading'}>
        {number ?? '…'}
      </p>
      <p id="verified-state">{status.verified ? 'You have verified this contact.' : 'Not verified.'}</p>
      {number && !status.verified && (
        <button type="button" id="mark-verified" onClick={() => props.client.verify(props.peer, number).catch((e: unknown) => setError(message(e)))}>
          They match: mark as verified
        </button>
      )}
      <button type="button" id="close-safety" onClick={props.onClose}>
        Close
      </button>
      <ErrorLine error={error} />
    </section>
  );
}

/** One contact's conversation (mounted again for each contact: nothing of one shows in
 * another; its unsent text waits in `drafts`). */
function Conversation(props: { client: ParleyClient; peer: string; version: number; drafts: Drafts; onAwayError: (error: string) => void }) {
  const { client, peer, drafts } = props;
  const [text, setText] = useState(() => drafts.get(peer));
  const shown = useRef(true); // false once another conversation replaced this one
  useEffect(
    () => () => {
      shown.current = false;
    },
    [],
  );
  const [error, setError] = useState('');
  const [showSafety, setShowSafety] = useState(false);
  const [newNumber, setNewNumber] = useState<string | null>(null);
  const self = peer === client.me; // notes to self: for our other devices
  const name = self ? NOTE_TO_SELF : client.username(peer);
  const history = client.history(peer);
  const status = client.identityStatus(peer);
  const listRef = useRef<HTMLOListElement>(null);
  const { limit, more } = useShown(listRef); // the newest entries shown
  const shownEntries = newest(history, limit);
  useEffect(() => {
    const list = listRef.current;
    if (list) list.scrollTop = list.scrollHeight; // the list scrolls, not the page
  }, [history.length, peer]);
  useEffect(() => {
    if (status.pendingChange) client.safetyNumber(peer).then(setNewNumber, () => undefined);
  }, [status.pendingChange, peer, props.version]);
  return (
    <section class="conversation" aria-labelledby="conversation-title">
      <header class="conv-head">
        <h2 id="conversation-title">{name}</h2>
        {!self && (
          <button type="button" id="show-safety" aria-expanded={showSafety} onClick={() => setShowSafety(!showSafety)}>
            Safety number
          </button>
        )}
      </header>
      {self && <p class="hint">Notes to self go to your other devices (not to this one), end-to-end encrypted.</p>}
      {status.pendingChange && (
        <div id="key-warning" class="warning" role="alert">
          <h3>{name}'s safety number changed</h3>
          <p>
            Their identity key is new: a reinstall, a new device, or someone in the middle. Sending to {name} is paused until you compare the new
            number with them{status.wasVerified ? ' (you had verified them)' : ''} or accept the new key.
          </p>
          {status.oldSafetyNumber && <p>Old safety number: <span class="number">{status.oldSafetyNumber}</span></p>}
          <p>
            New safety number: <span class="number" id="new-safety-number">{newNumber ?? '…'}</span>
          </p>
          <button type="button" id="verify-new" disabled={!newNumber} onClick={() => newNumber && client.verify(peer, newNumber).catch((e: unknown) => setError(message(e)))}>
            I compared it: they match
          </button>
          <button type="button" id="accept-new" onClick={() => client.acceptIdentity(peer).catch((e: unknown) => setError(message(e)))}>
            Accept the new key without comparing
          </button>
        </div>
      )}
      {showSafety && <Safety client={client} peer={peer} onClose={() => setShowSafety(false)} />}
      {history.length > shownEntries.length && (
        <button type="button" id="show-earlier" class="secondary" onClick={more}>
          Show earlier messages ({history.length - shownEntries.length} more)
        </button>
      )}
      <ol id="messages" ref={listRef} aria-label={self ? 'Notes to self' : `Messages with ${name}`} aria-live="polite" aria-relevant="additions">
        {shownEntries.map((e) => (
          <Entry entry={e} name={name} client={client} peer={peer} />
        ))}
      </ol>
      <form
        id="composer"
        onSubmit={(e) => {
          e.preventDefault();
          const sent = text;
          if (status.pendingChange || !sent.trim()) return;
          // The field is emptied at once (a second Enter sends nothing twice) and the next
          // message may be written meanwhile: the client encrypts one message at a time
          // per contact, in the order sent. Refused, the text goes back to the field (or
          // to this conversation's draft) unless the user wrote another one there; once
          // queued in the outbox it never does (it goes by itself: sent again, twice).
          setError('');
          setText('');
          drafts.set(peer, '');
          holding(client.send(peer, sent)).catch((err: unknown) => {
            if (failedSend(err) === 'queued') {
              if (shown.current) setError(message(err));
              else props.onAwayError(`${name}: ${message(err)}`);
              return;
            }
            drafts.restore(peer, sent);
            const said = err instanceof SafetyNumberChanged ? err.message : message(err);
            if (!shown.current) {
              // Another conversation is open: said beside the contacts.
              props.onAwayError(`Not sent to ${name}: ${said} Its text waits in that conversation's field.`);
              return;
            }
            setError(said);
            setText((t) => (t === '' ? sent : t));
          });
        }}
      >
        <label for="message" class="visually-hidden">
          {self ? 'Note to your other devices' : `Message to ${name}`}
        </label>
        <input
          id="message"
          autocomplete="off"
          value={text}
          disabled={status.pendingChange}
          placeholder={status.pendingChange ? 'Paused: the safety number changed' : self ? 'A note to your other devices' : `Message ${name}`}
          onInput={(e) => {
            const draft = (e.target as HTMLInputElement).value;
            setText(draft);
            drafts.set(peer, draft);
          }}
        />
        <button type="submit" id="send" disabled={status.pendingChange || !text.trim()}>
          Send
        </button>
      </form>
      <ErrorLine error={error} />
    </section>
  );
}

/** One of the account's preferences (the auth service's): shown at once when changed,
 * then the server's answer, or the old value back and the error. */
function AccountToggle(props: {
  id: string;
  value: boolean | null;
  set: (on: boolean) => void;
  save: (on: boolean) => Promise<boolean>;
  name: string;
  hint: string;
  onError: (text: string) => void;
  children: string;
}) {
  const [busy, setBusy] = useState(false);
  return (
    <>
      <label class="check" for={props.id}>
        <input
          id={props.id}
          type="checkbox"
          checked={props.value ?? false}
          disabled={props.value === null || busy}
          aria-busy={busy}
          aria-describedby={`${props.id}-hint`}
          onChange={(e) => {
            const on = (e.target as HTMLInputElement).checked;
            props.onError('');
            props.set(on);
            setBusy(true);
            props
              .save(on)
              .then(props.set, (err: unknown) => {
                props.set(!on);
                props.onError(`${props.name}: ${message(err)}`);
              })
              .finally(() => setBusy(false));
          }}
        />
        {props.children}
      </label>
      <small id={`${props.id}-hint`} class="hint">
        {props.hint}
      </small>
    </>
  );
}

/** This browser's preferences for the account, kept in its encrypted store. */
function Settings(props: { client: ParleyClient; children?: ComponentChildren }) {
  const { client } = props;
  const [error, setError] = useState('');
  // The account's preferences (mention e-mails, presence) live in the auth service
  // (every browser's): read once, each toggle saved on its own.
  const [mails, setMails] = useState<boolean | null>(null);
  const [presence, setPresence] = useState<boolean | null>(null);
  useEffect(() => {
    client.preferences().then(
      (p) => {
        setMails(p.mention_emails);
        setPresence(p.show_presence);
      },
      (err: unknown) => setError(`Preferences: ${message(err)}`),
    );
  }, [client]);
  return (
    <section class="settings" aria-labelledby="settings-title">
      <h2 id="settings-title">Settings</h2>
      <label class="check" for="tell-typing">
        <input
          id="tell-typing"
          type="checkbox"
          checked={client.tellTyping}
          aria-describedby="tell-typing-hint"
          onChange={(e) => {
            setError('');
            client.setTellTyping((e.target as HTMLInputElement).checked).catch((err: unknown) => setError(message(err)));
          }}
        />
        Let members see when I type
      </label>
      <small id="tell-typing-hint" class="hint">
        While you write in a room, its members see "… is typing"; the server sees it too, in private rooms as well.
      </small>
      <AccountToggle
        id="mention-emails"
        value={mails}
        set={setMails}
        save={(on) => client.setMentionEmails(on)}
        name="Mention e-mails"
        onError={setError}
        hint="A digest of @mentions, at most one e-mail per 15 minutes, while none of your devices is connected. For the account, in every browser."
      >
        E-mail me when I am mentioned while I am away
      </AccountToggle>
      <AccountToggle
        id="show-presence"
        value={presence}
        set={setPresence}
        save={(on) => client.setShowPresence(on)}
        name="Show when I'm online"
        onError={setError}
        hint="Members of your rooms see you online while one of your devices is connected. Off: you always look offline. For the account, in every browser."
      >
        Show when I'm online
      </AccountToggle>
      {props.children}
      {error && (
        <p class="error" role="alert" id="settings-error">
          {error}
        </p>
      )}
    </section>
  );
}

function Chat(props: { client: ParleyClient; onLogout: (notice?: string) => void }) {
  const { client } = props;
  const [version, setVersion] = useState(0);
  const [peer, setPeerState] = useState<string | null>(null);
  const [room, setRoom] = useState<Room | null>(null);
  const [panel, setPanel] = useState<SettingsTab | null>(null); // the account's settings open in the main area
  const [focus, setFocus] = useState<{ seq: number; n: number } | null>(null); // a mentioned post to show
  const drafts = useRef(new Drafts()).current; // each conversation's unsent text
  const setPeer = (p: string | null) => {
    setRoom(null);
    setFocus(null);
    setPanel(null);
    setPeerState(p);
  };
  const openRoom = (r: Room | null) => {
    setPeerState(null);
    setFocus(null);
    setPanel(null);
    setRoom(r);
  };
  const openNotice = (t: NoticeTarget) => {
    openRoom(room?.room_id === t.room.room_id ? room : t.room);
    if (t.seq !== null) setFocus({ seq: t.seq, n: Date.now() });
  };
  const [contact, setContact] = useState('');
  const [error, setError] = useState('');
  const [notice, setNotice] = useState('');
  useEffect(() => {
    // The page is drawn again once per frame however many changes came (a sync of a
    // backlog is hundreds of messages a second), and not while the tab is hidden.
    let frame = 0;
    const redraw = () => {
      if (frame === 0) {
        frame = requestAnimationFrame(() => {
          frame = 0;
          setVersion((v) => v + 1);
        });
      }
    };
    const off = client.on((e: ClientEvent) => {
      if (e.type === 'changed' || e.type === 'removed') redraw();
      else if (e.type === 'error') setNotice(e.message);
      else if (e.type === 'message') setNotice(`New message from ${client.username(e.peer)}`);
      else if (e.type === 'room_message') setNotice(`New message in a room from ${client.username(e.sender)}`);
    });
    client.connect();
    return () => {
      off();
      cancelAnimationFrame(frame);
      client.close();
    };
  }, [client]);
  const account = client.account;
  const conversations = client.conversations(peer);
  const state = client.connectionState;
  return (
    <div class="chat">
      <header class="top">
        <span class="me">
          Signed in as <strong id="me">{account?.username}</strong>
        </span>
        <span id="connection" class={`conn ${state}`} role="status">
          {state === 'connected' ? 'Connected' : state === 'connecting' ? 'Connecting…' : state === 'stopped' ? 'Offline' : 'Reconnecting…'}
        </span>
        <button type="button" id="devices-toggle" class="secondary" aria-expanded={panel === 'devices'} onClick={() => setPanel(panel === 'devices' ? null : 'devices')}>
          Devices
        </button>
        <button type="button" id="logout" onClick={() => client.logout().then(() => props.onLogout())}>
          Log out
        </button>
      </header>
      <p class="visually-hidden" role="status" aria-live="polite">
        {notice}
      </p>
      <div class="layout">
        <nav class="contacts" aria-labelledby="contacts-title">
          <Notifications client={client} onOpen={openNotice} />
          <h2 id="contacts-title">Contacts</h2>
          <form
            id="add-contact"
            onSubmit={(e) => {
              e.preventDefault();
              setError('');
              client.addContact(contact).then(
                (c) => {
                  setContact('');
                  setPeer(c.user_id);
                },
                (err: unknown) => setError(message(err)),
              );
            }}
          >
            <label for="contact">Add a contact by username</label>
            <div class="row">
              <input id="contact" value={contact} autocomplete="off" onInput={(e) => setContact((e.target as HTMLInputElement).value)} required />
              <button type="submit" id="add-contact-submit">
                Add
              </button>
            </div>
          </form>
          <ErrorLine error={error} />
          <ul aria-label="Conversations">
            {conversations.map((c) => {
              const pending = !c.self && client.identityStatus(c.user_id).pendingChange;
              return (
                <li>
                  <button
                    type="button"
                    class={`contact${peer === c.user_id ? ' current' : ''}`}
                    data-username={c.username}
                    aria-current={peer === c.user_id ? 'true' : undefined}
                    onClick={() => setPeer(c.user_id)}
                  >
                    {c.self ? NOTE_TO_SELF : c.username}
                    {pending && <span class="badge"> (safety number changed)</span>}
                  </button>
                </li>
              );
            })}
          </ul>
          <RoomList client={client} current={room?.room_id ?? null} onOpen={openRoom} />
          <Settings client={client}>
            <AccountSettingsLinks current={panel} onOpen={setPanel} />
          </Settings>
        </nav>
        {panel ? (
          <SettingsPanel client={client} tab={panel} onTab={setPanel} onSignedOut={props.onLogout} />
        ) : room ? (
          <RoomView client={client} room={room} version={version} highlight={focus} drafts={drafts} onLeft={() => openRoom(null)} />
        ) : peer ? (
          <Conversation key={peer} client={client} peer={peer} version={version} drafts={drafts} onAwayError={setError} />
        ) : (
          <section class="conversation empty">
            <p>
              Add a contact by username, or pick one, to start an end-to-end-encrypted conversation (your own username: notes to your other
              devices); or open, create or find a room.
            </p>
          </section>
        )}
      </div>
    </div>
  );
}

function App() {
  const [client, setClient] = useState<ParleyClient | null>(null);
  const [notice, setNotice] = useState(''); // what the log-in page says after a sign-out from the settings
  const [screen, setScreen] = useState<Screen>(
    location.hash === '#signup' ? 'signup' : location.hash === '#reset' ? 'reset' : location.hash === '#link' ? 'link' : 'login',
  );
  const go = (s: Screen) => {
    history.replaceState(null, '', `#${s}`);
    setScreen(s);
  };
  // Signed in: the fragment of the screen that did it goes, so that a reload offers the
  // log-in (a linked browser is not asked to link again).
  const signedIn = (c: ParleyClient) => {
    history.replaceState(null, '', location.pathname + location.search);
    setNotice('');
    setClient(c);
  };
  if (client) {
    return (
      <Chat
        client={client}
        onLogout={(text?: string) => {
          setClient(null);
          setNotice(text ?? '');
          go('login');
        }}
      />
    );
  }
  if (screen === 'signup') return <Signup onClient={signedIn} go={go} />;
  if (screen === 'reset') return <Reset go={go} />;
  if (screen === 'link') return <LinkDevice onClient={signedIn} go={go} />;
  return <Login onClient={signedIn} go={go} notice={notice} />;
}

const root = document.getElementById('app') as HTMLElement;
loadApiOrigin().then(
  () => render(<App />, root),
  (error: unknown) =>
    render(
      <main>
        <p class="error" role="alert">
          {message(error)} Reload the page to try again.
        </p>
      </main>,
      root,
    ),
);
