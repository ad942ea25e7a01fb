/**
 * The browser's encrypted store (docs/crypto.md, "Browser key storage").
 *
 * One IndexedDB database (`parley-chat`), one object store (`records`), keyed
 * `<username>/<name>`. Every value but the account's `meta` record is sealed:
 * AES-256-GCM with a fresh 12-byte nonce per write and the record's key as
 * associated data (a sealed value cannot be moved to another row). The key is
 * derived from the user's local passphrase, which never leaves the page:
 *
 *   ikm  = PBKDF2-HMAC-SHA256(passphrase, salt (16 random bytes), 600,000 iterations, 32 bytes)
 *   aes  = HKDF-SHA256(ikm, salt = "", info = "parley-web/vault/aes", 32 bytes)   AES-256-GCM
 *   ref  = HKDF-SHA256(ikm, salt = "", info = "parley-web/vault/ref", 32 bytes)   HMAC-SHA256
 *
 * Both are non-extractable WebCrypto keys. `meta` (in the clear) holds the salt,
 * the iteration count and a sealed known value that tells a wrong passphrase.
 * Rows about a contact are named by HMAC(ref, user id), so the database does not
 * show who one talks to. Nothing goes to localStorage.
 */

import { b64decode, b64encode, fromUtf8, utf8 } from '../crypto/index.ts';

const DB_NAME = 'parley-chat';
const STORE = 'records';
export const PBKDF2_ITERATIONS = 600_000;
const CHECK = 'parley-web vault v1';
/** Writes are on the disk when their transaction completes, not only handed to the OS
 * (browsers default to `relaxed`): an ack, a reply or an outbox send follows a write at
 * once, and a power loss must not take back a ratchet step or a message the server
 * was told is stored (the Python SDK's SQLite runs `synchronous=FULL` for the same). */
const DURABLE: IDBTransactionOptions = { durability: 'strict' };

/**
 * Ask the browser to keep this origin's storage when it runs short of space
 * (`navigator.storage.persist()`): without it, "best-effort" storage may be evicted, and
 * with it this device's keys, ratchets and outbox. Chromium grants or refuses without
 * asking; Firefox may ask the user. Already persisted, or a browser without the API: not
 * asked. A refusal is only logged (the store works all the same). Never throws; what
 * the browser said (null: not asked, or it failed).
 */
export async function keepStorage(): Promise<boolean | null> {
  const storage = globalThis.navigator?.storage as StorageManager | undefined;
  if (typeof storage?.persist !== 'function') return null;
  try {
    if (typeof storage.persisted === 'function' && (await storage.persisted())) return true;
    const granted = await storage.persist();
    if (!granted) console.info('Parley: persistent storage was not granted; the browser may clear the local store when it runs short of space.');
    return granted;
  } catch (error) {
    console.info('Parley: could not ask for persistent storage:', error);
    return null;
  }
}

export class WrongPassphrase extends Error {
  override name = 'WrongPassphrase';
}

interface Meta {
  v: 1;
  salt: string;
  iterations: number;
  check: Sealed;
}

interface Sealed {
  iv: Uint8Array;
  ct: Uint8Array;
}

/** WebCrypto wants ArrayBuffer-backed views; ours always are. */
const bs = (u: Uint8Array): Uint8Array<ArrayBuffer> => u as Uint8Array<ArrayBuffer>;

function idb<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

let dbPromise: Promise<IDBDatabase> | null = null;

function database(): Promise<IDBDatabase> {
  if (dbPromise === null) {
    const open = indexedDB.open(DB_NAME, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(STORE);
    dbPromise = idb(open);
  }
  return dbPromise;
}

async function deriveKeys(passphrase: string, salt: Uint8Array, iterations: number): Promise<[CryptoKey, CryptoKey]> {
  const material = await crypto.subtle.importKey('raw', bs(utf8(passphrase.normalize('NFKC'))), 'PBKDF2', false, ['deriveBits']);
  const ikm = await crypto.subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt: bs(salt), iterations }, material, 256);
  const hkdf = await crypto.subtle.importKey('raw', ikm, 'HKDF', false, ['deriveKey']);
  const derive = (info: string, alg: AesKeyGenParams | HmacKeyGenParams, usages: KeyUsage[]) =>
    crypto.subtle.deriveKey({ name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: bs(utf8(info)) }, hkdf, alg, false, usages);
  return Promise.all([
    derive('parley-web/vault/aes', { name: 'AES-GCM', length: 256 }, ['encrypt', 'decrypt']),
    derive('parley-web/vault/ref', { name: 'HMAC', hash: 'SHA-256', length: 256 }, ['sign']),
  ]);
}

export class Vault {
  readonly username: string;
  readonly #aes: CryptoKey;
  readonly #ref: CryptoKey;

