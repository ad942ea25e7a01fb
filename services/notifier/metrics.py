"""The notifier's metrics (beside the HTTP and process metrics every service has).

- ``parley_notifier_notices_total{result}``: mention notices consumed:
  ``queued`` (the user had no connected device: kept for a digest),
  ``online`` (a device was connected: the ``notification`` frame told it),
  ``duplicate`` (a redelivered notice), ``malformed`` (skipped).
- ``parley_notifier_digests_total{result}``: digests ``sent``; dropped because
  the user ``unsubscribed`` or is ``gone`` (deleted or blocked), is ``online`` (a
  device connected when the digest was due: the in-app list holds the mentions),
  every mention's message was ``removed`` since (by a moderator, or deleted by its author), its
  address ``refused`` for good (a 5xx answer to ``RCPT``), the message
  ``rejected`` for good (a 5xx answer at ``DATA`` while the server takes other
  mail), or ``abandoned`` (not sent after the last attempt); attempts that
  ``failed`` (the SMTP server was unreachable, answered 4xx, or 5xx at ``MAIL``)
  or raised an ``error``: tried again later.
- ``parley_notifier_mentions_emailed_total``: mentions listed in sent digests.
- ``parley_kafka_consumer_lag{group="<prefix>notifier",...}`` (services/common/consumer_lag.py).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

NOTICE_RESULTS = ("queued", "online", "duplicate", "malformed")
DIGEST_RESULTS = (
    "sent", "unsubscribed", "gone", "online", "removed", "refused", "rejected", "failed", "error",
    "abandoned",
)  # fmt: skip


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.notices = Counter(
            "parley_notifier_notices_total",
            "Mention notices consumed, by result (queued, online, duplicate, malformed).",
            ["result"], registry=registry,
        )  # fmt: skip
        self.digests = Counter(
            "parley_notifier_digests_total",
            "Mention digests, by result (sent, unsubscribed, gone, online, removed, refused, "
            "rejected, failed, error, abandoned).",
            ["result"], registry=registry,
        )  # fmt: skip
        self.mentions = Counter(
            "parley_notifier_mentions_emailed_total",
            "Mentions listed in the digests sent.",
            registry=registry,
        )
        for r in NOTICE_RESULTS:
            self.notices.labels(r)
        for r in DIGEST_RESULTS:
            self.digests.labels(r)
