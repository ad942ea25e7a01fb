"""Password lockout: per (account, client address), with an account-wide back-off.

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

A right password gives its places back; a wrong one keeps them (they are the
failure count). The account is the username as typed (canonical form),
whether it exists or not, so a lockout reveals nothing. An IPv6 client counts
by its /64 network (one subscriber's prefix: rotating addresses inside it
does not buy more guesses).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from services.common.errors import ApiError, ErrorCode
from services.common.http import address_key

if TYPE_CHECKING:
    from services.auth.state import AuthService

PAIR_RULE = "login_failures"
ACCOUNT_RULE = "login_account_failures"


async def verify_password(
    svc: AuthService, account: str, user: Mapping[str, Any] | None, password: str, ip: str
) -> None:
    """Check ``password`` for ``account`` (``user`` None: no such account) under the lockout.

    Raises 429 ``account_locked`` before any hashing when a window is full,
    else 401 ``invalid_credentials`` for a wrong password (or no account).
    """
    where = address_key(ip)
    pair = f"{account}|{where}"
    known = user is not None and await svc.store.address_known(str(user["_id"]), where)
    await svc.limiter.reserve(PAIR_RULE, pair)
    if not known:
        try:
            await svc.limiter.reserve(ACCOUNT_RULE, account)
        except ApiError:
            await svc.limiter.release(PAIR_RULE, pair)
            raise
    stored = str(user["password_hash"]) if user is not None else None
    if not await svc.passwords.verify(stored, password):
        svc.metrics.login_failures.labels("password").inc()
        raise ApiError(ErrorCode.INVALID_CREDENTIALS, "Wrong username or password.")
    # The right password: a run of failures from here ends; elsewhere's stay counted.
    await svc.limiter.clear(PAIR_RULE, pair)
    if not known:
        await svc.limiter.release(ACCOUNT_RULE, account)


async def signed_in(svc: AuthService, user_id: str, ip: str) -> None:
    """Remember an address the user fully signed in from (password and second factor)."""
    await svc.store.remember_address(user_id, address_key(ip), svc.config.known_address_ttl_s)


async def forget(svc: AuthService, account: str, ip: str) -> None:
    """A password reset: the account-wide failures, and this address's, no longer count."""
    await svc.limiter.clear(ACCOUNT_RULE, account)
    await svc.limiter.clear(PAIR_RULE, f"{account}|{address_key(ip)}")
