// The account's sessions as the settings list them (src/app/sessions.ts), from what
// `GET /auth/v1/sessions` answers (services/auth/sessions.py `list_own`: newest first,
// `device` the log-in's label or null, `current` the caller's session).
import { describe, expect, it } from 'vitest';

import type { SessionInfo } from '../src/app/api.ts';
import { agentSummary, othersSignedIn, revokeOutcome, sessionRows, sessionTitle, signedOutElsewhere, whenText } from '../src/app/sessions.ts';

const NOW = Date.parse('2026-12-04T12:00:00Z');
const CHROMIUM = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36';
const PYTHON = 'Python/3.11 aiohttp/3.14.5';

function session(id: string, over: Partial<SessionInfo> = {}): SessionInfo {
  return {
    session_id: id,
    created_at: '2026-12-01T09:00:00.000000Z',
    last_used_at: '2026-12-04T11:00:00.000000Z',
    expires_at: '2027-01-03T11:00:00.000000Z',
    device: null,
    user_agent: null,
    ip: '127.0.0.1',
    current: false,
    ...over,
  };
}

describe('agentSummary', () => {
  it('names the browser and its system', () => {
    expect(agentSummary(CHROMIUM)).toBe('Chrome 156 on Linux');
    expect(agentSummary('Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0')).toBe('Firefox 140 on Windows');
    expect(agentSummary('Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.5 Safari/605.1.15')).toBe(
      'Safari 18 on macOS',
    );
    expect(
      agentSummary('Mozilla/5.0 (iPhone; CPU iPhone OS 18_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.5 Mobile/15E148 Safari/604.1'),
    ).toBe('Safari 18 on iOS');
    expect(
      agentSummary('Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/138.0.0.0 Safari/537.36 Edg/138.0.0.0'),
    ).toBe('Edge 138 on Windows');
    expect(agentSummary('Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/138.0.0.0 Mobile Safari/537.36')).toBe(
      'Chrome 138 on Android',
    );
  });

  it('names the Python SDK and the terminal client (aiohttp), and anything else by its first token', () => {
    expect(agentSummary(PYTHON)).toBe('Python (aiohttp 3.14)');
    expect(agentSummary('curl/8.5.0')).toBe('curl/8.5.0');
    expect([...agentSummary(`x${'y'.repeat(100)} z`)]).toHaveLength(40);
  });

  it('says nothing when there is no header', () => {
    for (const none of [null, undefined, '', '   ']) expect(agentSummary(none)).toBe('');
  });
});

describe('whenText', () => {
  it('says how long ago, then the day', () => {
    expect(whenText('2026-12-04T11:59:30Z', NOW)).toBe('just now');
    expect(whenText('2026-12-04T12:00:05Z', NOW)).toBe('just now'); // a clock a little behind the server's
    expect(whenText('2026-12-04T11:59:00Z', NOW)).toBe('1 minute ago');
    expect(whenText('2026-12-04T11:15:00Z', NOW)).toBe('45 minutes ago');
    expect(whenText('2026-12-04T11:00:00Z', NOW)).toBe('1 hour ago');
    expect(whenText('2026-12-03T12:30:00.123456Z', NOW)).toBe('23 hours ago');
    expect(whenText('2026-12-01T09:00:00.000000Z', NOW)).toBe('on 2026-12-01');
    expect(whenText('not a time', NOW)).toBe('');
  });
});

describe('sessionTitle', () => {
  it("is what the log-in called itself, else the program it came from", () => {
    expect(sessionTitle({ device: 'parley-web', user_agent: CHROMIUM })).toBe('Parley in a browser');
    expect(sessionTitle({ device: 'parley-cli', user_agent: PYTHON })).toBe('Parley terminal client');
    expect(sessionTitle({ device: 'backup-script', user_agent: null })).toBe('backup-script');
    // A sign-up, or a log-in without a label (a plain HTTP call, the SDK's first device).
    expect(sessionTitle({ device: null, user_agent: CHROMIUM })).toBe('Chrome 156 on Linux');
    expect(sessionTitle({ device: '  ', user_agent: PYTHON })).toBe('Python (aiohttp 3.14)');
    expect(sessionTitle({ device: null, user_agent: null })).toBe('Unknown app');
  });
});

describe('sessionRows', () => {
  it("lists this browser's session first, then the most recently used", () => {
    const list = [
      session('old', { last_used_at: '2026-12-02T10:00:00Z', device: 'parley-cli', user_agent: PYTHON }),
      session('recent', { last_used_at: '2026-12-04T11:50:00Z', user_agent: PYTHON, ip: null }),
      session('mine', { last_used_at: '2026-12-03T08:00:00Z', device: 'parley-web', user_agent: CHROMIUM, current: true }),
    ];
    const rows = sessionRows(list, NOW);
    expect(rows.map((r) => r.id)).toEqual(['mine', 'recent', 'old']);
    expect(rows[0]).toEqual({
      id: 'mine',
      title: 'Parley in a browser',
      agent: 'Chrome 156 on Linux',
      ip: '127.0.0.1',
      current: true,
      signedIn: 'on 2026-12-01',
      lastActive: 'active now', // its last refresh is older than this page
      details: 'Chrome 156 on Linux · 127.0.0.1 · signed in on 2026-12-01 · active now',
    });
    // Titled by its program: the line under it does not say it again; no address, none shown.
    expect(rows[1]).toMatchObject({ title: 'Python (aiohttp 3.14)', ip: '', current: false, lastActive: '10 minutes ago' });
    expect(rows[1]?.details).toBe('signed in on 2026-12-01 · last active 10 minutes ago');
    expect(rows[2]).toMatchObject({ title: 'Parley terminal client', lastActive: 'on 2026-12-02' });
    expect(rows[2]?.details).toBe('Python (aiohttp 3.14) · 127.0.0.1 · signed in on 2026-12-01 · last active on 2026-12-02');
  });

  it('keeps a stable order for sessions used at the same time, and an empty list', () => {
    const same = [session('b'), session('a'), session('c')];
    expect(sessionRows(same, NOW).map((r) => r.id)).toEqual(['a', 'b', 'c']);
    expect(sessionRows([], NOW)).toEqual([]);
  });
});

describe('signing out', () => {
  it("signs this browser out when its own session is ended, and only then", () => {
    expect(revokeOutcome('s1', 's1')).toBe('signed_out');
    expect(revokeOutcome('s2', 's1')).toBe('ended');
    expect(revokeOutcome('s1', null)).toBe('ended');
    expect(revokeOutcome('s1', undefined)).toBe('ended');
  });

  it('counts the other sessions, and says how many "everywhere else" ended', () => {
    expect(othersSignedIn([session('a', { current: true }), session('b'), session('c')])).toBe(2);
    expect(othersSignedIn([session('a', { current: true })])).toBe(0);
    expect(signedOutElsewhere(0)).toBe('No other session was signed in.');
    expect(signedOutElsewhere(1)).toBe('Signed out of 1 other session.');
    expect(signedOutElsewhere(3)).toBe('Signed out of 3 other sessions.');
  });
});
