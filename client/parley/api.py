"""HTTP calls to the auth and key services (through the load balancer).

Thin: one method per route, JSON in and out, errors turned into
:class:`~parley.errors.ApiError` (with the server's stable ``code``) or
:class:`~parley.errors.ServerUnavailable`.  Token refresh is the caller's
business: give :class:`Api` an ``on_expired`` callback and a request that
fails with ``token_expired`` is retried once with the token it returns.
"""

from __future__ import annotations

import json as jsonlib
import math
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from parley.errors import ApiError, ParleyError, ServerUnavailable, UserNotFound

__all__ = ["DEFAULT_SERVER", "Api", "check_server", "friendly"]

DEFAULT_SERVER = "http://127.0.0.1:8080"
_URL_EXAMPLE = "such as http://127.0.0.1:8080 or https://chat.example.org"


def check_server(server: str) -> str:
    """``server`` as a base URL (without a trailing ``/``), or a :class:`ParleyError`
    that says what is wrong with it: an ``http`` or ``https`` URL with a host and, if
    any, a port from 1 to 65535 (else the first request failed with a traceback)."""
    try:
        parts = urlsplit(server)
        port = parts.port  # a ValueError for a port out of range
    except ValueError as exc:
        raise ParleyError(
            f"{server!r} is not a server URL ({exc}); give one {_URL_EXAMPLE}."
        ) from None
    if port == 0:
        raise ParleyError(f"{server!r} is not a server URL (port 0); give one {_URL_EXAMPLE}.")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ParleyError(
            f"{server!r} is not a server URL: give one that starts with http:// or https:// "
            f"and names a host, {_URL_EXAMPLE}."
        )
    if any(c.isspace() for c in server) or parts.query or parts.fragment:
        raise ParleyError(
            f"{server!r} is not a server URL (no spaces, ? or #); give one {_URL_EXAMPLE}."
        )
    return server.rstrip("/")


# Messages for codes a user meets often, clearer than a generic one. Not for a code whose
# message depends on where it comes from: ``user_not_found`` is "No user named 'x'." from
# the auth look-up (Api.user), but the rooms service's own ("That user is not a member of
# this room.", "... not banned ...") otherwise.
_FRIENDLY = {
    "invalid_credentials": "Wrong username or password.",
    "account_locked": "Too many failed attempts: this account is locked for a while.",
    "account_blocked": "This account is blocked.",
    "token_revoked": "Your session has ended (logged out elsewhere?): log in again.",
    "refresh_token_reused": "Your session was ended for safety (its token was used twice): "
    "log in again.",
    "invalid_code": "Wrong code.",
    "challenge_expired": "The login took too long: start again.",
    "identity_not_found": "This user has not set up encryption keys yet "
    "(they must log in with a Parley client once).",
    "prekeys_exhausted": "This user's device has no keys left to start a conversation.",
    "cannot_target_self": "You cannot do that to yourself (to leave a room, leave it).",
    "room_not_found": "No such room (or it is private and you are not in it).",
    "not_a_member": "You are not a member of this room.",
}


def friendly(code: str, message: str, details: Any = None) -> str:
    """The message to show: ours for some codes, else the server's, followed by the
    fields a validation error names (``details``: ``[{"field", "problem"}]``, see
    docs/protocol.md "Errors"), so that the user learns which field and why."""
    text = _FRIENDLY.get(code, message)
    fields = [
        f"{_FIELD_NAMES.get(str(d['field']), str(d['field']))}: {d['problem']}"
        for d in details or ()
        if isinstance(d, dict) and d.get("field") and d.get("problem")
    ] if isinstance(details, list) else []  # fmt: skip
    if fields:
        text = f"{text.rstrip('.')} ({'; '.join(fields)})."
    return text


_FIELD_NAMES = {"email": "e-mail address", "username": "username", "password": "password"}


def retry_after_s(value: str | None) -> float:
    """A ``Retry-After`` header in seconds: a number of seconds, or an HTTP date (seconds
    from now); anything else, or none, is 0. (Parsed as a float alone, a date or a word
    raised a ``ValueError`` that no caller expects: the connection's loop died and
    never reconnected.)"""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


