"""Request and response bodies of the rooms service (they also document the API).

Request bodies are strict (an unknown field, or ``1.0`` for an integer, is
``validation_failed``); what JSON Schema cannot say about text (blank, control
characters) is checked by :mod:`services.rooms.text` and answered
``invalid_text``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.auth import MAX_USER_ID
from services.rooms.config import NAME_MAX, REASON_MAX, TEXT_MAX, TOPIC_MAX

Kind = Literal["private", "public"]
Role = Literal["owner", "moderator", "member"]
State = Literal["open", "closed"]
Marker = Literal["edited", "edited_by_moderator", "removed_by_moderator", "deleted_by_author"]
ChangeRole = Literal["author", "owner", "moderator", "admin"]

USER_ID_PATTERN = "^[A-Za-z0-9_-]+$"
ROOM_ID_PATTERN = "^[0-9a-f]{24}$"
CLIENT_ID_PATTERN = "^[\\x21-\\x7e]+$"

UserId = Annotated[str, Field(min_length=1, max_length=MAX_USER_ID, pattern=USER_ID_PATTERN)]
UserRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_USER_ID,
        pattern="^@?[A-Za-z0-9_.-]+$",
        description="A user id or a username (an optional leading @)",
    ),
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class RoomCreate(_In):
    name: str = Field(
        min_length=1, max_length=NAME_MAX,
        description=f"1 to {NAME_MAX} characters, not blank, no control characters",
    )  # fmt: skip
    topic: str = Field(
        default="", max_length=TOPIC_MAX,
        description=f"At most {TOPIC_MAX} characters, no control characters",
    )  # fmt: skip
    kind: Kind = Field(
        description="`private`: end-to-end encrypted, visible to members only; "
        "`public`: server-readable, listed in the directory. Fixed at creation."
    )


class RoomUpdate(_In):
    name: str | None = Field(
        default=None, min_length=1, max_length=NAME_MAX,
        description=f"A new name: 1 to {NAME_MAX} characters, not blank, no control characters",
    )  # fmt: skip
    topic: str | None = Field(default=None, max_length=TOPIC_MAX)
    state: State | None = Field(
        default=None, description="`closed`: no new messages or members; history stays readable"
    )


class InviteIn(_In):
    user: UserRef


class OwnerIn(_In):
    user_id: UserId = Field(description="The member who becomes the owner")


class MessageIn(_In):
    client_id: str = Field(
        min_length=1, max_length=64, pattern=CLIENT_ID_PATTERN,
        description="Chosen by the client, unique per sender and room: a resend with the "
        "same id returns the original message",
    )  # fmt: skip
    text: str = Field(
        min_length=1, max_length=TEXT_MAX,
        description=f"1 to {TEXT_MAX} characters, not blank; no control characters but "
        "newline and tab. @username and @<user id> mention members.",
    )  # fmt: skip


class MessageEdit(_In):
    text: str = Field(
        min_length=1, max_length=TEXT_MAX,
        description=f"The new text: 1 to {TEXT_MAX} characters, not blank (as a post)",
    )  # fmt: skip


class ModeratorEdit(MessageEdit):
    reason: str | None = Field(
        default=None, max_length=REASON_MAX, description="Why (kept in the revision and the "
        "audit log, not shown to members)",
    )  # fmt: skip


class HideIn(_In):
    """The body of an admin's hide or restore."""

    reason: str | None = Field(
        default=None, max_length=REASON_MAX, description="Why (kept in the revision and the "
        "audit log, not shown to members)",
    )  # fmt: skip


class KindIn(_In):
    kind: Kind = Field(
        description="`private`: end-to-end encrypted from now on; `public`: server-readable "
        "from now on (past ciphertext stays unreadable)"
    )


class ReadIn(_In):
    up_to: int = Field(
        ge=0, le=2**53, description="Mark every notification up to this sequence number as read"
    )


# Responses.


class Room(_Out):
    room_id: str
    name: str
    topic: str
    kind: Kind
    state: State
    owner: str | None = Field(description="The owner's user id (none once the last member left)")
    members: int = Field(description="How many members the room has")
    created_at: int = Field(description="Unix milliseconds")
    role: Role | None = Field(description="The caller's role, or none if not a member")
    joined_at: int | None = Field(
        default=None, description="When the caller joined (Unix ms), none if not a member"
    )
    invited: bool = Field(description="The caller has an invitation to this room")
    version: int = Field(
        description="Grows with every change of membership or state: a client that saw it "
        "change re-reads the members (private rooms: rotate the sender key when one left)"
    )


class RoomList(_Out):
    rooms: list[Room]
    next_before: int | None = Field(
        description="Pass as `before` for the next page; none at the end"
    )


