// Two-step verification's pure rules (src/app/twoFactor.ts) against services/auth
// (twofactor.py, routes.py; docs/auth.md "Two-factor"): what is offered for each status,
// the page's steps (a refusal leaves each as it was, with the server's code and
// message), codes and keys as typed, the otpauth:// link pyotp makes and its QR code
// (read back with the `qr` package's own decoder).
import decodeQR from 'qr/decode.js';
import { describe, expect, it } from 'vitest';

import { ApiError, type TotpSetup } from '../src/app/api.ts';
import {
  type FlowState,
  START,
  actionLabel,
  checkSetup,
  factorActions,
  groupSecret,
  parseOtpauth,
  passwordPrompt,
  qrPath,
  recoveryCodesFile,
  reduce,
  refusalText,
  sixDigits,
  statusText,
} from '../src/app/twoFactor.ts';

const OFF = { totp: false, email: false, recovery_codes_left: 0 };
const TOTP = { totp: true, email: false, recovery_codes_left: 10 };
const EMAIL = { totp: false, email: true, recovery_codes_left: 9 };
const BOTH = { totp: true, email: true, recovery_codes_left: 1 };
// pyotp.TOTP(secret).provisioning_uri(name='alice', issuer_name='Parley'), as the server makes it.
const SECRET = 'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP';
const URI = `otpauth://totp/Parley:alice?secret=${SECRET}&issuer=Parley`;
const SETUP: TotpSetup = { secret: SECRET, provisioning_uri: URI, algorithm: 'SHA1', digits: 6, period: 30 };
const CODES = ['ABCDE-FGHJK', 'LMNPQ-RSTUV'];
const invalidCode = new ApiError('invalid_code', 'The code is not right.', 400);

function run(...events: Parameters<typeof reduce>[1][]): FlowState {
  return events.reduce(reduce, START);
}

describe('what is offered', () => {
  it('turns each factor on or off, and makes new recovery codes only while one is on', () => {
    expect(factorActions(OFF)).toEqual(['totp_on', 'email_on']);
    expect(factorActions(TOTP)).toEqual(['totp_off', 'email_on', 'recovery_codes']);
    expect(factorActions(EMAIL)).toEqual(['totp_on', 'email_off', 'recovery_codes']);
    expect(factorActions(BOTH)).toEqual(['totp_off', 'email_off', 'recovery_codes']);
    expect(actionLabel('totp_on')).toBe('Set up an authenticator app');
  });

  it('says which factors are on and the recovery codes left', () => {
    expect(statusText(OFF)).toBe('Off: your password alone signs you in.');
    expect(statusText(TOTP)).toBe('On: an authenticator app after your password (10 recovery codes left).');
    expect(statusText(BOTH)).toBe('On: an authenticator app and codes by e-mail after your password (1 recovery code left).');
  });

  it('warns before the last factor goes (the server deletes the recovery codes then)', () => {
    expect(passwordPrompt('totp_off', TOTP, 'a@x.test')).toContain('your recovery codes are deleted');
    expect(passwordPrompt('totp_off', BOTH, 'a@x.test')).not.toContain('deleted');
    expect(passwordPrompt('email_off', EMAIL, 'a@x.test')).toContain('your recovery codes are deleted');
    expect(passwordPrompt('email_on', OFF, 'a@x.test')).toContain('e-mailed to a@x.test');
    expect(passwordPrompt('recovery_codes', TOTP, '')).toContain('stop working');
  });
});