class Api:
    """HTTP client of one Parley server (base URL, e.g. the load balancer)."""

    def __init__(self, server: str = DEFAULT_SERVER, *, timeout: float = 20.0) -> None:
        self.server = server.rstrip("/")
        self.token: str | None = None
        self.on_expired: Callable[[], Awaitable[str]] | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=5)
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        auth: bool = True,
        token: str | None = None,
        retry: bool = True,
    ) -> Any:
        headers = {}
        bearer = token or (self.token if auth else None)
        if auth and bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        url = self.server + path
        try:
            async with self.http.request(method, url, json=json, headers=headers) as resp:
                status = resp.status
                retry_after = retry_after_s(resp.headers.get("Retry-After"))
                text = await resp.text()
        except aiohttp.RedirectClientError as exc:  # to a URL that is not http(s)
            raise ApiError(
                "http_error", f"The server at {self.server} redirected to a URL it cannot follow."
            ) from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:  # check_server
            raise ParleyError(
                f"{self.server!r} is not a server URL; give one {_URL_EXAMPLE}."
            ) from exc
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise ServerUnavailable(
                f"Cannot reach the Parley server at {self.server} ({type(exc).__name__}). "
                "Is it running?"
            ) from exc
        except aiohttp.ClientError as exc:  # no HTTP there ("Bad status line": SSH, SMTP)
            raise ServerUnavailable(
                f"Cannot reach the Parley server at {self.server}: what answers there does "
                f"not speak HTTP ({type(exc).__name__}). Is this the server's address?"
            ) from exc
        body: Any = None
        if text:
            try:
                body = jsonlib.loads(text)
            except ValueError:
                body = None
        if status < 400:
            return body
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            if status in (502, 503, 504):
                raise ServerUnavailable(
                    f"The Parley server at {self.server} is unavailable (HTTP {status}); "
                    "try again shortly."
                )
            raise ApiError(
                "http_error", f"Unexpected answer from the server (HTTP {status}).", status
            )
        code = str(err.get("code", "error"))
        message = friendly(code, str(err.get("message", code)), err.get("details"))
        if code == "token_expired" and auth and retry and self.on_expired is not None:
            fresh = await self.on_expired()
            return await self.request(method, path, json=json, token=fresh, retry=False)
        if code == "service_unavailable":
            raise ServerUnavailable(f"The server is unavailable: {message}")
        cls = UserNotFound if code == "user_not_found" else ApiError
        raise cls(code, message, status, err.get("details"), retry_after)

    # -- auth -------------------------------------------------------------------
    async def signup(
        self, username: str, email: str, password: str, device_id: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"username": username, "email": email, "password": password}
        if device_id is not None:
            body["device_id"] = device_id
        result: dict[str, Any] = await self.request(
            "POST", "/auth/v1/signup", json=body, auth=False
        )
        return result

    async def login(
        self, username: str, password: str, device: str | None, device_id: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"username": username, "password": password}
        if device:
            body["device"] = device
        if device_id is not None:
            body["device_id"] = device_id
        result: dict[str, Any] = await self.request("POST", "/auth/v1/login", json=body, auth=False)
        return result

    async def login_2fa(self, challenge_id: str, method: str, code: str) -> dict[str, Any]:
        body = {"challenge_id": challenge_id, "method": method, "code": code}
        result: dict[str, Any] = await self.request(
            "POST", "/auth/v1/login/2fa", json=body, auth=False
        )
        return result

    async def send_email_code(self, challenge_id: str) -> None:
        await self.request(
            "POST", "/auth/v1/login/2fa/email", json={"challenge_id": challenge_id}, auth=False
        )

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "POST", "/auth/v1/token/refresh", json={"refresh_token": refresh_token}, auth=False
        )
        return result

    async def logout(self) -> None:
        await self.request("POST", "/auth/v1/logout")

    async def me(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/auth/v1/me")
        return result

    async def user(self, username_or_id: str) -> dict[str, Any]:
        if not username_or_id or "/" in username_or_id:
            raise UserNotFound("user_not_found", f"No user named {username_or_id!r}.", 404)
        try:
            result: dict[str, Any] = await self.request(
                "GET", f"/auth/v1/users/{quote(username_or_id.lower(), safe='')}"
            )
        except UserNotFound as exc:
            raise UserNotFound(exc.code, f"No user named {username_or_id!r}.", exc.status) from None
        return result

    async def sessions(self) -> list[dict[str, Any]]:
        result = await self.request("GET", "/auth/v1/sessions")
        sessions: list[dict[str, Any]] = result["sessions"]
        return sessions

    async def revoke_session(self, session_id: str) -> None:
        await self.request("DELETE", f"/auth/v1/sessions/{quote(session_id, safe='')}")

    # -- keys -------------------------------------------------------------------
    async def put_identity(self, device_id: int, identity: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PUT", f"/keys/v1/devices/{device_id}/identity", json=identity
        )
        return result

    async def put_signed_prekey(self, device_id: int, prekey: dict[str, Any]) -> None:
        await self.request("PUT", f"/keys/v1/devices/{device_id}/signed-prekey", json=prekey)

    async def put_last_resort(self, device_id: int, prekey: dict[str, Any]) -> None:
        await self.request("PUT", f"/keys/v1/devices/{device_id}/kem-last-resort", json=prekey)

    async def upload_one_time(self, device_id: int, prekeys: list[dict[str, Any]]) -> Any:
        return await self.request(
            "POST", f"/keys/v1/devices/{device_id}/one-time-prekeys", json={"prekeys": prekeys}
        )

    async def upload_kem(self, device_id: int, prekeys: list[dict[str, Any]]) -> Any:
        return await self.request(
            "POST", f"/keys/v1/devices/{device_id}/kem-prekeys", json={"prekeys": prekeys}
        )

    async def counts(self, device_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/keys/v1/devices/{device_id}/counts")
        return result

    async def delete_device(self, device_id: int) -> None:
        await self.request("DELETE", f"/keys/v1/devices/{device_id}")

    async def check_keys(self, device_id: int, digest: str) -> bool:
        result = await self.request(
            "POST", f"/keys/v1/devices/{device_id}/check", json={"digest": digest}
        )
        return bool(result["match"])

    async def claim_bundles(
        self, user_id: str, device_ids: list[int] | None = None
    ) -> dict[str, Any]:
        """Claim bundles of a user's devices (all listed ones, or these): the answer
        carries the signed device list too."""
        query = f"?device_id={','.join(map(str, device_ids))}" if device_ids else ""
        result: dict[str, Any] = await self.request(
            "GET", f"/keys/v1/users/{quote(user_id, safe='')}/bundles{query}"
        )
        return result

    async def claim_many(self, users: dict[str, list[int] | None]) -> dict[str, Any]:
        """Claim bundles of many users at once (at most 100; per user all listed
        devices, or these): ``{"claimed": [as claim_bundles answers], "failed": [...]}``."""
        body = {"users": {u: {} if d is None else {"device_ids": d} for u, d in users.items()}}
        result: dict[str, Any] = await self.request("POST", "/keys/v1/users/bundles", json=body)
        return result

    async def device_lists(self, user_ids: list[str]) -> dict[str, Any]:
        """Many users' signed device lists (at most 1,000): ``{"lists": [{"user_id",
        "account_key", "device_list", "signature"}], "missing": [user ids]}``."""
        result: dict[str, Any] = await self.request(
            "POST", "/keys/v1/users/device-lists", json={"user_ids": user_ids}
        )
        return result

    # -- devices (docs/devices.md) -------------------------------------------------
    async def user_devices(self, user_id: str) -> dict[str, Any]:
        """A user's signed device list: ``{"account_key", "device_list", "signature", ...}``."""
        result: dict[str, Any] = await self.request(
            "GET", f"/keys/v1/users/{quote(user_id, safe='')}/devices"
        )
        return result

    async def put_account(self, account_key: str, signed: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PUT", "/keys/v1/account", json={"account_key": account_key, **signed}
        )
        return result

    async def put_device_list(self, signed: dict[str, Any]) -> None:
        await self.request("PUT", "/keys/v1/device-list", json=signed)

    async def create_link(
        self, link_id: str, device_id: int, name: str, e_pub: str | None = None
    ) -> None:
        body: dict[str, Any] = {"link_id": link_id, "device_id": device_id, "name": name}
        if e_pub is not None:
            body["e_pub"] = e_pub  # the code's key, for the approver's typo check
        await self.request("POST", "/keys/v1/links", json=body)

    async def get_link(self, link_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "GET", f"/keys/v1/links/{quote(link_id, safe='')}"
        )
        return result

    async def cancel_link(self, link_id: str) -> None:
        await self.request("DELETE", f"/keys/v1/links/{quote(link_id, safe='')}")

    async def approve_link(self, link_id: str, sealed: str) -> None:
        await self.request(
            "PUT", f"/keys/v1/links/{quote(link_id, safe='')}/approval", json={"sealed": sealed}
        )

    async def identities(self, user_id: str) -> list[dict[str, Any]]:
        result = await self.request("GET", f"/keys/v1/users/{quote(user_id, safe='')}/identity")
        devices: list[dict[str, Any]] = result["devices"]
        return devices

    # -- rooms (docs/rooms.md) -------------------------------------------------------
    async def create_room(self, name: str, kind: str, topic: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "kind": kind}
        if topic:
            body["topic"] = topic
        result: dict[str, Any] = await self.request("POST", "/rooms/v1/rooms", json=body)
        return result

    async def rooms(self, before: Any = None, limit: int = 200) -> dict[str, Any]:
        query = f"?limit={limit}" + (f"&before={quote(str(before))}" if before is not None else "")
        result: dict[str, Any] = await self.request("GET", f"/rooms/v1/rooms{query}")
        return result

    async def room(self, room_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/rooms/v1/rooms/{_room(room_id)}")
        return result

    async def directory(self, q: str = "", after: Any = None, limit: int = 50) -> dict[str, Any]:
        query = f"?limit={limit}" + (f"&q={quote(q)}" if q else "")
        if after is not None:
            query += f"&after={quote(str(after))}"
        result: dict[str, Any] = await self.request("GET", f"/rooms/v1/directory{query}")
        return result

    async def update_room(self, room_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH", f"/rooms/v1/rooms/{_room(room_id)}", json=fields
        )
        return result

    async def join_room(self, room_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "POST", f"/rooms/v1/rooms/{_room(room_id)}/join"
        )
        return result

    async def leave_room(self, room_id: str) -> None:
        await self.request("POST", f"/rooms/v1/rooms/{_room(room_id)}/leave")

    async def room_members(self, room_id: str, after: Any = None) -> dict[str, Any]:
        query = "?limit=500" + (f"&after={quote(str(after))}" if after is not None else "")
        result: dict[str, Any] = await self.request(
            "GET", f"/rooms/v1/rooms/{_room(room_id)}/members{query}"
        )
        return result

    async def remove_member(self, room_id: str, user_id: str) -> None:
        await self.request(
            "DELETE", f"/rooms/v1/rooms/{_room(room_id)}/members/{quote(user_id, safe='')}"
        )

    async def ban(self, room_id: str, user_id: str, ban: bool = True) -> dict[str, Any] | None:
        """Ban ``user_id`` from the room (the ban), or lift the ban (None)."""
        result: dict[str, Any] | None = await self.request(
            "PUT" if ban else "DELETE",
            f"/rooms/v1/rooms/{_room(room_id)}/bans/{quote(user_id, safe='')}",
        )
        return result

    async def bans(self, room_id: str, after: str | None = None) -> dict[str, Any]:
        query = "?limit=500" + (f"&after={quote(after, safe='')}" if after else "")
        result: dict[str, Any] = await self.request(
            "GET", f"/rooms/v1/rooms/{_room(room_id)}/bans{query}"
        )
        return result

    async def set_moderator(self, room_id: str, user_id: str, moderator: bool) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PUT" if moderator else "DELETE",
            f"/rooms/v1/rooms/{_room(room_id)}/moderators/{quote(user_id, safe='')}",
        )
        return result

    async def hand_over(self, room_id: str, user_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PUT", f"/rooms/v1/rooms/{_room(room_id)}/owner", json={"user_id": user_id}
        )
        return result

    async def invite(self, room_id: str, user: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "POST", f"/rooms/v1/rooms/{_room(room_id)}/invitations", json={"user": user}
        )
        return result

    async def accept_invitation(self, room_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "POST", f"/rooms/v1/rooms/{_room(room_id)}/invitation/accept"
        )
        return result

    async def decline_invitation(self, room_id: str) -> None:
        await self.request("POST", f"/rooms/v1/rooms/{_room(room_id)}/invitation/decline")

    async def invitations(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/rooms/v1/invitations?limit=200")
        return result

    async def post_room_message(self, room_id: str, client_id: str, text: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "POST", f"/rooms/v1/rooms/{_room(room_id)}/messages",
            json={"client_id": client_id, "text": text},
        )  # fmt: skip
        return result

    async def room_log(
        self, room_id: str, after: int, since: int = 0, limit: int = 200
    ) -> dict[str, Any]:
        """A page of a private room's log (``{"room", "messages", "next", "more"}``)."""
        query = f"?after={after}&since={since}&limit={limit}"
        result: dict[str, Any] = await self.request(
            "GET", f"/delivery/v1/rooms/{_room(room_id)}/log{query}"
        )
        return result

    async def room_logs(
        self, cursors: dict[str, int], since: int = 0, limit: int = 50
    ) -> dict[str, Any]:
        """A page of each of several private rooms' logs (at most 100 rooms; ``cursors``:
        room id -> the number to read after): ``{"pages": [...], "refused": [room id]}``."""
        body = {
            "rooms": [{"room": _room(r), "after": after} for r, after in cursors.items()],
            "since": since, "limit": limit,
        }  # fmt: skip
        result: dict[str, Any] = await self.request("POST", "/delivery/v1/rooms/logs", json=body)
        return result

    async def room_messages(
        self, room_id: str, before: int | None = None, limit: int = 50
    ) -> dict[str, Any]:
        query = f"?limit={limit}" + (f"&before={before}" if before is not None else "")
        result: dict[str, Any] = await self.request(
            "GET", f"/rooms/v1/rooms/{_room(room_id)}/messages{query}"
        )
        return result

    async def notifications(self, before: int | None = None, limit: int = 50) -> dict[str, Any]:
        query = f"?limit={limit}" + (f"&before={before}" if before is not None else "")
        result: dict[str, Any] = await self.request("GET", f"/rooms/v1/notifications{query}")
        return result

    async def read_notifications(self, up_to: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "POST", "/rooms/v1/notifications/read", json={"up_to": up_to}
        )
        return result


def _room(room_id: str) -> str:
    return quote(room_id, safe="")
