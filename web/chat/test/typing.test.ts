// Typing in rooms, the pure rules of src/app/typing.ts (the CLI's TypingSaid and
// TypingLine in client/parley/cli_rooms.py; docs/protocol.md "Typing"): when a draft
// says `typing` or `typing: false`, and who shows as typing until when.
import { describe, expect, it } from 'vitest';

import { TYPING_SAY_EVERY_MS, TYPING_TTL_MS, TypingBoard, TypingThrottle, typingText } from '../src/app/typing.ts';

describe('TypingThrottle', () => {
  it('says a start at the first keystroke, then at most every 3 s while the user types', () => {
    const t = new TypingThrottle();
    expect(t.changed('h', 1000)).toBe('start');
    expect(t.changed('he', 1100)).toBeNull();
    expect(t.changed('hel', 1000 + TYPING_SAY_EVERY_MS - 1)).toBeNull();
    expect(t.changed('hell', 1000 + TYPING_SAY_EVERY_MS)).toBe('start');
    expect(t.changed('hello', 1000 + TYPING_SAY_EVERY_MS + 500)).toBeNull();
  });

  it('stays above the server limit of one start per 2 s (TYPING_EVERY_S)', () => {
    const t = new TypingThrottle();
    const starts: number[] = [];
    for (let now = 0; now < 60_000; now += 37) if (t.changed(`x${now}`, now) === 'start') starts.push(now);
    expect(starts.length).toBeGreaterThan(10);
    for (let i = 1; i < starts.length; i++) expect((starts[i] as number) - (starts[i - 1] as number)).toBeGreaterThanOrEqual(2000);
  });

  it('says nothing for a blank draft, and a stop when the draft is cleared after a start', () => {
    const t = new TypingThrottle();
    expect(t.changed('   ', 0)).toBeNull();
    expect(t.changed('', 10)).toBeNull(); // nothing was said: nothing to stop
    expect(t.changed('a', 20)).toBe('start');
    expect(t.changed('', 500)).toBe('stop');
    expect(t.changed('', 600)).toBeNull(); // said once
    // Typing again right after a stop starts again, but not within 2 s of the last
    // start (the server refuses it: rate_limited, an error for nothing).
    expect(t.changed('b', 700)).toBeNull();
    expect(t.changed('b', 2519)).toBeNull();
    expect(t.changed('b', 2520)).toBe('start');
  });

  it('says a stop when the message is sent, only if a start was said in the last 6 s', () => {
    const t = new TypingThrottle();
    expect(t.done(0)).toBeNull();
    t.changed('hi', 1000);
    expect(t.done(1000 + TYPING_TTL_MS)).toBe('stop');
    expect(t.done(1000 + TYPING_TTL_MS)).toBeNull();
    t.changed('hi again', 20_000);
    expect(t.done(20_000 + TYPING_TTL_MS + 1)).toBeNull(); // expired everywhere already
    expect(t.changed('next', 20_000 + TYPING_TTL_MS + 2)).toBe('start');
  });
});

describe('TypingBoard', () => {
  const ROOM = 'a'.repeat(24);
  const OTHER = 'b'.repeat(24);

  it('shows a member until 6 s after their last notice', () => {
    const b = new TypingBoard();
    b.on(ROOM, 'alice', 1, true, 0);
    expect(b.typists(ROOM, TYPING_TTL_MS - 1)).toEqual(['alice']);
    expect(b.nextExpiry(ROOM, 100)).toBe(TYPING_TTL_MS);
    b.on(ROOM, 'alice', 1, true, 4000); // said again: shown 6 s from now
    expect(b.typists(ROOM, 9000)).toEqual(['alice']);
    expect(b.typists(ROOM, 4000 + TYPING_TTL_MS)).toEqual([]);
    expect(b.nextExpiry(ROOM, 4000 + TYPING_TTL_MS)).toBeNull();
    expect(b.typists(OTHER, 0)).toEqual([]);
  });

  it('keeps rooms apart, and each member device apart', () => {
    const b = new TypingBoard();
    b.on(ROOM, 'alice', 1, true, 0);
    b.on(ROOM, 'alice', 2, true, 3000);
    b.on(OTHER, 'bob', 7, true, 0);
    expect(b.typists(ROOM, 100)).toEqual(['alice']); // one name for two devices
    b.on(ROOM, 'alice', 1, false, 200); // device 1 stopped, device 2 still types
    expect(b.typists(ROOM, 300)).toEqual(['alice']);
    expect(b.nextExpiry(ROOM, 300)).toBe(3000 + TYPING_TTL_MS);
    b.on(ROOM, 'alice', 2, false, 400);
    expect(b.typists(ROOM, 500)).toEqual([]);
    expect(b.typists(OTHER, 500)).toEqual(['bob']);
  });

  it("clears a member when their message arrives, on every device, not the others", () => {
    const b = new TypingBoard();
    b.on(ROOM, 'alice', 1, true, 0);
    b.on(ROOM, 'alice', 2, true, 0);
    b.on(ROOM, 'alicia', 1, true, 0); // a user id that starts like another
    b.on(ROOM, 'bob', 1, true, 0);
    b.wrote(ROOM, 'alice');
    expect(b.typists(ROOM, 10)).toEqual(['alicia', 'bob']);
    b.wrote(OTHER, 'bob');
    expect(b.typists(ROOM, 10)).toEqual(['alicia', 'bob']);
  });

  it('a stop for someone not shown changes nothing', () => {
    const b = new TypingBoard();
    b.on(ROOM, 'carol', 3, false, 0);
    expect(b.typists(ROOM, 0)).toEqual([]);
    expect(b.nextExpiry(ROOM, 0)).toBeNull();
  });
});

describe('typingText', () => {
  it('names one, two or three, sorted; counts more', () => {
    expect(typingText([])).toBe('');
    expect(typingText(['alice'])).toBe('alice is typing…');
    expect(typingText(['bob', 'alice'])).toBe('alice, bob are typing…');
    expect(typingText(['carol', 'alice', 'bob'])).toBe('alice, bob, carol are typing…');
    expect(typingText(['d', 'c', 'b', 'a'])).toBe('4 people are typing…');
  });

  it('with the board: the text of who types now, expiring', () => {
    const b = new TypingBoard();
    const room = 'c'.repeat(24);
    const names: Record<string, string> = { u1: 'alice', u2: 'bob' };
    const text = (now: number) => typingText(b.typists(room, now).map((u) => names[u] as string));
    b.on(room, 'u1', 1, true, 0);
    expect(text(1000)).toBe('alice is typing…');
    b.on(room, 'u2', 1, true, 2000);
    expect(text(2500)).toBe('alice, bob are typing…');
    expect(text(TYPING_TTL_MS)).toBe('bob is typing…'); // alice's 6 s are over
    expect(text(2000 + TYPING_TTL_MS)).toBe('');
  });
});
