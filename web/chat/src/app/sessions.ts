/**
 * The account's sessions, as "Sessions" in the settings shows them (`GET /auth/v1/sessions`,
 * docs/auth.md "Tokens and sessions"): the pure rules, unit-tested in test/sessions.test.ts.
 *
 * A session is one log-in (a refresh-token family): this browser's, the terminal
 * client's, another browser's, a script's. Ending one (`DELETE /auth/v1/sessions/{sid}`)
 * stops its tokens at once everywhere; ending this browser's own signs it out. "Sign out
 * everywhere else" (`DELETE /auth/v1/sessions`) ends all the others. Devices stay in the
 * account's device list either way: they log in again with the password.
 */
import type { SessionInfo } from './api.ts';

/** A row of the list: the server's session and what the page says about it. */
export interface SessionRow {
  id: string;
  /** "Parley in a browser", "Parley terminal client", the label given, or the app. */
  title: string;
  /** The browser or program and system ("Chrome 156 on Linux"), '' when unknown. */
  agent: string;
  ip: string;
  current: boolean;
  signedIn: string;
  lastActive: string;
  /** The line under the title: the program (unless it is the title), the address, when
   * it signed in and was last active. */
  details: string;
}

/** What the `device` label of a log-in says, for people. */
const LABELS: Record<string, string> = {
  'parley-web': 'Parley in a browser',
  'parley-cli': 'Parley terminal client',
};

/** The browser or program and its system, from a User-Agent header: "Chrome 156 on
 * Linux", "Firefox 140 on Windows", "Python (aiohttp 3.14)"; '' when there is none. */
export function agentSummary(ua: string | null | undefined): string {
  const text = (ua ?? '').trim();
  if (!text) return '';
  const aiohttp = /aiohttp\/(\d+\.\d+)/.exec(text);
  if (aiohttp) return `Python (aiohttp ${aiohttp[1]})`;
  const browsers: [RegExp, string][] = [
    [/Edg(?:e|A|iOS)?\/(\d+)/, 'Edge'],
    [/OPR\/(\d+)/, 'Opera'],
    [/Firefox\/(\d+)/, 'Firefox'],
    [/(?:Headless)?Chrome\/(\d+)/, 'Chrome'],
    [/CriOS\/(\d+)/, 'Chrome'],
    [/Version\/(\d+)(?:\.\d+)*(?: Mobile\/\S+)? Safari\//, 'Safari'],
  ];
  let browser = '';
  for (const [pattern, name] of browsers) {
    const found = pattern.exec(text);
    if (found) {
      browser = `${name} ${found[1]}`;
      break;
    }
  }
  const systems: [RegExp, string][] = [
    [/Android/, 'Android'],
    [/iPhone|iPad|iPod/, 'iOS'],
    [/CrOS/, 'ChromeOS'],
    [/Windows/, 'Windows'],
    [/Mac OS X|Macintosh/, 'macOS'],
    [/Linux|X11/, 'Linux'],
  ];
  const system = systems.find(([pattern]) => pattern.test(text))?.[1] ?? '';
  if (browser && system) return `${browser} on ${system}`;
  if (browser || system) return browser || system;
  // Something else: its first product token, shortened.
  const first = text.split(/\s+/)[0] as string;
  return [...first].slice(0, 40).join('');
}

/** How long ago `iso` was, as of `now` (Unix ms): "just now", "5 minutes ago", "3 hours
 * ago", then the date ("on 2026-12-04"). A time a little ahead of this clock is now. */
export function whenText(iso: string, now: number): string {
  const at = Date.parse(iso);
  if (!Number.isFinite(at)) return '';
  const ago = Math.max(0, now - at);
  const minutes = Math.floor(ago / 60_000);
  if (minutes < 1) return 'just now';
  if (minutes < 60) return minutes === 1 ? '1 minute ago' : `${minutes} minutes ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return hours === 1 ? '1 hour ago' : `${hours} hours ago`;
  return `on ${new Date(at).toISOString().slice(0, 10)}`;
}

/** A session's title: what its log-in called itself, else the program it came from. */
export function sessionTitle(s: Pick<SessionInfo, 'device' | 'user_agent'>): string {
  const label = (s.device ?? '').trim();
  if (label) return LABELS[label] ?? label;
  return agentSummary(s.user_agent) || 'Unknown app';
}

/** The list to show: this browser's session first, then the others, the most recently
 * used first. */
export function sessionRows(sessions: readonly SessionInfo[], now: number): SessionRow[] {
  const order = [...sessions].sort((a, b) => {
    if (a.current !== b.current) return a.current ? -1 : 1;
    return Date.parse(b.last_used_at) - Date.parse(a.last_used_at) || a.session_id.localeCompare(b.session_id);
  });
  return order.map((s) => {
    const title = sessionTitle(s);
    const agent = agentSummary(s.user_agent);
    const signedIn = whenText(s.created_at, now);
    const lastActive = s.current ? 'active now' : whenText(s.last_used_at, now);
    const details = [agent === title ? '' : agent, s.ip ?? '', signedIn && `signed in ${signedIn}`, s.current ? lastActive : lastActive && `last active ${lastActive}`];
    return { id: s.session_id, title, agent, ip: s.ip ?? '', current: s.current, signedIn, lastActive, details: details.filter(Boolean).join(' · ') };
  });
}

/** Whether "Sign out everywhere else" has anything to end. */
export function othersSignedIn(sessions: readonly SessionInfo[]): number {
  return sessions.filter((s) => !s.current).length;
}

/** The status line after "Sign out everywhere else" ended `n` sessions. */
export function signedOutElsewhere(n: number): string {
  if (n === 0) return 'No other session was signed in.';
  return n === 1 ? 'Signed out of 1 other session.' : `Signed out of ${n} other sessions.`;
}

/** Ending `sid` from this browser: `signed_out` when it is this browser's own session
 * (`mine`: the session of this browser's tokens), else `ended`. */
export function revokeOutcome(sid: string, mine: string | null | undefined): 'signed_out' | 'ended' {
  return mine !== null && mine !== undefined && sid === mine ? 'signed_out' : 'ended';
}
