"""HTTP routes of the delivery service: a user's inbox (gateways call these with the token).

The route decorator (services.common.openapi) checks the token and hands the
handler ``claims=``: a user reads and acknowledges only their own inbox.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web
from parley_contract import frames as f
from parley_contract.envelopes import inbox_id
from parley_contract.frames import is_client_id

from services.common.auth import Claims, authenticate_each, bearer_token
from services.common.errors import ApiError, ErrorCode
from services.common.http import client_ip, int_schema, json_response, query_int
from services.common.openapi import Api
from services.common.state import SETTINGS
from services.delivery.models import (
    CONVERSATION_PATTERN,
    AckIn,
    AckOut,
    AcksIn,
    AcksOut,
    InboxPage,
    ModerationKeys,
    Removed,
    RemoveIn,
    Report,
    ReportIn,
    ReportOut,
    ReportsPage,
    ResolveIn,
    RoomLogPage,
    RoomLogs,
    RoomLogsIn,
)
from services.delivery.moderation_store import REPORT_STATES
from services.delivery.state import INBOX, MODERATION, ROOM_LOG

api = Api(
    "Parley delivery",
    "0.1.0",
    "A user's inbox of encrypted envelopes: page through what waits, acknowledge it. "
    "Clients normally use these through the WebSocket (`sync`, `ack`; docs/protocol.md). "
    "Moderation of end-to-end encrypted messages: verifiable reports (message franking), "
    "removal with signed tombstones, and the admins' report queue "
    "(docs/moderation-messages.md).",
)


SEQ_MAX = 2**63 - 1
PAGE_MAX = 1000


@api.get(
    "/v1/inbox",
    summary="Page through the caller's waiting items, in sequence order",
    response=InboxPage,
    auth=True,
    query={
        "after": "return items with a larger seq (default 0)",
        "limit": "page size (default 100), capped by the server's page size "
        "(PARLEY_SYNC_PAGE_MAX); a page also stops at about 1 MiB of message bodies "
        "(PARLEY_SYNC_PAGE_BYTES), `more` set",
    },
    params={"after": int_schema(0, SEQ_MAX), "limit": int_schema(1, PAGE_MAX)},
    errors=[ErrorCode.DEVICE_REQUIRED],
    tags=["inbox"],
)
async def inbox_page(request: web.Request, claims: Claims) -> web.Response:
    settings = request.app[SETTINGS]
    after = query_int(request, "after", 0, 0, SEQ_MAX)
    limit = min(query_int(request, "limit", 100, 1, PAGE_MAX), settings.sync_page_max)
    page = await request.app[INBOX].page(_inbox(claims), after, limit)
    # The contract's InboxPage, encoded once (the gateway decodes it as is).
    return web.Response(body=f.encode(page), content_type="application/json")


@api.get(
    "/v1/rooms/{room_id}/log",
    summary="Page through a private room's log: the messages after a number, oldest first",
    description=(
        "A private room's messages are stored once, in the room's log, numbered 1, 2, 3, "
        '... (docs/rooms.md, "The room log"); they are pushed live as `room_message` '
        "frames and read here after a device was away. A page holds only what was stored "
        "since the caller joined the room and since `since`. A public room's history is its "
        "timeline (`GET /rooms/v1/rooms/{room_id}/messages`)."
    ),
    response=RoomLogPage,
    auth=True,
    query={
        "after": "return messages with a larger number (default 0)",
        "since": "only messages stored at or after this time (Unix ms; default 0): a device "
        "linked later reads from its link",
        "limit": "page size (default 100), capped by the server's page size; a page also "
        "stops at about 1 MiB of message bodies (PARLEY_SYNC_PAGE_BYTES), `more` set",
    },
    params={
        "room_id": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
        "after": int_schema(0, SEQ_MAX),
        "since": int_schema(0, SEQ_MAX),
        "limit": int_schema(1, PAGE_MAX),
    },
    errors=[ErrorCode.ROOM_NOT_FOUND, ErrorCode.NOT_A_MEMBER, ErrorCode.FORBIDDEN],
    tags=["rooms"],
)
async def room_log_page(request: web.Request, claims: Claims) -> web.Response:
    settings = request.app[SETTINGS]
    room_id = _path_id(request, "room_id", 24)
    after = query_int(request, "after", 0, 0, SEQ_MAX)
    since = query_int(request, "since", 0, 0, SEQ_MAX)
    limit = min(query_int(request, "limit", 100, 1, PAGE_MAX), settings.sync_page_max)
    joined_at = await request.app[MODERATION].parties.joined_at(room_id, bearer_token(request))
    messages, last, more = await request.app[ROOM_LOG].page(
        room_id, after, max(since, joined_at), limit
    )
    page = f.RoomLogPage(room=room_id, messages=messages, next=last, more=more)
    return web.Response(body=f.encode(page), content_type="application/json")


ROOM_LOGS_MESSAGES = 5000
"""Messages one ``POST /delivery/v1/rooms/logs`` answers at most, all rooms together."""


@api.post(
    "/v1/rooms/logs",
    summary="Read many private rooms' logs at once: a page of each after its number",
    description=(
        "What a device does after connecting: every private room it is in, read from its "
        'place (docs/protocol.md, "Private rooms"). One call to the rooms service and two '
        "reads by id answer the rooms with nothing new, whatever their number; the others "
        "get a page each, as `GET /delivery/v1/rooms/{room_id}/log` gives it. One answer "
        "holds at most 5,000 messages: `limit` is cut to 5,000 divided by the number of "
        "rooms asked for, and about 1 MiB of message bodies (PARLEY_SYNC_PAGE_BYTES): a room "
        "the answer did not reach says `more` with `next` where it was."
    ),
    body=RoomLogsIn,
    response=RoomLogs,
    auth=True,
    tags=["rooms"],
)
async def room_logs(request: web.Request, claims: Claims, body: RoomLogsIn) -> web.Response:
    settings = request.app[SETTINGS]
    ids = [ask.room for ask in body.rooms]
    joined = await request.app[MODERATION].parties.joined_private(ids, bearer_token(request))
    # One answer holds at most ROOM_LOGS_MESSAGES messages, shared among the rooms asked
    # for (a room with more says `more`, and is read on alone).
    share = max(1, ROOM_LOGS_MESSAGES // len(body.rooms))
    limit = min(body.limit, settings.sync_page_max, share)
    asks = [
        (a.room, a.after, max(body.since, joined[a.room])) for a in body.rooms if a.room in joined
    ]
    found = await request.app[ROOM_LOG].pages(asks, limit)
    pages = [
        f.RoomLogPage(room=room, messages=messages, next=last, more=more)
        for (room, _, _), (messages, last, more) in zip(asks, found, strict=True)
    ]
    refused = [room for room in ids if room not in joined]
    return web.Response(
        body=msgspec.json.encode({"pages": pages, "refused": refused}),
        content_type="application/json",
    )


@api.post(
    "/v1/inbox/ack",
    summary="Acknowledge (and delete) every item up to a sequence number",
    body=AckIn,
    response=AckOut,
    auth=True,
    errors=[ErrorCode.SEQ_NOT_ISSUED, ErrorCode.DEVICE_REQUIRED],
    tags=["inbox"],
)
async def inbox_ack(request: web.Request, claims: Claims, body: AckIn) -> dict[str, int]:
    return {"acked": await request.app[INBOX].ack(_inbox(claims), body.seq)}


@api.post(
    "/v1/inbox/acks",
    summary="Acknowledge several devices' inboxes at once, each with its own token",
    description=(
        "What a gateway sends for its sockets' acks, taken together: one call instead of "
        'one per socket (docs/delivery.md, "Acks"). Each ack is authenticated by its '
        "own access token, exactly as `POST /v1/inbox/ack` would authenticate it, and "
        "answered on its own: a bad token or an unissued sequence number fails that ack "
        "alone, and changes nothing for it."
    ),
    body=AcksIn,
    response=AcksOut,
    errors=[ErrorCode.PAYLOAD_TOO_LARGE],
    tags=["inbox"],
)
async def inbox_acks(request: web.Request, body: AcksIn) -> dict[str, list[dict[str, Any]]]:
    inbox = request.app[INBOX]
    inbox.batch_acks.observe(len(body.acks))
    verified = await authenticate_each(request.app, [a.token for a in body.acks])

    async def one(claims: Claims | ApiError, seq: int) -> dict[str, Any]:
        try:
            if isinstance(claims, ApiError):
                raise claims
            return {"acked": await inbox.ack(_inbox(claims), seq)}
        except ApiError as err:
            return {"error": {"code": err.code.value, "message": err.message}}

    # Together, so that one flush of the inbox takes them all (handlers.Inbox).
    results = await asyncio.gather(
        *(one(c, a.seq) for c, a in zip(verified, body.acks, strict=True))
    )
    return {"results": list(results)}


def _inbox(claims: Claims) -> str:
    """The caller's device inbox: the token's user and device (docs/devices.md)."""
    if claims.did is None:
        raise ApiError(
            ErrorCode.DEVICE_REQUIRED,
            "This session is not bound to a device: log in with a device id to use messaging.",
        )
    return inbox_id(claims.sub, claims.did)


# -- moderation (docs/moderation-messages.md) ---------------------------------------------

_SERVER_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_CLIENT_ID_MAX = 64
_CLIENT_ID = {"type": "string", "minLength": 1, "maxLength": _CLIENT_ID_MAX, "pattern": "^[!-~]+$"}
_CONVERSATION = {"type": "string", "pattern": CONVERSATION_PATTERN}
_REPORT_ID = {"type": "string", "pattern": "^[0-9a-f]{28}$"}
REPORTS_PAGE_MAX = 100


def _ip(request: web.Request) -> str:
    """The caller's address for the audit log (HAProxy sets X-Forwarded-For)."""
    return client_ip(request, True)


