/**
 * What the browser keeps per contact (the port of client/parley/peers.py): the
 * account key trusted on first use, the contact's verified device list, and the
 * pairwise sessions per device, newest first. Same trust rules and the same
 * identity-change policy as the Python client (docs/client.md, "Identity changes").
 */

import {
  CryptoError,
  Device,
  PrekeyReused,
  PublicIdentity,
  ReplayedMessage,
  Session,
  SignedDeviceList,
  b64decode,
  b64encode,
  formatSafetyNumber,
  isInitialMessage,
  safetyNumber,
} from '../crypto/index.ts';

export const MAX_SESSIONS = 4;

export class UnknownDevice extends CryptoError {
  override name = 'UnknownDevice';
}

export interface DeviceInfo {
  name: string;
  signing_key: string;
  dh_key: string;
}

export interface PendingChange {
  old_key: string | null;
  old_safety_number: string | null;
  was_verified: boolean;
}

export interface PeerJson {
  user_id: string;
  username: string | null;
  account_key: string | null;
  list_version: number;
  devices: Record<string, DeviceInfo>;
  sessions: Record<string, string[]>;
  verified_key: string | null;
  pending_change: PendingChange | null;
  key_versions?: Record<string, number>;
}

/** Account keys whose newest list version a contact's state keeps (peers.py's). */
const KEY_VERSIONS_KEPT = 8;

export interface AccountChanged {
  oldSafetyNumber: string | null;
  newSafetyNumber: string;
}

const same = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && a.every((x, i) => x === b[i]);

export class PeerState {
  userId: string;
  username: string | null = null;
  accountKey: string | null = null;
  listVersion = 0;
  devices = new Map<number, DeviceInfo>();
  sessions = new Map<number, string[]>();
  verifiedKey: string | null = null;
  pendingChange: PendingChange | null = null;
  /** The newest list version taken under each account key this contact has had: a
   * directory that switches to another key and back must not bring back an older list
   * of the first (a removed device) with it. */
  keyVersions = new Map<string, number>();

  constructor(userId: string) {
    this.userId = userId;
  }

  toJson(): PeerJson {
    return {
      user_id: this.userId,
      username: this.username,
      account_key: this.accountKey,
      list_version: this.listVersion,
      devices: Object.fromEntries([...this.devices].map(([d, e]) => [String(d), e])),
      sessions: Object.fromEntries([...this.sessions].map(([d, s]) => [String(d), [...s]])),
      verified_key: this.verifiedKey,
      pending_change: this.pendingChange,
      key_versions: Object.fromEntries(this.keyVersions),
    };
  }

  static fromJson(obj: PeerJson): PeerState {
    const p = new PeerState(obj.user_id);
    p.username = obj.username;
    p.accountKey = obj.account_key;
    p.listVersion = obj.list_version;
    p.devices = new Map(Object.entries(obj.devices).map(([d, e]) => [Number(d), { ...e }]));
    p.sessions = new Map(Object.entries(obj.sessions).map(([d, s]) => [Number(d), [...s]]));
    p.verifiedKey = obj.verified_key;
    p.pendingChange = obj.pending_change;
    p.keyVersions = new Map(Object.entries(obj.key_versions ?? {}));
    // A state from before: the trusted key's is its list's version.
    if (p.keyVersions.size === 0 && obj.account_key !== null) p.keyVersions.set(obj.account_key, obj.list_version);
    return p;
  }

  async safetyNumber(localAccountKey: Uint8Array, localUserId: string): Promise<string | null> {
    if (this.accountKey === null) return null;
    return formatSafetyNumber(await safetyNumber(localAccountKey, localUserId, b64decode(this.accountKey), this.userId));
  }

  get verified(): boolean {
    return this.accountKey !== null && this.verifiedKey === this.accountKey;
  }

  accept(): void {
    this.pendingChange = null;
  }

  markVerified(accountKey: string): void {
    if (this.accountKey === null || accountKey !== this.accountKey) {
      throw new UnknownDevice("the contact's identity changed while it was being verified");
    }
    this.verifiedKey = accountKey;
    this.pendingChange = null;
  }

