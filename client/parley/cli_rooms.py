"""``parley rooms ...``, and rooms in ``parley chat|send|history '#room'``.

``rooms_app`` is added to the CLI's app by :mod:`parley.cli`.  A
room is named ``#name`` (any case, among your rooms) or by its id.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from parley_contract import frames as f
from rich.table import Column, Table

from parley.cli_support import (
    QUEUED,
    Options,
    _client,
    _options,
    _print_event,
    _run,
    _time,
    _with_status,
    console,
    plain_text,
    removed_by,
    safe_text,
    stays_queued,
)
from parley.client import (
    Client,
    ConnectionEvent,
    Event,
    Message,
    Receipt,
    RoomChanged,
    RoomMessage,
    RoomMessageChanged,
    RoomNotification,
    Typing,
)
from parley.errors import ParleyError
from parley.moderation import entry_server_id

if TYPE_CHECKING:
    from prompt_toolkit.completion import Completer, Completion

rooms_app = typer.Typer(
    help="Rooms: create, list, find, invite, accept or decline, join, leave, remove a "
    "member, members, notifications.",
    no_args_is_help=True,
)

RoomArg = Annotated[str, typer.Argument(help="The room: #name (one of yours) or its id")]
UserArg = Annotated[str, typer.Argument(help="A username")]


@rooms_app.command("create")
def rooms_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The room's name")],
    public: Annotated[
        bool,
        typer.Option(
            "--public/--private",
            help="Public: server-readable, listed in the directory, anyone may join. "
            "Private (default): end-to-end encrypted, by invitation only.",
        ),
    ] = False,
    topic: Annotated[str | None, typer.Option("--topic")] = None,
) -> None:
    """Create a room; you are its owner."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            name_ = name.strip().removeprefix("#")
            room = await client.rooms.create(name_, public=public, topic=topic)
        kind = "public" if public else "private (end-to-end encrypted)"
        console.print(
            f"Created {kind} room [bold]#{safe_text(room['name'])}[/] "
            f"({safe_text(room['room_id'])})."
        )

    _run(run())


@rooms_app.command("list")
def rooms_list(ctx: typer.Context) -> None:
    """Your rooms, and the rooms you are invited to."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            mine = await client.rooms.mine()
            invited = await client.rooms.invitations()
        if not mine and not invited:
            console.print("You are in no room yet (parley rooms create NAME, or join one).")
            return
        # Names and ids whole on any terminal (the room commands take them): folded, or
        # kept on one line while the other columns give way.
        table = Table(
            Column("room", overflow="fold"), "kind", "your role", "members", "state",
            Column("id", no_wrap=True, overflow="fold"),
        )  # fmt: skip
        for r in mine:
            table.add_row(
                f"#{safe_text(r['name'])}", safe_text(r["kind"]), safe_text(r.get("role") or ""),
                safe_text(r["members"]), safe_text(r["state"]), safe_text(r["room_id"]),
            )  # fmt: skip
        for r in invited:
            table.add_row(
                f"#{safe_text(r['name'])}", safe_text(r["kind"]), "invited",
                safe_text(r.get("members", "")), safe_text(r.get("state", "")),
                safe_text(r["room_id"]),
            )  # fmt: skip
        console.print(table)
        if invited:
            console.print("[dim]parley rooms accept '#name' (or decline) answers an invitation.[/]")

    _run(run())


@rooms_app.command("directory")
def rooms_directory(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="A part of the name")] = "",
) -> None:
    """Public rooms (anyone may join them)."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            found = await client.rooms.directory(query.strip().removeprefix("#"))
        if not found:
            console.print("No public room matches.")
            return
        table = Table(
            Column("room", overflow="fold"), "members", "topic",
            Column("id", no_wrap=True, overflow="fold"),
        )  # fmt: skip
        for r in found:
            table.add_row(
                f"#{safe_text(r['name'])}", safe_text(r["members"]),
                safe_text(r.get("topic") or ""), safe_text(r["room_id"]),
            )  # fmt: skip
        console.print(table)

    _run(run())


