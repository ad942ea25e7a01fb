"""Outgoing e-mail over SMTP (aiosmtplib): login codes and password resets.

The embedded stack runs an aiosmtpd sink; production points the same settings
(``PARLEY_SMTP_*``) at SES or any SMTP relay.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr

import aiosmtplib
from prometheus_client import Counter

from services.common.config import Settings

log = logging.getLogger(__name__)


class MailError(Exception):
    """The message could not be handed to the SMTP server."""


class Mailer:
    def __init__(self, settings: Settings, counter: Counter | None = None) -> None:
        self.settings = settings
        # parley_auth_emails_total{kind,result} (services/auth/metrics.py)
        self.counter = counter

    def _count(self, kind: str, result: str) -> None:
        if self.counter is not None:
            self.counter.labels(kind, result).inc()

    async def send(self, to: str, subject: str, text: str, kind: str = "other") -> None:
        s = self.settings
        msg = EmailMessage()
        msg["From"] = s.smtp_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Message-ID"] = make_msgid(domain="parley.invalid")
        msg.set_content(text)
        try:
            await aiosmtplib.send(
                msg,
                # The envelope named here, not parsed from the headers (a parser
                # decodes encoded words: another mailbox than the one stored).
                sender=parseaddr(s.smtp_from)[1] or s.smtp_from,
                recipients=[to],
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                start_tls=s.smtp_tls,
                timeout=max(s.dependency_timeout_ms / 1000, 5),
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("mail not sent", extra={"error": type(exc).__name__, "kind": kind})
            self._count(kind, "failed")
            raise MailError from exc
        self._count(kind, "sent")

    async def login_code(self, to: str, username: str, code: str, minutes: int) -> None:
        await self.send(
            to,
            f"Your Parley code: {code}",
            f"Hello {username},\n\nYour Parley sign-in code is {code}.\n"
            f"It expires in {minutes} minutes and works once.\n\n"
            "If you did not try to sign in, change your password.\n",
            kind="login_code",
        )

    async def setup_code(self, to: str, username: str, code: str, minutes: int) -> None:
        await self.send(
            to,
            f"Confirm e-mail sign-in codes: {code}",
            f"Hello {username},\n\nTo turn on sign-in codes by e-mail, enter {code}.\n"
            f"It expires in {minutes} minutes.\n",
            kind="setup_code",
        )

    async def password_reset(
        self, to: str, username: str, token: str, minutes: int, two_factor: bool = False
    ) -> None:
        # The provider's reset page (services/auth/oidc/pages.py); no Referer leaves the site.
        link = f"{self.settings.public_url.rstrip('/')}/auth/reset-password/confirm?token={token}"
        factors = (
            " Resetting also turns off two-step sign-in (authenticator app, e-mail codes"
            " and recovery codes): turn it on again afterwards."
            if two_factor
            else ""
        )
        await self.send(
            to,
            "Reset your Parley password",
            f"Hello {username},\n\nSomeone asked to reset your Parley password.\n"
            f"Open {link}\nor use this reset token: {token}\n"
            f"It expires in {minutes} minutes and works once. Every session will be "
            f"signed out.{factors}\n\nIf it was not you, ignore this message.\n",
            kind="password_reset",
        )

    async def security_notice(
        self,
        to: str,
        username: str,
        subject: str,
        what: str,
        when: str,
        ip: str,
        by_admin: bool = False,
    ) -> None:
        """Tell the owner about a change to how their account signs in. ``by_admin``: an
        administrator made it (the admin's address is not the owner's business)."""
        if by_admin:
            where = "By: an administrator of this Parley service"
            advice = (
                "If you did not ask for this change, contact the administrators of this "
                "Parley service."
            )
        else:
            where = f"From address: {ip}"
            advice = (
                "If this was not you, reset your password now (every session is signed "
                "out) and check your sessions and sign-in settings."
            )
        await self.send(
            to,
            f"Parley: {subject}",
            f"Hello {username},\n\n{what}\n\nWhen: {when}\n{where}\n\n{advice}\n",
            kind="security_notice",
        )