LOOKUP_MAX = 500


class RoomLookup(_In):
    rooms: list[Annotated[str, Field(pattern=ROOM_ID_PATTERN)]] = Field(
        min_length=1, max_length=LOOKUP_MAX,
        description=f"1 to {LOOKUP_MAX} room ids",
    )  # fmt: skip


class RoomLookupResult(_Out):
    rooms: list[Room] = Field(
        description="Those of the rooms asked for that you are a member of, in no order"
    )


class DirectoryEntry(_Out):
    room_id: str
    name: str
    topic: str
    members: int
    state: State


class DirectoryPage(_Out):
    rooms: list[DirectoryEntry]
    next_after: str | None = Field(description="Pass as `after` for the next page; none at the end")


class Member(_Out):
    user_id: str
    role: Role
    joined_at: int
    online: bool = Field(
        description="A device of the member's is connected now, and the member shows it"
        ' (`show_presence`, the auth service\'s preferences; docs/rooms.md, "Presence")'
    )
    username: str | None = Field(
        default=None, description="The member's username now (none: the account is gone)"
    )


class MemberPage(_Out):
    members: list[Member]
    next_after: int | None = Field(description="Pass as `after` for the next page; none at the end")


class Membership(_Out):
    room_id: str
    user_id: str
    role: Role
    joined_at: int


class Invitation(_Out):
    room_id: str
    user_id: str
    invited_by: str
    at: int


class Ban(_Out):
    room_id: str
    user_id: str
    banned_by: str
    at: int


class BanPage(_Out):
    bans: list[Ban]
    next_after: str | None = Field(description="Pass as `after` for the next page; none at the end")


class InvitationList(_Out):
    invitations: list[Invitation]
    rooms: list[Room] = Field(description="The rooms the invitations are to, in the same order")
    next_before: int | None


class RoomMessage(_Out):
    room_id: str
    seq: int = Field(description="The message's place in the room's order (1, 2, ...)")
    sender: str
    client_id: str
    text: str
    mentions: list[str] = Field(description="User ids of the members the text mentions")
    sent_at: int
    rev: int = Field(default=1, description="1 for the original; one more with each change")
    marker: Marker | None = Field(
        default=None,
        description="How the message changed (none: as sent). Removed or deleted: `text` is "
        "empty and `mentions` too; the original is kept for admins (docs/moderation.md)",
    )
    edited_at: int | None = Field(default=None, description="When it last changed (Unix ms)")


class PostResult(RoomMessage):
    duplicate: bool = Field(description="A resend: this is the original message, nothing new")


class MessagePage(_Out):
    messages: list[RoomMessage] = Field(description="Newest first")
    next_before: int | None = Field(
        description="Pass as `before` for older ones; none at the start"
    )


class Notification(_Out):
    seq: int
    kind: Literal["mention"]
    room_id: str
    room_name: str
    message_seq: int | None = Field(
        description="A public room's message to jump to (its `seq` in the room); null for a"
        " private room's"
    )
    server_id: str | None = Field(
        default=None,
        description="A private room's message (the `server_id` of its `message` frame);"
        " null for a public room's",
    )
    sender: str
    excerpt: str = Field(
        description='The start of the message; "mentioned you" for a private room\'s'
    )
    at: int
    read: bool


class NotificationPage(_Out):
    notifications: list[Notification] = Field(description="Newest first")
    unread: int
    next_before: int | None


class Unread(_Out):
    unread: int


# Admin views (docs/moderation.md): metadata only, private rooms included.


class AdminRoom(_Out):
    room_id: str
    name: str
    topic: str
    kind: Kind
    state: State
    owner: str | None
    members: int
    created_at: int
    created_by: str | None
    version: int
    messages: int = Field(
        description="Public timeline numbers handed out (0 for a room "
        "that was always private: the server holds none of its messages)"
    )
    deleted_at: int | None = Field(description="When an admin deleted it (Unix ms), or none")


class AdminRoomPage(_Out):
    rooms: list[AdminRoom] = Field(description="In room id order")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class Revision(_Out):
    rev: int = Field(description="1 is the original")
    text: str
    mentions: list[str]
    marker: Marker | None = Field(description="None for the original")
    by: str = Field(
        description="Who made this revision (a user id; `moderator` posts are "
        "made by the admin named here)"
    )
    role: ChangeRole
    at: int
    reason: str | None


class RevisionHistory(_Out):
    room_id: str
    seq: int
    sender: str
    current: RoomMessage = Field(description="What members see now")
    revisions: list[Revision] = Field(
        description="Oldest first; only the original (rev 1, from the message itself) when it "
        "never changed"
    )
