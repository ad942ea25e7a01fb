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


class MailRejected(MailError):
    """The SMTP server refused this message at ``DATA`` with a 5xx answer (e.g. its
    content judged spam, or too big): the same digest sent again would be refused
    again, if the server takes other mail (the worker tells: :class:`Notifier`)."""


# ``str.isprintable()`` is false for these two, but they join characters (emoji
# sequences; Persian and Indic words) and cannot break a line or reorder text.
_JOINERS = frozenset("\u200c\u200d")


def one_line(text: str) -> str:
    """``text`` as one line of printable characters, for a header or a line of the
    digest: white space of every kind, including every character ``str.splitlines()``
    breaks at (CR, LF, VT, FF, FS, GS, RS, NEL, U+2028, U+2029), becomes one space;
    other characters that are not printable (controls, format characters such as
    bidirectional overrides, unassigned code points) are dropped. The rooms service
    refuses only C0 and C1 controls in a room's name, and Python's e-mail header
    policy raises ``ValueError`` for a value ``str.splitlines()`` would split."""
    kept = "".join(c for c in text if c.isspace() or c.isprintable() or c in _JOINERS)
    return " ".join(kept.split())


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
        who = one_line(senders.get(first["sender"], "someone"))
        subject = one_line(f"Parley: @{who} mentioned you in {first['room_name']}")
    else:
        subject = f"Parley: {n} new mentions"
    lines = [f"Hello {one_line(username)},", "", "While you were away:", ""]
    for it in items[:LISTED_MAX]:
        # One line a mention, whatever its room's name or text holds.
        who = one_line(senders.get(it["sender"], "someone"))
        text = one_line(it["excerpt"] or "")
        excerpt = f": {text}" if it["kind"] == "public" and text else ""
        where = one_line(it["room_name"]) + (" (private)" if it["kind"] == "private" else "")
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
    """Hand one message to the SMTP server. ``MailRefused``: the recipient refused for
    good (5xx at ``RCPT``); ``MailRejected``: the message refused for good (5xx at
    ``MAIL`` or ``DATA``); ``MailError``: anything else (unreachable, a 4xx answer),
    worth trying again later."""
    s = settings
    msg = EmailMessage()
    # Every header value on one line: Python's header policy raises ValueError otherwise.
    msg["From"] = one_line(s.smtp_from)
    msg["To"] = one_line(to)
    msg["Subject"] = one_line(subject)
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
    except aiosmtplib.SMTPDataError as exc:
        log.warning("digest not sent", extra={"error": type(exc).__name__, "code": exc.code})
        if 500 <= exc.code < 600:
            raise MailRejected from exc
        raise MailError from exc
    except aiosmtplib.SMTPSenderRefused as exc:
        # The sender refused (MAIL): the account's or the From address's trouble (a
        # paused account, an address not verified), the same for every digest: tried
        # again later, never a reason to drop this one.
        log.warning("digest not sent", extra={"error": type(exc).__name__, "code": exc.code})
        raise MailError from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        log.warning("digest not sent", extra={"error": type(exc).__name__})
        raise MailError from exc
