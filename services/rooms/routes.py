"""HTTP routes of the rooms service (thin: parse, call the logic, answer).

Every route needs a token (the route decorator checks it before the body
and hands the handler ``claims=``). docs/rooms.md describes every route.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.common.auth import MAX_USER_ID, Claims
from services.common.errors import ApiError, ErrorCode
from services.common.http import client_ip, int_schema, query_int
from services.common.openapi import Api
from services.rooms import admin, members, models, moderation, notifications, rooms, timeline
from services.rooms.config import MEMBERS_PAGE_MAX, PAGE_MAX
from services.rooms.state import ROOMS, Rooms

api = Api(
    "Parley rooms",
    "0.1.0",
    "Group rooms: `private` (end-to-end encrypted, visible to members and invitees only) "
    "and `public` (server-readable, listed in the directory, with a timeline). Membership, "
    "invitations, roles (owner, moderator, member), open/closed state, @mentions and "
    "notifications. See docs/rooms.md.",
)

_E = ErrorCode
ROOM = "/v1/rooms/{room_id}"
SEQ_MAX = 2**53

ROOM_ID = {"type": "string", "pattern": models.ROOM_ID_PATTERN}
USER_ID = {
    "type": "string", "minLength": 1, "maxLength": MAX_USER_ID,
    "pattern": models.USER_ID_PATTERN,
}  # fmt: skip
_ROOM = {"room_id": ROOM_ID}
_MESSAGE = {"room_id": ROOM_ID, "seq": int_schema(1, SEQ_MAX)}
_MEMBER = {"room_id": ROOM_ID, "user_id": USER_ID}
# An admin's reason for a room action, kept in the audit log's entry.
REASON_MAX = 500
_REASON_Q = {"reason": f"why, for the audit log (optional, at most {REASON_MAX} characters)"}
_REASON_P = {"reason": {"type": "string", "maxLength": REASON_MAX}}


def reason_of(request: web.Request) -> str | None:
    """The ``reason`` query parameter, checked before anything changes."""
    raw = request.query.get("reason")
    if raw is None or not raw.strip():
        return None
    if len(raw) > REASON_MAX:
        raise ApiError(
            _E.VALIDATION_FAILED, f"reason: at most {REASON_MAX} characters.",
            details=[{"field": "reason", "problem": "too long"}],
        )  # fmt: skip
    return raw.strip()


_BEFORE = {"before": int_schema(1, SEQ_MAX), "limit": int_schema(1, PAGE_MAX)}
_BEFORE_DOC = {
    "before": "return items numbered below this (default: from the newest)",
    "limit": f"page size (default 50, at most {PAGE_MAX})",
}
_SEEN = [_E.ROOM_NOT_FOUND]
# Changes of membership: refused to non-members and in the ways docs/rooms.md lists.
# Changes of a message (docs/moderation.md).
_CHANGE = [_E.ROOM_NOT_FOUND, _E.NOT_A_MEMBER, _E.FORBIDDEN, _E.MESSAGE_NOT_FOUND,
           _E.MESSAGE_REMOVED, _E.CONFLICT]  # fmt: skip
_ADMIN_CHANGE = [_E.FORBIDDEN, _E.ROOM_NOT_FOUND, _E.MESSAGE_NOT_FOUND, _E.MESSAGE_REMOVED,
                 _E.CONFLICT]  # fmt: skip
_MANAGE = [_E.ROOM_NOT_FOUND, _E.NOT_A_MEMBER, _E.FORBIDDEN, _E.CANNOT_TARGET_SELF,
           _E.USER_NOT_FOUND]  # fmt: skip


def svc(request: web.Request) -> Rooms:
    return request.app[ROOMS]


def room_id_of(request: web.Request) -> str:
    room_id = request.match_info["room_id"]
    if not rooms.ROOM_ID_RE.fullmatch(room_id):
        raise ApiError(
            _E.VALIDATION_FAILED, "Not a room id.",
            details=[{"field": "room_id", "problem": "not a room id (24 hex digits)"}],
        )  # fmt: skip
    return room_id


def user_id_of(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    ok = 0 < len(user_id) <= MAX_USER_ID and user_id.isascii()
    if not ok or not all(c.isalnum() or c in "_-" for c in user_id):
        raise ApiError(
            _E.VALIDATION_FAILED, "Not a user id.",
            details=[{"field": "user_id", "problem": "not a user id"}],
        )  # fmt: skip
    return user_id


def seq_of(request: web.Request) -> int:
    raw = request.match_info["seq"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 16 or not 1 <= int(raw) <= SEQ_MAX:
        raise ApiError(
            _E.VALIDATION_FAILED, "Not a message number.",
            details=[{"field": "seq", "problem": f"an integer from 1 to {SEQ_MAX}"}],
        )  # fmt: skip
    return int(raw)


def ip_of(request: web.Request) -> str:
    """The caller's address for the audit log: the last X-Forwarded-For hop (added by
    our load balancer), else the peer."""
    return client_ip(request, True)


def _token(request: web.Request) -> str:
    """The caller's bearer token (already verified), to look users up as the caller."""
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def _before(request: web.Request) -> tuple[int | None, int]:
    before = query_int(request, "before", 0, 1, SEQ_MAX) or None
    return before, query_int(request, "limit", 50, 1, PAGE_MAX)


