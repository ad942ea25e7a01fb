/**
 * The account's devices: linking a new one and managing the list (docs/devices.md,
 * "Linking a new device", "Removing a device"), the rules of client/parley/keys.py
 * (`Keys.devices`, `refresh_own_list`, `_publish_list`, `rename`, `remove`, `start_link`,
 * `finish_link`, `pending`, `approve`) that need neither the vault nor the page.
 * ParleyClient (client.ts) keeps the rows (`account_key`, `device_list`) and calls these
 * with the key directory (api.ts) as {@link KeyDirectory}.
 *
 * - the new device: {@link startLink} publishes it as pending and gives the link
 *   (its code is shown); {@link awaitApproval} polls the link until an existing device
 *   approved it; {@link openApproval} opens the sealed account key (only the holder of
 *   `E` can) and checks it is for this account; the list, read and verified with that
 *   key ({@link verifyOwnList}), must name this device's keys ({@link namesDevice});
 * - an existing device: {@link readPending} shows what a code asks to link (name,
 *   fingerprint), {@link approveLink} signs the next list with it and seals the account
 *   key for it; {@link publishList} signs and publishes the next version of the list,
 *   built again on the directory's current one when another device changed it meanwhile.
 */

import {
  AccountKey,
  DeviceEntry,
  DeviceList,
  LinkRequest,
  MalformedLinkCode,
  PublicIdentity,
  SignedDeviceList,
  b64decode,
  b64encode,
  fromUtf8,
  parseLinkCode,
  sealForNewDevice,
  utf8,
} from '../crypto/index.ts';
import { ApiError, type Listed } from './api.ts';

/** How often the new device asks whether it was approved (keys.py LINK_POLL_S). */
export const LINK_POLL_MS = 1000;
/** How long the new device waits: a link code expires after 10 minutes. */
export const LINK_TIMEOUT_MS = 600_000;
/** Tries at publishing the next list when another device changes it meanwhile. */
export const PUBLISH_ATTEMPTS = 3;
/** The name of a device in a list: 1 to 64 characters (code points). */
export const NAME_MAX = 64;

export class DeviceError extends Error {
  override name = 'DeviceError';
}

/** {@link awaitApproval} was called off (its signal aborted). */
export class LinkCancelled extends DeviceError {
  override name = 'LinkCancelled';
}

/** The user did not approve the device that was shown. */
export class NotApproved extends DeviceError {
  override name = 'NotApproved';
}

/** A link as the key directory answers it (`GET /keys/v1/links/{link_id}`). */
export interface LinkState {
  link_id: string;
  device_id: number;
  name: string;
  identity: { signing_key: string; dh_key: string; dh_sig: string };
  approval: { sealed: string } | null;
  /** The key part of the code, as the new device registered it (absent from older links). */
  e_pub?: string | null;
}

/** The key directory's calls these rules make (api.ts Api implements them). */
export interface KeyDirectory {
  userDevices(userId: string): Promise<Listed>;
  putDeviceList(signed: unknown): Promise<unknown>;
  createLink(linkId: string, deviceId: number, name: string, ePub?: string): Promise<unknown>;
  getLink(linkId: string): Promise<LinkState>;
  approveLink(linkId: string, sealed: string): Promise<void>;
  cancelLink(linkId: string): Promise<void>;
}

/** A device waiting to be linked, as an existing device shows it before approving. */
export interface PendingDevice {
  link_id: string;
  device_id: number;
  name: string;
  fingerprint: string;
}

/** A row of the devices list. */
export interface DeviceRow {
  device_id: number;
  name: string;
  this_device: boolean;
  fingerprint: string;
}

/** A short, readable fingerprint of a device's signing key, to compare before approving:
 * its first 10 bytes in hex, in groups of 4 (keys.py `fingerprint`). */
export function fingerprint(signingKey: Uint8Array): string {
  const hex = [...signingKey.subarray(0, 10)].map((b) => b.toString(16).padStart(2, '0')).join('');
  return (hex.match(/.{1,4}/g) ?? []).join(' ');
}

/** A device name as the list holds it: the first 64 characters (code points), or
 * `fallback` when blank. */
