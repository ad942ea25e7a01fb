"""The digest e-mail: what it says, and handing it to the SMTP server (aiosmtplib).

The embedded stack's SMTP sink (scripts/mailsink.py) keeps every message in
``var/mail``; production points ``PARLEY_SMTP_*`` at a relay, as the auth
service's mail does.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib

from services.common.config import Settings
from services.notifier.store import Doc

log = logging.getLogger(__name__)

# Mentions listed in one e-mail; the rest are counted ("and 3 more").
LISTED_MAX = 20


class MailError(Exception):
    """The message could not be handed to the SMTP server."""


class MailRefused(MailError):
    """The SMTP server refused the recipient for good (a 5xx answer to ``RCPT``: no such
    mailbox): trying again would be refused again."""


def digest(
    username: str,
    items: list[Doc],
    senders: dict[str, str],
    public_url: str,
    web_url: str | None = None,
) -> tuple[str, str]:
    """The subject and text of a digest of ``items`` (oldest first): a link to the web
    client (``web_url``, else the API's origin, where HAProxy serves it too) and the
    API route that turns these e-mails off."""
    n = len(items)
    if n == 1:
        first = items[0]
        who = senders.get(first["sender"], "someone")
        subject = f"Parley: @{who} mentioned you in {first['room_name']}"
    else:
        subject = f"Parley: {n} new mentions"
    lines = [f"Hello {username},", "", "While you were away:", ""]
    for it in items[:LISTED_MAX]:
        who = senders.get(it["sender"], "someone")
        excerpt = f": {it['excerpt']}" if it["kind"] == "public" and it["excerpt"] else ""
        where = it["room_name"] + (" (private)" if it["kind"] == "private" else "")
        lines.append(f"- @{who} mentioned you in {where}{excerpt}")
    if n > LISTED_MAX:
        lines.append(f"- and {n - LISTED_MAX} more")
    base = public_url.rstrip("/")
    lines += [
        "",
        f"Open Parley to read them: {(web_url or base).rstrip('/')}/",
        "",
        "You get at most one of these e-mails per interval, and only while no device of",
        "yours is connected. To stop them, turn off mention e-mails in your settings",
        f'(PATCH {base}/auth/v1/me/preferences with {{"mention_emails": false}}).',
    ]
    return subject, "\n".join(lines) + "\n"


async def send(settings: Settings, to: str, subject: str, text: str) -> None:
    s = settings
    msg = EmailMessage()
    msg["From"] = s.smtp_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="parley.invalid")
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    try:
        await aiosmtplib.send(
            msg,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            start_tls=s.smtp_tls,
            timeout=max(s.dependency_timeout_ms / 1000, 5),
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        log.warning("digest not sent", extra={"error": type(exc).__name__})
        if all(500 <= r.code < 600 for r in exc.recipients):
            raise MailRefused from exc
        raise MailError from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        log.warning("digest not sent", extra={"error": type(exc).__name__})
        raise MailError from exc