# -- rooms ---------------------------------------------------------------------------------


@api.post(
    "/v1/rooms",
    summary="Create a room (you are its owner)",
    body=models.RoomCreate,
    response=models.Room,
    status=201,
    auth=True,
    errors=[_E.INVALID_TEXT, _E.RATE_LIMITED],
    tags=["rooms"],
)
async def create_room(request: web.Request, claims: Claims, body: models.RoomCreate) -> models.Room:
    return await rooms.create(svc(request), claims.user_id, body)


@api.get(
    "/v1/rooms",
    summary="Your rooms, the most recently joined first",
    response=models.RoomList,
    auth=True,
    query=_BEFORE_DOC,
    params=_BEFORE,
    tags=["rooms"],
)
async def my_rooms(request: web.Request, claims: Claims) -> models.RoomList:
    before, limit = _before(request)
    return await rooms.mine(svc(request), claims.user_id, before, limit)


@api.post(
    "/v1/lookup",
    summary="Your membership in each of several rooms (those you are not a member of are left out)",
    body=models.RoomLookup,
    response=models.RoomLookupResult,
    auth=True,
    tags=["rooms"],
)
async def lookup_rooms(
    request: web.Request, claims: Claims, body: models.RoomLookup
) -> models.RoomLookupResult:
    return await rooms.lookup(svc(request), claims.user_id, body.rooms)


@api.get(
    "/v1/directory",
    summary="Public rooms in name order, optionally those whose name contains `q`",
    response=models.DirectoryPage,
    auth=True,
    query={
        "q": "a part of the name, any case (at most 100 characters)",
        "after": "`next_after` of the previous page",
        "limit": f"page size (default 50, at most {PAGE_MAX})",
    },
    params={
        "q": {"type": "string", "maxLength": 100},
        "after": {"type": "string", "maxLength": 400},
        "limit": int_schema(1, PAGE_MAX),
    },
    tags=["rooms"],
)
async def directory(request: web.Request, claims: Claims) -> models.DirectoryPage:
    q = request.query.get("q")
    after = request.query.get("after", "")
    if (q is not None and len(q) > 100) or len(after) > 400:
        raise ApiError(
            _E.VALIDATION_FAILED, "q or after is too long.",
            details=[{"field": "q" if q and len(q) > 100 else "after", "problem": "too long"}],
        )  # fmt: skip
    limit = query_int(request, "limit", 50, 1, PAGE_MAX)
    return await rooms.directory(svc(request), q, after, limit)


@api.get(
    ROOM,
    summary="A room (404 for a private room you are neither a member of nor invited to)",
    response=models.Room,
    auth=True,
    params=_ROOM,
    errors=_SEEN,
    tags=["rooms"],
)
async def get_room(request: web.Request, claims: Claims) -> models.Room:
    return await rooms.get(svc(request), claims.user_id, room_id_of(request))


@api.patch(
    ROOM,
    summary="Rename the room, change its topic, or close / open it (owner and moderators)",
    body=models.RoomUpdate,
    response=models.Room,
    auth=True,
    params=_ROOM,
    errors=[
        _E.ROOM_NOT_FOUND,
        _E.NOT_A_MEMBER,
        _E.FORBIDDEN,
        _E.INVALID_TEXT,
        _E.VALIDATION_FAILED,
        _E.CONFLICT,
    ],
    tags=["rooms"],
)
async def update_room(request: web.Request, claims: Claims, body: models.RoomUpdate) -> models.Room:
    return await rooms.update(svc(request), claims.user_id, room_id_of(request), body)


