"""Parley client SDK: protocol crypto, API and WebSocket client, CLI.

``parley.Client`` is the entry point (see docs/client.md); ``parley.crypto``
is the end-to-end encryption library it builds on.
"""

from parley.client import Client
from parley.errors import (
    ApiError,
    DeviceRemoved,
    MessageTooLarge,
    NotLoggedIn,
    NotSent,
    ParleyError,
    SafetyNumberChanged,
    ServerUnavailable,
    StoreError,
    UserNotFound,
    WrongPassphrase,
)

__all__ = [
    "ApiError",
    "Client",
    "DeviceRemoved",
    "MessageTooLarge",
    "NotLoggedIn",
    "NotSent",
    "ParleyError",
    "SafetyNumberChanged",
    "ServerUnavailable",
    "StoreError",
    "UserNotFound",
    "WrongPassphrase",
]
