"""The account part of the client: sign-up, log-in (with a second factor), tokens.

Tokens live in the local store. :meth:`Account.access_token` refreshes the
access token inside a store transaction, so two processes on one store never
present the same refresh token twice (which the server treats as theft and
answers by ending the session).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from parley.api import Api
from parley.errors import ApiError, NotLoggedIn, ParleyError
from parley.events import ErrorEvent, EventBus
from parley.store import Store, Transaction

TOKEN_MARGIN_S = 120

StoreRef = Callable[[], Store]


@dataclass(frozen=True)
class SecondFactor:
    """A login challenge: answer with one of ``methods`` (``totp``, ``email``, ``recovery``)."""

    challenge_id: str
    methods: list[str]
    email_code_sent: bool


SecondFactorPrompt = Callable[[SecondFactor], Awaitable[tuple[str, str]]]


def jwt_exp(token: str) -> float:
    """The ``exp`` of a JWT, unverified (only to decide when to refresh; 0: none)."""
    return _jwt_claim(token, "exp")


def _jwt_claim(token: str, name: str) -> float:
    """A number claim of a JWT, unverified (0 when it has none)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims[name])
    except (IndexError, ValueError, KeyError, TypeError):
        return 0.0


def _linked_at(token: str) -> int:
    """When a device is set up, in the server's time (Unix ms): its first token's
    ``iat``, which is in whole seconds, refined within that second by this clock
    (never moved out of it: a clock that is off changes it by under a second)."""
    iat_ms = int(_jwt_claim(token, "iat") * 1000)
    if not iat_ms:
        return 0
    return min(max(int(time.time() * 1000), iat_ms), iat_ms + 999)


class Account:
    def __init__(self, server: str, api: Api, store: StoreRef, events: EventBus) -> None:
        self.server = server
        self.api = api
        self._store = store
        self.events = events
        self._refresh_lock = asyncio.Lock()
        self.user_id: str | None = None
        self.username: str | None = None

    def load(self) -> None:
        """Take the account from the store (after it is opened)."""
        account = self._store().read().get("account")
        if account:
            self.user_id = account["user_id"]
            self.username = account["username"]
            self.api.token = account.get("access_token")

    @property
    def logged_in(self) -> bool:
        account = self._store().read().get("account")
        return bool(account and account.get("refresh_token"))

    def require(self, tx: Transaction | None = None) -> dict[str, Any]:
        """The stored account, or :class:`NotLoggedIn`."""
        account = (tx or self._store().read()).get("account")
        if not account or not account.get("refresh_token"):
            raise NotLoggedIn("You are not logged in: run `parley login` first.")
        result: dict[str, Any] = account
        return result

    async def signup(
        self, username: str, password: str, email: str, device_id: int | None = None
    ) -> dict[str, Any]:
        result = await self.api.signup(username, email, password, device_id)
        await self._logged_in(result)
        return result

    async def login(
        self,
        username: str,
        password: str,
        *,
        second_factor: SecondFactorPrompt | None = None,
        device_id: int | None = None,
    ) -> dict[str, Any]:
        result = await self.api.login(username, password, "parley-cli", device_id)
        attempts = 0
        while result.get("second_factor_required"):
            if second_factor is None:
                raise ApiError(
                    "second_factor_required", "This account needs a second factor to log in."
                )
            challenge = SecondFactor(
                result["challenge_id"], list(result["methods"]), bool(result.get("email_code_sent"))
            )
            method, code = await second_factor(challenge)
            if method == "email" and not code:
                await self.api.send_email_code(challenge.challenge_id)
                result = {**result, "email_code_sent": True}
                continue
            try:
                result = await self.api.login_2fa(challenge.challenge_id, method, code)
            except ApiError as exc:
                attempts += 1
                if exc.code != "invalid_code" or attempts >= 5:
                    raise
                self.events.emit(ErrorEvent(exc.code, str(exc)))
                result["email_code_sent"] = False
        await self._logged_in(result)
        return result

    async def _logged_in(self, tokens: dict[str, Any]) -> None:
        user = tokens["user"]
        async with self._store().transaction() as tx:
            previous = tx.get("account")
            if previous and previous.get("user_id") != user["user_id"]:
                raise ParleyError(
                    f"This data directory belongs to {previous.get('username')!r}; "
                    "use another one for another account."
                )
            tx.put(
                "account",
                {
                    "user_id": user["user_id"],
                    "username": user["username"],
                    "server": self.server,
                    "access_token": tokens["access_token"],
                    "refresh_token": tokens["refresh_token"],
                    "session_id": tokens.get("session_id"),
                    # When this device was set up, in the server's time (its first
                    # token's): it reads rooms' logs from then (docs/client.md, "Rooms").
                    "linked_at": int(previous.get("linked_at") or 0)
                    if previous
                    else _linked_at(str(tokens["access_token"])),
                },
            )
        self.user_id = str(user["user_id"])
        self.username = str(user["username"])
        self.api.token = str(tokens["access_token"])

    async def access_token(self, force: bool = False) -> str:
        """A valid access token, refreshed if it expires within two minutes."""
        async with self._refresh_lock:
            current = self.api.token
            refused: ApiError | None = None
            async with self._store().transaction() as tx:
                account = self.require(tx)
                token = str(account["access_token"])
                fresh_elsewhere = token != current and current is not None
                if (fresh_elsewhere or not force) and jwt_exp(token) > time.time() + TOKEN_MARGIN_S:
                    self.api.token = token
                    return token
                try:
                    result = await self.api.refresh(account["refresh_token"])
                except ApiError as exc:
                    if exc.code not in ("token_revoked", "refresh_token_reused", "invalid_token"):
                        raise
                    # The session ended: its refresh token is forgotten for good. Raised
                    # once the transaction is committed (inside, it would roll back, and
                    # every later command would present the dead token again: the server
                    # answers refresh_token_reused and logs a theft that did not happen).
                    refused = exc
                    account["access_token"] = None
                    account["refresh_token"] = None
                    tx.put("account", account)
                else:
                    account["access_token"] = result["access_token"]
                    account["refresh_token"] = result["refresh_token"]
                    tx.put("account", account)
            if refused is not None:
                self.api.token = None
                raise NotLoggedIn(f"{refused} Run `parley login`.") from refused
            self.api.token = str(result["access_token"])
            return self.api.token

    async def logout(self) -> None:
        """End this session on the server and forget its tokens (keys and history stay)."""
        self.require()
        # A session the server ended already (its refresh is refused: NotLoggedIn) has
        # nothing left to end there: its tokens are forgotten here all the same.
        with contextlib.suppress(ApiError, NotLoggedIn):
            await self.access_token()
            await self.api.logout()
        async with self._store().transaction() as tx:
            account = tx.get("account")
            account["access_token"] = None
            account["refresh_token"] = None
            tx.put("account", account)
        self.api.token = None

    async def me(self) -> dict[str, Any]:
        await self.access_token()
        return await self.api.me()

    async def sessions(self) -> list[dict[str, Any]]:
        await self.access_token()
        return await self.api.sessions()
