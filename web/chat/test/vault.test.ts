// The browser's encrypted store (src/app/vault.ts) on test/support/idb.ts, an IndexedDB
// whose transactions are active only in the synchronous run that made them (a browser's,
// until that task ends: Firefox refuses a request placed after a WebCrypto await): no
// await inside a transaction. And the store asks the browser to keep it
// (navigator.storage.persist).
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';

import { Vault, WrongPassphrase, keepStorage } from '../src/app/vault.ts';
import { FakeIndexedDb, FakeKeyRange } from './support/idb.ts';

const idb = new FakeIndexedDb();

beforeAll(() => {
  vi.stubGlobal('indexedDB', idb);
  vi.stubGlobal('IDBKeyRange', FakeKeyRange);
});

afterEach(() => {
  vi.unstubAllGlobals();
  vi.stubGlobal('indexedDB', idb);
  vi.stubGlobal('IDBKeyRange', FakeKeyRange);
});

describe('the vault', () => {
  it('is made in one transaction that awaits nothing but IndexedDB, replacing the old store', async () => {
    // Before: create() sealed its check value inside the transaction; in Firefox the put
    // after it threw TransactionInactiveError, after the delete had committed alone:
    // signed up on the server, with no store in the browser.
    const old = await Vault.create('dora', 'old passphrase');
    await old.putMany([['contacts', ['someone']]]);
    const inactive = idb.inactive;
    const vault = await Vault.create('dora', 'a passphrase');
    expect(idb.inactive).toBe(inactive);
    expect(await Vault.exists('dora')).toBe(true);
    expect(await vault.names('')).toEqual(['meta']); // the old rows are gone
    const again = await Vault.open('dora', 'a passphrase');
    await again.putMany([['a', { x: 1 }], ['b', 'two']]);
    expect(await again.get('a')).toEqual({ x: 1 });
    expect(await vault.names('')).toEqual(['a', 'b', 'meta']);
    await expect(Vault.open('dora', 'old passphrase')).rejects.toBeInstanceOf(WrongPassphrase);
    expect(idb.inactive).toBe(inactive);
  });
});

describe('persistent storage', () => {
  function storage(persisted: boolean, granted: boolean) {
    const calls = { persist: 0 };
    vi.stubGlobal('navigator', {
      storage: {
        persisted: async () => persisted,
        persist: async () => {
          calls.persist++;
          return granted;
        },
      },
    });
    return calls;
  }

  it('is asked for once the store is made or opened', async () => {
    const calls = storage(false, true);
    await Vault.create('erin', 'a passphrase');
    await vi.waitFor(() => expect(calls.persist).toBe(1));
    await Vault.open('erin', 'a passphrase');
    await vi.waitFor(() => expect(calls.persist).toBe(2));
  });

  it('not asked again when granted already; a refusal is only logged; none without the API', async () => {
    const info = vi.spyOn(console, 'info').mockImplementation(() => undefined);
    const granted = storage(true, true);
    expect(await keepStorage()).toBe(true);
    expect(granted.persist).toBe(0);
    storage(false, false);
    expect(await keepStorage()).toBe(false);
    expect(info).toHaveBeenCalledWith(expect.stringContaining('persistent storage was not granted'));
    vi.stubGlobal('navigator', {});
    expect(await keepStorage()).toBeNull();
    vi.stubGlobal('navigator', { storage: { persist: async () => Promise.reject(new Error('no')) } });
    expect(await keepStorage()).toBeNull();
    info.mockRestore();
  });
});
