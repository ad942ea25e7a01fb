"""Password and second-factor lockouts: per (account, client address), with an
account-wide back-off; and the request limit on asking for the password again.

Every password check (login, and the re-authentication that sensitive
changes ask for) first takes a place in two fixed windows in Redis, counted
atomically *before* argon2 runs (services.common.ratelimit
``RateLimiter.reserve``), so a burst of parallel guesses gets exactly the
limit tried:

- ``login_failures``, keyed by (account, client address): the address that
  used up ``PARLEY_LIMIT_LOGIN_FAILURES`` is refused for that account until
  the window ends; the owner, elsewhere, is not affected;
- ``login_account_failures``, keyed by the account: past
  ``PARLEY_LIMIT_LOGIN_ACCOUNT_FAILURES`` failures from all addresses (many
  addresses guessing), addresses the account has not fully signed in from
  within ``PARLEY_KNOWN_ADDRESS_TTL_S`` are refused too, while the owner's
  known addresses still get in (bounded by their own pair window).

Second-factor codes (at login and at enrolment) count the same way, by user
id: ``code_failures`` per (account, address) (``PARLEY_LIMIT_CODE_FAILURES``)
and ``code_account_failures`` per account (``PARLEY_LIMIT_CODE_ACCOUNT_FAILURES``),
which known addresses skip. Someone who has the password but not the second
factor locks only their own addresses out of code entry (and, past the
account-wide count, addresses the owner never signed in from): the owner's
known addresses still get in.

E-mailed codes (at login and at e-mail-code enrolment) are request limits
counted the same two ways: ``email_code_sends`` per (account, address)
(``PARLEY_LIMIT_EMAIL_CODE_SENDS``) and ``email_code_account_sends`` per account
(``PARLEY_LIMIT_EMAIL_CODE_ACCOUNT_SENDS``), which known addresses skip
(:func:`count_code_send`). They counted per account only: someone with the
password alone spent them in five logins, and the owner's login mailed no code
for an hour, again and again.

A right answer gives its places back; a wrong one keeps them (they are the
failure count). The account of a password check is the username as typed
(canonical form), whether it exists or not, so a lockout reveals nothing. An
IPv6 client counts by its /64 network (one subscriber's prefix: rotating
addresses inside it does not buy more guesses).

Asking a signed-in user for the password again (:func:`verify_password_again`)
is also a request limit per session of the account (``reauth_account``,
``PARLEY_LIMIT_REAUTH_ACCOUNT``) and per account (``reauth_user``,
``PARLEY_LIMIT_REAUTH_USER``), counted before anything else: the lockout
alone let a user who knows their own password run argon2 without end, holding
the hashing slots other users' logins wait for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.common.errors import ApiError, ErrorCode
from services.common.http import address_key

if TYPE_CHECKING:
    from services.auth.state import AuthService

PAIR_RULE = "login_failures"
ACCOUNT_RULE = "login_account_failures"
CODE_PAIR_RULE = "code_failures"
CODE_ACCOUNT_RULE = "code_account_failures"
REAUTH_RULE = "reauth_account"
REAUTH_USER_RULE = "reauth_user"
SEND_PAIR_RULE = "email_code_sends"
SEND_ACCOUNT_RULE = "email_code_account_sends"


@dataclass(frozen=True, slots=True)
class Places:
    """One attempt's places: in the (account, address) window, and in the account's
    unless the address is one the account fully signed in from (``known``)."""

    pair_rule: str
    account_rule: str
    account: str
    pair: str
    known: bool

    async def take(self, svc: AuthService) -> None:
        """Reserve both places before the check (429 ``account_locked`` if either is full)."""
        await svc.limiter.reserve(self.pair_rule, self.pair)
        if not self.known:
            try:
                await svc.limiter.reserve(self.account_rule, self.account)
            except ApiError:
                await svc.limiter.release(self.pair_rule, self.pair)
                raise

    async def give_back(self, svc: AuthService) -> None:
        """The attempt did not fail (nothing was checked, or it was right at enrolment)."""
        await svc.limiter.release(self.pair_rule, self.pair)
        if not self.known:
            await svc.limiter.release(self.account_rule, self.account)

    async def succeeded(self, svc: AuthService) -> None:
        """A right answer: this address's run of failures ends; elsewhere's stay counted."""
        await svc.limiter.clear(self.pair_rule, self.pair)
        if not self.known:
            await svc.limiter.release(self.account_rule, self.account)


async def _places(
    svc: AuthService, rules: tuple[str, str], account: str, user_id: str | None, ip: str
) -> Places:
    where = address_key(ip)
    known = user_id is not None and await svc.store.address_known(user_id, where)
    return Places(rules[0], rules[1], account, f"{account}|{where}", known)


async def verify_password(
    svc: AuthService, account: str, user: Mapping[str, Any] | None, password: str, ip: str
) -> None:
    """Check ``password`` for ``account`` (``user`` None: no such account) under the lockout.

    Raises 429 ``account_locked`` before any hashing when a window is full,
    else 401 ``invalid_credentials`` for a wrong password (or no account).
    """
    user_id = str(user["_id"]) if user is not None else None
    places = await _places(svc, (PAIR_RULE, ACCOUNT_RULE), account, user_id, ip)
    await places.take(svc)
    stored = str(user["password_hash"]) if user is not None else None
    if not await svc.passwords.verify(stored, password):
        svc.metrics.login_failures.labels("password").inc()
        raise ApiError(ErrorCode.INVALID_CREDENTIALS, "Wrong username or password.")
    await places.succeeded(svc)


async def verify_password_again(
    svc: AuthService, user: Mapping[str, Any], password: str, ip: str, session: str
) -> None:
    """The password of a signed-in user, asked again before a sensitive change.

    Every request counts in the ``reauth_account`` window of the account's session
    (``session``: the token's ``sid``) first, then in the account's ``reauth_user``
    window (429 ``rate_limited`` past either, right password or not, before any
    hashing), then :func:`verify_password` under the login lockout. Per session
    first: a stolen session (no password) that used up an account-wide window kept
    the owner from changing the password or the second factor, a window at a time;
    refused by its own window, it reaches the account's with at most its ``10``. And
    per account with a larger budget: per session alone, each login bought another
    window, and one person with the password held the hashing slots (~1,000 checks
    per 15 minutes from one address).
    """
    await svc.limiter.hit(REAUTH_RULE, f"{user['_id']}|{session}")
    await svc.limiter.hit(REAUTH_USER_RULE, str(user["_id"]))
    await verify_password(svc, str(user["username"]), user, password, ip)


async def reserve_code(svc: AuthService, user_id: str, ip: str) -> Places:
    """Take a second-factor attempt's places before the code is compared (429
    ``account_locked`` when full); the caller gives them back or keeps them."""
    places = await _places(svc, (CODE_PAIR_RULE, CODE_ACCOUNT_RULE), user_id, user_id, ip)
    await places.take(svc)
    return places


async def _send_windows(svc: AuthService, user_id: str, ip: str) -> tuple[str, bool]:
    """The (account, address) ident of a code send, and whether the address is known."""
    where = address_key(ip)
    return f"{user_id}|{where}", await svc.store.address_known(user_id, where)


async def check_code_send(svc: AuthService, user_id: str, ip: str) -> None:
    """429 ``rate_limited`` if no code could be mailed to ``user_id`` for this address,
    counting nothing (a request refused before work that costs more)."""
    pair, known = await _send_windows(svc, user_id, ip)
    await svc.limiter.check(SEND_PAIR_RULE, pair)
    if not known:
        await svc.limiter.check(SEND_ACCOUNT_RULE, user_id)


async def count_code_send(svc: AuthService, user_id: str, ip: str) -> None:
    """Count one e-mailed code: in the (account, address) window, and in the account's
    unless the address is one the account fully signed in from; both or neither (429
    ``rate_limited``: nothing counted)."""
    pair, known = await _send_windows(svc, user_id, ip)
    await svc.limiter.take_places(SEND_PAIR_RULE, pair, 1)
    if not known:
        try:
            await svc.limiter.take_places(SEND_ACCOUNT_RULE, user_id, 1)
        except ApiError:
            await svc.limiter.release(SEND_PAIR_RULE, pair)
            raise


async def signed_in(svc: AuthService, user_id: str, ip: str) -> None:
    """Remember an address the user fully signed in from (password and second factor)."""
    await svc.store.remember_address(user_id, address_key(ip), svc.config.known_address_ttl_s)


async def forget(svc: AuthService, account: str, ip: str) -> None:
    """A password reset: the account-wide failures, and this address's, no longer count."""
    await svc.limiter.clear(ACCOUNT_RULE, account)
    await svc.limiter.clear(PAIR_RULE, f"{account}|{address_key(ip)}")