  private constructor(username: string, aes: CryptoKey, ref: CryptoKey) {
    this.username = username;
    this.#aes = aes;
    this.#ref = ref;
  }

  static async exists(username: string): Promise<boolean> {
    const db = await database();
    const meta = await idb(db.transaction(STORE).objectStore(STORE).get(`${username}/meta`));
    return meta !== undefined;
  }

  /** A new, empty vault for `username` (replacing any other under that name). */
  static async create(username: string, passphrase: string): Promise<Vault> {
    const salt = crypto.getRandomValues(new Uint8Array(16));
    const [aes, ref] = await deriveKeys(passphrase, salt, PBKDF2_ITERATIONS);
    const vault = new Vault(username, aes, ref);
    // Sealed before the transaction opens: an IndexedDB transaction is active only until
    // the task that made it ends, and WebCrypto answers in a later one (Firefox: the put
    // after it threw TransactionInactiveError, and the delete had committed alone).
    // Nothing but IndexedDB requests is awaited while one is open (putMany does the same).
    const meta: Meta = { v: 1, salt: b64encode(salt), iterations: PBKDF2_ITERATIONS, check: await vault.#seal('meta', utf8(CHECK)) };
    const db = await database();
    const tx = db.transaction(STORE, 'readwrite', DURABLE);
    const store = tx.objectStore(STORE);
    const range = IDBKeyRange.bound(`${username}/`, `${username}/\uffff`);
    store.delete(range);
    store.put(meta, `${username}/meta`);
    await new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
    void keepStorage();
    return vault;
  }

  /** Open `username`'s vault; WrongPassphrase if the passphrase does not open it. */
  static async open(username: string, passphrase: string): Promise<Vault> {
    const db = await database();
    const meta = (await idb(db.transaction(STORE).objectStore(STORE).get(`${username}/meta`))) as Meta | undefined;
    if (meta === undefined) throw new Error(`no local store for ${username} in this browser`);
    const [aes, ref] = await deriveKeys(passphrase, b64decode(meta.salt), meta.iterations);
    const vault = new Vault(username, aes, ref);
    try {
      if (fromUtf8(await vault.#open('meta', meta.check)) !== CHECK) throw new WrongPassphrase('wrong passphrase');
    } catch {
      throw new WrongPassphrase('Wrong passphrase for the local store of this browser.');
    }
    void keepStorage();
    return vault;
  }

  async #seal(name: string, plaintext: Uint8Array): Promise<Sealed> {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const ad = utf8(`${this.username}/${name}`);
    const ct = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: bs(ad) }, this.#aes, bs(plaintext)));
    return { iv, ct };
  }

  async #open(name: string, sealed: Sealed): Promise<Uint8Array> {
    const ad = utf8(`${this.username}/${name}`);
    return new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: bs(sealed.iv), additionalData: bs(ad) }, this.#aes, bs(sealed.ct)));
  }

  /** An opaque row name for a contact: hex HMAC(ref key, id), 32 digits. */
  async ref(kind: string, id: string): Promise<string> {
    const mac = new Uint8Array(await crypto.subtle.sign('HMAC', this.#ref, bs(utf8(`${kind}\u0000${id}`))));
    return `${kind}:${[...mac.slice(0, 16)].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
  }

  async get<T>(name: string): Promise<T | undefined> {
    const db = await database();
    const sealed = (await idb(db.transaction(STORE).objectStore(STORE).get(`${this.username}/${name}`))) as Sealed | undefined;
    if (sealed === undefined) return undefined;
    return JSON.parse(fromUtf8(await this.#open(name, sealed))) as T;
  }

  /** The names of this vault's rows that start with `prefix`, in key order. */
  async names(prefix: string): Promise<string[]> {
    const db = await database();
    const start = `${this.username}/${prefix}`;
    const keys = await idb(db.transaction(STORE).objectStore(STORE).getAllKeys(IDBKeyRange.bound(start, `${start}\uffff`)));
    return keys.map((k) => String(k).slice(this.username.length + 1));
  }

  /** Write several rows in one IndexedDB transaction (all or nothing); `undefined` deletes. */
  async putMany(rows: Iterable<[string, unknown]>): Promise<void> {
    const sealed: [string, Sealed | undefined][] = [];
    for (const [name, value] of rows) {
      sealed.push([name, value === undefined ? undefined : await this.#seal(name, utf8(JSON.stringify(value)))]);
    }
    const db = await database();
    const tx = db.transaction(STORE, 'readwrite', DURABLE);
    const store = tx.objectStore(STORE);
    for (const [name, value] of sealed) {
      if (value === undefined) store.delete(`${this.username}/${name}`);
      else store.put(value, `${this.username}/${name}`);
    }
    await new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }
}
