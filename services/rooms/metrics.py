"""The rooms service's own metrics (beside the HTTP metrics every service has).

- ``parley_rooms_membership_changes_total{change}``: joins, invitations,
  declines, leaves, removals, role and state changes, as published.
- ``parley_rooms_messages_total{result}``: public-room posts (``stored``, or
  ``duplicate`` for a resend answered with the original; ``announced_late``: a
  post's mentions and push made by the sweep, its writer having failed or died),
  and changes to them.
- ``parley_rooms_notifications_total``: mention notifications created.
- ``parley_rooms_outbox_sent_total{path}``: events confirmed by Kafka, at once
  (``direct``) or by the outbox loop (``retry``); ``dropped`` counts held
  entries whose change never committed.
- ``parley_rooms_pushed_total{kind,result}``: live frames (``room_post``,
  ``notification``, ...) published, counted once per gateway pod that
  received them, or ``failed``.
- ``parley_rooms_room_messages_total{result}``: private rooms' message records
  consumed for their mentions (``notified``, ``ignored``, ``malformed``).
- the limiter's ``parley_rate_limit_refusals_total{service="rooms",rule,code}``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.common.ratelimit import RateLimitMetrics

CHANGES = (
    "room_created", "member_joined", "member_invited", "invitation_declined",
    "member_left", "member_removed", "role_changed", "room_state_changed",
)  # fmt: skip


class RoomsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.limits = RateLimitMetrics(registry, "rooms", ("create", "post", "join", "edit"))
        self.changes = Counter(
            "parley_rooms_membership_changes_total",
            "Changes of rooms' membership and state, by event type.",
            ["change"], registry=registry,
        )  # fmt: skip
        self.messages = Counter(
            "parley_rooms_messages_total",
            "Messages posted to public rooms, by result (stored, duplicate; announced_late: its"
            " mentions and push made by the sweep, its writer having failed or died), and their"
            " changes"
            " (edited, edited_by_moderator, removed_by_moderator, deleted_by_author).",
            ["result"], registry=registry,
        )  # fmt: skip
        self.notifications = Counter(
            "parley_rooms_notifications_total",
            "Mention notifications created.",
            registry=registry,
        )
        self.outbox = Counter(
            "parley_rooms_outbox_sent_total",
            "Room events handled by the outbox: sent at once, sent on retry, or dropped.",
            ["path"], registry=registry,
        )  # fmt: skip
        self.pushed = Counter(
            "parley_rooms_pushed_total",
            "Live frames to connected sockets, by kind (room_post, notification) and result"
            " (published: frame x gateway pod; failed: frames not published).",
            ["kind", "result"], registry=registry,
        )  # fmt: skip
        self.room_messages = Counter(
            "parley_rooms_room_messages_total",
            "Private rooms' message records consumed for mentions, by result (notified: a"
            " notification made; ignored: no member mentioned or already notified; malformed).",
            ["result"], registry=registry,
        )  # fmt: skip
        for kind in ("room_post", "notification"):
            for result in ("published", "failed"):
                self.pushed.labels(kind, result)
        for result in ("notified", "ignored", "malformed"):
            self.room_messages.labels(result)
        for change in CHANGES:
            self.changes.labels(change)
        for result in ("stored", "duplicate"):
            self.messages.labels(result)
        for path in ("direct", "retry", "dropped"):
            self.outbox.labels(path)