export function deviceName(name: string | null | undefined, fallback: string): string {
  const trimmed = (name ?? '').trim();
  return [...(trimmed || fallback)].slice(0, NAME_MAX).join('');
}

/** This browser's default device name: "parley-web on <platform>". */
export function defaultDeviceName(platform: string | null | undefined): string {
  const where = (platform ?? '').replace(/[\u0000-\u001f\u007f-\u009f]/g, '').trim();
  return deviceName(where ? `parley-web on ${where}` : 'parley-web', 'parley-web');
}

/** The devices list from the verified list: id, name, fingerprint, which is this one. */
export function deviceRows(signed: SignedDeviceList, thisDevice: number): DeviceRow[] {
  return signed.deviceList.devices.map((d) => ({
    device_id: d.deviceId,
    name: d.name,
    this_device: d.deviceId === thisDevice,
    fingerprint: fingerprint(d.signingKey),
  }));
}

/**
 * The account's list as the directory serves it (`GET /keys/v1/users/{me}/devices`),
 * verified (keys.py `refresh_own_list`): the directory must hold our account key (else
 * the identity was reset from another install), the list must be signed by it and be
 * ours, and never older than the one this device holds.
 */
export async function verifyOwnList(answer: Listed, accountKey: AccountKey, me: string, current: SignedDeviceList | null): Promise<SignedDeviceList> {
  if (!underOwnKey(answer, accountKey.public)) {
    throw new DeviceError(
      'The directory holds another account key for this account: the identity was reset from another install. Link this device again.',
    );
  }
  const signed = SignedDeviceList.fromJson(answer);
  await signed.verify(accountKey.public, { userId: me });
  if (current !== null && signed.deviceList.version < current.deviceList.version) {
    throw new DeviceError('The directory served an older device list than this device has.');
  }
  return signed;
}

/** Whether the directory serves our own account's list under the account key this device
 * holds (`accountKey`: its public half). Ours is never trusted on first use as a
 * contact's is: a list under another key would add that key's devices to "our other
 * devices" (a copy of every message, every private room's sender key). */
export function underOwnKey(answer: { account_key: string }, accountKey: Uint8Array): boolean {
  return answer.account_key === b64encode(accountKey);
}

/** Does the list name device `deviceId` with this signing key? */
export function namesDevice(signed: SignedDeviceList, deviceId: number, signingKey: Uint8Array): boolean {
  const entry = signed.deviceList.get(deviceId);
  return entry !== null && b64encode(entry.signingKey) === b64encode(signingKey);
}

/** The list's change that adds `entry` (replacing any entry of its id; keys.py `approve`). */
export function adding(entry: DeviceEntry): (devices: readonly DeviceEntry[]) => DeviceEntry[] {
  return (devices) => [...devices.filter((d) => d.deviceId !== entry.deviceId), entry];
}

/** The list's change that removes `deviceId` (keys.py `remove`), another device or this
 * one: never an unknown one, never the last. */
export function removing(deviceId: number): (devices: readonly DeviceEntry[]) => DeviceEntry[] {
  return (devices) => {
    const kept = devices.filter((d) => d.deviceId !== deviceId);
    if (kept.length === devices.length) throw new DeviceError(`No device ${deviceId} in this account.`);
    if (kept.length === 0) throw new DeviceError("This is the account's only device.");
    return kept;
  };
}

/** The list's change that renames `deviceId` (keys.py `rename`): an unknown device is
 * refused; the name is cut to its first 64 characters (code points), as Python's
 * `name[:64]`, and otherwise taken as given: the list's entry then refuses an empty one
 * or one with a control character (`MalformedDeviceList`, as `DeviceEntry` does in
 * Python), before anything is signed. Any listed device, this one included. */
export function renaming(deviceId: number, name: string): (devices: readonly DeviceEntry[]) => DeviceEntry[] {
  return (devices) => {
    if (devices.every((d) => d.deviceId !== deviceId)) throw new DeviceError(`No device ${deviceId} in this account.`);
    const cut = [...name].slice(0, NAME_MAX).join('');
    return devices.map((d) => (d.deviceId === deviceId ? new DeviceEntry(d.deviceId, cut, d.signingKey, d.dhKey) : d));
  };
}

