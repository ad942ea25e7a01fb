// The client's transactions (src/app/transactions.ts): one at a time, each seeing the
// writes of those before it; those waiting while one runs are written in the same
// IndexedDB transaction (here a store that counts its writes and can be told to fail);
// a failed write fails the whole group and leaves the rows as they were.
import { describe, expect, it } from 'vitest';
import { GROUP_MAX, GROUP_MS, Transactions, type Tx } from '../src/app/transactions.ts';

class Rows {
  readonly cache = new Map<string, unknown>();
  readonly disk = new Map<string, unknown>();
  readonly writes: string[][] = [];
  readonly changes: string[] = [];
  fail: Error | null = null;

  async write(rows: Map<string, unknown>): Promise<void> {
    await new Promise((r) => setTimeout(r, 1)); // IndexedDB answers later
    if (this.fail) throw this.fail;
    this.writes.push([...rows.keys()]);
    for (const [k, v] of rows) {
      if (v === undefined) this.disk.delete(k);
      else this.disk.set(k, structuredClone(v));
    }
  }

  changed(names: Iterable<string>): void {
    this.changes.push(...names);
  }
}

const tick = () => new Promise((r) => setTimeout(r, 0));

describe('transactions', () => {
  it('run one at a time, in order, each seeing the writes before it', async () => {
    const rows = new Rows();
    const txs = new Transactions(rows);
    const add = (tx: Tx) => {
      const n = tx.get<number>('n') ?? 0;
      tx.put('n', n + 1);
      return n + 1;
    };
    const results = await Promise.all(
      Array.from({ length: 50 }, () =>
        txs.run(async (tx) => {
          await tick(); // crypto awaits inside a transaction
          return add(tx);
        }),
      ),
    );
    expect(results).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    expect(rows.disk.get('n')).toBe(50);
  });

  it('write those that waited together: a thousand in a handful of writes', async () => {
    const rows = new Rows();
    const txs = new Transactions(rows, () => 0); // no time passes: GROUP_MAX alone cuts
    const all = Array.from({ length: 1000 }, (_, i) =>
      txs.run(async (tx) => {
        tx.put(`outbox:${i}`, { i });
        tx.put('session', i);
      }),
    );
    await Promise.all(all);
    expect(rows.disk.size).toBe(1001);
    expect(rows.disk.get('session')).toBe(999);
    // All were waiting: GROUP_MAX at a time.
    expect(rows.writes.map((w) => w.length - 1)).toEqual(
      Array.from({ length: Math.ceil(1000 / GROUP_MAX) }, (_, k) => Math.min(GROUP_MAX, 1000 - k * GROUP_MAX)),
    );
  });

  it('never run the function within the call that asks for it', async () => {
    const txs = new Transactions(new Rows());
    let ran = false;
    let kept: Promise<void> | null = null;
    kept = txs.run(async () => {
      ran = true;
      expect(kept).not.toBeNull(); // the caller has its promise before the function runs
    });
    expect(ran).toBe(false);
    await kept;
    expect(ran).toBe(true);
  });

  it('resolve only once the write is done', async () => {
    const rows = new Rows();
    const txs = new Transactions(rows);
    let seenOnDisk: unknown = 'not yet';
    await txs.run(async (tx) => tx.put('a', 1)).then(() => {
      seenOnDisk = rows.disk.get('a');
    });
    expect(seenOnDisk).toBe(1);
  });

  it('a failed write fails its whole group and the rows are as before it', async () => {
    const rows = new Rows();
    const txs = new Transactions(rows);
    await txs.run(async (tx) => tx.put('a', 'old'));
    rows.fail = new Error('quota');
    const first = txs.run(async (tx) => {
      await tick();
      tx.put('a', 'new');
    });
    const second = txs.run(async (tx) => tx.put('b', tx.get('a')));
    await expect(first).rejects.toThrow('quota');
    await expect(second).rejects.toThrow('quota');
    expect(rows.cache.get('a')).toBe('old');
    expect(rows.cache.has('b')).toBe(false);
    rows.fail = null;
    expect(await txs.run(async (tx) => tx.get('a'))).toBe('old'); // still usable
  });

  it('say which rows a write under way has not committed yet (in the cache already)', async () => {
    // What the outbox's flush reads (client.ts #sendable): a frame is sent only once the
    // write of its ratchet step has committed.
    const rows = new Rows();
    const txs = new Transactions(rows);
    await txs.run(async (tx) => tx.put('a', 'old'));
    expect(txs.writing('a')).toBe(false);
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    const write = rows.write.bind(rows);
    rows.write = async (r) => {
      await held;
      return write(r);
    };
    const ok = txs.run(async (tx) => tx.put('a', 'new'));
    await tick();
    expect(rows.cache.get('a')).toBe('new'); // the next transaction sees it...
    expect(txs.writing('a')).toBe(true); // ...but it is not on the disk yet
    expect(txs.writing('b')).toBe(false);
    release();
    await ok;
    expect(txs.writing('a')).toBe(false);
    rows.fail = new Error('quota');
    const failed = txs.run(async (tx) => tx.put('b', 1));
    await tick();
    expect(txs.writing('b')).toBe(true);
    await expect(failed).rejects.toThrow('quota');
    expect(txs.writing('b')).toBe(false);
    expect(rows.cache.has('b')).toBe(false);
  });

  it('one that throws is dropped alone; the others of its group are written', async () => {
    const rows = new Rows();
    const txs = new Transactions(rows);
    const good = txs.run(async (tx) => tx.put('a', 1));
    const bad = txs.run(async (tx) => {
      tx.put('b', 2);
      throw new Error('refused');
    });
    const after = txs.run(async (tx) => tx.put('c', tx.get('b') ?? 'none'));
    await expect(bad).rejects.toThrow('refused');
    await good;
    await after;
    expect([...rows.disk.entries()]).toEqual([
      ['a', 1],
      ['c', 'none'],
    ]);
    expect(rows.changes).not.toContain('b');
  });

  it('a group stops after GROUP_MS of running its transactions', async () => {
    const rows = new Rows();
    let now = 0;
    const txs = new Transactions(rows, () => now);
    const all = Array.from({ length: 10 }, (_, i) =>
      txs.run(async (tx) => {
        now += GROUP_MS / 2; // each takes half of it: a group takes a second one, then stops
        tx.put(`r${i}`, i);
      }),
    );
    await Promise.all(all);
    expect(rows.writes.map((w) => w.length)).toEqual([2, 2, 2, 2, 2]);
  });
});