describe('the steps (reduce)', () => {
  it('sets up an authenticator app: password, key, code, recovery codes saved, done', () => {
    let s = run({ type: 'start', action: 'totp_on' });
    expect(s.flow).toEqual({ step: 'password', action: 'totp_on' });
    s = reduce(s, { type: 'totp_setup', setup: SETUP });
    expect(s.flow).toEqual({ step: 'totp_code', setup: SETUP });
    s = reduce(s, { type: 'enabled', factor: 'totp', codes: CODES, left: 2 });
    expect(s.flow).toMatchObject({ step: 'codes', codes: CODES, saved: false });
    expect(reduce(s, { type: 'finish' })).toBe(s); // not before they are saved
    expect(reduce(s, { type: 'cancel' })).toBe(s); // nor cancelled away
    expect(reduce(s, { type: 'start', action: 'totp_off' })).toBe(s);
    s = reduce(s, { type: 'saved', saved: true });
    s = reduce(s, { type: 'finish' });
    expect(s).toEqual({ flow: { step: 'idle' }, done: 'The authenticator app is on: after your password, each log-in asks for its code.', error: '' });
  });

  it('keeps the step and what it holds on every refusal, and shows the code and message', () => {
    const password = run({ type: 'start', action: 'totp_on' });
    const wrong = reduce(password, { type: 'refused', error: new ApiError('invalid_credentials', 'Wrong username or password.', 401) });
    expect(wrong.flow).toBe(password.flow);
    expect(wrong.error).toBe('Failed (invalid_credentials): Wrong username or password.');
    const code = reduce(wrong, { type: 'totp_setup', setup: SETUP });
    expect(code.error).toBe(''); // the next step clears it
    const refused = reduce(code, { type: 'refused', error: invalidCode });
    expect(refused.flow).toBe(code.flow); // the same key, still shown
    expect(refused.error).toBe('Failed (invalid_code): The code is not right.');
    const codes = reduce(refused, { type: 'enabled', factor: 'totp', codes: CODES, left: 2 });
    const saved = reduce(codes, { type: 'saved', saved: true });
    expect(reduce(saved, { type: 'refused', error: new Error('x') }).flow).toBe(saved.flow);
  });

  it('turns on a second factor without new codes (the first ones stay)', () => {
    const s = run({ type: 'start', action: 'email_on' }, { type: 'email_sent' }, { type: 'enabled', factor: 'email', codes: [], left: 7 });
    expect(s.flow).toEqual({ step: 'idle' });
    expect(s.done).toBe('Codes by e-mail is on: after your password, each log-in asks for the code we e-mail you. Your recovery codes stay the same (7 are left).');
  });

  it('turns a factor off, saying when two-step verification is then off', () => {
    const last = run({ type: 'start', action: 'totp_off' }, { type: 'disabled', factor: 'totp', othersOn: false });
    expect(last.done).toBe(
      'The authenticator app is off. Two-step verification is off: your password alone signs you in, and your recovery codes were deleted.',
    );
    const other = run({ type: 'start', action: 'email_off' }, { type: 'disabled', factor: 'email', othersOn: true });
    expect(other.done).toBe('Codes by e-mail is off.');
  });

  it('shows new recovery codes once, to be saved', () => {
    const s = run({ type: 'start', action: 'recovery_codes' }, { type: 'new_codes', codes: CODES });
    expect(s.flow).toMatchObject({ step: 'codes', codes: CODES, saved: false });
    expect(run({ type: 'start', action: 'recovery_codes' }, { type: 'new_codes', codes: CODES }, { type: 'saved', saved: true }, { type: 'finish' }).done).toBe(
      'New recovery codes: the old ones no longer work.',
    );
  });

  it('ignores an answer that does not belong to the step', () => {
    expect(run({ type: 'totp_setup', setup: SETUP })).toEqual(START);
    expect(run({ type: 'start', action: 'email_on' }, { type: 'totp_setup', setup: SETUP }).flow).toEqual({ step: 'password', action: 'email_on' });
    expect(run({ type: 'start', action: 'totp_on' }, { type: 'enabled', factor: 'totp', codes: CODES, left: 2 }).flow.step).toBe('password');
    expect(run({ type: 'start', action: 'totp_on' }, { type: 'disabled', factor: 'totp', othersOn: false }).flow.step).toBe('password');
    expect(run({ type: 'saved', saved: true }, { type: 'finish' })).toEqual(START);
  });

  it('cancels back to the start, forgetting the key shown', () => {
    expect(run({ type: 'start', action: 'totp_on' }, { type: 'totp_setup', setup: SETUP }, { type: 'cancel' })).toEqual(START);
  });
});

describe('refusalText', () => {
  it("is the server's code and message, with what the details add", () => {
    expect(refusalText(new ApiError('conflict', 'TOTP is already on; turn it off first.', 409))).toBe('Failed (conflict): TOTP is already on; turn it off first.');
    expect(refusalText(new ApiError('invalid_code', 'The code is not right.', 400, { attempts_left: 3 }))).toBe('Failed (invalid_code): The code is not right. 3 attempts left.');
    expect(refusalText(new ApiError('invalid_code', 'The code is not right.', 400, { attempts_left: 1 }))).toBe('Failed (invalid_code): The code is not right. 1 attempt left.');
    expect(refusalText(new ApiError('account_locked', 'Too many attempts.', 429, { retry_after: 41.2 }))).toBe('Failed (account_locked): Too many attempts. Try again in 42 s.');
    expect(refusalText(new ApiError('validation_failed', 'The request is not valid (password: too long)', 422, [{ field: 'password', problem: 'too long' }]))).toBe(
      'Failed (validation_failed): The request is not valid (password: too long)',
    );
    expect(refusalText(new Error('Cannot reach'))).toBe('Failed: Cannot reach');
  });
});

