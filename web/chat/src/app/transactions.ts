/**
 * The client's transactions on its vault rows, committed in groups.
 *
 * A transaction is a function that reads rows (`tx.get`) and stages writes
 * (`tx.put`; `undefined` deletes); its writes reach IndexedDB together or not at all,
 * and its promise resolves once they have. Transactions run one at a time, in the
 * order they were asked for, as under a lock: each sees every write of the ones before
 * it (the in-memory rows are updated as each one ends).
 *
 * **Group commit.** Those that are waiting when one ends run before the write, and
 * their writes go in the same IndexedDB transaction: a private room's first message
 * from a member of a room of 1,000 queues a thousand key sends, each a transaction
 * (the pairwise session and the outbox entry), and one IndexedDB transaction each kept
 * the page waiting on IndexedDB for most of their ~5 ms (docs/BENCHMARKS.md, "The
 * 1,000-member room's first message, step by step"). A group takes at most
 * `GROUP_MAX` transactions or `GROUP_MS` of running them, so the first ones' callers
 * do not wait long for the last ones. If the write fails, every transaction of the
 * group fails with its error and the in-memory rows are as before the group; one that
 * throws is dropped alone (nothing it staged is kept), as before.
 *
 * **Not committed yet.** The in-memory rows run ahead of IndexedDB while a group's write
 * is under way: its transactions' writes are in them from the moment each ends, so that
 * the next one sees them. A reader outside a transaction that acts on a row outside this
 * page (a frame sent from an outbox row: its ratchet step must be on the disk first, or a
 * failed write takes the step back and the next message reuses its key) asks `writing`
 * first: true while a write of that row has not committed.
 */

export type Tx = {
  get<T>(name: string): T | undefined;
  put(name: string, value: unknown): void;
};

export interface Rows {
  /** The rows as last written (updated here as each transaction ends). */
  readonly cache: Map<string, unknown>;
  /** Write rows to IndexedDB in one transaction, all or nothing (`undefined` deletes). */
  write(rows: Map<string, unknown>): Promise<void>;
  /** These rows changed in `cache` (what was derived from them is stale). */
  changed(names: Iterable<string>): void;
}

export const GROUP_MAX = 128;
export const GROUP_MS = 50;

type Waiting = {
  fn: (tx: Tx) => Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
};

export class Transactions {
  #queue: Waiting[] = [];
  #head = 0;
  #running = false;
  /** The rows the group under way wrote: their values before it (empty between groups). */
  #writing = new Map<string, unknown>();
  constructor(
    readonly rows: Rows,
    readonly clock: () => number = () => performance.now(),
  ) {}

  run<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ fn, resolve: resolve as (value: unknown) => void, reject });
      if (!this.#running) {
        // Never within this call (as a lock's `then`): a caller may keep the promise
        // before its function runs (client.ts #distribute's `recording`).
        this.#running = true;
        queueMicrotask(() => void this.#drain());
      }
    });
  }

  /** A transaction that ended wrote `name`, and that write has not committed yet (it may
   * still fail, and the row go back to what it was). */
  writing(name: string): boolean {
    return this.#writing.has(name);
  }

  async #drain(): Promise<void> {
    try {
      while (this.#head < this.#queue.length) {
        await this.#group();
        if (this.#head > 1024) {
          this.#queue = this.#queue.slice(this.#head);
          this.#head = 0;
        }
      }
    } finally {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
      this.#running = false;
    }
  }

  async #group(): Promise<void> {
    const cache = this.rows.cache;
    const before = new Map<string, unknown>(); // each row written: its value before the group
    this.#writing = before;
    const written = new Map<string, unknown>();
    const done: [Waiting, unknown][] = [];
    const start = this.clock();
    let taken = 0;
    while (this.#head < this.#queue.length && taken < GROUP_MAX && (taken === 0 || this.clock() - start < GROUP_MS)) {
      const item = this.#queue[this.#head++] as Waiting;
      taken++;
      const staged = new Map<string, unknown>();
      const tx: Tx = {
        get: <V>(name: string) => {
          const value = staged.has(name) ? staged.get(name) : cache.get(name);
          return value === undefined ? undefined : (structuredClone(value) as V);
        },
        put: (name, value) => void staged.set(name, value),
      };
      let result: unknown;
      try {
        result = await item.fn(tx);
      } catch (error) {
        item.reject(error);
        continue;
      }
      for (const [name, value] of staged) {
        if (!before.has(name)) before.set(name, cache.get(name));
        written.set(name, value);
        if (value === undefined) cache.delete(name);
        else cache.set(name, structuredClone(value));
      }
      if (staged.size) this.rows.changed(staged.keys());
      done.push([item, result]);
    }
    if (written.size) {
      try {
        await this.rows.write(written);
      } catch (error) {
        for (const [name, value] of before) {
          if (value === undefined) cache.delete(name);
          else cache.set(name, value);
        }
        this.#writing = new Map(); // (before the callers hear of it)
        this.rows.changed(before.keys());
        for (const [item] of done) item.reject(error);
        return;
      }
    }
    this.#writing = new Map();
    for (const [item, result] of done) item.resolve(result);
  }
}
