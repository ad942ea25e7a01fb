/** Times as the pages show them. One formatter each, made once: `toLocaleTimeString`
 * with options builds a formatter on every call, which a conversation of hundreds of
 * lines paid for every line on every render. */

const HOUR_MINUTE = new Intl.DateTimeFormat([], { hour: '2-digit', minute: '2-digit' });
const DAY_TIME = new Intl.DateTimeFormat([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
const FULL = new Intl.DateTimeFormat([], { dateStyle: 'medium', timeStyle: 'short' });

/** "14:05" (or "02:05 PM"), in the browser's locale. */
export const hourMinute = (at: number | Date): string => HOUR_MINUTE.format(at);

/** "Dec 5, 14:05". */
export const dayAndTime = (at: number | Date): string => DAY_TIME.format(at);

/** "Dec 5, 2026, 2:05 PM". */
export const dateAndTime = (at: number | Date): string => FULL.format(at);

/** The voice "Play" reads a message with: one of the device's own (`localService`),
 * in the page's language if there is one, never a network voice (the text would
 * leave the device). null: none here (or the browser has not listed them yet). */
export function localVoice<V extends { localService: boolean; lang: string; default?: boolean }>(
  voices: readonly V[],
  language: string,
): V | null {
  const local = voices.filter((v) => v.localService);
  const base = language.toLowerCase().split('-')[0] ?? '';
  const same = local.filter((v) => v.lang.toLowerCase().split('-')[0] === base);
  return same.find((v) => v.default) ?? same[0] ?? local.find((v) => v.default) ?? local[0] ?? null;
}