/** What the devices list offers on a row: Rename on every device (this one too), Remove
 * on every device while the account has another one (never its only device: keys.py
 * `remove`); on this device Remove is "Remove this browser", which signs it out. */
export function deviceActions(row: DeviceRow, rows: readonly DeviceRow[]): { rename: boolean; remove: boolean; removesThis: boolean } {
  const listed = rows.some((r) => r.device_id === row.device_id);
  const remove = listed && rows.length > 1;
  return { rename: listed, remove, removesThis: remove && row.this_device };
}

/**
 * Sign and publish the next version of the list (keys.py `_publish_list`): read the
 * current one (`refresh`, which verifies and keeps it), apply `change`, sign version + 1
 * and put it; on `conflict` (another device changed it meanwhile) read it again and
 * start over, at most {@link PUBLISH_ATTEMPTS} times. `stored` keeps what was published.
 */
export async function publishList(
  accountKey: AccountKey,
  me: string,
  refresh: () => Promise<SignedDeviceList>,
  put: (signed: SignedDeviceList) => Promise<unknown>,
  stored: (signed: SignedDeviceList) => Promise<void>,
  change: (devices: readonly DeviceEntry[]) => DeviceEntry[],
): Promise<SignedDeviceList> {
  for (let attempt = 0; attempt < PUBLISH_ATTEMPTS; attempt++) {
    const current = await refresh();
    const listing = new DeviceList(me, current.deviceList.version + 1, change(current.deviceList.devices));
    const signed = await listing.sign(accountKey);
    try {
      await put(signed);
    } catch (error) {
      if (error instanceof ApiError && error.code === 'conflict') continue; // changed meanwhile
      throw error;
    }
    await stored(signed);
    return signed;
  }
  throw new DeviceError('The device list keeps changing; try again.');
}

// -- the new device ---------------------------------------------------------------------

/** The new device publishes itself as pending (its keys are in the directory already):
 * a new link (link id and `E`), posted with its id and name; show its `code`. */
export async function startLink(dir: KeyDirectory, deviceId: number, name: string): Promise<LinkRequest> {
  const request = await LinkRequest.generate();
  await dir.createLink(b64encode(request.linkId), deviceId, deviceName(name, 'parley-web'), b64encode(request.ePublic));
  return request;
}

/** Options of {@link awaitApproval}: the clock and the pause are for tests. */
export interface WaitOptions {
  timeoutMs?: number;
  pollMs?: number;
  signal?: AbortSignal;
  now?: () => number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done);
  });
}

/** Poll the link until it holds an approval (keys.py `finish_link`): the sealed blob.
 * "not approved in time" after `timeoutMs`; "cancelled" once `signal` aborts. */
export async function awaitApproval(dir: KeyDirectory, request: LinkRequest, options: WaitOptions = {}): Promise<Uint8Array> {
  const { timeoutMs = LINK_TIMEOUT_MS, pollMs = LINK_POLL_MS, signal, now = Date.now, sleep = pause } = options;
  const linkId = b64encode(request.linkId);
  const deadline = now() + timeoutMs;
  // Given up (cancelled, or out of time): the code is withdrawn, not left approvable
  // (keys.py `cancel_link`; best effort: an expired link is gone). One approved since
  // the last look (`conflict`) is taken instead: the account lists this device already,
  // and without it the device would never get the account key.
  const withdraw = async (): Promise<Uint8Array | null> => {
    try {
      await dir.cancelLink(linkId);
    } catch (error) {
      if ((error as { code?: unknown }).code === 'conflict') {
        const link = await dir.getLink(linkId);
        if (link.approval) return b64decode(link.approval.sealed, { field: 'sealed' });
      }
    }
    return null;
  };
  for (;;) {
    if (signal?.aborted) {
      const sealed = await withdraw();
      if (sealed !== null) return sealed;
      throw new LinkCancelled('Linking was cancelled.');
    }
    const link = await dir.getLink(linkId);
    if (link.approval) return b64decode(link.approval.sealed, { field: 'sealed' });
    if (now() > deadline) {
      const sealed = await withdraw();
      if (sealed !== null) return sealed;
      throw new DeviceError('The link code was not approved in time.');
    }
    await sleep(pollMs, signal);
  }
}

