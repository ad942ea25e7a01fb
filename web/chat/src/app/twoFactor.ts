/**
 * Two-step verification in the settings (docs/auth.md "Two-factor"): the pure rules,
 * unit-tested in test/twoFactor.test.ts; twoFactorView.tsx shows them and makes the calls.
 *
 * The server offers an authenticator app (TOTP: `POST /auth/v1/2fa/totp/setup` with the
 * password gives a base32 secret and its `otpauth://` URI, `.../confirm` with a first code
 * turns it on), codes by e-mail (`.../email/setup` mails a code, `.../email/confirm` takes
 * it), and recovery codes: ten, shown once when the first factor is turned on, or again
 * made (the old ones then stop working) with the password. Turning a factor off asks for
 * the password; turning the last one off deletes the recovery codes.
 *
 * The page's steps are a small state machine ({@link reduce}): a refusal of the server
 * leaves the step as it was and shows its code and message ("nothing changed").
 */
import encodeQR from 'qr';
import { ApiError, type TotpSetup, type TwoFactorStatus } from './api.ts';

/** What the user can ask for, each behind the password. */
export type FactorAction = 'totp_on' | 'totp_off' | 'email_on' | 'email_off' | 'recovery_codes';

/** The actions offered for a status: each factor on or off, and new recovery codes only
 * while a factor is on (the server refuses them otherwise: `conflict`). */
export function factorActions(s: TwoFactorStatus): FactorAction[] {
  const out: FactorAction[] = [s.totp ? 'totp_off' : 'totp_on', s.email ? 'email_off' : 'email_on'];
  if (s.totp || s.email) out.push('recovery_codes');
  return out;
}

/** The status line: which factors are on and how many recovery codes are left. */
export function statusText(s: TwoFactorStatus): string {
  const on = [s.totp && 'an authenticator app', s.email && 'codes by e-mail'].filter(Boolean) as string[];
  if (on.length === 0) return 'Off: your password alone signs you in.';
  const left = s.recovery_codes_left === 1 ? '1 recovery code left' : `${s.recovery_codes_left} recovery codes left`;
  return `On: ${on.join(' and ')} after your password (${left}).`;
}

/** What the password step says before the action (what it will change). */
export function passwordPrompt(action: FactorAction, s: TwoFactorStatus, email: string): string {
  const last = (other: boolean) =>
    other ? '' : ' Two-step verification is then off: your password alone signs you in, and your recovery codes are deleted.';
  switch (action) {
    case 'totp_on':
      return 'Enter your password. The next step shows the key to add to your authenticator app.';
    case 'totp_off':
      return `Enter your password to turn the authenticator app off.${last(s.email)}`;
    case 'email_on':
      return `Enter your password. A 6-digit code is then e-mailed to ${email || 'your address'}.`;
    case 'email_off':
      return `Enter your password to stop codes by e-mail.${last(s.totp)}`;
    case 'recovery_codes':
      return 'Enter your password. Your current recovery codes stop working at once.';
  }
}

/** The button that asks for the action. */
export function actionLabel(action: FactorAction): string {
  return {
    totp_on: 'Set up an authenticator app',
    totp_off: 'Turn off the authenticator app',
    email_on: 'Turn on codes by e-mail',
    email_off: 'Turn off codes by e-mail',
    recovery_codes: 'Make new recovery codes',
  }[action];
}

/** The steps of the page. */
export type Flow =
  | { step: 'idle' }
  | { step: 'password'; action: FactorAction }
  | { step: 'totp_code'; setup: TotpSetup }
  | { step: 'email_code' }
  | { step: 'codes'; codes: string[]; saved: boolean; then: string };

/** The page's state: the step, what was last done, and the last refusal. */
export interface FlowState {
  flow: Flow;
  /** The status line of what was done ('' before anything). */
  done: string;
  /** The last refusal, as shown ('' when none). */
  error: string;
}