  /** Take a device list from the directory (PeerState.trust in Python). */
  async trust(accountKey: string, signed: SignedDeviceList, localAccountKey: Uint8Array, localUserId: string): Promise<AccountChanged | null> {
    const listing = await signed.verify(b64decode(accountKey), { userId: this.userId });
    const same = this.accountKey === null || this.accountKey === accountKey;
    if (listing.version < (same ? this.listVersion : (this.keyVersions.get(accountKey) ?? 0))) {
      throw new UnknownDevice('the directory served an older device list than we hold');
    }
    let changed: AccountChanged | null = null;
    if (this.accountKey !== null && this.accountKey !== accountKey) {
      const old = await this.safetyNumber(localAccountKey, localUserId);
      const previous = this.accountKey;
      this.accountKey = accountKey;
      const fresh = (await this.safetyNumber(localAccountKey, localUserId)) as string;
      changed = { oldSafetyNumber: old, newSafetyNumber: fresh };
      this.sessions = new Map();
      if (this.pendingChange === null) {
        this.pendingChange = { old_key: previous, old_safety_number: old, was_verified: previous === this.verifiedKey };
      } else if (this.pendingChange.old_key === accountKey) {
        this.pendingChange = null; // back to the key the user had accepted
      }
    } else if (this.accountKey === null) {
      this.accountKey = accountKey;
    }
    this.listVersion = listing.version;
    this.keyVersions.delete(accountKey); // the newest last
    this.keyVersions.set(accountKey, listing.version);
    while (this.keyVersions.size > KEY_VERSIONS_KEPT) this.keyVersions.delete(this.keyVersions.keys().next().value as string);
    this.devices = new Map(
      listing.devices.map((d) => [d.deviceId, { name: d.name, signing_key: b64encode(d.signingKey), dh_key: b64encode(d.dhKey) }]),
    );
    for (const d of [...this.sessions.keys()]) if (!this.devices.has(d)) this.sessions.delete(d);
    return changed;
  }

  checkDevice(deviceId: number, identity: PublicIdentity): void {
    const entry = this.devices.get(deviceId);
    if (entry === undefined || !same(b64decode(entry.signing_key), identity.signingKey) || !same(b64decode(entry.dh_key), identity.dhKey)) {
      throw new UnknownDevice(`device ${deviceId} of ${this.userId} is not in its device list`);
    }
  }

  hasSession(deviceId: number): boolean {
    return (this.sessions.get(deviceId)?.length ?? 0) > 0;
  }

  missingSessions(): number[] {
    return [...this.devices.keys()].filter((d) => !this.hasSession(d)).sort((a, b) => a - b);
  }

  async start(deviceId: number, session: Session): Promise<void> {
    this.checkDevice(deviceId, session.peerIdentity);
    await this.push(deviceId, session);
  }

  async encrypt(deviceId: number, plaintext: Uint8Array): Promise<Uint8Array> {
    const sessions = this.sessions.get(deviceId) as string[];
    const session = await Session.fromBytes(b64decode(sessions[0] as string));
    const wire = await session.encrypt(plaintext);
    sessions[0] = b64encode(await session.toBytes());
    return wire;
  }

  /** Decrypt with whichever session the message belongs to; an initial message
   * makes a new session (and consumes prekeys of `device`). Nothing changes on error. */
  /** `device` is read only for a first message (a new session): this device's private
   * state is dozens of keys to import, which a message in an existing session does not
   * need. */
  async decrypt(device: () => Promise<Device>, fromDevice: number, wire: Uint8Array): Promise<{ plaintext: Uint8Array; frankingKey: Uint8Array; newSession: boolean }> {
    let replayed: CryptoError | null = null;
    let last: CryptoError | null = null;
    const sessions = this.sessions.get(fromDevice) ?? [];
    for (const [index, raw] of sessions.entries()) {
      const session = await Session.fromBytes(b64decode(raw));
      try {
        const message = await session.decryptMessage(wire);
        sessions.splice(index, 1);
        sessions.unshift(b64encode(await session.toBytes()));
        return { plaintext: message.plaintext, frankingKey: message.frankingKey, newSession: false };
      } catch (error) {
        if (error instanceof ReplayedMessage) replayed = error;
        else if (error instanceof CryptoError) last = error;
        else throw error;
      }
    }
    if (replayed !== null) throw replayed;
    if (!isInitialMessage(wire)) throw last ?? new CryptoError('no session with this device');
    let session: Session;
    let received: { plaintext: Uint8Array; frankingKey: Uint8Array };
    try {
      [session, received] = await Session.respondMessage(await device(), wire);
    } catch (error) {
      if (error instanceof PrekeyReused) throw new ReplayedMessage(error.message);
      throw error;
    }
    this.checkDevice(fromDevice, session.peerIdentity);
    await this.push(fromDevice, session);
    return { plaintext: received.plaintext, frankingKey: received.frankingKey, newSession: true };
  }

  private async push(deviceId: number, session: Session): Promise<void> {
    const sessions = this.sessions.get(deviceId) ?? [];
    sessions.unshift(b64encode(await session.toBytes()));
    sessions.splice(MAX_SESSIONS);
    this.sessions.set(deviceId, sessions);
  }
}
