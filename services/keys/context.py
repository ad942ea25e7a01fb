"""What the key directory's handlers share, built once by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from services.keys.events import EventPublisher
from services.keys.policy import KeysPolicy
from services.keys.store import KeyStore


@dataclass(frozen=True, slots=True)
class Keys:
    store: KeyStore
    policy: KeysPolicy
    events: EventPublisher


KEYS: web.AppKey[Keys] = web.AppKey("keys", Keys)