export type FlowEvent =
  | { type: 'start'; action: FactorAction }
  | { type: 'cancel' }
  | { type: 'refused'; error: unknown }
  | { type: 'totp_setup'; setup: TotpSetup }
  | { type: 'email_sent' }
  /** A factor confirmed on; `codes` the recovery codes (none when another factor was on
   * already: they were shown then), `left` how many the account has. */
  | { type: 'enabled'; factor: 'totp' | 'email'; codes: string[]; left: number }
  /** A factor turned off; `othersOn`: another factor stays on. */
  | { type: 'disabled'; factor: 'totp' | 'email'; othersOn: boolean }
  | { type: 'new_codes'; codes: string[] }
  | { type: 'saved'; saved: boolean }
  | { type: 'finish' };

export const START: FlowState = { flow: { step: 'idle' }, done: '', error: '' };

const NAMES = { totp: 'The authenticator app', email: 'Codes by e-mail' } as const;

/** The next state of the page. A refusal keeps the step (and what it holds: the secret
 * shown, the codes to save) and shows the error; every other event clears it. */
export function reduce(state: FlowState, event: FlowEvent): FlowState {
  const { flow } = state;
  switch (event.type) {
    case 'refused':
      return { ...state, error: refusalText(event.error) };
    case 'start':
      // Not while recovery codes wait to be saved: they would be lost from the page.
      if (flow.step === 'codes') return state;
      return { flow: { step: 'password', action: event.action }, done: '', error: '' };
    case 'cancel':
      if (flow.step === 'codes') return state; // "Done" ends it, once they are saved
      return { flow: { step: 'idle' }, done: '', error: '' };
    case 'totp_setup':
      if (flow.step !== 'password' || flow.action !== 'totp_on') return state;
      return { flow: { step: 'totp_code', setup: event.setup }, done: '', error: '' };
    case 'email_sent':
      if (flow.step !== 'password' || flow.action !== 'email_on') return state;
      return { flow: { step: 'email_code' }, done: '', error: '' };
    case 'enabled': {
      const expected = event.factor === 'totp' ? 'totp_code' : 'email_code';
      if (flow.step !== expected) return state;
      const on = `${NAMES[event.factor]} is on: after your password, each log-in asks for ${event.factor === 'totp' ? 'its code' : 'the code we e-mail you'}.`;
      if (event.codes.length === 0) {
        const left = event.left === 1 ? '1 is left' : `${event.left} are left`;
        return { flow: { step: 'idle' }, done: `${on} Your recovery codes stay the same (${left}).`, error: '' };
      }
      return { flow: { step: 'codes', codes: event.codes, saved: false, then: on }, done: '', error: '' };
    }
    case 'disabled': {
      const action = event.factor === 'totp' ? 'totp_off' : 'email_off';
      if (flow.step !== 'password' || flow.action !== action) return state;
      const off = `${NAMES[event.factor]} is off.`;
      const rest = event.othersOn ? '' : ' Two-step verification is off: your password alone signs you in, and your recovery codes were deleted.';
      return { flow: { step: 'idle' }, done: off + rest, error: '' };
    }
    case 'new_codes':
      if (flow.step !== 'password' || flow.action !== 'recovery_codes') return state;
      return { flow: { step: 'codes', codes: event.codes, saved: false, then: 'New recovery codes: the old ones no longer work.' }, done: '', error: '' };
    case 'saved':
      if (flow.step !== 'codes') return state;
      return { ...state, flow: { ...flow, saved: event.saved } };
    case 'finish':
      if (flow.step !== 'codes' || !flow.saved) return state; // saved first
      return { flow: { step: 'idle' }, done: flow.then, error: '' };
  }
}

/** A refusal as the page shows it: the server's stable code and message, and what its
 * details add (the attempts left, when to try again). */
export function refusalText(error: unknown): string {
  if (!(error instanceof ApiError)) return `Failed: ${error instanceof Error ? error.message : String(error)}`;
  let text = `Failed (${error.code}): ${error.message}`;
  const details = error.details as { attempts_left?: unknown; retry_after?: unknown } | null | undefined;
  if (details && typeof details === 'object' && !Array.isArray(details)) {
    if (typeof details.attempts_left === 'number') {
      text += details.attempts_left === 1 ? ' 1 attempt left.' : ` ${details.attempts_left} attempts left.`;
    }
    if (typeof details.retry_after === 'number') text += ` Try again in ${Math.ceil(details.retry_after)} s.`;
  }
  return text;
}