# -- membership ----------------------------------------------------------------------------


@api.post(
    ROOM + "/join",
    summary="Join a public room (or accept an invitation to a private one)",
    description=(
        "Joins of public rooms are limited per user, all rooms together (30 a minute by "
        "default, joining again after leaving included): past it `rate_limited`, with "
        "`Retry-After`, and nothing changes. Joining a room you are a member of answers "
        "the membership and is not counted."
    ),
    response=models.Membership,
    auth=True,
    params=_ROOM,
    errors=[
        _E.ROOM_NOT_FOUND,
        _E.ROOM_CLOSED,
        _E.ROOM_FULL,
        _E.INVITATION_NOT_FOUND,
        _E.BANNED,
        _E.RATE_LIMITED,
    ],
    tags=["membership"],
)
async def join(request: web.Request, claims: Claims) -> models.Membership:
    return await members.join(svc(request), claims.user_id, room_id_of(request))


@api.post(
    ROOM + "/leave",
    summary="Leave a room (the owner hands the room over first, unless alone)",
    status=204,
    auth=True,
    params=_ROOM,
    errors=[_E.ROOM_NOT_FOUND, _E.NOT_A_MEMBER, _E.OWNER_MUST_TRANSFER, _E.CONFLICT],
    tags=["membership"],
)
async def leave(request: web.Request, claims: Claims) -> None:
    await members.leave(svc(request), claims.user_id, room_id_of(request))


@api.get(
    ROOM + "/members",
    summary="The members, in join order",
    response=models.MemberPage,
    auth=True,
    query={
        "after": "`next_after` of the previous page (default 0)",
        "limit": f"page size (default 50, at most {MEMBERS_PAGE_MAX})",
    },
    params={
        "room_id": ROOM_ID,
        "after": int_schema(0, SEQ_MAX),
        "limit": int_schema(1, MEMBERS_PAGE_MAX),
    },
    errors=_SEEN,
    tags=["membership"],
)
async def list_members(request: web.Request, claims: Claims) -> models.MemberPage:
    room_id = room_id_of(request)
    after = query_int(request, "after", 0, 0, SEQ_MAX)
    limit = query_int(request, "limit", 50, 1, MEMBERS_PAGE_MAX)
    return await members.members(svc(request), claims.user_id, room_id, after, limit)


@api.delete(
    ROOM + "/members/{user_id}",
    summary="Remove a member (owner; moderators remove plain members)",
    status=204,
    auth=True,
    params=_MEMBER,
    errors=[*_MANAGE, _E.CANNOT_REMOVE_OWNER],
    tags=["membership"],
)
async def remove_member(request: web.Request, claims: Claims) -> None:
    room_id = room_id_of(request)
    await members.remove(svc(request), claims.user_id, room_id, user_id_of(request))


@api.put(
    ROOM + "/bans/{user_id}",
    summary="Ban a user (owner and moderators, as for a removal): a member is removed, an "
    "invitation withdrawn; joining, accepting and invitations are refused (`banned`)",
    response=models.Ban,
    auth=True,
    params=_MEMBER,
    errors=[*_MANAGE, _E.CANNOT_REMOVE_OWNER, _E.CONFLICT],
    tags=["membership"],
)
async def ban(request: web.Request, claims: Claims) -> models.Ban:
    room_id, target = room_id_of(request), user_id_of(request)
    return await members.ban(svc(request), claims.user_id, _token(request), room_id, target)


@api.delete(
    ROOM + "/bans/{user_id}",
    summary="Lift a ban (owner and moderators)",
    status=204,
    auth=True,
    params=_MEMBER,
    errors=[_E.ROOM_NOT_FOUND, _E.NOT_A_MEMBER, _E.FORBIDDEN, _E.USER_NOT_FOUND],
    tags=["membership"],
)
async def unban(request: web.Request, claims: Claims) -> None:
    room_id, target = room_id_of(request), user_id_of(request)
    await members.unban(svc(request), claims.user_id, room_id, target)