describe('codes and keys as typed', () => {
  it('takes six digits, with spaces or a dash', () => {
    expect(sixDigits('123456')).toBe('123456');
    expect(sixDigits(' 123 456 ')).toBe('123456');
    expect(sixDigits('123-456')).toBe('123456');
    for (const bad of ['', '12345', '1234567', '12345a', '１２３４５６']) expect(sixDigits(bad)).toBeNull();
  });

  it('groups the key by four', () => {
    expect(groupSecret(SECRET)).toBe('JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP');
    expect(groupSecret('ABCDEF')).toBe('ABCD EF');
  });
});

describe('the otpauth:// link', () => {
  it("reads pyotp's link: the issuer, the account, the key and the code's parameters", () => {
    expect(parseOtpauth(URI)).toEqual({ issuer: 'Parley', account: 'alice', secret: SECRET, algorithm: 'SHA1', digits: 6, period: 30 });
    // PARLEY_TOTP_ISSUER with spaces and an ampersand, percent-encoded by pyotp.
    const odd = `otpauth://totp/Parley%20Test%20%26%20Co:a.b_c-d?secret=${SECRET}&issuer=Parley%20Test%20%26%20Co`;
    expect(parseOtpauth(odd)).toMatchObject({ issuer: 'Parley Test & Co', account: 'a.b_c-d' });
    expect(parseOtpauth(`otpauth://totp/bob?secret=${SECRET}&digits=8&period=60&algorithm=sha256`)).toEqual({
      issuer: '',
      account: 'bob',
      secret: SECRET,
      algorithm: 'SHA256',
      digits: 8,
      period: 60,
    });
  });

  it('refuses what is not a TOTP link with a base32 key', () => {
    for (const bad of ['https://example.test/?secret=ABC', `otpauth://hotp/Parley:alice?secret=${SECRET}&counter=1`, 'otpauth://totp/Parley:alice?issuer=Parley', 'otpauth://totp/Parley:alice?secret=not+base32!', 'otpauth://totp/%E0%A4%A?secret=ABC']) {
      expect(parseOtpauth(bad)).toBeNull();
    }
  });

  it('is shown only when it carries the key shown, for codes the server checks', () => {
    expect(checkSetup(SETUP)).toMatchObject({ account: 'alice', secret: SECRET });
    expect(checkSetup({ ...SETUP, secret: 'AAAA' + SECRET.slice(4) })).toBe("The server's set-up link and key differ.");
    expect(checkSetup({ ...SETUP, provisioning_uri: URI.replace('otpauth', 'https') })).toBe('The server sent a set-up link that is not an otpauth:// link.');
    expect(checkSetup({ ...SETUP, provisioning_uri: `${URI}&digits=8` })).toBe('The server asks for codes this page does not know.');
  });

  it('draws a QR code that reads back as the link', () => {
    const { size, path } = qrPath(URI);
    // The path's rectangles back into pixels (4 per module), read by the package's decoder.
    const scale = 4;
    const width = size * scale;
    const data = new Uint8ClampedArray(width * width * 4).fill(255);
    for (const [, x, y, w] of path.matchAll(/M(\d+) (\d+)h(\d+)v1h-\d+z/g)) {
      for (let py = Number(y) * scale; py < (Number(y) + 1) * scale; py++) {
        for (let px = Number(x) * scale; px < (Number(x) + Number(w)) * scale; px++) data.fill(0, (py * width + px) * 4, (py * width + px) * 4 + 3);
      }
    }
    expect(path.replace(/M(\d+) (\d+)h(\d+)v1h-\d+z/g, '')).toBe(''); // nothing else in it
    expect(decodeQR({ width, height: width, data })).toBe(URI);
  });
});

describe('recoveryCodesFile', () => {
  it('holds every code, one a line, under what they are for', () => {
    const text = recoveryCodesFile(CODES, 'alice', '2026-12-04');
    expect(text.split('\n')).toEqual(expect.arrayContaining(CODES));
    expect(text.startsWith('Parley recovery codes for alice\nMade on 2026-12-04.')).toBe(true);
  });
});
