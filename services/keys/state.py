"""The key directory's shared object and its app key, built once by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from services.common.audit import AuditLog
from services.common.ratelimit import RateLimiter
from services.keys.config import KeysConfig
from services.keys.events import EventPublisher
from services.keys.metrics import KeysMetrics
from services.keys.store import KeyStore


@dataclass(frozen=True, slots=True)
class Keys:
    store: KeyStore
    config: KeysConfig
    events: EventPublisher
    # The claim limits, and the link, reset and removal limits per user:
    # keys <redis_prefix>:keys:rl:<claims|claims-by|one-time|links|resets|removals>:<hash>.
    limiter: RateLimiter
    metrics: KeysMetrics
    # The shared audit log (services/common/audit.py): an admin's removal of a device.
    audit: AuditLog


KEYS: web.AppKey[Keys] = web.AppKey("keys", Keys)
