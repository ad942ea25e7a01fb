"""Admin commands over rooms and the audit log: ``python -m services.rooms.cli --help``.

A thin client of the admin API (docs/moderation.md): it calls the same routes the
admin console would, through the load balancer, with an admin's access token, so
every command is checked (role ``admin``) and audited by the services exactly as
an API call is. The address is ``PARLEY_URL`` (default ``http://127.0.0.1:8080``)
and the token ``PARLEY_ADMIN_TOKEN`` (never printed). Output is the API's JSON.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
import typer

app = typer.Typer(help="Parley rooms administration (the admin API).", no_args_is_help=True)

ROOMS = "/rooms/v1/admin/rooms"


def _call(method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
    base = os.environ.get("PARLEY_URL", "http://127.0.0.1:8080").rstrip("/")
    token = os.environ.get("PARLEY_ADMIN_TOKEN", "")
    if not token:
        typer.echo("error: set PARLEY_ADMIN_TOKEN to an admin's access token", err=True)
        raise typer.Exit(2)
    params = {k: v for k, v in (query or {}).items() if v is not None}
    url = base + path + (f"?{urlencode(params)}" if params else "")

    async def run() -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.request(method, url, json=body, headers=headers) as resp:
                raw = await resp.read()
                return resp.status, (orjson.loads(raw) if raw else None)

    try:
        status, out = asyncio.run(run())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        typer.echo(f"error: cannot reach {base}: {exc!r}", err=True)
        raise typer.Exit(1) from None
    if status >= 400:
        err = (out or {}).get("error", {}) if isinstance(out, dict) else {}
        typer.echo(f"error: {err.get('code', status)}: {err.get('message', '')}", err=True)
        raise typer.Exit(1)
    if out is not None:
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    return out


def _room(room_id: str) -> str:
    return f"{ROOMS}/{quote(room_id, safe='')}"


@app.command("rooms")
def list_rooms(
    q: Annotated[str | None, typer.Option(help="A part of the name, any case.")] = None,
    kind: Annotated[str | None, typer.Option(help="private or public")] = None,
    state: Annotated[str | None, typer.Option(help="open or closed")] = None,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page")] = None,
    limit: Annotated[int, typer.Option(help="Page size (at most 200).")] = 50,
) -> None:
    """Every room, private ones included (metadata only)."""
    _call("GET", ROOMS, query={"q": q, "kind": kind, "state": state, "cursor": cursor,
                               "limit": limit})  # fmt: skip


@app.command("room")
def view_room(room_id: str) -> None:
    """A room's metadata, then its first page of members."""
    _call("GET", _room(room_id))
    _call("GET", _room(room_id) + "/members", query={"limit": 500})


@app.command("close")
def close(room_id: str) -> None:
    """Close a room (members are told)."""
    _call("POST", _room(room_id) + "/close")


@app.command("reopen")
def reopen(room_id: str) -> None:
    """Reopen a closed room."""
    _call("POST", _room(room_id) + "/reopen")


@app.command("kind")
def kind(room_id: str, new_kind: Annotated[str, typer.Argument(help="private or public")]) -> None:
    """Switch a room public <-> private (private: end-to-end encrypted from now on)."""
    _call("PUT", _room(room_id) + "/kind", {"kind": new_kind})


@app.command("remove")
def remove(room_id: str, user_id: str) -> None:
    """Remove a member (the owner too)."""
    _call("DELETE", _room(room_id) + f"/members/{quote(user_id, safe='')}")
    typer.echo(f"removed {user_id}")


@app.command("delete")
def delete(
    room_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete the room.")] = False,
) -> None:
    """Delete a room: it is gone for everyone but admins."""
    if not yes:
        typer.echo("error: deleting a room needs --yes", err=True)
        raise typer.Exit(2)
    _call("DELETE", _room(room_id))
    typer.echo(f"deleted {room_id}")


@app.command("post")
def post(
    room_id: str,
    text: str,
    client_id: Annotated[str | None, typer.Option(help="Idempotency key (resends).")] = None,
) -> None:
    """Post to a public room as its moderator."""
    cid = client_id or os.urandom(8).hex()
    _call("POST", _room(room_id) + "/messages", {"client_id": cid, "text": text})


@app.command("edit")
def edit(
    room_id: str,
    seq: int,
    text: str,
    reason: Annotated[str | None, typer.Option(help="Why (kept, not shown).")] = None,
) -> None:
    """Edit a public room's message (members see `edited_by_moderator`)."""
    _call("PATCH", _room(room_id) + f"/messages/{seq}", {"text": text, "reason": reason})


@app.command("hide")
def hide(
    room_id: str,
    seq: int,
    reason: Annotated[str | None, typer.Option(help="Why (kept, not shown).")] = None,
) -> None:
    """Hide a public room's message (members see `removed_by_moderator`)."""
    _call("POST", _room(room_id) + f"/messages/{seq}/hide", {"reason": reason})


@app.command("restore")
def restore(
    room_id: str,
    seq: int,
    reason: Annotated[str | None, typer.Option(help="Why (kept, not shown).")] = None,
) -> None:
    """Undo a removal of a public room's message: it is as it was before it."""
    _call("POST", _room(room_id) + f"/messages/{seq}/restore", {"reason": reason})


@app.command("revisions")
def revisions(room_id: str, seq: int) -> None:
    """Every revision of a message, the original first."""
    _call("GET", _room(room_id) + f"/messages/{seq}/revisions")


@app.command("audit")
def audit(
    actor_id: Annotated[str | None, typer.Option(help="Only this actor's entries.")] = None,
    action: Annotated[str | None, typer.Option(help="An action or prefix (`room.`).")] = None,
    target_id: Annotated[str | None, typer.Option(help="Only about this target.")] = None,
    service: Annotated[str | None, typer.Option(help="auth, rooms, ...")] = None,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page")] = None,
    limit: Annotated[int, typer.Option(help="Page size (at most 100).")] = 50,
) -> None:
    """The audit log of every service, newest first (served by the auth service)."""
    _call("GET", "/auth/v1/admin/audit", query={
        "actor_id": actor_id, "action": action, "target_id": target_id, "service": service,
        "cursor": cursor, "limit": limit,
    })  # fmt: skip


if __name__ == "__main__":
    app()
