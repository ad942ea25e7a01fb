"""The digest e-mail: what it says, and handing it to the SMTP server (aiosmtplib).

The embedded stack's SMTP sink (scripts/mailsink.py) keeps every message in
``var/mail``; production points ``PARLEY_SMTP_*`` at a relay, as the auth
service's mail does.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
import re
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from typing import Any, Literal

import aiosmtplib
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import Default

from services.common.config import Settings
from services.notifier.store import Doc, message_id

log = logging.getLogger(__name__)

# Mentions listed in one e-mail; the rest are counted ("and 3 more").
LISTED_MAX = 20
# A public room's excerpt: the start of its message, as the rooms service cuts it.
EXCERPT_MAX = 140
# How much of a public room's message is read to cut its excerpt (a message holds up
# to 4,000 characters): the excerpt is the same as from the whole text unless these
# are mostly white space (then it is shorter).
TEXT_READ = 1000
# How long the SMTP server may take to answer the end of DATA (RFC 5321 4.5.3.2.6: ten
# minutes; "a shorter timeout would typically result in delivery of multiple copies"): a
# relay that scans the message before it answers has taken it, and a digest counted
# failed then is mailed again at every retry. The connection, the greeting and every
# other command have the short timeout (:func:`command_timeout`).
DATA_TIMEOUT_S = 600.0
# The round trips of a send other than DATA, each under the short timeout: connect and
# greeting, EHLO, STARTTLS, EHLO, AUTH (up to three), MAIL, RCPT, QUIT.
COMMANDS_MAX = 10
# The markers of a public room's message that is gone: removed by the room's owner, a
# moderator or an admin, or deleted by its author (services/rooms/moderation.py).
REMOVED = frozenset({"removed_by_moderator", "deleted_by_author"})


class MailError(Exception):
    """The message could not be handed to the SMTP server."""


class MailRefused(MailError):
    """The SMTP server refused the recipient for good (a 5xx answer to ``RCPT``: no such
    mailbox): trying again would be refused again."""


class MailRejected(MailError):
    """The SMTP server refused this message at ``DATA`` with a 5xx answer (e.g. its
    content judged spam, or too big): the same digest sent again would be refused
    again, if the server takes other mail (the worker tells: :class:`Notifier`). A 5xx
    at ``MAIL`` (the sender refused) is a plain :class:`MailError`."""


class HeaderInjection(ValueError):
    """The message as written has a header line :func:`send` did not set: it is not
    sent. Cannot happen while :func:`header_text` does its job; if it does (a new way
    through Python's header handling), the worker counts it ``error`` and logs it."""


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


def header_text(text: str) -> str:
    """``text`` for a header: :func:`one_line`, and no ``=?`` anywhere (``=?`` becomes
    ``= ?``), so that no RFC 2047 encoded word is in it. Python's header parser
    (3.11.7 here) decodes an encoded word in a value it is given (a Subject, an
    address) and writes the decoded text back, CR LF included, raw: a room named
    ``=?utf-8?q?x=0D=0AReply-To:_evil@x.test?=`` was a ``Reply-To`` header. A receiving
    mail client would decode it too. With no ``=?`` there is no encoded word to decode,
    whatever the Python release."""
    out = one_line(text)
    while "=?" in out:
        out = out.replace("=?", "= ?")
    return out


# What the To header may carry as it is: a plain address (the auth service refuses "=?"
# in a new address since 2026-12-07, but one stored before can be an encoded word).
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")


def to_header(address: str) -> str:
    """The To header for ``address``: the address itself if it is plain; else (it holds
    ``=?``, which Python would decode, or anything else unusual) the empty group
    ``undisclosed-recipients:;``. Delivery goes by the envelope (``RCPT TO``), never
    by this header."""
    plain = _PLAIN_ADDRESS.fullmatch(address) is not None and "=?" not in address
    return address if plain else "undisclosed-recipients:;"


def header_names(raw: bytes) -> list[str]:
    """The name of every header line of a message as written (continuation lines,
    starting with white space, belong to the line before)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [
        line.split(b":", 1)[0].decode("ascii", "replace")
        for line in head.split(b"\r\n")
        if line and line[:1] not in (b" ", b"\t")
    ]


def excerpt(text: str) -> str:
    """The start of a message, on one line (the rooms service's ``text.excerpt``)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_MAX else flat[: EXCERPT_MAX - 1] + "\u2026"


def as_now(items: list[Doc], messages: dict[str, Doc]) -> list[Doc]:
    """The mentions of ``items`` a digest lists, as their messages are now
    (``messages``: :meth:`NotifierStore.messages_now`, read when the digest is sent, the
    first ``TEXT_READ`` characters of each text):
    a public room's mention whose message was removed (or deleted by its author) since
    is left out; the others carry the message's current text (edited since: the new
    one). One whose message is not found carries no text: nothing the notifier cannot
    check is mailed. A private room's mention has no text to check: as it is."""
    out = []
    for it in items:
        seq = it.get("message_seq")
        if seq is None:
            out.append(it)
            continue
        now = messages.get(message_id(str(it["room_id"]), int(seq)))
        if now is not None and now.get("marker") in REMOVED:
            continue
        out.append({**it, "excerpt": excerpt(str(now.get("text") or "")) if now else ""})
    return out


def digest(
    username: str,
    items: list[Doc],
    senders: dict[str, str],
    public_url: str,
    web_url: str | None = None,
    total: int | None = None,
) -> tuple[str, str]:
    """The subject and text of a digest of ``items`` (oldest first; the first
    ``LISTED_MAX`` are listed) and ``total`` mentions in all (None: ``items`` alone;
    the others are counted, "and 3 more"): a link to the web client (``web_url``, else
    the API's origin, where HAProxy serves it too) and the API route that turns these
    e-mails off."""
    n = len(items) if total is None else max(total, len(items))
    if n == 1:
        first = items[0]
        who = one_line(senders.get(first["sender"], "someone"))
        subject = one_line(f"Parley: @{who} mentioned you in {first['room_name']}")
    else:
        subject = f"Parley: {n} new mentions"
    lines = [f"Hello {one_line(username)},", "", "While you were away:", ""]
    shown = items[:LISTED_MAX]
    for it in shown:
        # One line a mention, whatever its room's name or text holds.
        who = one_line(senders.get(it["sender"], "someone"))
        text = one_line(it["excerpt"] or "")
        excerpt = f": {text}" if it["kind"] == "public" and text else ""
        where = one_line(it["room_name"]) + (" (private)" if it["kind"] == "private" else "")
        lines.append(f"- @{who} mentioned you in {where}{excerpt}")
    if n > len(shown):
        lines.append(f"- and {n - len(shown)} more")
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


def message(settings: Settings, to: str, subject: str, text: str) -> bytes:
    """The message as it goes over SMTP. No user's text can make a header line: every
    value is on one line (Python's header policy raises ValueError otherwise), the
    Subject has no encoded word (:func:`header_text`), the To header only a plain
    address (:func:`to_header`); and the bytes written are checked to hold exactly the
    headers set here (:class:`HeaderInjection` otherwise), whatever Python does."""
    msg = EmailMessage()
    msg["From"] = one_line(settings.smtp_from)  # the operator's, as configured
    msg["To"] = to_header(to)
    msg["Subject"] = header_text(subject)
    msg["Message-ID"] = make_msgid(domain="parley.invalid")
    msg["Auto-Submitted"] = "auto-generated"
    # Quoted-printable: the message is ASCII whatever the text, and goes as it is
    # (these bytes, checked) to any server, with or without 8BITMIME.
    msg.set_content(text, cte="quoted-printable")
    raw = msg.as_bytes(policy=email.policy.SMTP)
    if header_names(raw) != list(msg.keys()):
        raise HeaderInjection("a header line that was not set")
    return raw


def command_timeout(settings: Settings) -> float:
    """The timeout of connecting, the greeting and each SMTP command but DATA (s)."""
    return max(settings.dependency_timeout_ms / 1000, 5)


def send_bound(settings: Settings, data_timeout_s: float = DATA_TIMEOUT_S) -> float:
    """The longest :func:`send` takes (s): its every step at its timeout. A digest is
    leased for this long (and more) while it is sent (:class:`Notifier`). aiosmtplib
    waits ``data_timeout_s`` for the answer to ``DATA`` itself (354) as well as for
    the answer to the message, so both count: a relay slow on 354 and then answering
    within the ten minutes must not be cut (a copy mailed again)."""
    return 2 * data_timeout_s + COMMANDS_MAX * command_timeout(settings)


class _Smtp(aiosmtplib.SMTP):
    """aiosmtplib's client, with its own timeout for ``DATA``: the answer to the
    message's end can take minutes (a relay scanning it), the other commands must not."""

    def __init__(self, *, data_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_timeout = data_timeout

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> SMTPResponse:
        return await super().data(message, timeout=self.data_timeout)


async def send(
    settings: Settings, to: str, subject: str, text: str, data_timeout_s: float = DATA_TIMEOUT_S
) -> None:
    """Hand one message to the SMTP server, for ``to`` (the envelope's one recipient:
    the stored address as it is, never one parsed back from a header).
    ``MailRefused``: the recipient refused for good (5xx at ``RCPT``);
    ``MailRejected``: the message refused for good (5xx at ``DATA``); ``MailError``:
    anything else (unreachable, a 4xx answer, a 5xx at ``MAIL``: the sender refused, a
    timeout), worth trying again later. Connecting and each command wait
    :func:`command_timeout`; the answer to the message (``DATA``) ``data_timeout_s``;
    the whole send at most :func:`send_bound`."""
    s = settings
    raw = message(s, to, subject, text)
    client = _Smtp(
        data_timeout=data_timeout_s,
        hostname=s.smtp_host,
        port=s.smtp_port,
        username=s.smtp_username,
        password=s.smtp_password.get_secret_value() if s.smtp_password else None,
        start_tls=s.smtp_tls,
        timeout=command_timeout(s),
    )
    try:
        async with asyncio.timeout(send_bound(s, data_timeout_s)):
            await client.connect()
            try:
                await client.sendmail(parseaddr(s.smtp_from)[1] or s.smtp_from, [to], raw)
            except BaseException:
                client.close()
                raise
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
    # Taken: nothing after (QUIT) can make it a failure, to be sent again.
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        client.close()
