/**
 * What the browser keeps per contact (the port of client/parley/peers.py): the
 * account key trusted on first use, the contact's verified device list, and the
 * pairwise sessions per device, newest first. Same trust rules and the same
 * identity-change policy as the Python client (docs/client.md, "Identity changes").
 *
 * A session is used only with the identity the verified list names for its device id:
 * a list that gives a device id new keys ends that device's sessions. An initial message
 * naming a one-time prekey already consumed (PrekeyReused) is a replay only if it
 * repeats a handshake this device answered (ANSWERED_KEPT remembered per contact);
 * otherwise it is another initiator's message that cannot be read (the directory handed
 * the prekey out twice), and fails as such.
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
  initialMessageDigest,
  isInitialMessage,
  safetyNumber,
} from '../crypto/index.ts';

export const MAX_SESSIONS = 4;
/** Handshakes (digests of their PQXDH fields) remembered per contact, to tell a replayed
 * initial message from another initiator's: more than the sessions kept for a contact's
 * devices; a replay of an older one fails as PrekeyReused (a "could not decrypt" line),
 * never decrypts. */
export const ANSWERED_KEPT = 32;

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
  /** Absent from states written before #answered was kept. */
  answered?: string[];
  /** Absent (falsy) in states written before sessions were checked against their
   * device's list entry: fromJson checks them once. */
  sessions_checked?: boolean;
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
  /** Base64url digests of the PQXDH fields of the last ANSWERED_KEPT initial messages
   * from this contact that started a session here, oldest first. */
  answered: string[] = [];

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
      answered: [...this.answered],
      sessions_checked: true,
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
    p.answered = (obj.answered ?? []).map(String);
    // Written before sessions were checked against their list entries: one kept after
    // the list gave its device id new keys goes now (once: the state is written back
    // with the flag).
    if (!obj.sessions_checked) {
      p.dropUnlistedSessions([...p.sessions.keys()]);
      // #answered was not kept then: the handshakes of the sessions kept are known from
      // their initial digests, so a later initial-type message of one (sent before our
      // answer reached its initiator) stays a replay once that session is evicted, as it
      // was before, not a "could not decrypt" line.
      p.answerKeptSessions();
    }
    return p;
  }

  /** Add the initial digest of every kept session that has one (those the contact
   * started) to #answered, each once, oldest first, the last ANSWERED_KEPT. */
  private answerKeptSessions(): void {
    for (const sessions of this.sessions.values()) {
      for (const raw of [...sessions].reverse()) {
        // newest first: the oldest is answered first
        let digest: Uint8Array | null;
        try {
          digest = Session.initialDigestOf(b64decode(raw));
        } catch (error) {
          if (error instanceof CryptoError) continue; // unreadable: it started nothing this device can tell
          throw error;
        }
        const entry = digest === null ? null : b64encode(digest);
        if (entry !== null && !this.answered.includes(entry)) this.answered.push(entry);
      }
    }
    this.answered.splice(0, Math.max(0, this.answered.length - ANSWERED_KEPT));
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
    const before = this.devices;
    this.devices = new Map(
      listing.devices.map((d) => [d.deviceId, { name: d.name, signing_key: b64encode(d.signingKey), dh_key: b64encode(d.dhKey) }]),
    );
    for (const d of [...this.sessions.keys()]) if (!this.devices.has(d)) this.sessions.delete(d);
    // A session is only ever kept with the identity its device's entry names, so only
    // the devices whose entry changed (new keys under the same id) need theirs read.
    const changedKeys = (d: number): boolean => {
      const [old, now] = [before.get(d), this.devices.get(d) as DeviceInfo];
      return old === undefined || old.signing_key !== now.signing_key || old.dh_key !== now.dh_key;
    };
    this.dropUnlistedSessions([...this.sessions.keys()].filter(changedKeys));
    return changed;
  }

  /** The verified list names `deviceId` with exactly these identity keys. */
  private lists(deviceId: number, identity: { signingKey: Uint8Array; dhKey: Uint8Array }): boolean {
    const entry = this.devices.get(deviceId);
    return entry !== undefined && same(b64decode(entry.signing_key), identity.signingKey) && same(b64decode(entry.dh_key), identity.dhKey);
  }

  /** Drop the sessions of these devices whose peer is not the identity the list names
   * for the device, or that cannot be read (a device left with none loses its entry). */
  private dropUnlistedSessions(deviceIds: number[]): void {
    const listed = (deviceId: number, raw: string): boolean => {
      try {
        return this.lists(deviceId, Session.peerKeysOf(b64decode(raw)));
      } catch (error) {
        if (error instanceof CryptoError) return false; // unreadable: it could never encrypt or decrypt
        throw error;
      }
    };
    for (const d of deviceIds) {
      const kept = (this.sessions.get(d) ?? []).filter((raw) => listed(d, raw));
      if (kept.length) this.sessions.set(d, kept);
      else this.sessions.delete(d);
    }
  }

  checkDevice(deviceId: number, identity: PublicIdentity): void {
    if (!this.lists(deviceId, identity)) {
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

  /** Encrypt for one device with its current session (make one first); UnknownDevice if
   * its peer is not the identity the verified list names for that device (trust drops
   * such sessions: this is a second check). */
  async encrypt(deviceId: number, plaintext: Uint8Array): Promise<Uint8Array> {
    const sessions = this.sessions.get(deviceId) as string[];
    const session = await Session.fromBytes(b64decode(sessions[0] as string));
    this.checkDevice(deviceId, session.peerIdentity);
    const wire = await session.encrypt(plaintext);
    sessions[0] = b64encode(await session.toBytes());
    return wire;
  }

  /** Decrypt with whichever session the message belongs to; an initial message
   * makes a new session (and consumes prekeys of `device`). Nothing changes on error.
   * ReplayedMessage for a message already decrypted (or a repeat of an initial message
   * whose session we answered and have since dropped); UnknownDevice for a device the
   * list does not name (or names with another identity); PrekeyReused for another
   * initiator's initial message naming a one-time prekey an earlier one consumed;
   * another CryptoError if no session can read it. */
  /** `device` is read only for a first message (a new session): this device's private
   * state is dozens of keys to import, which a message in an existing session does not
   * need. A new session is bound (pqxdh.ts Binding) to this contact's `fromDevice`, the
   * sender the envelope names, and `me`: our user and device ids. */
  async decrypt(
    device: () => Promise<Device>,
    fromDevice: number,
    wire: Uint8Array,
    me: readonly [user: string, device: number],
  ): Promise<{ plaintext: Uint8Array; frankingKey: Uint8Array; newSession: boolean }> {
    let replayed: CryptoError | null = null;
    let last: CryptoError | null = null;
    const sessions = this.sessions.get(fromDevice) ?? [];
    for (const [index, raw] of sessions.entries()) {
      const session = await Session.fromBytes(b64decode(raw));
      if (!this.lists(fromDevice, session.peerIdentity)) {
        // Not the identity the list names for this device (trust drops such sessions:
        // this is a second check).
        last = new UnknownDevice(`device ${fromDevice} of ${this.userId} is not in its device list with this session's identity`);
        continue;
      }
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
      const binding = { initiatorUser: this.userId, initiatorDevice: fromDevice, responderUser: me[0], responderDevice: me[1] };
      [session, received] = await Session.respondMessage(await device(), wire, { binding });
    } catch (error) {
      if (error instanceof PrekeyReused && this.answered.includes(b64encode(await initialMessageDigest(wire)))) {
        // A handshake we answered: a copy of a message we read, or a later message of
        // its session, which we have since dropped.
        throw new ReplayedMessage(error.message);
      }
      // Another initiator's (the directory handed our one-time prekey out twice): its
      // message cannot be read, and the caller says so.
      throw error;
    }
    this.checkDevice(fromDevice, session.peerIdentity);
    await this.push(fromDevice, session);
    const digest = session.initialDigest;
    if (digest !== null) {
      this.answered.push(b64encode(digest));
      this.answered.splice(0, Math.max(0, this.answered.length - ANSWERED_KEPT));
    }
    return { plaintext: received.plaintext, frankingKey: received.frankingKey, newSession: true };
  }

  private async push(deviceId: number, session: Session): Promise<void> {
    const sessions = this.sessions.get(deviceId) ?? [];
    sessions.unshift(b64encode(await session.toBytes()));
    sessions.splice(MAX_SESSIONS);
    this.sessions.set(deviceId, sessions);
  }
}
