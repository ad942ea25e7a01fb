/** "Devices" in the account's settings (docs/devices.md): this account's devices, from the
 * list signed by the account key (this one marked); "Rename" on each (`parley devices
 * rename`), "Remove" on the others and "Remove this browser" on this one, each removal
 * after a confirmation (`parley devices remove`; never the only device); and "Link a new
 * device": the code a new device shows, then its name and fingerprint to compare, then
 * Approve or Cancel (ParleyClient.approveDevice, as `parley devices approve CODE`). */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { ParleyClient } from './client.ts';
import { NAME_MAX, type DeviceRow, NotApproved, type PendingDevice, deviceActions } from './devices.ts';
import { refusalText } from './twoFactor.ts';

/** What the log-in page says once this browser removed itself from the account. */
export const REMOVED_NOTICE =
  "This browser is no longer one of your devices, and it is signed out. Its message history stays in this browser, sealed with your local passphrase; the account key and this device's keys were deleted from it. To use your account here again, link this browser from one of your devices (a new start: the old history here is then replaced).";

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function DevicesView(props: { client: ParleyClient; onSignedOut: (notice: string) => void }) {
  const { client } = props;
  const [rows, setRows] = useState<DeviceRow[] | null>(null);
  const [reload, setReload] = useState(0);
  const [error, setError] = useState('');
  const [status, setStatus] = useState('');
  const [code, setCode] = useState('');
  const [busy, setBusy] = useState(false);
  const [pending, setPending] = useState<{ device: PendingDevice; answer: (yes: boolean) => void } | null>(null);
  const [removing, setRemoving] = useState<DeviceRow | null>(null);
  const [renaming, setRenaming] = useState<{ row: DeviceRow; name: string } | null>(null);
  const pendingRef = useRef<HTMLHeadingElement>(null);
  const backTo = useRef<HTMLElement | null>(null);
  useEffect(() => pendingRef.current?.focus(), [pending]);
  useEffect(() => {
    client.devices().then(setRows, (e: unknown) => setError(`Devices: ${message(e)}`));
  }, [client, reload]);
  const again = () => setReload((r) => r + 1);

  const lookUp = (e: Event) => {
    e.preventDefault();
    setError('');
    setStatus('');
    setBusy(true);
    client
      .approveDevice(code, (device) => new Promise<boolean>((answer) => setPending({ device, answer })))
      .then(
        (device) => {
          setCode('');
          setStatus(`Linked ${device.name} (device ${device.device_id}).`);
          again();
        },
        (err: unknown) => {
          if (err instanceof NotApproved) setStatus('Not approved: nothing was changed.');
          else setError(message(err));
        },
      )
      .finally(() => {
        setPending(null);
        setBusy(false);
      });
  };

  /** Open a row's confirmation or form; Cancel gives the focus back to its button. */
  const open = (e: Event, then: () => void) => {
    backTo.current = e.currentTarget as HTMLElement;
    setStatus('');
    setError('');
    then();
  };
  const close = () => {
    setRemoving(null);
    setRenaming(null);
    backTo.current?.focus();
  };

  const rename = (row: DeviceRow, name: string) => {
    setError('');
    setStatus('');
    setBusy(true);
    client.renameDevice(row.device_id, name).then(
      () => {
        setRenaming(null);
        setStatus(`Device ${row.device_id} is now called ${[...name].slice(0, NAME_MAX).join('')}.`);
        again();
      },
      (err: unknown) => setError(refusalText(err)),
    ).finally(() => setBusy(false));
  };

  const removeThis = () => {
    setError('');
    setStatus('');
    setBusy(true);
    client.removeThisDevice().then(
      () => props.onSignedOut(REMOVED_NOTICE),
      (err: unknown) => {
        setBusy(false);
        setError(refusalText(err));
      },
    );
  };

  const remove = (row: DeviceRow) => {
    setError('');
    setStatus('');
    setBusy(true);
    client.removeDevice(row.device_id).then(
      () => {
        setRemoving(null);
        setStatus(`Removed ${row.name} (device ${row.device_id}).`);
        again();
      },
      (err: unknown) => setError(message(err)),
    ).finally(() => setBusy(false));
  };

  return (
    <div class="devices">
      <div class="conv-head">
        <h3 id="devices-title">Your devices</h3>
        <button type="button" class="secondary small" id="devices-refresh" onClick={again}>
          Refresh
        </button>
      </div>
      <p class="hint">
        Each device has its own keys and inbox; the account key, which your contacts' safety number is made of, is the same on all of them. A
        device linked later starts its history when it is linked.
      </p>
      {rows === null ? (
        <p>Reading the device list…</p>
      ) : (
        <ul id="device-list" aria-label="Devices of this account">
          {rows.map((row) => {
            const can = deviceActions(row, rows);
            return (
              <li class="device" data-device-id={row.device_id} key={row.device_id}>
                <span class="device-name">{row.name}</span>
                <span class="device-id">device {row.device_id}</span>
                <span class="fingerprint number" aria-label={`fingerprint ${row.fingerprint}`}>
                  {row.fingerprint}
                </span>
                {row.this_device && <strong class="this-device">this device</strong>}
                {renaming?.row.device_id === row.device_id ? (
                  <form
                    class="rename"
                    aria-label={`Rename ${row.name}`}
                    onSubmit={(e) => {
                      e.preventDefault();
                      rename(row, renaming.name);
                    }}
                  >
                    <label for="rename-input">New name for {row.this_device ? 'this device' : row.name}</label>
                    <input
                      id="rename-input"
                      value={renaming.name}
                      autocomplete="off"
                      autoFocus
                      aria-describedby="rename-hint"
                      onInput={(e) => setRenaming({ row, name: (e.target as HTMLInputElement).value })}
                      required
                    />
                    <button type="submit" class="small" id="rename-save" disabled={busy}>
                      Save
                    </button>
                    <button type="button" class="small secondary" id="rename-cancel" onClick={close}>
                      Cancel
                    </button>
                    <small class="hint" id="rename-hint">
                      Up to {NAME_MAX} characters (a longer name is cut), no control characters. Every device of the account, and your contacts'
                      apps, see it.
                    </small>
                  </form>
                ) : removing?.device_id === row.device_id ? (
                  can.removesThis ? (
                    <span class="confirm" role="group" aria-label="Confirm removing this browser">
                      <span>
                        Remove this browser from your devices? It is signed out at once and can no longer send or receive your messages. Its
                        history stays here, sealed with your local passphrase; your other devices keep theirs. To use your account here again,
                        link this browser from another device.
                      </span>{' '}
                      <button type="button" class="small" id="remove-this-yes" disabled={busy} autoFocus onClick={removeThis}>
                        Remove this browser
                      </button>{' '}
                      <button type="button" class="small secondary" id="remove-no" onClick={close}>
                        Cancel
                      </button>
                    </span>
                  ) : (
                    <span class="confirm" role="group" aria-label={`Confirm removing ${row.name}`}>
                      <span>Remove {row.name}? It can no longer log in or receive messages.</span>{' '}
                      <button type="button" class="small" id="remove-yes" disabled={busy} autoFocus onClick={() => remove(row)}>
                        Remove device
                      </button>{' '}
                      <button type="button" class="small secondary" id="remove-no" onClick={close}>
                        Cancel
                      </button>
                    </span>
                  )
                ) : (
                  <span class="device-actions">
                    {can.rename && (
                      <button
                        type="button"
                        class="small secondary"
                        aria-label={`Rename ${row.name} (device ${row.device_id})`}
                        onClick={(e) => open(e, () => {
                          setRemoving(null);
                          setRenaming({ row, name: row.name });
                        })}
                      >
                        Rename
                      </button>
                    )}
                    {can.remove && (
                      <button
                        type="button"
                        class="small secondary"
                        aria-label={can.removesThis ? 'Remove this browser from the account' : `Remove ${row.name} (device ${row.device_id})`}
                        onClick={(e) => open(e, () => {
                          setRenaming(null);
                          setRemoving(row);
                        })}
                      >
                        {can.removesThis ? 'Remove this browser' : 'Remove'}
                      </button>
                    )}
                  </span>
                )}
              </li>
            );
          })}
        </ul>
      )}
      <form id="approve-device" aria-labelledby="approve-title" onSubmit={lookUp}>
        <h3 id="approve-title">Link a new device</h3>
        <p class="hint" id="link-code-hint">
          On the new device, choose "Link this browser to an existing account" (or run <code>parley devices link</code>) and enter the code
          it shows here.
        </p>
        <label for="link-code-input">Code shown by the new device</label>
        <div class="row">
          <input
            id="link-code-input"
            value={code}
            autocomplete="off"
            spellcheck={false}
            aria-describedby="link-code-hint"
            disabled={busy}
            onInput={(e) => setCode((e.target as HTMLInputElement).value)}
            required
          />
          <button type="submit" id="approve-lookup" disabled={busy || !code.trim()}>
            Look up
          </button>
        </div>
      </form>
      {pending && (
        <div id="pending-device" class="warning" role="group" aria-labelledby="pending-title">
          {/* Focus on what to compare (not on Approve: Enter must not approve unread). */}
          <h3 id="pending-title" tabIndex={-1} ref={pendingRef}>
            Link <span id="pending-name">{pending.device.name || 'new device'}</span> (device {pending.device.device_id}) to this account?
          </h3>
          <p>
            Fingerprint: <span class="number" id="pending-fingerprint">{pending.device.fingerprint}</span>
          </p>
          <p>Approve only if the new device shows the same name and fingerprint. It gets your account key and receives your messages from now on.</p>
          <button type="button" id="approve-yes" onClick={() => pending.answer(true)}>
            Approve
          </button>
          <button type="button" class="secondary" id="approve-no" onClick={() => pending.answer(false)}>
            Cancel
          </button>
        </div>
      )}
      <p role="status" id="devices-status">
        {status}
      </p>
      {error && (
        <p class="error" role="alert" id="devices-error">
          {error}
        </p>
      )}
    </div>
  );
}
