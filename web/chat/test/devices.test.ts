// The account's devices (src/app/devices.ts, the rules of client/parley/keys.py that
// ParleyClient follows; docs/devices.md "Linking a new device", "Removing a device"):
// a new device linked by an existing one through a fake key directory that keeps the
// service's rules (a list is the current version + 1 and signed by the account key; a
// link is approved once; the pending device's identity is the one it registered); what
// Python's `Keys.approve` sealed and published opened and checked as a browser on a new
// device does (fixtures/make_devices_vectors.py); the refusals (not approved, keys
// changed after they were shown, another account, a list that does not name us,
// another account key, an older list), publishing on a race, removing, waiting;
// renaming and removing (this device too) as Python's `Keys.rename` and `Keys.remove` do,
// list for list and signature for signature, and what the devices list offers.
//
// Vitest, with the rest of web/chat's unit tests (`npm run test:node`).
import { readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

import { ApiError, type Listed } from '../src/app/api.ts';
import {
  DeviceError,
  type KeyDirectory,
  LinkCancelled,
  type LinkState,
  NotApproved,
  PUBLISH_ATTEMPTS,
  type PendingDevice,
  approveLink,
  awaitApproval,
  defaultDeviceName,
  deviceActions,
  deviceName,
  deviceRows,
  fingerprint,
  linkPayload,
  namesDevice,
  openApproval,
  publishList,
  readPending,
  removing,
  renaming,
  startLink,
  verifyOwnList,
} from '../src/app/devices.ts';
import { Device } from '../src/crypto/device.ts';
import { AccountKey, DeviceEntry, DeviceList, SignedDeviceList } from '../src/crypto/deviceList.ts';
import { b64decode, b64encode, fromUtf8 } from '../src/crypto/encoding.ts';
import { LinkRequest } from '../src/crypto/linking.ts';

const ME = '0123456789abcdef0123456789abcdef';
const OTHER = 'fedcba9876543210fedcba9876543210';

interface Vectors {
  user_id: string;
  account_key: string;
  account_seed: string;
  link_id: string;
  e_private: string;
  code: string;
  new_device: number;
  new_name: string;
  new_identity: { signing_key: string; dh_key: string; dh_sig: string };
  fingerprint: string;
  old_signing_key: string;
  old_fingerprint: string;
  directory: Listed;
  /** What Python's old device did next (Keys.rename, Keys.remove), in order: the list
   * it published, or the refusal's message. */
  changes: { do: 'rename' | 'remove'; device_id: number; name: string; signed?: { device_list: unknown; signature: string }; error?: string }[];
  sealed: string;
  payload: string;
}
const V = JSON.parse(readFileSync(new URL('./fixtures/devices_vectors.json', import.meta.url), 'utf8')) as Vectors;

/** The key directory's rules for one account (services/keys: accounts.py update_list,
 * links.py), in memory. `beforePut` runs before a list is taken (to play another
 * device that wins the race). */
class FakeDirectory implements KeyDirectory {
  accountKey: string;
  signed: { device_list: unknown; signature: string };
  readonly registered = new Map<number, { signing_key: string; dh_key: string; dh_sig: string }>();
  readonly links = new Map<string, LinkState>();
  readonly calls: string[] = [];
  beforePut: (() => Promise<void>) | null = null;
  /** Serve another identity for a link from the n-th read on (a lying directory). */
  swapIdentity: { from: number; identity: LinkState['identity'] } | null = null;
  #reads = 0;

  constructor(
    readonly user: string,
    key: AccountKey,
    first: SignedDeviceList,
  ) {
    this.accountKey = b64encode(key.public);
    this.signed = first.toJson();
  }

  get version(): number {
    return SignedDeviceList.fromJson(this.signed).deviceList.version;
  }

  async userDevices(userId: string): Promise<Listed> {
    this.calls.push('userDevices');
    expect(userId).toBe(this.user);
    return { user_id: this.user, account_key: this.accountKey, ...this.signed };
  }

  async putDeviceList(body: unknown): Promise<unknown> {
    this.calls.push('putDeviceList');
    if (this.beforePut) await this.beforePut();
    const signed = SignedDeviceList.fromJson(body);
    if (signed.deviceList.version !== this.version + 1) throw new ApiError('conflict', `publish version ${this.version + 1}`, 409);
    await signed.verify(b64decode(this.accountKey), { userId: this.user });
    this.signed = signed.toJson();
    return { version: signed.deviceList.version };
  }

  async createLink(linkId: string, deviceId: number, name: string, ePub?: string): Promise<unknown> {
    this.calls.push('createLink');
    const identity = this.registered.get(deviceId);
    if (identity === undefined) throw new ApiError('device_not_found', 'no such device', 404);
    if (this.links.has(linkId)) throw new ApiError('conflict', 'taken', 409);
    this.links.set(linkId, { link_id: linkId, device_id: deviceId, name, identity, approval: null, e_pub: ePub ?? null });
    return {};
  }

  async getLink(linkId: string): Promise<LinkState> {
    this.calls.push('getLink');
    const link = this.links.get(linkId);
    if (link === undefined) throw new ApiError('not_found', 'No such link', 404);
    this.#reads += 1;
    if (this.swapIdentity && this.#reads >= this.swapIdentity.from) return structuredClone({ ...link, identity: this.swapIdentity.identity });
    return structuredClone(link);
  }

  async cancelLink(linkId: string): Promise<void> {
    this.calls.push('cancelLink');
    const link = this.links.get(linkId);
    if (link === undefined) throw new ApiError('not_found', 'No such link', 404);
    if (link.approval !== null) throw new ApiError('conflict', 'already approved', 409);
    this.links.delete(linkId);
  }

  async approveLink(linkId: string, sealed: string): Promise<void> {
    this.calls.push('approveLink');
    const link = this.links.get(linkId);
    if (link === undefined) throw new ApiError('not_found', 'No such link', 404);
    if (link.approval !== null) throw new ApiError('conflict', 'already approved', 409);
    link.approval = { sealed };
  }
}

/** An account whose first device (1, "laptop") holds the key; a new device (2) that
 * registered its keys (pending, not in the list). */
async function account() {
  const key = await AccountKey.generate();
  const [first, second] = [await Device.generate(), await Device.generate()];
  const signed = await new DeviceList(ME, 1, [DeviceEntry.of(1, 'laptop', first.identity)]).sign(key);
  const dir = new FakeDirectory(ME, key, signed);
  dir.registered.set(1, first.publicIdentity());
  dir.registered.set(2, second.publicIdentity());
  const publish = (change: (devices: readonly DeviceEntry[]) => DeviceEntry[]) =>
    publishList(
      key,
      ME,
      async () => verifyOwnList(await dir.userDevices(ME), key, ME, null),
      (next) => dir.putDeviceList(next.toJson()),
      async () => undefined,
      change,
    );
  return { key, first, second, dir, publish };
}

const yes = async () => true;

describe('linking a new device, both sides (keys.py start_link, approve, finish_link)', () => {
  it('the existing device sees its name and fingerprint, lists it; the new device opens the account key and finds itself listed', async () => {
    const { key, second, dir, publish } = await account();
    const request = await startLink(dir, 2, 'phone');
    expect(dir.links.get(b64encode(request.linkId))?.name).toBe('phone');

    const shown: PendingDevice[] = [];
    const approved = await approveLink(dir, request.code, key, ME, async (p) => (shown.push(p), true), publish);
    expect(shown).toEqual([{ link_id: b64encode(request.linkId), device_id: 2, name: 'phone', fingerprint: fingerprint(second.identity.signingKey) }]);
    expect(approved).toEqual(shown[0]);
    expect(dir.version).toBe(2);

    const sealed = await awaitApproval(dir, request, { sleep: async () => undefined });
    const opened = await openApproval(request, second.identity.signingKey, sealed, ME);
    expect(b64encode(opened.public)).toBe(b64encode(key.public));
    const list = await verifyOwnList(await dir.userDevices(ME), opened, ME, null);
    expect(namesDevice(list, 2, second.identity.signingKey)).toBe(true);
    expect(list.deviceList.get(2)?.dhKey).toEqual(second.identity.dhKey);
    expect(deviceRows(list, 2)).toEqual([
      { device_id: 1, name: 'laptop', this_device: false, fingerprint: fingerprint(list.deviceList.get(1)!.signingKey) },
      { device_id: 2, name: 'phone', this_device: true, fingerprint: fingerprint(second.identity.signingKey) },
    ]);
    // Approved once: a second approval of the same code is refused before anything else.
    await expect(approveLink(dir, request.code, key, ME, yes, publish)).rejects.toThrow('approved already');
  });

  it('a code mistyped after its link id is refused before anything is published', async () => {
    // The link is found by the code's first 11 characters; a typo after them sealed the
    // account key to a wrong key, and the device stayed listed without it.
    const { key, dir, publish } = await account();
    const request = await startLink(dir, 2, 'phone');
    const code = request.code;
    const typo = code.slice(0, 30) + (code[30] === 'A' ? 'B' : 'A') + code.slice(31);
    await expect(approveLink(dir, typo, key, ME, yes, publish)).rejects.toThrow('does not match');
    expect(dir.version).toBe(1);
    expect(dir.calls).not.toContain('putDeviceList');
    await approveLink(dir, code, key, ME, yes, publish); // the right one still links it
    expect(dir.version).toBe(2);
  });

  it('a code another device approved already is refused before anything is published', async () => {
    const { key, dir, publish } = await account();
    const request = await startLink(dir, 2, 'phone');
    await approveLink(dir, request.code, key, ME, yes, publish);
    const calls = dir.calls.length;
    await expect(approveLink(dir, request.code, key, ME, yes, publish)).rejects.toThrow('approved already');
    expect(dir.calls.slice(calls)).not.toContain('putDeviceList');
    expect(dir.version).toBe(2);
  });

  it('a device that was not approved changes nothing: no list, no approval', async () => {
    const { key, dir, publish } = await account();
    const request = await startLink(dir, 2, 'phone');
    const refused = approveLink(dir, request.code, key, ME, async () => false, publish);
    await expect(refused).rejects.toBeInstanceOf(NotApproved);
    expect(dir.version).toBe(1);
    expect(dir.links.get(b64encode(request.linkId))?.approval).toBeNull();
    expect(dir.calls).not.toContain('putDeviceList');
  });

  it('keys the directory changes after they were shown are refused before anything is published', async () => {
    const { key, dir, publish } = await account();
    const request = await startLink(dir, 2, 'phone');
    const intruder = await Device.generate();
    dir.swapIdentity = { from: 2, identity: intruder.publicIdentity() }; // the read after the confirmation
    await expect(approveLink(dir, request.code, key, ME, yes, publish)).rejects.toThrow(/changed after they were shown/);
    expect(dir.version).toBe(1);
    expect(dir.links.get(b64encode(request.linkId))?.approval).toBeNull();
  });

  it('a pending identity whose DH key its signing key did not sign is refused', async () => {
    const { key, dir, publish } = await account();
    const other = await Device.generate();
    dir.registered.set(2, { ...dir.registered.get(2)!, dh_key: other.publicIdentity().dh_key });
    const request = await startLink(dir, 2, 'phone');
    await expect(approveLink(dir, request.code, key, ME, yes, publish)).rejects.toMatchObject({ name: 'InvalidSignature' });
    expect(dir.version).toBe(1);
  });

  it('a code that is not one is refused before the directory is asked', async () => {
    const { key, dir, publish } = await account();
    for (const code of ['', 'abc', 'x'.repeat(54), `${V.code}A`]) {
      await expect(approveLink(dir, code, key, ME, yes, publish)).rejects.toBeInstanceOf(DeviceError);
    }
    expect(dir.calls).toEqual([]);
    // Surrounding blanks (a pasted code) are fine.
    const request = await startLink(dir, 2, 'phone');
    await expect(readPending(dir, `  ${request.code}\n`)).resolves.toMatchObject({ pending: { device_id: 2 } });
  });

  it('the new device refuses an approval for another account, or sealed to other keys', async () => {
    const { key, second, dir, publish } = await account();
    const request = await startLink(dir, 2, 'phone');
    await approveLink(dir, request.code, key, ME, yes, publish);
    const sealed = await awaitApproval(dir, request, { sleep: async () => undefined });
    await expect(openApproval(request, second.identity.signingKey, sealed, OTHER)).rejects.toThrow('The approval is for another account.');
    const stranger = await Device.generate();
    await expect(openApproval(request, stranger.identity.signingKey, sealed, ME)).rejects.toMatchObject({ name: 'DecryptionFailed' });
    await expect(openApproval(await LinkRequest.generate(), second.identity.signingKey, sealed, ME)).rejects.toMatchObject({ name: 'DecryptionFailed' });
  });

  it('a list that does not name the new device (or names other keys for its id) is seen as such', async () => {
    const { key, second, dir } = await account();
    const list = await verifyOwnList(await dir.userDevices(ME), key, ME, null);
    expect(namesDevice(list, 2, second.identity.signingKey)).toBe(false);
    const impostor = await Device.generate();
    const wrong = await new DeviceList(ME, 2, [...list.deviceList.devices, DeviceEntry.of(2, 'phone', impostor.identity)]).sign(key);
    expect(namesDevice(wrong, 2, second.identity.signingKey)).toBe(false);
    expect(namesDevice(wrong, 2, impostor.identity.signingKey)).toBe(true);
  });
});

describe("Python's approval, opened by the browser (fixtures/make_devices_vectors.py)", () => {
  it('opens the account key, for this account, and the published list names this device', async () => {
    const request = await LinkRequest.fromPrivate(b64decode(V.link_id), b64decode(V.e_private));
    expect(request.code).toBe(V.code);
    const signing = b64decode(V.new_identity.signing_key);
    const key = await openApproval(request, signing, b64decode(V.sealed), V.user_id);
    expect(b64encode(key.public)).toBe(V.account_key);
    expect(b64encode(key.seed())).toBe(V.account_seed);
    const list = await verifyOwnList(V.directory, key, V.user_id, null);
    expect(list.deviceList.version).toBe(2);
    expect(namesDevice(list, V.new_device, signing)).toBe(true);
    expect(list.deviceList.get(V.new_device)?.name).toBe(V.new_name);
    await expect(openApproval(request, signing, b64decode(V.sealed), OTHER)).rejects.toThrow('another account');
  });

  it('seals the same payload and shows the same fingerprints as Python', async () => {
    const key = await AccountKey.fromSeed(b64decode(V.account_seed));
    expect(fromUtf8(linkPayload(V.user_id, key))).toBe(V.payload);
    expect(fingerprint(b64decode(V.new_identity.signing_key))).toBe(V.fingerprint);
    expect(fingerprint(b64decode(V.old_signing_key))).toBe(V.old_fingerprint);
    expect(fingerprint(Uint8Array.from({ length: 32 }, (_, i) => i))).toBe('0001 0203 0405 0607 0809');
  });

  it('a pending link reads as Python shows it before approving', async () => {
    const key = await AccountKey.fromSeed(b64decode(V.account_seed));
    const dir = new FakeDirectory(V.user_id, key, SignedDeviceList.fromJson(V.directory));
    dir.registered.set(V.new_device, V.new_identity);
    await dir.createLink(V.link_id, V.new_device, V.new_name);
    const { pending } = await readPending(dir, V.code);
    expect(pending).toEqual({ link_id: V.link_id, device_id: V.new_device, name: V.new_name, fingerprint: V.fingerprint });
  });
});

describe("our own list (keys.py refresh_own_list)", () => {
  it('is refused when the directory holds another account key, another signature, another user or an older version', async () => {
    const { key, dir } = await account();
    const good = await verifyOwnList(await dir.userDevices(ME), key, ME, null);
    const other = await AccountKey.generate();
    await expect(verifyOwnList({ ...(await dir.userDevices(ME)), account_key: b64encode(other.public) }, key, ME, null)).rejects.toThrow(
      /another account key for this account/,
    );
    const forged = (await good.deviceList.sign(other)).toJson();
    await expect(verifyOwnList({ ...(await dir.userDevices(ME)), ...forged }, key, ME, null)).rejects.toMatchObject({ name: 'InvalidSignature' });
    const theirs = (await new DeviceList(OTHER, 1, good.deviceList.devices).sign(key)).toJson();
    await expect(verifyOwnList({ ...(await dir.userDevices(ME)), ...theirs }, key, ME, null)).rejects.toMatchObject({ name: 'DeviceMismatch' });
    const newer = await good.deviceList.withDevice(DeviceEntry.of(9, 'x', (await Device.generate()).identity)).sign(key);
    await expect(verifyOwnList(await dir.userDevices(ME), key, ME, newer)).rejects.toThrow('older device list');
    await expect(verifyOwnList(await dir.userDevices(ME), key, ME, good)).resolves.toBeInstanceOf(SignedDeviceList);
  });
});

describe('publishing the next list (keys.py _publish_list, remove)', () => {
  it('is built again on the current list when another device changed it meanwhile', async () => {
    const { key, dir, publish } = await account();
    const third = await Device.generate();
    let raced = false;
    dir.beforePut = async () => {
      if (raced) return;
      raced = true; // another device adds device 3 first
      const now = SignedDeviceList.fromJson(dir.signed).deviceList;
      dir.signed = (await now.withDevice(DeviceEntry.of(3, 'tablet', third.identity)).sign(key)).toJson();
    };
    const fourth = await Device.generate();
    const signed = await publish((devices) => [...devices, DeviceEntry.of(4, 'desk', fourth.identity)]);
    expect(signed.deviceList.version).toBe(3);
    expect(signed.deviceList.deviceIds).toEqual([1, 3, 4]); // the other device's change kept
    expect(dir.calls.filter((c) => c === 'putDeviceList')).toHaveLength(2);
  });

  it(`gives up after ${PUBLISH_ATTEMPTS} conflicts; other errors are not retried`, async () => {
    const { dir, publish, key } = await account();
    dir.beforePut = async () => {
      const now = SignedDeviceList.fromJson(dir.signed).deviceList;
      dir.signed = (await new DeviceList(ME, now.version + 1, now.devices).sign(key)).toJson();
    };
    await expect(publish((d) => [...d])).rejects.toThrow('The device list keeps changing; try again.');
    expect(dir.calls.filter((c) => c === 'putDeviceList')).toHaveLength(PUBLISH_ATTEMPTS);
    dir.beforePut = async () => {
      throw new ApiError('too_many_devices', 'too many', 409);
    };
    dir.calls.length = 0;
    await expect(publish((d) => [...d])).rejects.toMatchObject({ code: 'too_many_devices' });
    expect(dir.calls.filter((c) => c === 'putDeviceList')).toHaveLength(1);
  });

  it('removes another device or this one, never an unknown one or the last', async () => {
    const { key, second, dir, publish } = await account();
    await publish((devices) => [...devices, DeviceEntry.of(2, 'phone', second.identity)]);
    const signed = await publish(removing(2));
    expect(signed.deviceList.deviceIds).toEqual([1]);
    expect(SignedDeviceList.fromJson(dir.signed).deviceList.deviceIds).toEqual([1]);
    await expect(publish(removing(7))).rejects.toThrow('No device 7 in this account.');
    await expect(publish(removing(1))).rejects.toThrow("This is the account's only device.");
    expect(dir.version).toBe(3);
    expect(key).toBeDefined();
  });
});

describe("renaming and removing as Python's Keys.rename and Keys.remove (fixtures/make_devices_vectors.py)", () => {
  it('publishes the same lists, byte for byte, and refuses with the same messages', async () => {
    const key = await AccountKey.fromSeed(b64decode(V.account_seed));
    const dir = new FakeDirectory(V.user_id, key, SignedDeviceList.fromJson(V.directory));
    const publish = (change: (devices: readonly DeviceEntry[]) => DeviceEntry[]) =>
      publishList(
        key,
        V.user_id,
        async () => verifyOwnList(await dir.userDevices(V.user_id), key, V.user_id, null),
        (next) => dir.putDeviceList(next.toJson()),
        async () => undefined,
        change,
      );
    expect(V.changes.map((c) => c.do)).toContain('rename');
    for (const change of V.changes) {
      const run = publish(change.do === 'rename' ? renaming(change.device_id, change.name) : removing(change.device_id));
      if (change.error !== undefined) {
        const version = dir.version;
        await expect(run, `${change.do} ${change.device_id} ${JSON.stringify(change.name)}`).rejects.toThrow(change.error);
        expect(dir.version).toBe(version); // nothing published
        continue;
      }
      await run;
      // Ed25519 is deterministic: the same signature is the same signed bytes.
      expect(dir.signed, `${change.do} ${change.device_id}`).toEqual(change.signed);
    }
    // The cut name is 64 code points (not UTF-16 units), the spaces of the other kept.
    const last = V.changes.find((c) => c.do === 'rename' && c.signed)?.signed as { device_list: { devices: { name: string }[] } };
    expect(last.device_list.devices.map((d) => [...d.name].length)).toContain(64);
  });
});

describe('what the devices list offers (deviceActions)', () => {
  const row = (device_id: number, this_device = false) => ({ device_id, name: `d${device_id}`, this_device, fingerprint: '' });
  it('renames every device, this one too; removes any while another is left, this one as "this browser"', () => {
    const rows = [row(1, true), row(2), row(3)];
    expect(deviceActions(rows[0] as (typeof rows)[0], rows)).toEqual({ rename: true, remove: true, removesThis: true });
    expect(deviceActions(rows[1] as (typeof rows)[0], rows)).toEqual({ rename: true, remove: true, removesThis: false });
  });

  it("never removes the account's only device", () => {
    const only = [row(1, true)];
    expect(deviceActions(only[0] as (typeof only)[0], only)).toEqual({ rename: true, remove: false, removesThis: false });
  });

  it('offers nothing on a row the list does not hold', () => {
    expect(deviceActions(row(9), [row(1, true), row(2)])).toEqual({ rename: false, remove: false, removesThis: false });
  });
});

describe('renaming (keys.py rename)', () => {
  it('renames any listed device, this one too, never an unknown one; a bad name publishes nothing', async () => {
    const { dir, publish } = await account();
    const signed = await publish(renaming(1, 'desk 🖥'));
    expect(signed.deviceList.get(1)?.name).toBe('desk 🖥');
    expect(SignedDeviceList.fromJson(dir.signed).deviceList.get(1)?.name).toBe('desk 🖥');
    await expect(publish(renaming(7, 'x'))).rejects.toThrow('No device 7 in this account.');
    await expect(publish(renaming(1, ''))).rejects.toThrow('name: expected a string of 1 to 64 characters');
    await expect(publish(renaming(1, 'tab\there'))).rejects.toThrow('name: control characters are not allowed');
    expect(dir.version).toBe(2);
  });
});

describe('waiting for the approval', () => {
  it('polls until the link holds one', async () => {
    const { key, dir, publish } = await account();
    const request = await startLink(dir, 2, 'phone');
    let polls = 0;
    const sealed = await awaitApproval(dir, request, {
      pollMs: 5,
      sleep: async () => {
        polls += 1;
        if (polls === 3) await approveLink(dir, request.code, key, ME, yes, publish);
      },
    });
    expect(polls).toBe(3);
    expect(b64encode(sealed)).toBe(dir.links.get(b64encode(request.linkId))?.approval?.sealed);
  });

  it('gives up after the timeout, and at once when cancelled, withdrawing the code', async () => {
    const { dir, key, publish } = await account();
    const request = await startLink(dir, 2, 'phone');
    let clock = 0;
    const late = awaitApproval(dir, request, { timeoutMs: 10_000, pollMs: 1000, now: () => clock, sleep: async (ms) => void (clock += ms) });
    await expect(late).rejects.toThrow('The link code was not approved in time.');
    expect(clock).toBe(11_000); // a last read at the deadline, then past it (keys.py: `now > deadline`)
    expect(dir.links.has(b64encode(request.linkId))).toBe(false); // withdrawn: nothing to approve
    await expect(approveLink(dir, request.code, key, ME, yes, publish)).rejects.toMatchObject({ code: 'not_found' });
    const again = await startLink(dir, 2, 'phone');
    const stop = new AbortController();
    const cancelled = awaitApproval(dir, again, { pollMs: 60_000, signal: stop.signal });
    setTimeout(() => stop.abort(), 10);
    await expect(cancelled).rejects.toBeInstanceOf(LinkCancelled);
    expect(dir.links.has(b64encode(again.linkId))).toBe(false);
    expect(dir.calls.filter((c) => c === 'cancelLink')).toHaveLength(2);
  });
});

describe('an approval just as the new device gives up', () => {
  it('is taken, not withdrawn and forgotten', async () => {
    // The withdrawal is refused (approved already): ignored, the device forgot the key
    // that opens the approval, and the account listed a device without its key.
    const { dir, key, publish } = await account();
    const request = await startLink(dir, 2, 'phone');
    let clock = 0;
    const cancel = dir.cancelLink.bind(dir);
    dir.cancelLink = async (linkId: string) => {
      await approveLink(dir, request.code, key, ME, yes, publish); // lands just before
      return cancel(linkId);
    };
    const sealed = await awaitApproval(dir, request, { timeoutMs: 1000, pollMs: 1000, now: () => clock, sleep: async (ms) => void (clock += ms) });
    expect(b64encode(sealed)).toBe(dir.links.get(b64encode(request.linkId))?.approval?.sealed);
  });
});

describe('device names', () => {
  it('are 1 to 64 characters, cut by code point, with a default', () => {
    expect(deviceName('  my phone  ', 'x')).toBe('my phone');
    expect(deviceName('', 'parley-web')).toBe('parley-web');
    const long = '😀'.repeat(70);
    expect([...deviceName(long, 'x')]).toHaveLength(64);
    expect(() => new DeviceEntry(1, deviceName(long, 'x'), new Uint8Array(32), new Uint8Array(32))).not.toThrow();
    expect(defaultDeviceName('Linux x86_64')).toBe('parley-web on Linux x86_64');
    expect(defaultDeviceName('')).toBe('parley-web');
    expect(defaultDeviceName('Mac\u0007Intel')).toBe('parley-web on MacIntel');
  });
});