def _invalid(field: str, problem: str) -> ApiError:
    return ApiError(
        ErrorCode.VALIDATION_FAILED, f"Not a valid {field}.",
        details=[{"field": field, "problem": problem}],
    )  # fmt: skip


def _query_text(request: web.Request, name: str, max_len: int) -> str:
    value = request.query.get(name)
    if not value:
        raise _invalid(name, "required")
    if len(value) > max_len:
        raise _invalid(name, f"at most {max_len} characters")
    return value


def _path_id(request: web.Request, name: str, length: int) -> str:
    value = request.match_info[name]
    if len(value) != length or any(c not in "0123456789abcdef" for c in value):
        raise ApiError(
            ErrorCode.VALIDATION_FAILED, f"Not a {name}.",
            details=[{"field": name, "problem": f"{length} lowercase hex digits expected"}],
        )  # fmt: skip
    return value


@api.post(
    "/v1/reports",
    summary="Report a message you received: its plaintext, franking key and reporting tag",
    description=(
        "The tag must verify for the message's metadata with you as its recipient (a "
        "room's message: you are a member of the room, joined by the time it was sent), and the "
        "plaintext and franking key must open the sender's commitment; then the report is "
        "filed for admins with the verified plaintext (201). Reporting the same message "
        "again answers the first report (200, `duplicate` true) and stores nothing. At most "
        "30 reports an hour per user are filed (`PARLEY_LIMIT_REPORTS`; neither a repeat nor "
        "a refused report counts): past it, 429 `rate_limited` with `Retry-After`."
    ),
    body=ReportIn,
    response=ReportOut,
    status=201,
    auth=True,
    errors=[
        ErrorCode.INVALID_FRANKING_TAG,
        ErrorCode.FRANKING_MISMATCH,
        ErrorCode.NOT_RECIPIENT,
        ErrorCode.CANNOT_TARGET_SELF,
        ErrorCode.RATE_LIMITED,
    ],
    tags=["moderation"],
)
async def file_report(request: web.Request, claims: Claims, body: ReportIn) -> web.Response:
    out = await request.app[MODERATION].report(claims, body, bearer_token(request))
    return json_response(out, status=200 if out["duplicate"] else 201)


