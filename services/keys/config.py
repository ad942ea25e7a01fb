"""The key directory's own configuration: its limits, in one place (docs/keys.md, "Limits").

They are constants of the service rather than ``PARLEY_*`` options: clients
are written against them (batch size, refill threshold) and changing one is a
protocol decision. Tests and the benchmark pass their own :class:`KeysConfig`
to ``create_app(settings, config)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.ratelimit import Limit

# A full batch of 100 ML-KEM-768 prekeys is about 170 KB of JSON; the service
# accepts at least this much body whatever PARLEY_MAX_BODY_BYTES says.
MIN_BODY_BYTES = 256 * 1024
# Prekeys per upload request, as clients are told (models.py) and held to.
MAX_BATCH = 100
# Users per request of the bulk routes (docs/keys.md, "Many users at once"): a
# private room's first message claims every member's bundles and a send reads
# every member's device list; at a room's largest size (5,000 members) that is
# 50 claim requests and 5 list reads, not 5,000 of each.
MAX_CLAIM_USERS = 100
MAX_LIST_USERS = 1000


@dataclass(frozen=True, slots=True)
class KeysConfig:
    # Prekeys per upload request (one-time X25519 or one-time ML-KEM).
    max_batch: int = MAX_BATCH
    # Unclaimed one-time prekeys a device may hold, per kind.
    max_stored: int = 1000
    # Devices in an account's signed device list (docs/devices.md: Signal's number).
    max_devices: int = 6
    # Registered devices beyond that: pending devices waiting to be linked.
    max_pending: int = 2
    # A pending device registered this long ago is forgotten when the cap is reached.
    pending_ttl_s: int = 86400
    # A link code can be approved for this long.
    link_ttl_s: int = 600
    # New links per user (``COUNT/SECONDS``).
    link_limit: Limit = Limit(10, 3600)  # noqa: RUF009 (a frozen value)
    # Account resets (a new account key) per user: each one sends ``key_changed`` to
    # every contact (a new safety number to check), and a reset is for an owner who
    # lost every device, so a few a day is plenty.
    reset_limit: Limit = Limit(5, 86400)  # noqa: RUF009 (a frozen value)
    # Devices a user removes from its signed list (``PUT /v1/device-list`` dropping
    # them), counted per device: each removal is a revocation kept for a refresh token's
    # lifetime (30 days) in MongoDB and Redis, which every replica reads back at start-up
    # and hourly (services.common.revocations), an event and a broadcast. A user who
    # adds and drops devices in a loop made start-ups take minutes; a user removes a
    # handful of devices in a year. At least ``max_devices`` (one list may drop them all).
    removal_limit: Limit = Limit(30, 86400)  # noqa: RUF009 (a frozen value)
    # How often each replica checks that Redis still holds the device revocations.
    revocation_check_s: float = 30.0
    # How often each replica records the identity keys of devices registered since its
    # last pass (KeyStore.record_identity_keys: those an older replica registered
    # during a rolling upgrade), after one pass at start-up.
    identity_record_s: float = 3600.0
    # Below this many one-time prekeys of either kind, ``prekeys_low`` is published.
    low_threshold: int = 10
    # ... at most once per this many seconds per device, until it uploads more.
    low_notify_interval_s: int = 3600
    # Claims per (claimer, target): a token bucket of ``claim_burst`` tokens,
    # one token back every ``claim_refill_s`` seconds (36 per hour sustained).
    claim_burst: int = 6
    claim_refill_s: float = 100.0
    # Claims by one claimer of all other users together: 5,000 at once, then one
    # a second (3,600 an hour). A device's first message to a private room gives
    # its sender key to every other member over a new session, one claim per
    # member: the burst is a room's largest size (services/rooms/config.py
    # max_members). At 60, then one every 10 s, the first message to a room of
    # 1,000 waited 2.6 hours (loadtest/bench_web_room.py). Draining one user's
    # one-time prekeys is the per-target budget's job (one_time_*), not this one's.
    claimer_burst: int = 5000
    claimer_refill_s: float = 1.0
    # One-time prekeys a user hands out to others: 30, then one every 60 s
    # (60 an hour). Past it, claims still succeed, with the signed prekey and
    # the last-resort ML-KEM prekey only, so the stock cannot be drained.
    one_time_burst: int = 30
    one_time_refill_s: float = 60.0
    # Events not confirmed by Kafka are retried from the outbox this often.
    outbox_interval_s: float = 2.0
    # An outbox entry being sent is leased for this long before a retry.
    outbox_lease_s: float = 30.0