/** What an existing device seals for the new one (keys.py `approve`): our user id and
 * the account key's seed, as Python's `json.dumps` writes them. */
export function linkPayload(me: string, accountKey: AccountKey): Uint8Array {
  return utf8(`{"user_id": ${JSON.stringify(me)}, "account_key": ${JSON.stringify(b64encode(accountKey.seed()))}}`);
}

/** Open the approval with `E` (the request) and this device's signing key, and take the
 * account key from it; it must be for this account (keys.py `finish_link`). */
export async function openApproval(request: LinkRequest, ownSigningKey: Uint8Array, sealed: Uint8Array, me: string): Promise<AccountKey> {
  const payload = JSON.parse(fromUtf8(await request.open(ownSigningKey, sealed))) as { user_id?: unknown; account_key?: unknown };
  if (payload.user_id !== me) throw new DeviceError('The approval is for another account.');
  return AccountKey.fromSeed(b64decode(payload.account_key, { field: 'account_key' }));
}

// -- an existing device -----------------------------------------------------------------

/** What the link code asks to link (keys.py `pending`): MalformedLinkCode for a code
 * that is not one; the directory's link of this account. */
export async function readPending(dir: KeyDirectory, code: string): Promise<{ pending: PendingDevice; link: LinkState }> {
  const [linkId] = parseLinkCode(code.trim());
  const link = await dir.getLink(b64encode(linkId));
  const signing = b64decode(link.identity.signing_key, { field: 'identity.signing_key', length: 32 });
  return {
    pending: { link_id: b64encode(linkId), device_id: Number(link.device_id), name: String(link.name || ''), fingerprint: fingerprint(signing) },
    link,
  };
}

/**
 * Approve the device that shows `code` (keys.py `approve`): show it (`confirm` sees its
 * name and fingerprint, and says yes or no), read the link again and check it still
 * names the keys that were shown, publish the list with the new device, then seal the
 * account key for it and post the approval.
 */
export async function approveLink(
  dir: KeyDirectory,
  code: string,
  accountKey: AccountKey,
  me: string,
  confirm: (pending: PendingDevice) => Promise<boolean>,
  publish: (change: (devices: readonly DeviceEntry[]) => DeviceEntry[]) => Promise<unknown>,
): Promise<PendingDevice> {
  let linkId: Uint8Array;
  let ePub: Uint8Array;
  try {
    [linkId, ePub] = parseLinkCode(code.trim());
  } catch (error) {
    if (error instanceof MalformedLinkCode) throw new DeviceError(`That is not a link code: ${error.message}.`);
    throw error;
  }
  const { pending, link: shown } = await readPending(dir, code);
  if (shown.e_pub != null && shown.e_pub !== b64encode(ePub)) {
    // The code's key part (after its first 11 characters, which name the link) is not
    // the one the new device registered: a typo. Sealed to it, the account key could
    // never be opened (keys.py `approve`; only a check: the seal uses the code's key).
    throw new DeviceError("That code does not match the new device's link (a character mistyped?): copy it whole from the new device. Nothing was changed.");
  }
  if (!(await confirm(pending))) throw new NotApproved('Not approved.');
  const link = await dir.getLink(pending.link_id);
  if (link.approval !== null) throw new DeviceError('This link was approved already (by another device).');
  if (link.device_id !== shown.device_id || link.identity.signing_key !== shown.identity.signing_key || link.identity.dh_key !== shown.identity.dh_key) {
    throw new DeviceError("The new device's keys changed after they were shown: not approved. Compare again.");
  }
  const identity = await PublicIdentity.fromJson(link.identity); // its DH key signed by its signing key, or InvalidSignature
  const entry = new DeviceEntry(pending.device_id, pending.name || 'new device', identity.signingKey, identity.dhKey);
  await publish(adding(entry));
  const sealed = await sealForNewDevice(ePub, linkId, entry.signingKey, linkPayload(me, accountKey));
  // The key directory refuses the new device's withdrawal once the list names it
  // (services/keys/links.py `cancel`): the approval finds the link (keys.py `approve`).
  await dir.approveLink(pending.link_id, b64encode(sealed));
  return pending;
}