@api.get(
    ROOM + "/bans",
    summary="The room's bans, in user id order (owner and moderators)",
    response=models.BanPage,
    auth=True,
    query={
        "after": "`next_after` of the previous page (default: from the start)",
        "limit": f"page size (default 50, at most {MEMBERS_PAGE_MAX})",
    },
    params={
        "room_id": ROOM_ID,
        "after": {"type": "string", "maxLength": MAX_USER_ID},
        "limit": int_schema(1, MEMBERS_PAGE_MAX),
    },
    errors=[_E.ROOM_NOT_FOUND, _E.NOT_A_MEMBER, _E.FORBIDDEN, _E.VALIDATION_FAILED],
    tags=["membership"],
)
async def list_bans(request: web.Request, claims: Claims) -> models.BanPage:
    room_id = room_id_of(request)
    after = request.query.get("after", "")
    if len(after) > MAX_USER_ID:
        raise ApiError(
            _E.VALIDATION_FAILED, "Not a user id.",
            details=[{"field": "after", "problem": "not a user id"}],
        )  # fmt: skip
    limit = query_int(request, "limit", 50, 1, MEMBERS_PAGE_MAX)
    return await members.bans(svc(request), claims.user_id, room_id, after, limit)


@api.put(
    ROOM + "/moderators/{user_id}",
    summary="Make a member a moderator (owner)",
    response=models.Membership,
    auth=True,
    params=_MEMBER,
    errors=_MANAGE,
    tags=["membership"],
)
async def promote(request: web.Request, claims: Claims) -> models.Membership:
    room_id = room_id_of(request)
    return await members.set_moderator(
        svc(request), claims.user_id, room_id, user_id_of(request), True
    )


@api.delete(
    ROOM + "/moderators/{user_id}",
    summary="Make a moderator a plain member again (owner)",
    response=models.Membership,
    auth=True,
    params=_MEMBER,
    errors=_MANAGE,
    tags=["membership"],
)
async def demote(request: web.Request, claims: Claims) -> models.Membership:
    room_id = room_id_of(request)
    return await members.set_moderator(
        svc(request), claims.user_id, room_id, user_id_of(request), False
    )


@api.put(
    ROOM + "/owner",
    summary="Hand the room over to another member (owner); you become a moderator "
    "(`conflict`: another hand-over of the room is under way)",
    body=models.OwnerIn,
    response=models.Room,
    auth=True,
    params=_ROOM,
    errors=[*_MANAGE, _E.CONFLICT],
    tags=["membership"],
)
async def transfer(request: web.Request, claims: Claims, body: models.OwnerIn) -> models.Room:
    return await members.transfer(svc(request), claims.user_id, room_id_of(request), body.user_id)


@api.post(
    ROOM + "/invitations",
    summary="Invite a user (by user id or username) to a room you are a member of",
    body=models.InviteIn,
    response=models.Invitation,
    status=201,
    auth=True,
    params=_ROOM,
    errors=[
        _E.ROOM_NOT_FOUND,
        _E.NOT_A_MEMBER,
        _E.ROOM_CLOSED,
        _E.USER_NOT_FOUND,
        _E.CANNOT_TARGET_SELF,
        _E.ALREADY_MEMBER,
        _E.BANNED,
        _E.CONFLICT,
        _E.RATE_LIMITED,
    ],
    tags=["membership"],
)
async def invite(request: web.Request, claims: Claims, body: models.InviteIn) -> models.Invitation:
    room_id = room_id_of(request)
    return await members.invite(svc(request), claims.user_id, _token(request), room_id, body)


@api.post(
    ROOM + "/invitation/accept",
    summary="Accept your invitation: you become a member",
    response=models.Membership,
    auth=True,
    params=_ROOM,
    errors=[_E.ROOM_NOT_FOUND, _E.INVITATION_NOT_FOUND, _E.ROOM_CLOSED, _E.ROOM_FULL, _E.BANNED],
    tags=["membership"],
)
async def accept(request: web.Request, claims: Claims) -> models.Membership:
    return await members.accept(svc(request), claims.user_id, room_id_of(request))


@api.post(
    ROOM + "/invitation/decline",
    summary="Decline your invitation",
    status=204,
    auth=True,
    params=_ROOM,
    errors=[_E.ROOM_NOT_FOUND, _E.INVITATION_NOT_FOUND],
    tags=["membership"],
)
async def decline(request: web.Request, claims: Claims) -> None:
    await members.decline(svc(request), claims.user_id, room_id_of(request))