@api.delete(
    "/v1/messages/{server_id}",
    summary="Remove a message you sent (unsend): signed tombstones replace its copies",
    description=(
        "The client id proves you sent it (the server id is a hash of sender and client "
        "id); the tombstones go to every current device of the conversation's users. "
        "A public room's messages are removed in the room (`forbidden` here)."
    ),
    response=Removed,
    auth=True,
    query={
        "client_id": "the id your device gave the message when it sent it",
        "conversation": "its conversation: `dm:<a>:<b>` (sorted user ids) or `room:<id>`",
    },
    params={"server_id": _SERVER_ID, "client_id": _CLIENT_ID, "conversation": _CONVERSATION},
    required_query=("client_id", "conversation"),
    errors=[
        ErrorCode.NOT_SENDER,
        ErrorCode.NOT_RECIPIENT,
        ErrorCode.ROOM_NOT_FOUND,
        ErrorCode.FORBIDDEN,
        ErrorCode.RATE_LIMITED,
    ],
    tags=["moderation"],
)
async def unsend(request: web.Request, claims: Claims) -> dict[str, object]:
    server_id = _path_id(request, "server_id", 32)
    client_id = _query_text(request, "client_id", _CLIENT_ID_MAX)
    if not is_client_id(client_id):
        raise _invalid("client_id", "printable ASCII without spaces expected")
    conversation = _query_text(request, "conversation", 200)
    return await request.app[MODERATION].unsend(
        claims, bearer_token(request), server_id, client_id, conversation
    )


