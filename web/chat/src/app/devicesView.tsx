/** "Devices" in the signed-in app (docs/devices.md): this account's devices, from the
 * list signed by the account key (this one marked, "Remove" on the others, after a
 * confirmation), and "Link a new device": the code a new device shows, then its name
 * and fingerprint to compare, then Approve or Cancel (ParleyClient.approveDevice, as
 * `parley devices approve CODE`). */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { ParleyClient } from './client.ts';
import { type DeviceRow, NotApproved, type PendingDevice } from './devices.ts';

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function DevicesView(props: { client: ParleyClient }) {
  const { client } = props;
  const [rows, setRows] = useState<DeviceRow[] | null>(null);
  const [reload, setReload] = useState(0);
  const [error, setError] = useState('');
  const [status, setStatus] = useState('');
  const [code, setCode] = useState('');
  const [busy, setBusy] = useState(false);
  const [pending, setPending] = useState<{ device: PendingDevice; answer: (yes: boolean) => void } | null>(null);
  const [removing, setRemoving] = useState<DeviceRow | null>(null);
  const titleRef = useRef<HTMLHeadingElement>(null);
  const pendingRef = useRef<HTMLHeadingElement>(null);
  useEffect(() => titleRef.current?.focus(), []);
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
    <section class="conversation devices" aria-labelledby="devices-title">
      <header class="conv-head">
        <h2 id="devices-title" tabIndex={-1} ref={titleRef}>
          Your devices
        </h2>
        <button type="button" class="secondary small" id="devices-refresh" onClick={again}>
          Refresh
        </button>
      </header>
      <p class="hint">
        Each device has its own keys and inbox; the account key, which your contacts' safety number is made of, is the same on all of them. A
        device linked later starts its history when it is linked.
      </p>
      {rows === null ? (
        <p>Reading the device list…</p>
      ) : (
        <ul id="device-list" aria-label="Devices of this account">
          {rows.map((row) => (
            <li class="device" data-device-id={row.device_id} key={row.device_id}>
              <span class="device-name">{row.name}</span>
              <span class="device-id">device {row.device_id}</span>
              <span class="fingerprint number" aria-label={`fingerprint ${row.fingerprint}`}>
                {row.fingerprint}
              </span>
              {row.this_device ? (
                <strong class="this-device">this device</strong>
              ) : removing?.device_id === row.device_id ? (
                <span class="confirm" role="group" aria-label={`Confirm removing ${row.name}`}>
                  <span>Remove {row.name}? It can no longer log in or receive messages.</span>{' '}
                  <button type="button" class="small" id="remove-yes" disabled={busy} autoFocus onClick={() => remove(row)}>
                    Remove device
                  </button>{' '}
                  <button type="button" class="small secondary" id="remove-no" onClick={() => setRemoving(null)}>
                    Cancel
                  </button>
                </span>
              ) : (
                <button
                  type="button"
                  class="small secondary"
                  aria-label={`Remove ${row.name} (device ${row.device_id})`}
                  onClick={() => {
                    setStatus('');
                    setRemoving(row);
                  }}
                >
                  Remove
                </button>
              )}
            </li>
          ))}
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
    </section>
  );
}