def _simple(ctx: typer.Context, work: Any) -> None:
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            console.print(await work(client))

    _run(run())


@rooms_app.command("invite")
def rooms_invite(ctx: typer.Context, room: RoomArg, user: UserArg) -> None:
    """Invite a user to a room."""

    async def work(client: Client) -> str:
        found = await client.rooms.resolve(room)
        await client.rooms.invite(found["room_id"], user)
        return f"Invited {safe_text(user)} to #{safe_text(found['name'])}."

    _simple(ctx, work)


@rooms_app.command("accept")
def rooms_accept(ctx: typer.Context, room: RoomArg) -> None:
    """Accept an invitation: you become a member."""

    async def work(client: Client) -> str:
        found = await client.rooms.resolve(room, invited=True)
        await client.rooms.accept(found["room_id"])
        return f"You are now a member of #{safe_text(found['name'])}."

    _simple(ctx, work)


@rooms_app.command("decline")
def rooms_decline(ctx: typer.Context, room: RoomArg) -> None:
    """Decline an invitation."""

    async def work(client: Client) -> str:
        found = await client.rooms.resolve(room, invited=True)
        await client.rooms.decline(found["room_id"])
        return f"Declined the invitation to #{safe_text(found['name'])}."

    _simple(ctx, work)


@rooms_app.command("join")
def rooms_join(ctx: typer.Context, room: RoomArg) -> None:
    """Join a public room (see parley rooms directory)."""

    async def work(client: Client) -> str:
        found = await client.rooms.resolve(room, invited=True, directory=True)
        await client.rooms.join(found["room_id"])
        return f"You joined #{safe_text(found['name'])}."

    _simple(ctx, work)


@rooms_app.command("leave")
def rooms_leave(ctx: typer.Context, room: RoomArg) -> None:
    """Leave a room."""

    async def work(client: Client) -> str:
        left = await client.rooms.leave(room)
        return f"You left #{safe_text(left['name'])}."

    _simple(ctx, work)


@rooms_app.command("remove")
def rooms_remove(ctx: typer.Context, room: RoomArg, user: UserArg) -> None:
    """Remove a member (owner and moderators)."""

    async def work(client: Client) -> str:
        found = await client.rooms.resolve(room)
        await client.rooms.remove(found["room_id"], user)
        return f"Removed {safe_text(user)} from #{safe_text(found['name'])}."

    _simple(ctx, work)


@rooms_app.command("ban")
def rooms_ban(
    ctx: typer.Context,
    room: RoomArg,
    user: UserArg,
    lift: Annotated[bool, typer.Option("--lift", help="Lift the ban instead.")] = False,
) -> None:
    """Ban a user (removed if a member; no joining or invitations until the ban is
    lifted), or lift a ban (owner and moderators)."""

    async def work(client: Client) -> str:
        found = await client.rooms.ban(room, user, ban=not lift)
        if lift:
            return f"{safe_text(user)} may join #{safe_text(found['name'])} again."
        return f"Banned {safe_text(user)} from #{safe_text(found['name'])}."

    _simple(ctx, work)


