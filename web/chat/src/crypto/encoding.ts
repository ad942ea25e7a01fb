/**
 * Byte encodings shared by the protocol modules (client/parley/crypto/encoding.py):
 * base64url without padding (strict), fixed-width big-endian integers, UTF-8,
 * and the JSON of serialised state (byte-identical to Python's
 * `json.dumps(obj, separators=(",", ":"))`).
 *
 * Layer: encodings. Imports only `errors`.
 */

import { MalformedBundle, MalformedState } from './errors.ts';

export const U32_MAX = 0xffff_ffff;

// --------------------------------------------------------------------------- bytes

/** Throw TypeError unless `value` is a Uint8Array (the programming-error case). */
export function requireUint8Array(name: string, value: unknown): Uint8Array {
  if (!(value instanceof Uint8Array)) {
    throw new TypeError(`${name} must be a Uint8Array`);
  }
  return value;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Byte equality (not constant time: for public values). */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Equality whose running time depends only on the lengths (for secrets and
 * MACs, like `hmac.compare_digest`). JavaScript engines give no hard
 * guarantee, but there is no data-dependent branch or early exit.
 */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= (a[i] as number) ^ (b[i] as number);
  return diff === 0;
}

/** Lexicographic byte comparison (-1, 0, 1). */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = (a[i] as number) - (b[i] as number);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

// --------------------------------------------------------------------------- integers

