/** A message's moderation buttons, the same in a 1:1 conversation and a private room:
 * "Remove for everyone" on one you sent, "Report" (after a confirmation) on one you
 * received (docs/moderation-messages.md). Native buttons, so Tab and Enter reach them;
 * an API error is shown next to the message, never swallowed. */
import { useState } from 'preact/hooks';
import { ApiError } from './api.ts';
import type { HistoryEntry, ParleyClient } from './client.ts';

/** What a refused action shows: the server's code and its message. */
export function failure(err: unknown): string {
  return err instanceof ApiError ? `Failed (${err.code}): ${err.message}` : `Failed: ${err instanceof Error ? err.message : String(err)}`;
}

/** `peer`: the contact's user id, or the room's conversation (`room:<id>`). */
export function MessageActions(props: { client: ParleyClient; peer: string; entry: HistoryEntry }) {
  const { client, peer, entry: e } = props;
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const [note, setNote] = useState('');
  const failed = (err: unknown) => setNote(failure(err));
  if (e.kind !== 'message') return null;
  if (e.dir === 'out') {
    if (!e.server_id || !e.client_id || e.status === 'queued' || e.status === 'failed') return null;
    return (
      <>
        <button type="button" class="unsend" disabled={busy} aria-label={`Remove for everyone: ${e.text.slice(0, 40)}`}
          onClick={() => { setBusy(true); client.unsend(e).then(() => setNote('Removing…'), failed).finally(() => setBusy(false)); }}>
          Remove for everyone
        </button>
        {note && <span class="mod-note" role="status">{note}</span>}
      </>
    );
  }
  if (e.dir !== 'in' || !e.report) return null;
  if (e.reported) return <span class="mod-note reported" role="status">Reported</span>;
  return (
    <>
      {!confirming && (
        <button type="button" class="report" aria-label={`Report message: ${e.text.slice(0, 40)}`} onClick={() => setConfirming(true)}>
          Report
        </button>
      )}
      {confirming && (
        <span class="report-confirm" role="group" aria-label="Confirm the report">
          <span>The server's admins will see this message's text (and only this message). Report it?</span>{' '}
          <button type="button" class="report-yes" disabled={busy} autoFocus
            onClick={() => { setBusy(true); client.report(peer, e).then(() => { setConfirming(false); setNote('Reported'); }, failed).finally(() => setBusy(false)); }}>
            Report to admins
          </button>{' '}
          <button type="button" class="report-no" onClick={() => setConfirming(false)}>Cancel</button>
        </span>
      )}
      {note && <span class="mod-note" role="status">{note}</span>}
    </>
  );
}
