/** Typing in rooms: the pure rules (docs/protocol.md "Typing"; the CLI's `TypingSaid`
 * and `TypingLine` in client/parley/cli_rooms.py do the same). Times are milliseconds,
 * passed in, so the rules are tested without a clock. */

/** How often this device says again that it types while the user types (the
 * server refuses more than one start every 2 s per device and room: `TYPING_EVERY_S`). */
export const TYPING_SAY_EVERY_MS = 3000;
/** The least time between two starts of a device in a room: the server's
 * (`TYPING_EVERY_S`, 2 s) and half a second, as the gateway times frames as they reach it. */
export const TYPING_EVERY_MS = 2500;
/** How long a member shows as typing after their last notice (`TYPING_TTL_S`). */
export const TYPING_TTL_MS = 6000;

export type TypingSay = 'start' | 'stop' | null;

/** When one room's draft should say `typing` (a start) or `typing: false` (a stop). */
export class TypingThrottle {
  #said: number | null = null; // when a start was last said; null: none since the last stop
  #started: number | null = null; // when a start was last said, a stop since or not

  /** The draft is now `text`: a start at most every {@link TYPING_SAY_EVERY_MS} while
   * it holds something, and never within {@link TYPING_EVERY_MS} of the last start,
   * even after a stop (the server refuses it: `rate_limited`); a stop when it was
   * cleared. */
  changed(text: string, now: number): TypingSay {
    if (text.trim() === '') return this.done(now);
    if (this.#said !== null && now - this.#said < TYPING_SAY_EVERY_MS) return null;
    if (this.#started !== null && now - this.#started < TYPING_EVERY_MS) return null;
    this.#said = this.#started = now;
    return 'start';
  }

  /** The draft was sent, cleared or left: a stop if a start was said in the last
   * {@link TYPING_TTL_MS} (an older one has expired everywhere: nothing to stop). */
  done(now: number): TypingSay {
    const said = this.#said;
    this.#said = null;
    return said !== null && now - said <= TYPING_TTL_MS ? 'stop' : null;
  }
}

/** Who is typing in which room: each member device until {@link TYPING_TTL_MS} after
 * its last notice, until it says it stopped, or until its user's message arrives. */
export class TypingBoard {
  readonly #until = new Map<string, Map<string, number>>(); // room -> "user\ndevice" -> until

  /** A `typing` notice. */
  on(room: string, user: string, device: number, typing: boolean, now: number): void {
    const key = `${user}\n${device}`;
    let devices = this.#until.get(room);
    if (typing) {
      if (devices === undefined) this.#until.set(room, (devices = new Map()));
      devices.set(key, now + TYPING_TTL_MS);
    } else {
      devices?.delete(key);
    }
  }

  /** `user` wrote in `room`: whoever wrote has stopped typing (on every device). */
  wrote(room: string, user: string): void {
    const devices = this.#until.get(room);
    for (const key of [...(devices?.keys() ?? [])]) if (key.startsWith(`${user}\n`)) devices?.delete(key);
  }

  /** The users typing in `room` now, in the order they started; expired ones dropped. */
  typists(room: string, now: number): string[] {
    const devices = this.#until.get(room);
    if (devices === undefined) return [];
    const users: string[] = [];
    for (const [key, until] of devices) {
      if (until <= now) devices.delete(key);
      else {
        const user = key.slice(0, key.indexOf('\n'));
        if (!users.includes(user)) users.push(user);
      }
    }
    if (devices.size === 0) this.#until.delete(room);
    return users;
  }

  /** When the next one in `room` expires (to show the room again then); null: no one. */
  nextExpiry(room: string, now: number): number | null {
    let next: number | null = null;
    for (const until of this.#until.get(room)?.values() ?? []) if (until > now && (next === null || until < next)) next = until;
    return next;
  }
}

/** "alice is typing…", "alice, bob are typing…", "4 people are typing…"; "" for no one.
 * Names sorted, as the CLI's `TypingLine`. */
export function typingText(names: readonly string[]): string {
  if (names.length === 0) return '';
  if (names.length > 3) return `${names.length} people are typing…`;
  const sorted = [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return `${sorted.join(', ')} ${sorted.length === 1 ? 'is' : 'are'} typing…`;
}
