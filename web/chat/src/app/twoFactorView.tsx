/** "Two-step verification" in the account's settings (docs/auth.md "Two-factor"): the
 * factors on, and their steps: an authenticator app (the password, then its QR code, the
 * `otpauth://` link and the key, then a first code), codes by e-mail (the password, then
 * the mailed code), turning either off (the password), new recovery codes (the
 * password). Recovery codes are shown once, with Copy and Download, and the page goes on
 * only once the user says they are saved. The steps and texts are twoFactor.ts's; each
 * refusal shows the server's code and message and leaves the step as it was. */
import { useEffect, useLayoutEffect, useReducer, useRef, useState } from 'preact/hooks';
import type { Me } from './api.ts';
import type { ParleyClient } from './client.ts';
import {
  type FactorAction,
  START,
  actionLabel,
  checkSetup,
  factorActions,
  groupSecret,
  passwordPrompt,
  qrPath,
  recoveryCodesFile,
  reduce,
  refusalText,
  sixDigits,
  statusText,
} from './twoFactor.ts';

export function TwoFactorView(props: { client: ParleyClient }) {
  const { client } = props;
  const [me, setMe] = useState<Me | null>(null);
  const [loadError, setLoadError] = useState('');
  const [state, dispatch] = useReducer(reduce, START);
  const [password, setPassword] = useState('');
  const [code, setCode] = useState('');
  const [busy, setBusy] = useState(false);
  const [copied, setCopied] = useState('');
  const stepRef = useRef<HTMLHeadingElement>(null);
  const doneRef = useRef<HTMLParagraphElement>(null);
  const { flow } = state;

  const readMe = () =>
    client
      .authApi()
      .then((api) => api.me())
      .then(setMe, (err: unknown) => setLoadError(`Two-step verification: ${refusalText(err)}`));
  useEffect(() => {
    void readMe();
  }, [client]);
  // Each new step takes the focus (its heading); back to idle, the status line does. A
  // layout effect: the code field is emptied before anything can be typed into it.
  const lastStep = useRef(flow.step);
  useLayoutEffect(() => {
    if (lastStep.current === flow.step) return;
    lastStep.current = flow.step;
    if (flow.step === 'idle') doneRef.current?.focus();
    else stepRef.current?.focus();
    setCode('');
  }, [flow.step]);

  /** Run a call of the auth service; its refusal goes to the page as it is. */
  const call = async (run: () => Promise<void>) => {
    setBusy(true);
    try {
      await run();
    } catch (err) {
      dispatch({ type: 'refused', error: err });
    } finally {
      setBusy(false);
    }
  };
  const status = me?.two_factor ?? { totp: false, email: false, recovery_codes_left: 0 };

  /** The password step: its call, then the account read again, and only then the next
   * step. Shown before that read, the next step's Confirm would still be disabled (busy)
   * and an Enter in its code field would do nothing. */
  const submitPassword = (action: FactorAction) =>
    call(async () => {
      const api = await client.authApi();
      let next: Parameters<typeof dispatch>[0];
      if (action === 'totp_on') next = { type: 'totp_setup', setup: await api.totpSetup(password) };
      else if (action === 'email_on') {
        await api.emailSetup(password);
        next = { type: 'email_sent' };
      } else if (action === 'recovery_codes') {
        const { recovery_codes } = await api.newRecoveryCodes(password);
        next = { type: 'new_codes', codes: recovery_codes };
      } else {
        const factor = action === 'totp_off' ? 'totp' : 'email';
        await (factor === 'totp' ? api.totpDisable(password) : api.emailDisable(password));
        next = { type: 'disabled', factor, othersOn: factor === 'totp' ? status.email : status.totp };
      }
      setPassword('');
      await readMe();
      dispatch(next);
    });

  const submitCode = (factor: 'totp' | 'email') => {
    const six = sixDigits(code);
    if (six === null) {
      dispatch({ type: 'refused', error: new Error(`Enter the 6-digit code ${factor === 'totp' ? 'your authenticator app shows' : 'from the e-mail'}.`) });
      return;
    }
    void call(async () => {
      const api = await client.authApi();
      const { recovery_codes } = await (factor === 'totp' ? api.totpConfirm(six) : api.emailConfirm(six));
      const fresh = await api.me();
      setMe(fresh);
      dispatch({ type: 'enabled', factor, codes: recovery_codes, left: fresh.two_factor.recovery_codes_left });
    });
  };

  const codesText = flow.step === 'codes' ? recoveryCodesFile(flow.codes, me?.username ?? client.account?.username ?? '', new Date().toISOString().slice(0, 10)) : '';
  const copy = () =>
    navigator.clipboard.writeText(codesText).then(
      () => setCopied('Copied.'),
      () => setCopied('The browser did not let the page copy: select the codes and copy them.'),
    );
  const download = () => {
    const url = URL.createObjectURL(new Blob([codesText], { type: 'text/plain' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = `parley-recovery-codes-${me?.username ?? 'account'}.txt`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };

  const codeField = (factor: 'totp' | 'email', hint: string) => (
    <form
      class="code-form"
      onSubmit={(e) => {
        e.preventDefault();
        submitCode(factor);
      }}
    >
      <label for="two-step-code">{factor === 'totp' ? 'Code from the app' : 'Code from the e-mail'}</label>
      <div class="row">
        <input
          id="two-step-code"
          inputMode="numeric"
          autocomplete="one-time-code"
          value={code}
          aria-describedby="two-step-code-hint"
          onInput={(e) => setCode((e.target as HTMLInputElement).value)}
          required
        />
        <button type="submit" id="two-step-confirm" disabled={busy}>
          Confirm
        </button>
        <button type="button" class="secondary" id="two-step-cancel" onClick={() => dispatch({ type: 'cancel' })}>
          Cancel
        </button>
      </div>
      <small class="hint" id="two-step-code-hint">
        {hint}
      </small>
    </form>
  );

  let step = null;
  if (flow.step === 'password') {
    step = (
      <form
        id="two-step-password"
        class="panel"
        aria-labelledby="two-step-step"
        onSubmit={(e) => {
          e.preventDefault();
          void submitPassword(flow.action);
        }}
      >
        <h4 id="two-step-step" tabIndex={-1} ref={stepRef}>
          {actionLabel(flow.action)}
        </h4>
        <p id="two-step-password-hint">{passwordPrompt(flow.action, status, me?.email ?? '')}</p>
        <label for="two-step-password-input">Your password</label>
        <div class="row">
          <input
            id="two-step-password-input"
            type="password"
            autocomplete="current-password"
            value={password}
            aria-describedby="two-step-password-hint"
            onInput={(e) => setPassword((e.target as HTMLInputElement).value)}
            required
          />
          <button type="submit" id="two-step-password-submit" disabled={busy || !password}>
            Continue
          </button>
          <button type="button" class="secondary" id="two-step-cancel" onClick={() => dispatch({ type: 'cancel' })}>
            Cancel
          </button>
        </div>
      </form>
    );
  } else if (flow.step === 'totp_code') {
    const checked = checkSetup(flow.setup);
    const qr = typeof checked === 'string' ? null : qrPath(flow.setup.provisioning_uri);
    step = (
      <div id="totp-setup" class="panel" role="group" aria-labelledby="two-step-step">
        <h4 id="two-step-step" tabIndex={-1} ref={stepRef}>
          Add Parley to your authenticator app
        </h4>
        {typeof checked === 'string' ? (
          <p class="error" role="alert">
            {checked}
          </p>
        ) : (
          <>
            <p>
              1. In the app (Aegis, Google Authenticator, 1Password, …), add an account: scan this code, or type the key below. It shows as{' '}
              <strong id="totp-account">
                {checked.issuer}: {checked.account}
              </strong>
              .
            </p>
            {qr && (
              <svg
                id="totp-qr"
                class="qr"
                role="img"
                aria-label="QR code of the set-up link below"
                viewBox={`0 0 ${qr.size} ${qr.size}`}
                width={qr.size * 5}
                height={qr.size * 5}
                shape-rendering="crispEdges"
              >
                <rect width={qr.size} height={qr.size} fill="#fff" />
                <path d={qr.path} fill="#000" />
              </svg>
            )}
            <p id="totp-secret-label">Or type this key (time-based, 6 digits, every 30 seconds):</p>
            <p class="number code" id="totp-secret" aria-labelledby="totp-secret-label">
              {groupSecret(flow.setup.secret)}
            </p>
            <details>
              <summary>The set-up link</summary>
              <p class="number code" id="totp-uri">
                {flow.setup.provisioning_uri}
              </p>
            </details>
            <p>2. Enter the code the app shows now: two-step verification is on once it is right.</p>
            {codeField('totp', 'Six digits; a new one every 30 seconds.')}
          </>
        )}
        {typeof checked === 'string' && (
          <button type="button" class="secondary" id="two-step-cancel" onClick={() => dispatch({ type: 'cancel' })}>
            Cancel
          </button>
        )}
      </div>
    );
  } else if (flow.step === 'email_code') {
    step = (
      <div id="email-setup" class="panel" role="group" aria-labelledby="two-step-step">
        <h4 id="two-step-step" tabIndex={-1} ref={stepRef}>
          Codes by e-mail
        </h4>
        <p>A 6-digit code is on its way to {me?.email ?? 'your address'}. Enter it to turn codes by e-mail on (it is valid for 10 minutes).</p>
        {codeField('email', 'Not there? Look in the spam folder, or cancel and start again for a new code.')}
      </div>
    );
  } else if (flow.step === 'codes') {
    step = (
      <div id="recovery-step" class="warning" role="group" aria-labelledby="two-step-step">
        <h4 id="two-step-step" tabIndex={-1} ref={stepRef}>
          Save your recovery codes now
        </h4>
        <p>
          If you lose your authenticator app or cannot read your e-mail, each of these codes signs you in once, instead of the code. They are
          shown only this once: copy them into a password manager, download them, or write them down, and keep them where only you can
          find them.
        </p>
        <ol id="recovery-codes" class="number">
          {flow.codes.map((c) => (
            <li key={c}>{c}</li>
          ))}
        </ol>
        <div class="row">
          <button type="button" class="secondary" id="recovery-copy" onClick={() => void copy()}>
            Copy
          </button>
          <button type="button" class="secondary" id="recovery-download" onClick={download}>
            Download
          </button>
          <span role="status">{copied}</span>
        </div>
        <label class="check" for="recovery-saved">
          <input id="recovery-saved" type="checkbox" checked={flow.saved} onChange={(e) => dispatch({ type: 'saved', saved: (e.target as HTMLInputElement).checked })} />
          I have saved these codes somewhere safe
        </label>
        <button type="button" id="recovery-done" disabled={!flow.saved} onClick={() => dispatch({ type: 'finish' })}>
          Done
        </button>
      </div>
    );
  }

  return (
    <div class="two-step">
      <h3 id="two-step-title">Two-step verification</h3>
      <p class="hint">
        After your password, each log-in also asks for a code from your authenticator app or your e-mail, so a stolen password alone does not
        open your account. Your devices that are signed in stay signed in.
      </p>
      {me === null ? (
        !loadError && <p>Reading your account…</p>
      ) : (
        <>
          <p id="two-step-state" class={status.totp || status.email ? 'on' : 'off'}>
            {statusText(status)}
          </p>
          {flow.step === 'idle' && (
            <div class="two-step-actions">
              {factorActions(status).map((action) => (
                <button
                  type="button"
                  key={action}
                  class={action.endsWith('_off') ? 'secondary' : ''}
                  id={`two-step-${action.replace('_', '-')}`}
                  onClick={() => dispatch({ type: 'start', action })}
                >
                  {actionLabel(action)}
                </button>
              ))}
            </div>
          )}
        </>
      )}
      {step}
      <p role="status" id="two-step-done" tabIndex={-1} ref={doneRef}>
        {state.done}
      </p>
      {(state.error || loadError) && (
        <p class="error" role="alert" id="two-step-error">
          {state.error || loadError}
        </p>
      )}
    </div>
  );
}
