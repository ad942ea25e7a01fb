"""Rate limits and lockout, counted in Redis so that every auth process shares them.

Two kinds of rule, both fixed windows (``COUNT/SECONDS`` in AuthSettings):

- **request limits** (``hit``): every attempt counts, by client IP or by
  account; the one over the limit gets 429 ``rate_limited``.
- **failure lockouts** (``check_locked`` before the work, ``fail`` after a
  wrong password or code, ``clear`` on success): once an account has had
  COUNT failures in the window, every attempt is refused with 429
  ``account_locked`` until the window ends, even with the right password, so
  that guessing stops. They are keyed by what the client typed (the username)
  or by the account, never revealing whether an account exists: an unknown
  username locks exactly like a known one.

Both answer ``Retry-After`` (seconds) and ``details.retry_after``.
"""

from __future__ import annotations

from aiohttp import web

from services.auth.config import AuthSettings
from services.auth.store import AuthStore
from services.auth.tokens import digest
from services.common.errors import ApiError, ErrorCode


def client_ip(request: web.Request, trust_forwarded_for: bool) -> str:
    """The client address: the last X-Forwarded-For hop (added by our load
    balancer, the only one we trust), else the peer address."""
    if trust_forwarded_for:
        values = request.headers.getall("X-Forwarded-For", [])
        hops = [h.strip() for v in values for h in v.split(",") if h.strip()]
        if hops:
            return hops[-1][:64]
    return request.remote or "unknown"


def _retry_error(code: ErrorCode, message: str, retry_after: int) -> ApiError:
    retry_after = max(int(retry_after), 1)
    return ApiError(
        code,
        message,
        status=429,
        headers={"Retry-After": str(retry_after)},
        details={"retry_after": retry_after},
    )


class RateLimiter:
    def __init__(self, store: AuthStore, settings: AuthSettings) -> None:
        self.store = store
        self.settings = settings

    @staticmethod
    def ident(value: str) -> str:
        """Keys never hold an address, a username or an e-mail in clear."""
        return digest(value)[:32]

    async def hit(self, rule: str, value: str) -> None:
        limit = self.settings.limit(rule)
        count, ttl = await self.store.hit_window(rule, self.ident(value), limit.window_s)
        if count > limit.count:
            raise _retry_error(ErrorCode.RATE_LIMITED, "Too many requests; slow down.", ttl)

    async def check_locked(self, rule: str, value: str) -> None:
        limit = self.settings.limit(rule)
        count, ttl = await self.store.peek_window(rule, self.ident(value))
        if count >= limit.count:
            raise _retry_error(
                ErrorCode.ACCOUNT_LOCKED,
                "Too many failed attempts; try again later.",
                ttl or limit.window_s,
            )

    async def fail(self, rule: str, value: str) -> None:
        limit = self.settings.limit(rule)
        await self.store.hit_window(rule, self.ident(value), limit.window_s)

    async def clear(self, rule: str, value: str) -> None:
        await self.store.clear_window(rule, self.ident(value))
