/**
 * A small IndexedDB for src/app/vault.ts in Node (one database, one object store, string
 * keys), stricter than browsers about when a transaction is active: only in the
 * synchronous run that made it and in its requests' callbacks. A request placed after
 * any await (the first microtask turn) throws TransactionInactiveError, and a transaction
 * with no request left commits once inactive (its writes reach the store together). A
 * browser ends the active time with the task (so a WebCrypto await, which answers in a
 * later task, ends it: Firefox threw, Chromium forgave); here any await does, which no
 * code of the vault's needs: it places a transaction's requests all at once.
 */

type Key = string;
interface Range {
  lower: Key;
  upper: Key;
}

const inRange = (key: Key, range: Range) => key >= range.lower && key <= range.upper;
const later = (fn: () => void) => void setTimeout(fn, 0);

class Request<T> {
  result: T | undefined = undefined;
  error: DOMException | null = null;
  onsuccess: (() => void) | null = null;
  onerror: (() => void) | null = null;
  onupgradeneeded: (() => void) | null = null;
}

class Transaction {
  readonly #db: FakeIndexedDb;
  readonly #staged = new Map<Key, unknown>(); // undefined: deleted
  readonly #deleted: Range[] = [];
  #active = true;
  #pending = 0;
  #finished = false;
  error: DOMException | null = null;
  oncomplete: (() => void) | null = null;
  onerror: (() => void) | null = null;
  onabort: (() => void) | null = null;

  constructor(db: FakeIndexedDb) {
    this.#db = db;
    queueMicrotask(() => this.#inactive());
  }

  #inactive(): void {
    this.#active = false;
    if (this.#pending === 0) this.#commit();
  }

  #commit(): void {
    if (this.#finished) return;
    this.#finished = true;
    later(() => {
      for (const range of this.#deleted) for (const key of [...this.#db.rows.keys()]) if (inRange(key, range)) this.#db.rows.delete(key);
      for (const [key, value] of this.#staged) {
        if (value === undefined) this.#db.rows.delete(key);
        else this.#db.rows.set(key, value);
      }
      this.#db.commits++;
      this.oncomplete?.();
    });
  }

  #read(key: Key): unknown {
    if (this.#staged.has(key)) return this.#staged.get(key);
    if (this.#deleted.some((r) => inRange(key, r))) return undefined;
    return this.#db.rows.get(key);
  }

  #request<T>(op: () => T): Request<T> {
    if (!this.#active || this.#finished) {
      this.#db.inactive++;
      throw new DOMException('A request was placed against a transaction which is currently not active, or which is finished.', 'TransactionInactiveError');
    }
    const request = new Request<T>();
    this.#pending++;
    later(() => {
      request.result = op();
      this.#pending--;
      this.#active = true; // in its callback
      request.onsuccess?.();
      this.#inactive();
    });
    return request;
  }

  objectStore(_name: string) {
    return {
      get: (key: Key) => this.#request(() => structuredClone(this.#read(key))),
      getAllKeys: (range: Range) =>
        this.#request(() => {
          const keys = new Set([...this.#db.rows.keys(), ...this.#staged.keys()]);
          return [...keys].filter((k) => inRange(k, range) && this.#read(k) !== undefined).sort();
        }),
      put: (value: unknown, key: Key) => this.#request(() => void this.#staged.set(key, structuredClone(value))),
      delete: (key: Key | Range) =>
        this.#request(() => {
          if (typeof key === 'string') this.#staged.set(key, undefined);
          else {
            this.#deleted.push(key);
            for (const k of [...this.#staged.keys()]) if (inRange(k, key)) this.#staged.delete(k);
          }
        }),
    };
  }
}

export class FakeIndexedDb {
  readonly rows = new Map<Key, unknown>();
  commits = 0;
  /** Requests refused with TransactionInactiveError. */
  inactive = 0;
  #made = false;

  open(_name: string, _version: number): Request<unknown> {
    const request = new Request<unknown>();
    const db = { transaction: (_store: string, _mode?: string, _options?: unknown) => new Transaction(this), createObjectStore: () => undefined };
    later(() => {
      request.result = db;
      if (!this.#made) {
        this.#made = true;
        request.onupgradeneeded?.();
      }
      request.onsuccess?.();
    });
    return request;
  }
}

export const FakeKeyRange = {
  bound: (lower: Key, upper: Key): Range => ({ lower, upper }),
};
