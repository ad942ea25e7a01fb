"""Security notices: the owner is mailed about every change to how the account signs in.

A second factor turned on or off, new recovery codes, a password changed or
reset: each is mailed to the account's address as it happens, with the time
and the client address it came from, so that an owner whose session was
stolen learns of it. A notice that cannot be sent (the mail server is down)
is logged and does not undo or refuse the change: it was authorised (password
and session), and refusing it would not tell the owner anything either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any

from services.auth.mail import MailError

if TYPE_CHECKING:
    from services.auth.state import AuthService, Caller

log = logging.getLogger(__name__)


class Notice(Enum):
    """(subject, what happened)."""

    TOTP_ON = (
        "an authenticator app was added to your account",
        "An authenticator app was added for two-step sign-in to your Parley account.",
    )
    TOTP_OFF = (
        "the authenticator app was removed from your account",
        "The authenticator app was removed from two-step sign-in to your Parley account.",
    )
    EMAIL_ON = (
        "sign-in codes by e-mail were turned on for your account",
        "Sign-in codes by e-mail were turned on for your Parley account.",
    )
    EMAIL_OFF = (
        "sign-in codes by e-mail were turned off for your account",
        "Sign-in codes by e-mail were turned off for your Parley account.",
    )
    RECOVERY_CODES = (
        "new recovery codes were made for your account",
        "New recovery codes were made for your Parley account; the old ones no longer work.",
    )
    PASSWORD_CHANGED = (
        "your password was changed",
        "The password of your Parley account was changed; your other sessions were signed out.",
    )
    PASSWORD_RESET = (
        "your password was reset",
        "The password of your Parley account was reset with a link sent to this address; "
        "every session was signed out.",
    )

    @property
    def subject(self) -> str:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]


async def notify(
    svc: AuthService, user: Mapping[str, Any], caller: Caller, notice: Notice, extra: str = ""
) -> None:
    """Mail ``notice`` to the owner of ``user`` (a failure is logged, not raised)."""
    when = svc.now().strftime("%Y-%m-%d %H:%M UTC")
    what = notice.text + (f" {extra}" if extra else "")
    try:
        await svc.mailer.security_notice(
            str(user["email"]), str(user["username"]), notice.subject, what, when, caller.ip
        )
    except MailError:
        log.warning(
            "security notice not sent", extra={"user_id": user["_id"], "notice": notice.name}
        )
