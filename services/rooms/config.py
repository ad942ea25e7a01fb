"""The rooms service's own configuration: its limits, in one place (docs/rooms.md, "Limits").

Like the key directory's, they are constants of the service (clients are
written against them); tests pass their own :class:`RoomsConfig` to
``create_app(settings, config)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.ratelimit import Limit

NAME_MAX = 100
TOPIC_MAX = 500
TEXT_MAX = 4000
REASON_MAX = 500
PAGE_MAX = 200
MEMBERS_PAGE_MAX = 500


@dataclass(frozen=True, slots=True)
class RoomsConfig:
    # Members of one room (joins and acceptances past it: ``room_full``).
    max_members: int = 5000
    # Rooms one user may create (``COUNT/SECONDS``; past it: ``rate_limited``).
    create_limit: Limit = Limit(30, 3600)  # noqa: RUF009 (a frozen value)
    # Messages one user may post, all rooms together (``rate_limited``).
    post_limit: Limit = Limit(600, 60)  # noqa: RUF009 (a frozen value)
    # Changes one user may make to public rooms' messages (edits, removals, restores, as
    # author or moderator; all rooms together; ``rate_limited``): each stores a revision
    # for good and pushes to every connected member. Admins' changes are not counted.
    edit_limit: Limit = Limit(120, 60)  # noqa: RUF009 (a frozen value)
    # Revisions one message may have before edits of it are refused (``forbidden``):
    # removing it (and restoring it) stays possible. An admin's history of a message is
    # then bounded too.
    max_edits: int = 100
    # Public rooms one user may join, all rooms together, joining again after leaving
    # included (``rate_limited``): each join hands out a roster slot for good.
    join_limit: Limit = Limit(30, 60)  # noqa: RUF009 (a frozen value)
    # Invitations one user may make, all rooms together (``rate_limited``): each takes a
    # slot of the invitee's list for good (invite, ban, lift the ban: again). A private
    # room's members come in only by invitation: one owner may fill a room of
    # ``max_members`` in an hour (the fan-out benchmarks invite 999 in seconds).
    invite_limit: Limit = Limit(5000, 3600)  # noqa: RUF009 (a frozen value)
    # Distinct @names of one message that are looked up (the rest stay text).
    max_mentions: int = 20
    # A user look-up (username -> id) is cached this long.
    user_cache_s: float = 60.0
    # Events not confirmed by Kafka are retried from the outbox this often.
    outbox_interval_s: float = 2.0
    # An outbox entry is held (or being sent) this long before a retry.
    outbox_lease_s: float = 30.0
    # A timeline number taken and still empty this long is a hole to pages (its writer
    # died, or takes a new number); younger, a page ends before it (in flight).
    inflight_grace_s: float = 5.0