@api.get(
    "/v1/invitations",
    summary="Your pending invitations, newest first",
    response=models.InvitationList,
    auth=True,
    query=_BEFORE_DOC,
    params=_BEFORE,
    tags=["membership"],
)
async def my_invitations(request: web.Request, claims: Claims) -> models.InvitationList:
    before, limit = _before(request)
    return await members.invitations(svc(request), claims.user_id, before, limit)


# -- public rooms' timeline ----------------------------------------------------------------


@api.post(
    ROOM + "/messages",
    summary="Post to a public room you are a member of (a resend returns the original)",
    body=models.MessageIn,
    response=models.PostResult,
    status=201,
    auth=True,
    params=_ROOM,
    errors=[
        _E.ROOM_NOT_FOUND,
        _E.NOT_A_MEMBER,
        _E.FORBIDDEN,
        _E.ROOM_CLOSED,
        _E.INVALID_TEXT,
        _E.RATE_LIMITED,
        _E.CONFLICT,
    ],
    tags=["timeline"],
)
async def post_message(
    request: web.Request, claims: Claims, body: models.MessageIn
) -> models.PostResult:
    room_id = room_id_of(request)
    return await timeline.post(svc(request), claims.user_id, _token(request), room_id, body)


@api.get(
    ROOM + "/messages",
    summary="A public room's messages, newest first (anyone signed in)",
    response=models.MessagePage,
    auth=True,
    query=_BEFORE_DOC,
    params={**_ROOM, **_BEFORE},
    errors=[_E.ROOM_NOT_FOUND, _E.FORBIDDEN],
    tags=["timeline"],
)
async def messages(request: web.Request, claims: Claims) -> models.MessagePage:
    room_id = room_id_of(request)
    before, limit = _before(request)
    return await timeline.page(svc(request), claims.user_id, room_id, before, limit)


@api.post(
    ROOM + "/moderator/messages",
    summary="Post as the room's moderator (sender `moderator`; owner and moderators; closed "
    "rooms too)",
    body=models.MessageIn,
    response=models.PostResult,
    status=201,
    auth=True,
    params=_ROOM,
    errors=[_E.ROOM_NOT_FOUND, _E.NOT_A_MEMBER, _E.FORBIDDEN, _E.INVALID_TEXT],
    tags=["timeline"],
)
async def post_as_moderator(
    request: web.Request, claims: Claims, body: models.MessageIn
) -> models.PostResult:
    return await timeline.post_as_moderator(
        svc(request), claims.user_id, _token(request), room_id_of(request), body, ip_of(request)
    )


@api.patch(
    ROOM + "/messages/{seq}",
    summary="Edit a message: your own (marked `edited`), or, as the room's owner or a "
    "moderator, a member's (marked `edited_by_moderator`); every version is kept",
    body=models.MessageEdit,
    response=models.RoomMessage,
    auth=True,
    params=_MESSAGE,
    errors=[
        _E.ROOM_NOT_FOUND,
        _E.NOT_A_MEMBER,
        _E.FORBIDDEN,
        _E.MESSAGE_NOT_FOUND,
        _E.MESSAGE_REMOVED,
        _E.ROOM_CLOSED,
        _E.INVALID_TEXT,
        _E.CONFLICT,
        _E.RATE_LIMITED,
    ],
    tags=["timeline"],
)
async def edit_message(
    request: web.Request, claims: Claims, body: models.MessageEdit
) -> models.RoomMessage:
    room_id, seq = room_id_of(request), seq_of(request)
    change = moderation.Change(moderation.EDIT, claims.user_id, "", body.text, None,
                               ip_of(request))  # fmt: skip
    return await moderation.by_member(
        svc(request), claims.user_id, _token(request), room_id, seq, change
    )


@api.delete(
    ROOM + "/messages/{seq}",
    summary="Delete your own message (`deleted_by_author`), or, as the room's owner or a "
    "moderator, remove a member's (`removed_by_moderator`); the original is kept",
    response=models.RoomMessage,
    auth=True,
    params=_MESSAGE,
    errors=[
        _E.ROOM_NOT_FOUND,
        _E.NOT_A_MEMBER,
        _E.FORBIDDEN,
        _E.MESSAGE_NOT_FOUND,
        _E.MESSAGE_REMOVED,
        _E.CONFLICT,
        _E.RATE_LIMITED,
    ],
    tags=["timeline"],
)
async def delete_message(request: web.Request, claims: Claims) -> models.RoomMessage:
    room_id, seq = room_id_of(request), seq_of(request)
    change = moderation.Change(moderation.REMOVE, claims.user_id, "", None, None, ip_of(request))
    return await moderation.by_member(
        svc(request), claims.user_id, _token(request), room_id, seq, change
    )