@rooms_app.command("bans")
def rooms_bans(ctx: typer.Context, room: RoomArg) -> None:
    """Who is banned from a room (owner and moderators)."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            bans = await client.rooms.bans(room)
        if not bans:
            console.print("Nobody is banned from this room.")
            return
        table = Table("user", "banned by", "since")
        for b in bans:
            table.add_row(
                safe_text(str(b["username"])),
                safe_text(str(b["banned_by_username"])),
                _time(b["at"]),
            )
        console.print(table)

    _run(run())


@rooms_app.command("moderator")
def rooms_moderator(
    ctx: typer.Context,
    room: RoomArg,
    user: UserArg,
    remove: Annotated[
        bool, typer.Option("--remove", help="Make them a plain member again.")
    ] = False,
) -> None:
    """Make a member a moderator, or a plain member again (the owner only)."""

    async def work(client: Client) -> str:
        found = await client.rooms.set_moderator(room, user, moderator=not remove)
        role = "a plain member" if remove else "a moderator"
        return f"{safe_text(user)} is {role} of #{safe_text(found['name'])} now."

    _simple(ctx, work)


@rooms_app.command("owner")
def rooms_owner(ctx: typer.Context, room: RoomArg, user: UserArg) -> None:
    """Hand the room over to a member (the owner only; you become a moderator)."""

    async def work(client: Client) -> str:
        found = await client.rooms.hand_over(room, user)
        return f"{safe_text(user)} owns #{safe_text(found['name'])} now; you are a moderator."

    _simple(ctx, work)


@rooms_app.command("set")
def rooms_set(
    ctx: typer.Context,
    room: RoomArg,
    name: Annotated[str | None, typer.Option("--name", help="Rename the room")] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="A new topic ('' clears it)")] = None,
    close: Annotated[
        bool, typer.Option("--close", help="No new messages or members; history stays")
    ] = False,
    reopen: Annotated[bool, typer.Option("--open", help="Open a closed room again")] = False,
) -> None:
    """Rename a room, change its topic, or close / open it (owner and moderators)."""
    if close and reopen:
        raise typer.BadParameter("--close or --open, not both.")
    state = "closed" if close else "open" if reopen else None

    async def work(client: Client) -> str:
        was = await client.rooms.resolve(room)
        now = await client.rooms.update(was["room_id"], name=name, topic=topic, state=state)
        said = [f"renamed #{safe_text(was['name'])} to #{safe_text(now['name'])}"] if name else []
        if topic is not None:
            said.append("topic set" if now.get("topic") else "topic cleared")
        if state is not None:
            said.append("closed" if now["state"] == "closed" else "open")
        return f"#{safe_text(now['name'])}: {', '.join(said)}."

    _simple(ctx, work)


@rooms_app.command("members")
def rooms_members(ctx: typer.Context, room: RoomArg) -> None:
    """A room's members, in join order."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            members = await client.rooms.members(room)
        console.print(_members_table(members))

    _run(run())


def _members_table(members: list[dict[str, Any]]) -> Table:
    table = Table("member", "role", "joined", "now")
    for m in members:
        table.add_row(
            safe_text(m["username"]), safe_text(m["role"]), _time(m.get("joined_at")),
            "[green]online[/]" if m.get("online") else "",
        )  # fmt: skip
    return table


