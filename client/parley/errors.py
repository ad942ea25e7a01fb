"""Errors of the SDK.  Each carries a message fit to show to a user as it is."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "MessageTooLarge",
    "NotLoggedIn",
    "ParleyError",
    "SafetyNumberChanged",
    "ServerUnavailable",
    "StoreError",
    "UserNotFound",
    "WrongPassphrase",
]


class ParleyError(Exception):
    """Base class of the SDK's errors; ``str(exc)`` is a sentence for the user."""


class ServerUnavailable(ParleyError):
    """The server could not be reached or answered that it is unavailable."""


class ApiError(ParleyError):
    """The server refused a request; ``code`` is its stable error code (docs/*.md)."""

    def __init__(
        self, code: str, message: str, status: int = 0, details: Any = None, retry_after: float = 0
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.details = details
        self.retry_after = retry_after


class UserNotFound(ApiError):
    """No account has this username or id."""


class DeviceRemoved(ParleyError):
    """This install's device was removed from the account: it cannot sign in as it again
    (docs/client.md, "Devices")."""


class NotLoggedIn(ParleyError):
    """The local store has no session: log in first."""


class StoreError(ParleyError):
    """The local store cannot be opened or is damaged."""


class WrongPassphrase(StoreError):
    """The passphrase does not open the local store."""


class SafetyNumberChanged(ParleyError):
    """A contact's identity key changed and the user has not accepted the new one:
    nothing is sent to them until :meth:`parley.Client.accept_identity` or
    :meth:`parley.Client.verify` (docs/client.md, "Identity changes").

    ``verified`` says whether the user had verified the previous key (a
    user interface should then ask for a new comparison, not a "yes")."""

    def __init__(
        self,
        user_id: str,
        username: str,
        old_safety_number: str | None,
        new_safety_number: str,
        *,
        verified: bool,
    ) -> None:
        if verified:
            advice = (
                f"You had verified {username}; compare the new safety number with them "
                f"(parley verify {username}) or accept it (parley accept-identity {username})."
            )
        else:
            advice = (
                f"Confirm that you want to send to the new key (parley send "
                f"--accept-new-identity), or compare safety numbers first (parley verify "
                f"{username})."
            )
        super().__init__(
            f"{username}'s safety number changed: a reinstall, a new device, or someone in "
            f"the middle. Nothing was sent. {advice}"
        )
        self.user_id = user_id
        self.username = username
        self.old_safety_number = old_safety_number
        self.new_safety_number = new_safety_number
        self.verified = verified


class MessageTooLarge(ParleyError):
    """The encrypted message would not fit in one WebSocket frame of the server
    (``limit`` bytes, announced in ``ready``; 65,536 by default): nothing was sent
    or queued.  ``max_text_bytes`` estimates how much text would fit."""

    def __init__(self, size: int, limit: int, max_text_bytes: int) -> None:
        super().__init__(
            f"Message too long: encrypted for every device it goes to, it would be a "
            f"{size:,}-byte frame, and the server accepts at most {limit:,} bytes per frame "
            f"(here about {max(max_text_bytes, 0):,} bytes of text). Nothing was sent."
        )
        self.size = size
        self.limit = limit
        self.max_text_bytes = max_text_bytes


class NotSent(ParleyError):
    """Nothing was sent or queued (e.g. a private room's keys could not be handed out
    in time): sending again is safe."""