@api.post(
    ROOM + "/messages/{seq}/restore",
    summary="Undo a removal (the room's owner or a moderator, under the removal's rules): "
    "the message is as it was before it, and the removal stays in its history",
    response=models.RoomMessage,
    auth=True,
    params=_MESSAGE,
    errors=[
        _E.ROOM_NOT_FOUND,
        _E.NOT_A_MEMBER,
        _E.FORBIDDEN,
        _E.MESSAGE_NOT_FOUND,
        _E.CONFLICT,
        _E.RATE_LIMITED,
    ],
    tags=["timeline"],
)
async def restore_message(request: web.Request, claims: Claims) -> models.RoomMessage:
    room_id, seq = room_id_of(request), seq_of(request)
    change = moderation.Change(moderation.RESTORE, claims.user_id, "", None, None, ip_of(request))
    return await moderation.by_member(
        svc(request), claims.user_id, _token(request), room_id, seq, change
    )


# -- admin (docs/moderation.md) -------------------------------------------------------------

_ADMIN: dict[str, Any] = {"auth": True, "role": "admin", "tags": ["admin"]}
ADMIN_ROOM = "/v1/admin/rooms/{room_id}"
ROOM_CURSOR = {"type": "string", "pattern": "^$|" + models.ROOM_ID_PATTERN}


@api.get(
    "/v1/admin/rooms",
    summary="Every room, private ones included (metadata only), in id order",
    response=models.AdminRoomPage,
    query={
        "q": "a part of the name, any case (at most 100 characters)",
        "kind": "`private` or `public`",
        "state": "`open` or `closed`",
        "cursor": "`next_cursor` of the previous page",
        "limit": f"page size (default 50, at most {PAGE_MAX})",
    },
    params={
        "q": {"type": "string", "maxLength": 100},
        "kind": {"type": "string", "enum": ["private", "public"]},
        "state": {"type": "string", "enum": ["open", "closed"]},
        "cursor": ROOM_CURSOR,
        "limit": int_schema(1, PAGE_MAX),
    },
    errors=[_E.FORBIDDEN],
    **_ADMIN,
)
async def admin_rooms(request: web.Request, claims: Claims) -> models.AdminRoomPage:
    q = request.query
    problems = []
    if len(q.get("q", "")) > 100:
        problems.append({"field": "q", "problem": "too long"})
    for name, allowed in (("kind", ("private", "public")), ("state", ("open", "closed"))):
        if name in q and q[name] not in allowed:
            problems.append({"field": name, "problem": "one of " + ", ".join(allowed)})
    cursor = q.get("cursor", "")
    if cursor and not rooms.ROOM_ID_RE.fullmatch(cursor):
        problems.append({"field": "cursor", "problem": "not a cursor from this API"})
    if problems:
        raise ApiError(_E.VALIDATION_FAILED, "Bad query parameters.", details=problems)
    limit = query_int(request, "limit", 50, 1, PAGE_MAX)
    return await admin.list_rooms(
        svc(request), claims, ip_of(request), q.get("q"), q.get("kind"), q.get("state"),
        cursor, limit,
    )  # fmt: skip


@api.get(
    ADMIN_ROOM,
    summary="A room's metadata (deleted ones too)",
    response=models.AdminRoom,
    params=_ROOM,
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND],
    **_ADMIN,
)
async def admin_room(request: web.Request, claims: Claims) -> models.AdminRoom:
    return await admin.get_room(svc(request), claims, ip_of(request), room_id_of(request))