@rooms_app.command("notifications")
def rooms_notifications(
    ctx: typer.Context,
    read: Annotated[bool, typer.Option("--read", help="Then mark them all read")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
) -> None:
    """Your mentions in rooms, newest first."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            page = await client.rooms.notifications(limit=limit)
            items = page.get("notifications", [])
            if not items:
                console.print("No notifications.")
            for n in items:
                mark = " " if n.get("read") else "*"
                name = await client.messenger.name_of(str(n["sender"]))
                where = ""
                if n.get("message_seq"):  # a public room's: the page that ends with it
                    where = (
                        f" (parley history '#{safe_text(n['room_name'])}' "
                        f"--before {int(n['message_seq']) + 1})"
                    )
                console.print(
                    f"{mark} [dim]{_time(n.get('at'))}[/] [bold]{safe_text(name)}[/] mentioned you "
                    f"in #{safe_text(n['room_name'])}{where}: {safe_text(n.get('excerpt', ''))}"
                )
            unread = int(page.get("unread", 0))
            if read and items:
                unread = await client.rooms.mark_notifications_read(int(items[0]["seq"]))
            console.print(f"[dim]{unread} unread.[/]")

    _run(run())


# -- '#room' in send, history and chat ------------------------------------------------------


def is_room(target: str) -> bool:
    return target.startswith("#")


async def room_send(
    opts: Options, target: str, message: str, timeout: float = 30.0, accept: bool = False
) -> None:
    async with _client(opts) as client:
        client.check_text(message)
        room = await client.rooms.resolve(target)
        if room.get("kind") == "private":
            await _with_status("Connecting...", client.connect())
        sending = client.rooms.send(
            room["room_id"], message, timeout=timeout, accept_new_identity=accept
        )
        try:
            await _with_status(f"Sending to #{safe_text(room['name'])}...", sending)
        except TimeoutError:
            stays_queued(client)  # queued (a key hand-out that timed out raises NotSent)
        how = "end-to-end encrypted" if room.get("kind") == "private" else "public"
        console.print(f"Message sent to [bold]#{safe_text(room['name'])}[/] ({how}).")


# How a changed public-room message is shown (docs/moderation.md).
MARKERS = {
    "edited": "[dim](edited)[/]",
    "edited_by_moderator": "[dim](edited by moderator)[/]",
    "removed_by_moderator": "[dim italic]\\[removed by moderator][/]",
    "deleted_by_author": "[dim italic]\\[deleted by author][/]",
}


def _marked(text: str, marker: str | None) -> str:
    """``text`` (already escaped) with its marker: a removal replaces it."""
    shown = MARKERS.get(marker or "")
    if shown is None:
        return text
    if marker in ("removed_by_moderator", "deleted_by_author"):
        return shown
    return f"{text} {shown}"


def _print_room_entry(entry: dict[str, Any], me: str | None, ids: str | None = None) -> None:
    at = _time(entry.get("at"))
    if ids is not None:  # your user id: each private-room message's short id in front
        sid = entry_server_id(entry, ids) if entry.get("kind") in ("message", "removed") else None
        at = f"{sid[:8] if sid else ' ' * 8} {at}"
    text = _marked(safe_text(str(entry.get("text", ""))), entry.get("marker"))
    seq = (
        f"[dim]#{safe_text(entry['seq'])}[/] "
        if entry.get("seq") and "server_id" not in entry
        else ""
    )
    if entry.get("kind") == "error":
        console.print(
            f"[dim]{at}[/] [red]{safe_text(str(entry.get('username') or '?'))}: {text}[/]"
        )
    elif entry.get("kind") == "removed":
        who = (
            safe_text(me or "me")
            if entry.get("dir") == "out"
            else safe_text(str(entry.get("username") or str(entry.get("sender", ""))[:8]))
        )
        console.print(
            f"[dim]{at}[/] [dim italic]{who}: message {removed_by(entry.get('removed_by'))}[/]"
        )
    elif entry.get("dir") == "out":
        console.print(f"{seq}[dim]{at}[/] [bold green]{safe_text(me or 'me')}[/]: {text}")
    else:
        name = safe_text(str(entry.get("username") or str(entry.get("sender", ""))[:8]))
        console.print(f"{seq}[dim]{at}[/] [bold cyan]{name}[/]: {text}")


async def room_history(
    opts: Options, target: str, limit: int, before: int | None, ids: bool = False
) -> None:
    async with _client(opts) as client:
        page = await client.rooms.history(target, limit=limit, before=before)
        room = page["room"]
        held = before is not None and page["next_before"] == before
        if held:  # a message before `before` still being sent (Rooms.history waited for it)
            console.print(
                f"Messages before {before} cannot be read yet: one is still being sent."
                " Try again in a moment."
            )
        elif not page["messages"]:
            console.print(f"No messages in #{safe_text(room['name'])} yet.")
        for entry in page["messages"]:
            _print_room_entry(entry, client.username, client.user_id if ids else None)
        if page["next_before"] is not None:
            console.print(
                f"[dim]Older messages: parley history '#{safe_text(room['name'])}' "
                f"--before {safe_text(page['next_before'])}[/]"
            )


ROOM_CHAT_HELP = """Commands (anything else is sent to the room):
  /help            this list
  /members         who is in the room
  /invite <user>   invite someone
  /leave           leave the room (and this chat)
  /edit <#n> <text>  edit your message #n (a public room's; shown as "edited")
  /delete <#n>     delete your message #n (a public room's); as owner or
                   moderator, remove a member's
  /restore <#n>    as owner or moderator, undo the removal of message #n
  /quit            close the chat (also /exit, /q or Ctrl-D); you stay in the room
  //text           send "/text" (a message that starts with a slash)
@name in a message mentions a member (they are notified); Tab completes @name
and /commands."""


ROOM_COMMANDS = (
    "/help", "/members", "/invite", "/leave", "/edit", "/delete", "/restore", "/quit",
)  # fmt: skip


def room_completer(names: Callable[[], Iterable[str]]) -> Completer:
    """Tab completion in a room's chat: ``@`` + the start of a member's username
    (any case) completes it; a ``/`` at the start of the line completes a command."""
    from prompt_toolkit.completion import Completer, Completion

    class RoomCompleter(Completer):
        def get_completions(self, document: Any, complete_event: Any) -> Iterator[Completion]:
            before = document.text_before_cursor
            word = before.split()[-1] if before and not before[-1].isspace() else ""
            if word.startswith("@"):
                typed = word[1:].lower()
                for name in sorted(set(names()), key=str.lower):
                    if name.lower().startswith(typed):
                        yield Completion("@" + name + " ", start_position=-len(word),
                                         display="@" + name)  # fmt: skip
            elif before.startswith("/") and " " not in before:
                for command in ROOM_COMMANDS:
                    if command.startswith(before.lower()):
                        yield Completion(command, start_position=-len(before))

    return RoomCompleter()


class ShownOrder:
    """The room numbers (``seq``) of the messages a live chat has shown. A message can
    come after messages it was sent before (a private room's message that waited for
    its sender's key): a terminal cannot put it in its place above (the room's
    history does), so the chat says how far back it belongs."""

    KEEP = 1_000

    def __init__(self) -> None:
        self.shown: list[int] = []  # ascending, the last KEEP

    def show(self, seq: int | None) -> int:
        """``seq`` is shown now: how many messages shown before it come after it."""
        if seq is None:
            return 0
        at = bisect.bisect_right(self.shown, seq)
        later = len(self.shown) - at
        self.shown.insert(at, seq)
        del self.shown[: -self.KEEP]
        return later


CATCH_UP_PAGE = 50
"""After a reconnect, a public room's timeline is read back this many messages a page."""


class PublicGap:
    """The posts of a public room a live chat has shown, to show what it missed: a
    ``room_post`` is live only (docs/protocol.md), so after every reconnect the chat
    reads the timeline back to the last post it showed and shows the rest, oldest
    first; posts pushed meanwhile are held until that is done, and each number is
    shown once (before, the chat said "Connected." and never showed the posts of the
    gap)."""

    KEEP = 1_000

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.last = 0  # the highest number shown
        self.held: list[RoomMessage] | None = None  # pushed while the timeline is read
        self.lock = asyncio.Lock()  # one read at a time (a reconnect during one waits)

    def saw(self, seq: int) -> bool:
        """``seq`` is shown now: False if it was already."""
        if seq in self.seen:
            return False
        self.seen.add(seq)
        self.last = max(self.last, seq)
        if len(self.seen) > 2 * self.KEEP:
            self.seen = {s for s in self.seen if s > self.last - self.KEEP}
        return True

    async def missed(self, client: Client, room_id: str) -> list[dict[str, Any]]:
        """The timeline's messages after the last one shown, oldest first, paged back."""
        after, before = self.last, None
        found: list[dict[str, Any]] = []
        while True:
            page = await client.rooms.history(room_id, limit=CATCH_UP_PAGE, before=before)
            messages = page["messages"]  # oldest first
            newer = [m for m in messages if int(m.get("seq") or 0) > after]
            found[:0] = newer
            back = page.get("next_before")
            if back is None or not messages or len(newer) < len(messages):
                return found  # the start, or back to what was shown
            if before is not None and int(back) >= before:
                return found  # held back by a number in flight: the rest is live
            before = int(back)


def late_note(later: int) -> str:
    return f"[dim](arrived late: sent before the last {later} message{'s' * (later > 1)} above)[/]"


class TypingLine:
    """Who is typing in the room, shown at the right of the prompt's line (a toolbar
    under it needs a terminal that reports its cursor position): each name until
    ``TYPING_TTL_S`` after their last notice (the prompt redraws every second)."""

    def __init__(self) -> None:
        self.until: dict[str, tuple[str, float]] = {}

    def on(self, event: Typing) -> None:
        if event.typing:
            self.until[event.user_id] = (event.username, time.monotonic() + f.TYPING_TTL_S)
        else:
            self.until.pop(event.user_id, None)

    def text(self) -> str:
        now = time.monotonic()
        names = sorted(name for name, until in self.until.values() if until > now)
        if not names:
            return ""
        if len(names) > 3:
            return f"{len(names)} people are typing..."
        shown = plain_text(", ".join(names))  # a room member's name, shown as it is
        return f"{shown} {'is' if len(names) == 1 else 'are'} typing..."


class TypingSaid:
    """Says ``typing`` for this device while the user types a message (not a
    /command): at most every ``EVERY_S``, and a stop when the line is sent."""

    EVERY_S = 3.0
    MARGIN_S = 0.5

    def __init__(self, client: Client, room_id: str) -> None:
        self.client, self.room_id = client, room_id
        self.said = 0.0  # the last start since the last stop (0: none)
        # The last start, a stop or not since: the gateway refuses a start less than
        # TYPING_EVERY_S after the last one, even with a stop between (rate_limited);
        # half a second more here, as the gateway times frames as they reach it.
        self.started = -float(f.TYPING_EVERY_S) - self.MARGIN_S
        self.tasks: set[asyncio.Task[None]] = set()

    def changed(self, text: str) -> None:
        now = time.monotonic()
        if (
            text and not text.startswith("/") and now - self.said >= self.EVERY_S
            and now - self.started >= f.TYPING_EVERY_S + self.MARGIN_S
        ):  # fmt: skip
            self.said = self.started = now
            self._spawn(True)

    def sent(self) -> None:
        if self.said and time.monotonic() - self.said <= f.TYPING_TTL_S:
            self._spawn(False)
        self.said = 0.0

    def _spawn(self, typing: bool) -> None:
        task = asyncio.ensure_future(self._say(typing))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _say(self, typing: bool) -> None:
        try:
            await self.client.rooms.typing(self.room_id, typing)
        except ParleyError:
            pass  # a hint: not connected right now, nothing to tell


async def room_chat(opts: Options, target: str, tell_typing: bool = True) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    async with _client(opts) as client:
        room = await client.rooms.resolve(target)
        if room.get("role") is None:
            raise ParleyError(f"You are not a member of #{room['name']}.")
        rid, name = str(room["room_id"]), str(room["name"])
        typists = TypingLine()
        order = ShownOrder()
        gap = PublicGap()
        room_kind = [room.get("kind")]  # changes with a RoomChanged "kind"
        tasks: set[asyncio.Task[None]] = set()
        redraw: list[Callable[[], None]] = []

        async def catch_up() -> None:
            """After a reconnect: what the public room got while the socket was down."""
            async with gap.lock:
                gap.held = []
                try:
                    missed = await gap.missed(client, rid)
                except (ParleyError, TimeoutError) as exc:
                    missed = []
                    console.print(
                        "[yellow]Could not read what was posted while disconnected[/] "
                        f"({safe_text(str(exc) or type(exc).__name__)}): `parley history` "
                        "shows it."
                    )
                finally:
                    held, gap.held = gap.held, None
                missed = [m for m in missed if gap.saw(int(m["seq"]))]
                if missed:
                    n = len(missed)
                    console.print(f"[dim]{n} message{'s' * (n > 1)} posted while disconnected:[/]")
                for entry in missed:
                    if later := order.show(int(entry["seq"])):
                        console.print(late_note(later))
                    _print_room_entry(entry, client.username)
                for event in held:  # pushed meanwhile: now in turn, once
                    show(event)

        def show(event: Event) -> None:
            if isinstance(event, Typing):
                if event.room_id == rid:
                    typists.on(event)
                    for again in redraw:
                        again()
            elif isinstance(event, RoomMessage):
                if event.room_id == rid:  # whoever wrote it has stopped typing
                    typists.until.pop(event.sender_id, None)
                public = event.public and event.seq is not None
                if event.room_id != rid:
                    console.print(
                        f"[dim](new message in another room from {safe_text(event.username)})[/]"
                    )
                elif public and gap.held is not None:
                    gap.held.append(event)  # shown after the missed posts being read
                elif public and not gap.saw(int(event.seq or 0)):
                    pass  # the timeline read after a reconnect showed it
                elif not event.here:  # this chat's own post was typed here: its number
                    if later := order.show(event.seq):
                        console.print(late_note(later))
                    _print_room_entry(
                        {"at": event.sent_at, "text": event.text, "username": event.username,
                         "dir": "out" if event.own else "in", "seq": event.seq},
                        client.username,
                    )  # fmt: skip
                elif event.seq is not None:  # your own post: its number, for /edit, /delete
                    console.print(f"[dim]#{event.seq} posted.[/]")
            elif isinstance(event, RoomMessageChanged):
                if event.room_id == rid:
                    text = _marked(safe_text(event.text), event.marker)
                    console.print(f"[dim]#{event.seq} is now:[/] {text}")
            elif isinstance(event, RoomChanged):
                if event.room_id == rid and event.change == "kind":
                    room_kind[0] = event.kind
                if event.room_id == rid:
                    console.print(f"[bold yellow]{_room_change(event, client.user_id)}[/]")
            elif isinstance(event, RoomNotification):
                who = client.messenger._names.get(event.sender, event.sender[:8])
                console.print(
                    f"[bold yellow]@ {safe_text(who)} mentioned you in "
                    f"#{safe_text(event.room_name)}:[/] {safe_text(event.excerpt)}"
                )
            elif isinstance(event, Message):
                console.print(f"[dim](new message from {safe_text(event.username)})[/]")
            elif isinstance(event, Receipt):
                if event.status == "failed":
                    console.print(f"[red]Not sent:[/] {safe_text(event.detail)}")
            elif isinstance(event, ConnectionEvent) and event.state == "connected":
                console.print("[dim]Connected.[/]")
                if room_kind[0] == "public":  # live posts only: read the timeline for the gap
                    task = asyncio.ensure_future(catch_up())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            else:
                _print_event(event, client.username)

        members: list[str] = []

        async def load_members() -> None:
            try:
                found = await client.rooms.members(rid)
                me = client.username
                members[:] = [str(m["username"]) for m in found
                              if m.get("username") and m["username"] != me]  # fmt: skip
            except ParleyError:
                pass  # completion is a convenience: the chat works without it

        session: PromptSession[str] = PromptSession(
            completer=room_completer(lambda: members), complete_while_typing=False,
            rprompt=lambda: typists.text(), refresh_interval=1.0,
        )  # fmt: skip
        redraw.append(session.app.invalidate)
        said = TypingSaid(client, rid)
        if tell_typing:
            session.default_buffer.on_text_changed += lambda buf: said.changed(buf.text)
        with patch_stdout(raw=True):
            await _with_status("Connecting...", client.connect())
            await load_members()
            page = await client.rooms.history(rid, limit=20)
            for entry in page["messages"]:
                order.show(entry.get("seq"))
                if room.get("kind") == "public" and entry.get("seq"):
                    gap.saw(int(entry["seq"]))
                _print_room_entry(entry, client.username)
            client.add_listener(show)
            kind = "end-to-end encrypted" if room.get("kind") == "private" else "public"
            console.print(
                f"In [bold]#{safe_text(name)}[/] ({kind}). Type a message and press Enter; "
                "/help lists commands."
            )
            try:
                while True:
                    try:
                        line = await session.prompt_async(
                            plain_text(f"{client.username} #{name}> ")
                        )
                    except (EOFError, KeyboardInterrupt):
                        break
                    said.sent()
                    text = line.strip()
                    if not text:
                        console.print(
                            "[yellow]Empty messages are not sent.[/] /help lists commands."
                        )
                        continue
                    if text.startswith("//"):
                        text = text[1:]
                    elif text.startswith("/"):
                        if await _room_command(client, rid, name, text):
                            break
                        await load_members()  # /invite, /members: who is in the room now
                        continue
                    try:
                        await client.rooms.send(rid, text, timeout=15)
                    except TimeoutError:
                        console.print(f"[yellow]{QUEUED}[/]")
                    except ParleyError as exc:
                        console.print(f"[red]Error:[/] {safe_text(str(exc))}")
            finally:
                for task in tasks:  # a timeline read under way
                    task.cancel()


def _room_change(event: RoomChanged, me: str | None) -> str:
    if event.change == "kind" and event.kind == "private":
        return ("An admin made this room private: new messages are end-to-end encrypted; "
                "earlier ones stay as they were.")  # fmt: skip
    if event.change == "kind":
        return ("An admin made this room public: new messages are readable by the server; "
                "earlier encrypted ones stay unreadable to it.")  # fmt: skip
    if event.change == "state":
        return f"The room is {safe_text(event.state)} now."
    if event.change == "deleted":
        return "An admin deleted this room."
    if event.change == "settings":
        topic = f" Topic: {safe_text(event.topic)}" if event.topic else " No topic."
        return f"The room is #{safe_text(event.name or '')} now.{topic}"
    you = event.user_id == me
    who = "You" if you else safe_text(event.username or "A member")
    if event.change == "role" and event.role == "owner":
        return f"{who} {'are' if you else 'is'} the room's owner now (the old owner a moderator)."
    if event.change == "role":
        role = "a moderator" if event.role == "moderator" else "a plain member"
        return f"{who} {'are' if you else 'is'} {role} now."
    if event.change == "member_left":
        return f"{who} left the room."
    return f"{who} {'were' if you else 'was'} removed from this room."


def _seq_arg(arg: str) -> tuple[int, str] | None:
    """``#12 rest`` or ``12 rest`` -> (12, "rest"); None if it does not start with one."""
    first, _, rest = arg.partition(" ")
    digits = first.removeprefix("#")
    # ASCII only ("²".isdigit() is true, int() refuses it) and short (int() refuses
    # over 4,300 digits): anything else is not a message number.
    ok = digits.isascii() and digits.isdigit() and len(digits) <= 18
    return (int(digits), rest.strip()) if ok else None


async def _room_command(client: Client, rid: str, name: str, text: str) -> bool:
    """Run a chat command; True to leave the chat."""
    command, _, arg = text.partition(" ")
    command, arg = command.lower(), arg.strip()
    try:
        if command in ("/quit", "/exit", "/q"):
            return True
        if command in ("/help", "/?"):
            console.print(ROOM_CHAT_HELP)
        elif command == "/members":
            console.print(_members_table(await client.rooms.members(rid)))
        elif command == "/invite":
            if not arg:
                console.print("[red]Error:[/] /invite needs a username: /invite <user>.")
            else:
                await client.rooms.invite(rid, arg)
                console.print(f"Invited {safe_text(arg)} to #{safe_text(name)}.")
        elif command == "/leave":
            await client.rooms.leave(rid)
            console.print(f"You left #{safe_text(name)}.")
            return True
        elif command in ("/edit", "/delete", "/restore"):
            parsed = _seq_arg(arg)
            if parsed is None or (command == "/edit" and not parsed[1]):
                usage = "/edit <#n> <new text>" if command == "/edit" else f"{command} <#n>"
                console.print(f"[red]Error:[/] {command} needs a message number: {usage}.")
            elif command == "/edit":
                await client.rooms.edit(rid, parsed[0], parsed[1])
                console.print(f"Edited #{parsed[0]}.")
            elif command == "/delete":
                await client.rooms.delete(rid, parsed[0])
                console.print(f"Deleted #{parsed[0]}.")
            else:
                await client.rooms.restore(rid, parsed[0])
                console.print(f"Restored #{parsed[0]}.")
        else:
            console.print(
                f"[red]Unknown command {safe_text(command)}[/] (not sent). /help lists the "
                "commands; start with // to send a line that begins with /."
            )
    except ParleyError as exc:
        console.print(f"[red]Error:[/] {safe_text(str(exc))}")
    return False
