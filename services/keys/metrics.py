"""The key directory's own metrics (beside the HTTP metrics every service has).

- ``parley_keys_bundles_claimed_total{one_time,kem}``: bundles handed out,
  by whether they carried a one-time X25519 prekey (``yes``/``no``) and which
  ML-KEM prekey (``one_time``/``last_resort``). A rising share of ``no`` and
  ``last_resort`` means devices run out of prekeys: their clients do not
  refill (the ``ParleyPrekeysExhausted`` alert).
- ``parley_keys_prekey_stock{kind}``: a histogram of the one-time stock a
  device has left right after a claim (``one_time``: X25519, ``kem``:
  ML-KEM), observed at claim time from the estimates the claim reads anyway
  (exact counts when they say "low"); no scan, no periodic count.
- ``parley_keys_prekeys_low_total``: ``prekeys_low`` events published.
- ``parley_keys_one_time_withheld_total``: claims served without one-time
  prekeys because the target's one-time budget was spent (someone claims
  that user's bundles unusually often; not counted in ``bundles_claimed``).
- the limiter's ``parley_rate_limit_refusals_total{service="keys",rule,code}``
  (``claims``: per pair, ``claims-by``: per claimer, ``links``: new links per user,
  ``resets``: account resets per user, ``removals``: devices removed from a list per
  user).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.ratelimit import RateLimitMetrics

STOCK_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)


class KeysMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.limits = RateLimitMetrics(
            registry, "keys", ("claims", "claims-by", "links", "resets", "removals")
        )
        self.withheld = Counter(
            "parley_keys_one_time_withheld_total",
            "Claims served without one-time prekeys: the target's one-time budget was spent.",
            registry=registry,
        )
        self.claimed = Counter(
            "parley_keys_bundles_claimed_total",
            "Prekey bundles handed out, by one-time X25519 prekey (yes/no) and ML-KEM prekey.",
            ["one_time", "kem"], registry=registry,
        )  # fmt: skip
        self.stock = Histogram(
            "parley_keys_prekey_stock",
            "One-time prekeys a device has left after a claim, by kind.",
            ["kind"], buckets=STOCK_BUCKETS, registry=registry,
        )  # fmt: skip
        self.low = Counter(
            "parley_keys_prekeys_low_total", "prekeys_low events published.", registry=registry
        )
        for one_time in ("yes", "no"):
            for kem in ("one_time", "last_resort"):
                self.claimed.labels(one_time, kem)
        for kind in ("one_time", "kem"):
            self.stock.labels(kind)

    def claim(self, one_time: bool, kem: bool) -> None:
        self.claimed.labels("yes" if one_time else "no", "one_time" if kem else "last_resort").inc()

    def observe_stock(self, one_time: int, kem: int) -> None:
        self.stock.labels("one_time").observe(max(one_time, 0))
        self.stock.labels("kem").observe(max(kem, 0))