function checkInteger(value: number, max: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${what} out of range: ${value}`);
  }
}

/** 2-byte big-endian. */
export function u16(value: number): Uint8Array {
  checkInteger(value, 0xffff, 'u16');
  return new Uint8Array([value >>> 8, value & 0xff]);
}

/** 4-byte big-endian (the only integer width on the wire besides the u16 group id length). */
export function u32(value: number): Uint8Array {
  checkInteger(value, U32_MAX, 'u32');
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value, false);
  return out;
}

/** 8-byte big-endian (the test DRBG's block counter). */
export function u64(value: bigint | number): Uint8Array {
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new RangeError(`u64 out of range: ${v}`);
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, v, false);
  return out;
}

export function readU16(data: Uint8Array, at: number): number {
  return (((data[at] as number) << 8) | (data[at + 1] as number)) >>> 0;
}

export function readU32(data: Uint8Array, at: number): number {
  return new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(at, false);
}

/** `value` if it is an integer in 0..2^32-1, else MalformedBundle (JSON ids). */
export function checkU32(value: unknown, field = 'id'): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > U32_MAX) {
    throw new MalformedBundle(`${field}: expected an integer in 0..2^32-1`);
  }
  return value;
}

// --------------------------------------------------------------------------- hex, UTF-8

export function toHex(data: Uint8Array): string {
  let out = '';
  for (const b of data) out += b.toString(16).padStart(2, '0');
  return out;
}

export function fromHex(text: string): Uint8Array {
  if (text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) throw new TypeError('not hex');
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export function utf8(text: string): Uint8Array {
  return encoder.encode(text);
}

/** Strict UTF-8 decoding: throws TypeError on invalid input. */
export function fromUtf8(data: Uint8Array): string {
  return strictDecoder.decode(data);
}

/** True if `text` has a lone surrogate (cannot be encoded as UTF-8 as Python would). */
export function hasLoneSurrogate(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        i++;
        continue;
      }
      return true;
    }
    if (c >= 0xdc00 && c <= 0xdfff) return true;
  }
  return false;
}

// --------------------------------------------------------------------------- base64url

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const DECODE = new Int16Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) DECODE[ALPHABET.charCodeAt(i)] = i;
const B64URL = /^[A-Za-z0-9_-]*$/;

/** base64url without padding (RFC 4648 section 5, no '='). */
export function b64encode(data: Uint8Array): string {
  let out = '';
  let i = 0;
  for (; i + 3 <= data.length; i += 3) {
    const n = ((data[i] as number) << 16) | ((data[i + 1] as number) << 8) | (data[i + 2] as number);
    out += ALPHABET[n >>> 18]! + ALPHABET[(n >>> 12) & 63]! + ALPHABET[(n >>> 6) & 63]! + ALPHABET[n & 63]!;
  }
  const rest = data.length - i;
  if (rest === 1) {
    const n = (data[i] as number) << 16;
    out += ALPHABET[n >>> 18]! + ALPHABET[(n >>> 12) & 63]!;
  } else if (rest === 2) {
    const n = ((data[i] as number) << 16) | ((data[i + 1] as number) << 8);
    out += ALPHABET[n >>> 18]! + ALPHABET[(n >>> 12) & 63]! + ALPHABET[(n >>> 6) & 63]!;
  }
  return out;
}

/**
 * Strictly decode unpadded base64url; MalformedBundle otherwise.
 *
 * Strict means (as encoding.py): a string, only the url-safe alphabet, no
 * padding, no whitespace, canonical (unused trailing bits zero) and, if
 * given, exactly `length` decoded bytes.
 */
export function b64decode(text: unknown, options: { field?: string; length?: number } = {}): Uint8Array {
  const field = options.field ?? 'value';
  if (typeof text !== 'string') throw new MalformedBundle(`${field}: expected a base64url string`);
  if (!B64URL.test(text) || text.length % 4 === 1) {
    throw new MalformedBundle(`${field}: not unpadded base64url`);
  }
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let bits = 0;
  let acc = 0;
  let at = 0;
  for (let i = 0; i < text.length; i++) {
    acc = (acc << 6) | (DECODE[text.charCodeAt(i)] as number);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (acc >>> bits) & 0xff;
    }
  }
  if (bits > 0 && (acc & ((1 << bits) - 1)) !== 0) {
    throw new MalformedBundle(`${field}: non-canonical base64url`);
  }
  if (options.length !== undefined && out.length !== options.length) {
    throw new MalformedBundle(`${field}: expected ${options.length} bytes, got ${out.length}`);
  }
  return out;
}

// --------------------------------------------------------------------------- state JSON

/** A JSON value for {@link dumpsState}; a `Map` is an object whose key order is kept. */
export type StateJson =
  | null
  | boolean
  | number
  | string
  | StateJson[]
  | Map<string, StateJson>
  | { [key: string]: StateJson };

function quoteAscii(text: string): string {
  // JSON.stringify escapes '"', '\\' and control characters exactly as Python's json
  // (short escapes \b \f \n \r \t, otherwise \u00xx in lowercase); ensure_ascii then
  // escapes every non-ASCII UTF-16 unit as \uxxxx (lowercase), as Python does.
  return JSON.stringify(text).replace(/[\u007f-\uffff]/g, (ch) => {
    const code = ch.charCodeAt(0);
    return code === 0x7f ? ch : '\\u' + code.toString(16).padStart(4, '0');
  });
}

/**
 * `json.dumps(value, separators=(",", ":"))` of Python (ensure_ascii on), so a
 * state serialised here is byte-identical to the one the Python client writes.
 * Object key order is insertion order (use a Map for keys that look like integers,
 * which plain objects would reorder).
 */
export function dumpsState(value: StateJson): string {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new TypeError('state JSON holds integers only');
    return String(value);
  }
  if (typeof value === 'string') return quoteAscii(value);
  if (Array.isArray(value)) return '[' + value.map(dumpsState).join(',') + ']';
  const entries = value instanceof Map ? [...value.entries()] : Object.entries(value);
  return '{' + entries.map(([k, v]) => quoteAscii(k) + ':' + dumpsState(v)).join(',') + '}';
}

/** Parse serialised state (UTF-8 JSON bytes or a string); MalformedState if it is not. */
export function loadState(data: unknown): unknown {
  let text: string;
  if (typeof data === 'string') {
    text = data;
  } else if (data instanceof Uint8Array) {
    try {
      text = fromUtf8(data);
    } catch {
      throw new MalformedState('state is not UTF-8');
    }
  } else {
    throw new TypeError('state must be a Uint8Array or a string');
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new MalformedState('state is not JSON');
  }
}
