/** Tiny assertions shared by the Vitest suites and the Chromium run (no test framework inside). */

import { bytesEqual, toHex } from '../../src/crypto/encoding.ts';

export class CheckFailed extends Error {
  override name = 'CheckFailed';
}

export function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new CheckFailed(message);
}

export function equalHex(actual: Uint8Array, expectedHex: string, what: string): void {
  const got = toHex(actual);
  if (got !== expectedHex.toLowerCase()) {
    throw new CheckFailed(`${what}: expected ${expectedHex.slice(0, 80)}…, got ${got.slice(0, 80)}… (${actual.length} bytes)`);
  }
}

export function equalBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  if (!bytesEqual(actual, expected)) throw new CheckFailed(`${what}: ${toHex(actual).slice(0, 64)} != ${toHex(expected).slice(0, 64)}`);
}

export function equal<T>(actual: T, expected: T, what: string): void {
  if (actual !== expected) throw new CheckFailed(`${what}: expected ${String(expected)}, got ${String(actual)}`);
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return '[' + value.map(canonical).join(',') + ']';
  if (value !== null && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    return (
      '{' +
      Object.keys(obj)
        .filter((k) => obj[k] !== undefined)
        .sort()
        .map((k) => JSON.stringify(k) + ':' + canonical(obj[k]))
        .join(',') +
      '}'
    );
  }
  return JSON.stringify(value);
}

/** Deep equality of JSON values (member order ignored). */
export function equalJson(actual: unknown, expected: unknown, what: string): void {
  const a = canonical(actual);
  const e = canonical(expected);
  if (a !== e) throw new CheckFailed(`${what}: JSON differs\n  got      ${a.slice(0, 300)}\n  expected ${e.slice(0, 300)}`);
}

/** `promise` must reject with an error whose `name` is `errorName` (or a subclass's with that name). */
export async function rejects(promise: Promise<unknown> | (() => unknown), errorName: string, what: string): Promise<Error> {
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (error) {
    if (error instanceof Error && error.name === errorName) return error;
    throw new CheckFailed(`${what}: expected ${errorName}, got ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`);
  }
  throw new CheckFailed(`${what}: expected ${errorName}, but it succeeded`);
}