@api.get(
    "/v1/moderation/keys",
    summary="The keys that sign tombstones (Ed25519, by key id): clients verify with them",
    response=ModerationKeys,
    tags=["moderation"],
)
async def moderation_keys(request: web.Request) -> dict[str, object]:
    return {"keys": request.app[MODERATION].keys.public_keys()}


@api.get(
    "/v1/admin/reports",
    summary="The report queue, in filing order (admins)",
    response=ReportsPage,
    auth=True,
    role="admin",
    query={
        "state": "only reports in this state (`open`, `actioned`, `dismissed`)",
        "after": "the `next` of the previous page",
        "limit": f"page size (default 50, at most {REPORTS_PAGE_MAX})",
    },
    params={
        "state": {"type": "string", "enum": list(REPORT_STATES)},
        "after": _REPORT_ID,
        "limit": int_schema(1, REPORTS_PAGE_MAX),
    },
    tags=["moderation"],
)
async def list_reports(request: web.Request, claims: Claims) -> dict[str, object]:
    state = request.query.get("state")
    if state is not None and state not in REPORT_STATES:
        raise ApiError(
            ErrorCode.VALIDATION_FAILED, "Unknown state.",
            details=[{"field": "state", "problem": f"one of {list(REPORT_STATES)}"}],
        )  # fmt: skip
    after = request.query.get("after")
    if after is not None and (len(after) != 28 or any(c not in "0123456789abcdef" for c in after)):
        raise ApiError(
            ErrorCode.VALIDATION_FAILED, "Not a report id.",
            details=[{"field": "after", "problem": "28 lowercase hex digits expected"}],
        )  # fmt: skip
    limit = query_int(request, "limit", 50, 1, REPORTS_PAGE_MAX)
    return await request.app[MODERATION].reports(claims, _ip(request), state, after, limit)


@api.get(
    "/v1/admin/reports/{report_id}",
    summary="One report, with the verified plaintext (admins)",
    response=Report,
    auth=True,
    role="admin",
    params={"report_id": _REPORT_ID},
    errors=[ErrorCode.REPORT_NOT_FOUND],
    tags=["moderation"],
)
async def get_report(request: web.Request, claims: Claims) -> dict[str, object]:
    report_id = _path_id(request, "report_id", 28)
    return await request.app[MODERATION].get_report(claims, _ip(request), report_id)


@api.post(
    "/v1/admin/reports/{report_id}/resolve",
    summary="Close an open report as actioned or dismissed, with a note (admins)",
    body=ResolveIn,
    response=Report,
    auth=True,
    role="admin",
    params={"report_id": _REPORT_ID},
    errors=[ErrorCode.REPORT_NOT_FOUND, ErrorCode.REPORT_RESOLVED],
    tags=["moderation"],
)
async def resolve_report(
    request: web.Request, claims: Claims, body: ResolveIn
) -> dict[str, object]:
    report_id = _path_id(request, "report_id", 28)
    moderation = request.app[MODERATION]
    return await moderation.resolve(claims, _ip(request), report_id, body.state, body.note)


@api.post(
    "/v1/admin/messages/{server_id}/remove",
    summary="Remove any message (admins): signed tombstones replace its copies",
    description=(
        "The admin never sees the message: only its id and metadata are used. Its sender "
        "and conversation come from a report of it, or from the body when none was filed."
    ),
    body=RemoveIn,
    response=Removed,
    auth=True,
    role="admin",
    params={"server_id": _SERVER_ID},
    errors=[ErrorCode.MESSAGE_NOT_FOUND, ErrorCode.ROOM_NOT_FOUND],
    tags=["moderation"],
)
async def admin_remove(request: web.Request, claims: Claims, body: RemoveIn) -> dict[str, object]:
    server_id = _path_id(request, "server_id", 32)
    moderation = request.app[MODERATION]
    return await moderation.admin_remove(
        claims, bearer_token(request), server_id, body, _ip(request)
    )
