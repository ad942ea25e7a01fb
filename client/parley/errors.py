"""Errors of the SDK.  Each carries a message fit to show to a user as it is."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "NotLoggedIn",
    "ParleyError",
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


class NotLoggedIn(ParleyError):
    """The local store has no session: log in first."""


class StoreError(ParleyError):
    """The local store cannot be opened or is damaged."""


class WrongPassphrase(StoreError):
    """The passphrase does not open the local store."""