/** A 6-digit code as typed (spaces and dashes allowed: "123 456"), or null when it is not
 * one: such a code is not sent (each wrong one counts towards the account's lockout). */
export function sixDigits(input: string): string | null {
  const code = input.replace(/[\s-]/g, '');
  return /^\d{6}$/.test(code) ? code : null;
}

/** The base32 secret in groups of four, to type into an app by hand. */
export function groupSecret(secret: string): string {
  return (secret.replace(/\s/g, '').match(/.{1,4}/g) ?? []).join(' ');
}

/** What an `otpauth://` URI says: the issuer, the account name, the secret and the code's
 * parameters (Key Uri Format); null for anything else. */
export interface Otpauth {
  issuer: string;
  account: string;
  secret: string;
  algorithm: string;
  digits: number;
  period: number;
}

export function parseOtpauth(uri: string): Otpauth | null {
  const found = /^otpauth:\/\/totp\/([^?#]*)\?([^#]*)$/i.exec(uri);
  if (!found) return null;
  let label: string;
  try {
    label = decodeURIComponent(found[1] as string);
  } catch {
    return null;
  }
  const params = new URLSearchParams(found[2]);
  const secret = params.get('secret');
  if (!secret || !/^[A-Z2-7]+=*$/i.test(secret)) return null;
  const colon = label.indexOf(':');
  const issuer = params.get('issuer') ?? (colon >= 0 ? label.slice(0, colon) : '');
  const account = (colon >= 0 ? label.slice(colon + 1) : label).trim();
  return {
    issuer,
    account,
    secret: secret.toUpperCase(),
    algorithm: (params.get('algorithm') ?? 'SHA1').toUpperCase(),
    digits: Number(params.get('digits') ?? 6),
    period: Number(params.get('period') ?? 30),
  };
}

/** The setup to show, checked: its URI must carry the very secret shown as text (the
 * code an app scans and the key typed by hand are then the same), for SHA-1, 6 digits,
 * 30 s (what the server checks). An error message otherwise. */
export function checkSetup(setup: TotpSetup): Otpauth | string {
  const uri = parseOtpauth(setup.provisioning_uri);
  if (uri === null) return 'The server sent a set-up link that is not an otpauth:// link.';
  if (uri.secret !== setup.secret.replace(/\s/g, '').toUpperCase()) return "The server's set-up link and key differ.";
  if (uri.algorithm !== 'SHA1' || uri.digits !== 6 || uri.period !== 30) return 'The server asks for codes this page does not know.';
  return uri;
}

/** The QR code of `text` as one SVG path on a grid of `size` modules (a 4-module quiet
 * zone around the code included): each row's dark runs as rectangles. */
export function qrPath(text: string): { size: number; path: string } {
  const matrix = encodeQR(text, 'raw', { ecc: 'medium', border: 4 });
  const parts: string[] = [];
  matrix.forEach((row, y) => {
    let x = 0;
    while (x < row.length) {
      if (!row[x]) {
        x += 1;
        continue;
      }
      let end = x;
      while (end < row.length && row[end]) end += 1;
      parts.push(`M${x} ${y}h${end - x}v1h-${end - x}z`);
      x = end;
    }
  });
  return { size: matrix.length, path: parts.join('') };
}

/** The recovery codes as a text file to keep (what "Download" saves). */
export function recoveryCodesFile(codes: readonly string[], username: string, day: string): string {
  return [
    `Parley recovery codes for ${username}`,
    `Made on ${day}. Each code works once, instead of the code from your authenticator app or e-mail.`,
    'Keep them somewhere safe (a password manager, or printed): with your password, each one signs you in.',
    '',
    ...codes,
    '',
  ].join('\n');
}
