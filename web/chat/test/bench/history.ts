/**
 * What a message costs the browser's vault as a conversation grows (web/chat/README.md,
 * "History at size"): in Chromium, with the real Vault (IndexedDB, AES-GCM) and the
 * client's transaction steps (a copy of what is read, the rows sealed and written in one
 * IndexedDB transaction, a copy into the cache). Two layouts of the same history side by
 * side: one row per conversation (the layout before chunks: every write reads, seals and
 * writes all of it) and chunks (src/app/history.ts). Per layout and size: a new message
 * appended, and a receipt changing an entry near the end; then a backlog of 2,000
 * messages taken one transaction each into a conversation of 10,000.
 */

import { History, migrate } from '../../src/app/history.ts';
import { Vault } from '../../src/app/vault.ts';

interface Entry {
  dir: 'in' | 'out';
  kind: 'message';
  peer: string;
  text: string;
  at: number;
  client_id?: string;
  server_id: string;
  seq?: number;
  status?: string;
  report?: Record<string, unknown>;
}

const PEER = '5d0f2c1e-8a47-4e0b-9d6a-3f1c2b7e9a10';
const b64 = (n: number, i: number) => `${'A'.repeat(n - String(i).length)}${i}`;

/** An entry as big as a received message's (its text and what reporting it needs). */
function entry(i: number): Entry {
  return {
    dir: i % 2 ? 'in' : 'out',
    kind: 'message',
    peer: PEER,
    text: `message number ${i}, about as long as a line of chat usually is, give or take`,
    at: 1_764_000_000_000 + i,
    client_id: b64(32, i),
    server_id: b64(43, i),
    seq: i,
    status: 'delivered',
    report: { sender: PEER, sender_device: 1, sent_at: 1_764_000_000_000 + i, conversation: `dm:${PEER}:${PEER}`, commitment: b64(43, i), franking_tag: b64(43, i), franking_key: b64(43, i) },
  };
}

type Tx = { get<V>(n: string): V | undefined; put(n: string, v: unknown): void };

/** The client's `#transaction` (client.ts), on a cache and a vault. */
function transactor(vault: Vault, cache: Map<string, unknown>, history: History<Entry> | null) {
  return async (fn: (tx: Tx) => void) => {
    const staged = new Map<string, unknown>();
    fn({
      get: <V>(n: string) => {
        const v = staged.has(n) ? staged.get(n) : cache.get(n);
        return v === undefined ? undefined : (structuredClone(v) as V);
      },
      put: (n, v) => void staged.set(n, v),
    });
    await vault.putMany(staged);
    for (const [n, v] of staged) cache.set(n, structuredClone(v));
    history?.changed(staged.keys());
  };
}

export interface HistoryFigure {
  size: number;
  layout: 'one row' | 'chunks';
  appendMs: number;
  receiptMs: number;
  rowKiB: number; // the largest row a message writes
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function layouts(vault: Vault, size: number, ops: number) {
  const all = Array.from({ length: size }, (_, i) => entry(i));
  // One row per conversation.
  const oneName = `history:one${size}`;
  const oneCache = new Map<string, unknown>([[oneName, structuredClone(all)]]);
  await vault.putMany([[oneName, all]]);
  const one = transactor(vault, oneCache, null);
  // Chunks.
  const base = `history:chunks${size}`;
  const rows = migrate(base, all);
  await vault.putMany(rows);
  const cache = new Map<string, unknown>(rows);
  const history = new History<Entry>((n) => cache.get(n) as never);
  history.learn(base);
  const chunked = transactor(vault, cache, history);

  const figures: HistoryFigure[] = [];
  for (const layout of ['one row', 'chunks'] as const) {
    const appends: number[] = [];
    const receipts: number[] = [];
    let biggest = 0;
    for (let i = 0; i < ops; i++) {
      const e = entry(size + 1_000_000 + i);
      let t = performance.now();
      if (layout === 'one row') {
        await one((tx) => {
          const entries = tx.get<Entry[]>(oneName) ?? [];
          entries.push(e);
          tx.put(oneName, entries);
          biggest = Math.max(biggest, JSON.stringify(entries).length);
        });
      } else {
        await chunked((tx) => {
          history.append(tx, base, e);
          biggest = Math.max(biggest, JSON.stringify(tx.get(`${base}:${Math.floor((size + i) / 128)}`)).length);
        });
      }
      appends.push(performance.now() - t);
      t = performance.now();
      if (layout === 'one row') {
        await one((tx) => {
          const entries = tx.get<Entry[]>(oneName) ?? [];
          const found = entries.find((x) => x.client_id === e.client_id);
          if (found) found.status = 'read';
          tx.put(oneName, entries);
        });
      } else {
        await chunked((tx) => void history.updateClient(tx, base, e.client_id as string, (x) => (x.status = 'read')));
      }
      receipts.push(performance.now() - t);
    }
    figures.push({ size, layout, appendMs: median(appends), receiptMs: median(receipts), rowKiB: biggest / 1024 });
  }
  return figures;
}

/** A backlog of `backlog` messages taken one transaction each into a conversation of
 * `size`, in each layout: seconds. */
async function backlog(vault: Vault, size: number, count: number): Promise<Record<string, number>> {
  const all = Array.from({ length: size }, (_, i) => entry(i));
  const out: Record<string, number> = {};
  {
    const name = 'history:backlog-one';
    const cache = new Map<string, unknown>([[name, structuredClone(all)]]);
    await vault.putMany([[name, all]]);
    const one = transactor(vault, cache, null);
    const t = performance.now();
    for (let i = 0; i < count; i++) {
      await one((tx) => {
        const entries = tx.get<Entry[]>(name) ?? [];
        entries.push(entry(size + i));
        tx.put(name, entries);
      });
    }
    out['one row'] = (performance.now() - t) / 1000;
  }
  {
    const base = 'history:backlog-chunks';
    const rows = migrate(base, all);
    await vault.putMany(rows);
    const cache = new Map<string, unknown>(rows);
    const history = new History<Entry>((n) => cache.get(n) as never);
    const chunked = transactor(vault, cache, history);
    const t = performance.now();
    for (let i = 0; i < count; i++) await chunked((tx) => history.append(tx, base, entry(size + i)));
    out.chunks = (performance.now() - t) / 1000;
  }
  return out;
}

export async function runHistoryBench(sizes: number[], ops: number, backlogOf: number, into: number) {
  const vault = await Vault.create(`bench${Date.now()}`, 'bench passphrase');
  const figures: HistoryFigure[] = [];
  for (const size of sizes) figures.push(...(await layouts(vault, size, ops)));
  return { figures, backlog: { size: into, count: backlogOf, seconds: await backlog(vault, into, backlogOf) } };
}

declare global {
  interface Window {
    __parleyHistoryBench?: typeof runHistoryBench;
  }
}
window.__parleyHistoryBench = runHistoryBench;
