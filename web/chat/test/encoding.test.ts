import { describe, expect, it } from 'vitest';

import { b64decode, b64encode, checkU32, dumpsState, loadState, u16, u32, u64 } from '../src/crypto/encoding.ts';
import { MalformedBundle, MalformedState } from '../src/crypto/errors.ts';
import { Serial } from '../src/crypto/serial.ts';

describe('base64url (strict, as encoding.py)', () => {
  it('round-trips every length and matches Node’s base64url', () => {
    for (let n = 0; n < 70; n++) {
      const data = crypto.getRandomValues(new Uint8Array(n));
      const text = b64encode(data);
      expect(text).toBe(Buffer.from(data).toString('base64url'));
      expect(b64decode(text)).toEqual(data);
    }
  });

  it.each([
    ['padding', 'AAA='],
    ['standard alphabet +', 'ab+c'],
    ['standard alphabet /', 'ab/c'],
    ['whitespace', 'AAAA AAAA'],
    ['newline', 'AAAA\n'],
    ['impossible length', 'AAAAA'],
    ['non-canonical trailing bits (1 byte)', 'AB'],
    ['non-canonical trailing bits (2 bytes)', 'AAB'],
  ])('refuses %s', (_, text) => {
    expect(() => b64decode(text)).toThrow(MalformedBundle);
  });

  it('checks the decoded length and the type', () => {
    expect(b64decode('AAAA', { length: 3 })).toEqual(new Uint8Array(3));
    expect(() => b64decode('AAAA', { length: 4, field: 'k' })).toThrow(/k: expected 4 bytes, got 3/);
    expect(() => b64decode(42)).toThrow(MalformedBundle);
    expect(() => b64decode(null)).toThrow(MalformedBundle);
  });
});

describe('integers', () => {
  it('encodes big-endian and refuses out-of-range values', () => {
    expect([...u16(0x1234)]).toEqual([0x12, 0x34]);
    expect([...u32(0xdeadbeef)]).toEqual([0xde, 0xad, 0xbe, 0xef]);
    expect([...u64(258n)]).toEqual([0, 0, 0, 0, 0, 0, 1, 2]);
    expect(() => u32(2 ** 32)).toThrow(RangeError);
    expect(() => u32(-1)).toThrow(RangeError);
    expect(() => u16(0x10000)).toThrow(RangeError);
  });

  it('checkU32 accepts JSON ids 0..2^32-1 only', () => {
    expect(checkU32(0)).toBe(0);
    expect(checkU32(2 ** 32 - 1)).toBe(2 ** 32 - 1);
    for (const bad of [2 ** 32, -1, 1.5, '1', true, null]) expect(() => checkU32(bad)).toThrow(MalformedBundle);
  });
});

describe('state JSON (Python json.dumps, separators=(",", ":"), ensure_ascii)', () => {
  it('escapes like Python', () => {
    expect(dumpsState({ a: 'zoë 📱 "q" \\ \n\t\u0001\u007f' })).toBe(
      '{"a":"zo\\u00eb \\ud83d\\udcf1 \\"q\\" \\\\ \\n\\t\\u0001\u007f"}',
    );
    expect(dumpsState([1, null, true, false, []])).toBe('[1,null,true,false,[]]');
  });

  it('keeps the insertion order of a Map, even for keys that look like integers', () => {
    expect(dumpsState(new Map([['b', 1], ['10', 2], ['2', 3]]))).toBe('{"b":1,"10":2,"2":3}');
  });

  it('loadState refuses what is not JSON or not UTF-8', () => {
    expect(() => loadState(new Uint8Array([0xff]))).toThrow(MalformedState);
    expect(() => loadState('{')).toThrow(MalformedState);
    expect(() => loadState(3 as never)).toThrow(TypeError);
  });
});

describe('Serial', () => {
  it('runs operations one at a time in call order, and a failure does not block the queue', async () => {
    const serial = new Serial();
    const log: string[] = [];
    const op = (name: string, fail = false) => async () => {
      log.push(`start ${name}`);
      await new Promise((r) => setTimeout(r, 5));
      log.push(`end ${name}`);
      if (fail) throw new Error(name);
      return name;
    };
    const results = await Promise.allSettled([serial.run(op('a')), serial.run(op('b', true)), serial.run(op('c'))]);
    expect(log).toEqual(['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
  });
});