@api.get(
    ADMIN_ROOM + "/members",
    summary="A room's members, in join order",
    response=models.MemberPage,
    query={
        "after": "`next_after` of the previous page (default 0)",
        "limit": f"page size (default 50, at most {MEMBERS_PAGE_MAX})",
    },
    params={
        "room_id": ROOM_ID,
        "after": int_schema(0, SEQ_MAX),
        "limit": int_schema(1, MEMBERS_PAGE_MAX),
    },
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND],
    **_ADMIN,
)
async def admin_members(request: web.Request, claims: Claims) -> models.MemberPage:
    room_id = room_id_of(request)
    after = query_int(request, "after", 0, 0, SEQ_MAX)
    limit = query_int(request, "limit", 50, 1, MEMBERS_PAGE_MAX)
    return await admin.room_members(svc(request), claims, ip_of(request), room_id, after, limit)


@api.post(
    ADMIN_ROOM + "/close",
    summary="Close a room: no new messages or members; members are told (`room_changed`)",
    response=models.AdminRoom,
    query=_REASON_Q,
    params={**_ROOM, **_REASON_P},
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND, _E.CONFLICT, _E.VALIDATION_FAILED],
    **_ADMIN,
)
async def admin_close(request: web.Request, claims: Claims) -> models.AdminRoom:
    return await admin.set_room_state(
        svc(request), claims, ip_of(request), room_id_of(request), "closed", reason_of(request)
    )


@api.post(
    ADMIN_ROOM + "/reopen",
    summary="Reopen a closed room; members are told (`room_changed`)",
    response=models.AdminRoom,
    query=_REASON_Q,
    params={**_ROOM, **_REASON_P},
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND, _E.CONFLICT, _E.VALIDATION_FAILED],
    **_ADMIN,
)
async def admin_reopen(request: web.Request, claims: Claims) -> models.AdminRoom:
    return await admin.set_room_state(
        svc(request), claims, ip_of(request), room_id_of(request), "open", reason_of(request)
    )


@api.put(
    ADMIN_ROOM + "/kind",
    summary="Switch a room public ↔ private (private: end-to-end encrypted from now on; "
    "public: past ciphertext stays unreadable); members are told (`room_changed`)",
    body=models.KindIn,
    response=models.AdminRoom,
    query=_REASON_Q,
    params={**_ROOM, **_REASON_P},
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND, _E.CONFLICT, _E.VALIDATION_FAILED],
    **_ADMIN,
)
async def admin_kind(request: web.Request, claims: Claims, body: models.KindIn) -> models.AdminRoom:
    return await admin.set_kind(
        svc(request), claims, ip_of(request), room_id_of(request), body.kind, reason_of(request)
    )


@api.delete(
    ADMIN_ROOM + "/members/{user_id}",
    summary="Remove any member (the owner too); members are told (`room_changed`)",
    status=204,
    query=_REASON_Q,
    params={**_MEMBER, **_REASON_P},
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND, _E.USER_NOT_FOUND, _E.VALIDATION_FAILED],
    **_ADMIN,
)
async def admin_remove(request: web.Request, claims: Claims) -> None:
    room_id, reason = room_id_of(request), reason_of(request)
    await admin.remove(svc(request), claims, ip_of(request), room_id, user_id_of(request), reason)


@api.put(
    ADMIN_ROOM + "/owner",
    summary="Make a member the owner (a room left without one, or whose owner is gone); "
    "the owner there was becomes a moderator; members are told (`room_changed`)",
    body=models.OwnerIn,
    response=models.AdminRoom,
    query=_REASON_Q,
    params={**_ROOM, **_REASON_P},
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND, _E.USER_NOT_FOUND, _E.CONFLICT, _E.VALIDATION_FAILED],
    **_ADMIN,
)
async def admin_owner(
    request: web.Request, claims: Claims, body: models.OwnerIn
) -> models.AdminRoom:
    return await admin.set_owner(
        svc(request), claims, ip_of(request), room_id_of(request), body.user_id,
        reason_of(request),
    )  # fmt: skip


@api.delete(
    ADMIN_ROOM,
    summary="Delete a room: it is gone for everyone (its records stay for admins)",
    status=204,
    query=_REASON_Q,
    params={**_ROOM, **_REASON_P},
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND, _E.VALIDATION_FAILED],
    **_ADMIN,
)
async def admin_delete(request: web.Request, claims: Claims) -> None:
    reason = reason_of(request)
    await admin.delete(svc(request), claims, ip_of(request), room_id_of(request), reason)


