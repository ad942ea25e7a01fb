"""Security notices: the owner is mailed about every change to how the account signs in.

A second factor turned on or off, new recovery codes, a password changed or
reset: each is mailed to the account's address as it happens, with the time
and the client address it came from, so that an owner whose session was
stolen learns of it. An administrator's change of the account's username or
e-mail address is mailed to the address the account had, saying that an
administrator made it (and not naming the new address). A notice that cannot
be sent (the mail server is down) is logged and does not undo or refuse the
change: it was authorised (password and session), and refusing it would not
tell the owner anything either.

At most ``PARLEY_LIMIT_SECURITY_NOTICES`` notices (5 an hour) are mailed per
account. The next one is still mailed, saying that further notices are held
until the window ends; past it, none are (each logged). The account's
address is not verified: without a cap, anyone could sign up with
someone else's address and mail it a notice per request (new recovery codes,
the same password "changed" again).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from services.auth.mail import MailError

if TYPE_CHECKING:
    from services.auth.state import AuthService, Caller

log = logging.getLogger(__name__)

NOTICE_RULE = "security_notices"


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
    # What changed follows (``extra``): admin.edit_user.
    CHANGED_BY_ADMIN = (
        "an administrator changed how your account signs in",
        "An administrator changed your Parley account.",
    )

    @property
    def subject(self) -> str:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]


async def notify(
    svc: AuthService,
    user: Mapping[str, Any],
    caller: Caller,
    notice: Notice,
    extra: str = "",
    *,
    by_admin: bool = False,
) -> None:
    """Mail ``notice`` to the owner of ``user`` (a failure is logged, not raised), unless
    the account's notices are over their cap. ``user`` as it was: an address change is
    mailed to the old address. ``by_admin``: an administrator made the change (the mail
    says so, and not from which address)."""
    now = svc.now()
    when = now.strftime("%Y-%m-%d %H:%M UTC")
    what = notice.text + (f" {extra}" if extra else "")
    held_for = await _over_cap(svc, str(user["_id"]))
    if held_for == 0:
        log.info("security notice held", extra={"user_id": user["_id"], "notice": notice.name})
        return
    if held_for is not None:
        until = (now + timedelta(seconds=held_for)).strftime("%Y-%m-%d %H:%M UTC")
        what += (
            "\n\nThis is the last notice until "
            f"{until}: more changes to how your account signs in were made than are mailed "
            "in a short time, and the next ones until then will not be mailed. Check your "
            "sessions and sign-in settings."
        )
    try:
        await svc.mailer.security_notice(
            str(user["email"]), str(user["username"]), notice.subject, what, when, caller.ip,
            by_admin=by_admin,
        )  # fmt: skip
    except MailError:
        log.warning(
            "security notice not sent", extra={"user_id": user["_id"], "notice": notice.name}
        )


async def _over_cap(svc: AuthService, user_id: str) -> int | None:
    """None: under the cap, mail as usual. Else the seconds until the cap's window
    ends, for the first notice past it (it says so), or 0 for the next ones (held)."""
    limit = svc.limiter.limits(NOTICE_RULE)
    try:
        count, left = await svc.limiter.count(NOTICE_RULE, user_id, limit)
    except RedisError:
        # The notice matters more than the cap: mail it (the change was made).
        log.warning("security notice cap not counted", extra={"user_id": user_id})
        return None
    if count <= limit.count:
        return None
    svc.limiter.refused(NOTICE_RULE)  # parley_rate_limit_refusals_total, as every limit
    return left if count == limit.count + 1 else 0
