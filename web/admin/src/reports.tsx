// Reports of end-to-end encrypted messages (docs/moderation-messages.md): the queue,
// one report with the plaintext its reporter revealed (verified by franking), its
// resolution, and the removal of the reported message (signed tombstones).
import { useEffect, useState } from "preact/hooks";
import type { Api, AuditEntry, Report, ReportState } from "./api";
import type { Navigate } from "./main";
import { AuditActor, Confirm, Link, Problem, UserName, useBusy, usePagedList, when } from "./ui";

function StateBadge({ state, id }: { state: ReportState; id?: string }) {
  return (
    <span id={id} class={state === "open" ? "badge bad" : "badge"}>
      {state}
    </span>
  );
}

/** Where the message was sent: a direct conversation or a private room. */
function Where({ report, navigate }: { report: Report; navigate: Navigate }) {
  const room = report.room ?? (report.conversation?.startsWith("room:") ? report.conversation.slice(5) : null);
  if (room)
    return (
      <Link to={`rooms/${room}`} navigate={navigate}>
        private room <code>{room.slice(0, 8)}…</code>
      </Link>
    );
  return <span title={report.conversation ?? ""}>direct message</span>;
}

export function ReportsPage({ api, navigate }: { api: Api; navigate: Navigate }) {
  const [state, setState] = useState<"" | ReportState>("open");
  const { items: reports, next, loaded, error, load, more } = usePagedList(async (s: "" | ReportState, after?: string | null) => {
    const page = await api.reports(s, after);
    return { items: page.reports, next: page.next };
  });
  useEffect(() => void load(state), []);

  return (
    <section>
      <h1>Reports</h1>
      <p class="muted">
        Messages users reported, oldest first. Each shows the text its reporter revealed; the server checked that the
        sender really sent it (message franking).
      </p>
      <div class="row">
        <select
          id="report-state"
          aria-label="State"
          value={state}
          onChange={(e) => {
            const s = e.currentTarget.value as "" | ReportState;
            setState(s);
            void load(s);
          }}
        >
          <option value="open">open</option>
          <option value="actioned">actioned</option>
          <option value="dismissed">dismissed</option>
          <option value="">every state</option>
        </select>
      </div>
      <Problem error={error} />
      <table id="reports">
        <thead>
          <tr>
            <th>Filed</th>
            <th>State</th>
            <th>Message</th>
            <th>Sender</th>
            <th>Reporter</th>
            <th>Where</th>
          </tr>
        </thead>
        <tbody>
          {reports.map((r) => (
            <tr key={r.id} class="clickable" data-report-id={r.id} onClick={() => navigate(`reports/${r.id}`)}>
              <td>
                <Link to={`reports/${r.id}`} navigate={navigate}>
                  {when(r.created_at)}
                </Link>
              </td>
              <td>
                <StateBadge state={r.state} />
              </td>
              <td class="excerpt">{r.text.length > 90 ? `${r.text.slice(0, 90)}…` : r.text}</td>
              <td>
                <UserName api={api} id={r.sender} navigate={navigate} />
              </td>
              <td>
                <UserName api={api} id={r.reporter} navigate={navigate} />
              </td>
              <td>
                <Where report={r} navigate={navigate} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {loaded && reports.length === 0 && <p class="muted">No {state ? `${state} ` : ""}report.</p>}
      {next && (
        <button class="secondary" onClick={() => void more()}>
          More
        </button>
      )}
    </section>
  );
}

export function ReportPage({ api, id, navigate }: { api: Api; id: string; navigate: Navigate }) {
  const [report, setReport] = useState<Report | null>(null);
  const [removal, setRemoval] = useState<AuditEntry | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [notice, setNotice] = useState("");
  const [note, setNote] = useState("");
  const [reason, setReason] = useState("");
  const [busy, run] = useBusy(); // one resolution at a time (the removal's Confirm has its own)

  // An admin's removal of the message is in the audit log (the report does not say).
  const loadRemoval = async (serverId: string) => {
    const found = await api.auditFor({ target_id: serverId, action: "message.remove", service: "delivery" }, 1);
    setRemoval(found.entries[0] ?? null);
  };
  const refresh = async () => {
    try {
      const r = await api.report(id);
      setReport(r);
      await loadRemoval(r.server_id);
      setError(null);
    } catch (e) {
      setError(e);
    }
  };
  useEffect(() => void refresh(), [id]);

  const resolve = (state: "actioned" | "dismissed") =>
    run(async () => {
      setNotice("");
      try {
        setReport(await api.resolve(id, state, note));
        setError(null);
        setNotice(state === "actioned" ? "Resolved: actioned." : "Dismissed.");
      } catch (e) {
        setError(e);
      }
    });
  const remove = async (serverId: string) => {
    setNotice("");
    try {
      const out = await api.removeMessage(serverId, reason);
      setError(null);
      setNotice(`Message removed: a signed tombstone went to ${out.inboxes} device inbox${out.inboxes === 1 ? "" : "es"}.`);
      await loadRemoval(serverId);
    } catch (e) {
      setError(e);
    }
  };

  const back = (
    <p>
      <Link to="reports" navigate={navigate}>← Reports</Link>
    </p>
  );
  if (!report)
    return (
      <section>
        {back}
        <Problem error={error} />
      </section>
    );
  const removedBy = removal?.after ?? removal?.details ?? {};
  return (
    <section>
      {back}
      <h1>
        Report <StateBadge state={report.state} id="state" />
      </h1>
      {notice && (
        <p class="notice" role="status">
          {notice}
        </p>
      )}
      <Problem error={error} />
      <h2>The reported message</h2>
      <blockquote id="report-text" class="plaintext">
        {report.text}
      </blockquote>
      <p class="muted small">
        Verified: this text opens the commitment the sender's app made, and the server's tag binds it to the sender, the
        reporter, the time and the conversation. Only this message was revealed.
      </p>
      <dl class="facts">
        <dt>Sender</dt>
        <dd>
          <UserName api={api} id={report.sender} navigate={navigate} /> <span class="muted">(device {report.sender_device})</span>
        </dd>
        <dt>Sent</dt>
        <dd>{when(report.sent_at)}</dd>
        <dt>Where</dt>
        <dd>
          <Where report={report} navigate={navigate} />
        </dd>
        <dt>Reporter</dt>
        <dd>
          <UserName api={api} id={report.reporter} navigate={navigate} />
          {report.reporter_device !== null && <span class="muted"> (device {report.reporter_device})</span>}
        </dd>
        <dt>Filed</dt>
        <dd>{when(report.created_at)}</dd>
        <dt>Message id</dt>
        <dd>
          <code>{report.server_id}</code>
        </dd>
        <dt>Report id</dt>
        <dd>
          <code>{report.id}</code>
        </dd>
      </dl>

      <h2>Resolution</h2>
      {report.resolution ? (
        <dl class="facts" id="resolution">
          <dt>State</dt>
          <dd>{report.state}</dd>
          <dt>By</dt>
          <dd>
            <UserName api={api} id={report.resolution.by} navigate={navigate} /> on {when(report.resolution.at)}
          </dd>
          <dt>Note</dt>
          <dd class="note">{report.resolution.note || <span class="muted">none</span>}</dd>
        </dl>
      ) : (
        <form class="stack" onSubmit={(e) => e.preventDefault()}>
          <label>
            Note (kept with the report and in the audit log)
            <textarea id="note" rows={3} maxLength={2000} value={note} onInput={(e) => setNote(e.currentTarget.value)} />
          </label>
          <div class="actions">
            <button type="button" id="actioned" disabled={busy} onClick={() => void resolve("actioned")}>
              Resolve as actioned
            </button>
            <button type="button" id="dismissed" class="secondary" disabled={busy} onClick={() => void resolve("dismissed")}>
              Dismiss
            </button>
          </div>
        </form>
      )}

      <h2>Remove the message</h2>
      {removal ? (
        <p class="notice" id="removed">
          Removed by <AuditActor api={api} entry={removal} navigate={navigate} /> on {when(removal.at)}
          {removedBy["reason"] ? ` — ${String(removedBy["reason"])}` : ""}
          {typeof removedBy["inboxes"] === "number" ? ` (tombstones to ${removedBy["inboxes"]} device inboxes)` : ""}.
        </p>
      ) : (
        <p class="muted small">
          Its copies still waiting on the server are deleted and every device of the conversation gets a signed
          tombstone; the Parley apps then hide it. A device that already showed it may keep a copy.
        </p>
      )}
      <div class="row">
        <input
          id="remove-reason"
          maxLength={500}
          placeholder="Reason (kept in the audit log, never sent to users)"
          value={reason}
          onInput={(e) => setReason(e.currentTarget.value)}
        />
        <Confirm
          id="remove-message"
          label={removal ? "Remove again" : "Remove for everyone"}
          yes="Yes, remove it"
          question="Remove this message from every device of the conversation?"
          onConfirm={() => remove(report.server_id)}
        />
      </div>
    </section>
  );
}