@api.post(
    ADMIN_ROOM + "/messages",
    summary="Post to a public room as its moderator (sender `moderator`; closed rooms too)",
    body=models.MessageIn,
    response=models.PostResult,
    status=201,
    params=_ROOM,
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND, _E.INVALID_TEXT],
    **_ADMIN,
)
async def admin_post(
    request: web.Request, claims: Claims, body: models.MessageIn
) -> models.PostResult:
    return await admin.post(
        svc(request), claims, ip_of(request), _token(request), room_id_of(request), body
    )


@api.patch(
    ADMIN_ROOM + "/messages/{seq}",
    summary="Edit any message of a room's timeline (marked `edited_by_moderator`)",
    body=models.ModeratorEdit,
    response=models.RoomMessage,
    params=_MESSAGE,
    errors=[
        _E.FORBIDDEN,
        _E.ROOM_NOT_FOUND,
        _E.MESSAGE_NOT_FOUND,
        _E.MESSAGE_REMOVED,
        _E.INVALID_TEXT,
        _E.CONFLICT,
    ],
    **_ADMIN,
)
async def admin_edit(
    request: web.Request, claims: Claims, body: models.ModeratorEdit
) -> models.RoomMessage:
    return await admin.change(
        svc(request), claims, ip_of(request), _token(request), room_id_of(request),
        seq_of(request), moderation.EDIT, body.text, body.reason,
    )  # fmt: skip


@api.post(
    ADMIN_ROOM + "/messages/{seq}/hide",
    summary="Hide (censor) any message of a room's timeline (`removed_by_moderator`); the "
    "original is kept",
    body=models.HideIn,
    response=models.RoomMessage,
    params=_MESSAGE,
    errors=[
        _E.FORBIDDEN,
        _E.ROOM_NOT_FOUND,
        _E.MESSAGE_NOT_FOUND,
        _E.MESSAGE_REMOVED,
        _E.CONFLICT,
    ],
    **_ADMIN,
)
async def admin_hide(
    request: web.Request, claims: Claims, body: models.HideIn
) -> models.RoomMessage:
    return await admin.change(
        svc(request), claims, ip_of(request), _token(request), room_id_of(request),
        seq_of(request), moderation.REMOVE, None, body.reason,
    )  # fmt: skip


@api.post(
    ADMIN_ROOM + "/messages/{seq}/restore",
    summary="Undo a removal (`removed_by_moderator`, a moderator's or an admin's): the "
    "message is as it was before it, and the removal stays in its history",
    body=models.HideIn,
    response=models.RoomMessage,
    params=_MESSAGE,
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND, _E.MESSAGE_NOT_FOUND, _E.CONFLICT],
    **_ADMIN,
)
async def admin_restore(
    request: web.Request, claims: Claims, body: models.HideIn
) -> models.RoomMessage:
    return await admin.change(
        svc(request), claims, ip_of(request), _token(request), room_id_of(request),
        seq_of(request), moderation.RESTORE, None, body.reason,
    )  # fmt: skip


@api.get(
    ADMIN_ROOM + "/messages/{seq}/revisions",
    summary="Every revision of a message, the original first",
    response=models.RevisionHistory,
    params=_MESSAGE,
    errors=[_E.FORBIDDEN, _E.ROOM_NOT_FOUND, _E.MESSAGE_NOT_FOUND],
    **_ADMIN,
)
async def admin_revisions(request: web.Request, claims: Claims) -> models.RevisionHistory:
    return await admin.revisions(
        svc(request), claims, ip_of(request), room_id_of(request), seq_of(request)
    )


# -- notifications -------------------------------------------------------------------------


@api.get(
    "/v1/notifications",
    summary="Your notifications (mentions), newest first, and how many are unread",
    response=models.NotificationPage,
    auth=True,
    query=_BEFORE_DOC,
    params=_BEFORE,
    tags=["notifications"],
)
async def list_notifications(request: web.Request, claims: Claims) -> models.NotificationPage:
    before, limit = _before(request)
    return await notifications.page(svc(request), claims.user_id, before, limit)


@api.post(
    "/v1/notifications/read",
    summary="Mark your notifications up to a number as read",
    body=models.ReadIn,
    response=models.Unread,
    auth=True,
    errors=[_E.SEQ_NOT_ISSUED],
    tags=["notifications"],
)
async def mark_read(request: web.Request, claims: Claims, body: models.ReadIn) -> models.Unread:
    return await notifications.mark_read(svc(request), claims.user_id, body.up_to)
