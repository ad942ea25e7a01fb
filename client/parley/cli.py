"""``parley``: the command-line client (Typer + rich; ``chat`` uses prompt_toolkit).

Every command opens the account's encrypted store (passphrase from
``$PARLEY_PASSPHRASE`` or a hidden prompt), does its work through
:class:`parley.Client` and prints a sentence for every error.  See
docs/client.md for a walkthrough.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from parley import cli_rooms, paths
from parley.api import DEFAULT_SERVER, check_server
from parley.cli_support import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    QUEUED,
    Options,
    _ask,
    _check_password,
    _client,
    _new_secret,
    _options,
    _print_event,
    _run,
    _second_factor,
    _time,
    _with_status,
    console,
    err,
    plain_text,
    removed_by,
    safe_logging,
    safe_text,
    stays_queued,
)
from parley.client import (
    Client,
    ConnectionEvent,
    ErrorEvent,
    Event,
    KeyChanged,
    Message,
    PendingDevice,
    Receipt,
)
from parley.errors import ParleyError, SafetyNumberChanged
from parley.moderation import entry_server_id

app = typer.Typer(
    name="parley",
    help="Parley: end-to-end-encrypted chat from the command line.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    server: Annotated[
        str,
        typer.Option(
            "--server", "-s", envvar="PARLEY_SERVER", help="Base URL of the Parley server."
        ),
    ] = DEFAULT_SERVER,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="PARLEY_DATA_HOME",
            help="Where accounts are kept (default: the platform's user data directory).",
        ),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", "-u", envvar="PARLEY_USER", help="Account to use (default: last login)."
        ),
    ] = None,
) -> None:
    try:
        ctx.obj = Options(check_server(server), paths.check_home(paths.data_home(data_dir)), user)
    except ParleyError as exc:  # one sentence and exit 1, as every error (docs/client.md)
        err.print(f"[red]Error:[/] {safe_text(str(exc))}")
        raise typer.Exit(1) from None
    safe_logging()  # the SDK's warnings reach stderr through plain_text too


app.add_typer(cli_rooms.rooms_app, name="rooms")


# -- accounts -------------------------------------------------------------------------------


@app.command()
def signup(
    ctx: typer.Context,
    username: Annotated[
        str | None, typer.Option("--username", help="3-32 of a-z 0-9 . _ -")
    ] = None,
    email: Annotated[str | None, typer.Option("--email")] = None,
    password: Annotated[
        str | None, typer.Option("--password", envvar="PARLEY_PASSWORD", hidden=True)
    ] = None,
) -> None:
    """Create an account, generate this device's keys and publish them."""
    opts = _options(ctx)
    username = _username(username or typer.prompt("Username"))
    directory = paths.account_dir(opts.home, opts.server, username)
    if (directory / paths.STORE_FILE).exists():
        err.print(
            f"[red]Error:[/] the account {safe_text(username)} already exists on this machine "
            f"for {opts.server} ({directory}): use it (parley -u {safe_text(username)} ..., or "
            f"parley login {safe_text(username)}), or choose another username."
        )
        raise typer.Exit(1)
    email = email or typer.prompt("E-mail")
    if password is not None:
        try:
            _check_password(password)
        except typer.BadParameter as exc:
            err.print(f"[red]Error:[/] {safe_text(exc.message)}")
            raise typer.Exit(1) from None
    else:
        console.print(
            f"Choose the account password ({PASSWORD_MIN} to {PASSWORD_MAX} characters; "
            "it is sent to the server)."
        )
        password = _new_secret("Password", _check_password)

    async def run() -> None:
        await _fresh_account(
            opts,
            username,
            "Creating the account and publishing keys...",
            lambda client: client.signup(username, password, email),
        )
        console.print(f"Signed up as [bold]{safe_text(username)}[/] on {opts.server}.")
        console.print(f"[dim]Keys and history are kept encrypted in {directory}[/]")

    _run(run())


def _username(raw: str) -> str:
    """A username as given, checked before it names a directory: a clear error, not a
    path outside the account (``..`` was the data home, deleted after a failed login)."""
    try:
        return paths.check_username(raw)
    except paths.BadUsername as exc:
        err.print(f"[red]Error:[/] {safe_text(str(exc))}")
        raise typer.Exit(1) from None


def _remove_store(directory: Path, *, whole: bool) -> None:
    """Remove a store a failed sign-up, login or link created: its directory if this
    made it, else only the store's files (what else the directory holds stays)."""
    if whole:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        (directory / f"{paths.STORE_FILE}{suffix}").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()  # if nothing else is in it


async def _fresh_account(
    opts: Options,
    username: str,
    status: str,
    action: Callable[[Client], Awaitable[object]],
    *,
    keep_pending: bool = False,
) -> None:
    """Run ``action`` on the account's store; a store this created and that holds
    no linked account afterwards (the sign-up, login or link failed) is removed again."""
    directory = paths.account_dir(opts.home, opts.server, username)
    created = not (directory / paths.STORE_FILE).exists()
    made = not directory.exists()  # only a directory this made is removed whole
    failed = False
    async with _client(opts, username, create=True) as client:
        try:
            if keep_pending:
                await action(client)
            else:
                await _with_status(status, action(client))
        except BaseException:
            failed = created and (
                client.store.read().get("account") is None or not client.keys.linked()
            )
            raise
        finally:
            if failed:
                await client.close()
                _remove_store(directory, whole=made)
    paths.set_current_user(opts.home, opts.server, username)


@app.command()
def login(
    ctx: typer.Context,
    username: Annotated[str | None, typer.Argument(help="Your username")] = None,
    password: Annotated[
        str | None, typer.Option("--password", envvar="PARLEY_PASSWORD", hidden=True)
    ] = None,
    new_identity: Annotated[
        bool,
        typer.Option(
            "--new-identity",
            help="On a new install whose account has devices elsewhere: start a new account "
            "identity instead of linking (contacts see a new safety number; the other "
            "devices are removed)",
        ),
    ] = False,
) -> None:
    """Log in (with two-factor prompts); on a new device, generate and publish keys."""
    opts = _options(ctx)
    username = _username(username or typer.prompt("Username"))
    password = password or typer.prompt("Password", hide_input=True)

    async def run() -> None:
        await _fresh_account(
            opts,
            username,
            "Logging in and checking this device's keys...",
            lambda client: _login(client, username, password, new_identity),
        )
        console.print(f"Logged in as [bold]{safe_text(username)}[/].")

    _run(run())


async def _login(client: Client, username: str, password: str, new_identity: bool = False) -> str:
    # A wrong second-factor code is reported as an event, then asked again.
    client.add_listener(lambda e: _print_event(e, None) if isinstance(e, ErrorEvent) else None)
    return await client.login(
        username, password, second_factor=_second_factor, new_identity=new_identity
    )


@app.command()
def logout(ctx: typer.Context) -> None:
    """End this session on the server (keys and history stay on this device)."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            await client.logout()
        console.print("Logged out.")

    _run(run())


@app.command()
def whoami(ctx: typer.Context) -> None:
    """Show the account in use."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            me = await client.me()
        console.print(f"{safe_text(me['username'])} ({safe_text(me['user_id'])}) on {opts.server}")

    _run(run())


# -- messages ------------------------------------------------------------------------------


@app.command()
def send(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Recipient's username, or '#room'")],
    message: Annotated[str, typer.Argument(help="The message text")],
    accept_new_identity: Annotated[
        bool,
        typer.Option(
            "--accept-new-identity",
            help="If the contact's safety number changed (and you had not verified them), "
            "send to the new key without asking",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=1,
            help="Seconds to wait for the server to accept it; past that it stays in the "
            "outbox, is sent at the next connection, and the exit status is 3",
        ),
    ] = 30.0,
) -> None:
    """Send one end-to-end-encrypted message (to a contact, or to '#room')."""
    opts = _options(ctx)
    if not message.strip():
        err.print("[red]Error:[/] the message is empty: there is nothing to send.")
        raise typer.Exit(1)
    if cli_rooms.is_room(user):
        _run(cli_rooms.room_send(opts, user, message, timeout, accept_new_identity))
        return

    async def run() -> None:
        async with _client(opts) as client:
            news: list[Message] = []
            client.add_listener(lambda e: _on_background(e, news, client.username))
            client.check_text(message)  # before connecting: fails at once
            await _with_status("Connecting...", client.connect())

            async def attempt(accept: bool) -> str:
                return await _with_status(
                    f"Encrypting and sending to {safe_text(user)}...",
                    client.send(
                        user,
                        message,
                        wait="accepted",
                        timeout=timeout,
                        accept_new_identity=accept,
                    ),
                )

            try:
                try:
                    client_id = await attempt(accept_new_identity)
                except SafetyNumberChanged as exc:
                    if exc.verified or not sys.stdin.isatty():
                        raise
                    if not await _confirm_new_identity(exc):
                        raise ParleyError("Nothing was sent.") from None
                    client_id = await attempt(True)
            except TimeoutError:
                stays_queued(client)
            stored = False
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError, ParleyError):
                await asyncio.wait_for(_wait_status(client, client_id, "stored"), 10)
                stored = True
            where = "stored for" if stored else "accepted by the server for"
            console.print(f"Message {where} [bold]{safe_text(user)}[/] (end-to-end encrypted).")
            if news:
                console.print(
                    f"You have {len(news)} new message(s): run [bold]parley inbox[/] to read them."
                )

    _run(run())


async def _confirm_new_identity(exc: SafetyNumberChanged) -> bool:
    """Ask, in a terminal, before the first send to a contact's new (unverified) key."""
    name = safe_text(exc.username)
    console.print(f"[bold yellow]{name}'s safety number changed[/] since you last wrote.")
    if exc.old_safety_number:
        console.print(f"Old safety number: {exc.old_safety_number}")
    console.print(f"New safety number: [bold]{exc.new_safety_number}[/]")
    console.print(
        "It may be a reinstall or a new phone, or someone in the middle. To be sure, "
        f"compare the new number with {name} first (parley verify {name})."
    )
    answer = await _ask(
        plain_text(f"Send to {exc.username}'s new key anyway? [y/N]"),
        default="",
        show_default=False,
    )
    return answer.strip().lower() in ("y", "yes")


def _on_background(event: Event, news: list[Message], me: str | None) -> None:
    if isinstance(event, Message):
        news.append(event)
    elif not isinstance(event, Receipt):
        _print_event(event, me)


async def _wait_status(client: Client, client_id: str, status: str) -> None:
    while True:
        event = await client.next_event(Receipt, timeout=30)
        assert isinstance(event, Receipt)
        if event.client_id == client_id and event.status in (status, "delivered"):
            return
        if event.client_id == client_id and event.status == "failed":
            raise ParleyError(event.detail)


@app.command()
def inbox(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Show read messages too")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Do not fetch new messages")] = False,
) -> None:
    """Fetch waiting messages and show unread ones, by conversation."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            client.add_listener(
                lambda e: (
                    _print_event(e, client.username)
                    if isinstance(e, KeyChanged | ErrorEvent)
                    else None
                )
            )
            if not offline:
                await _with_status("Fetching messages...", client.connect())
            conversations = client.conversations()
            if not conversations:
                console.print("No conversations yet.")
            for conv in conversations:
                entries = client.history(conv["user_id"]) if all_ else conv["unread"]
                if not entries:
                    continue
                count = len(conv["unread"])
                console.rule(f"{safe_text(conv['username'])} ({count} unread)")
                for entry in entries:
                    _print_entry(entry, conv["username"], client.username)
                await client.mark_read(conv["user_id"])
            if conversations and not any(c["unread"] for c in conversations) and not all_:
                console.print("No unread messages.")

    _run(run())


def _print_entry(
    entry: dict[str, Any], peer_name: str, me: str | None, ids: str | None = None
) -> None:
    """One history line; ``ids`` (your user id) puts each message's short id in front
    (what `parley report` and `parley unsend` take)."""
    at = _time(entry.get("at"))
    if ids is not None:
        sid = entry_server_id(entry, ids) if entry.get("kind") in ("message", "removed") else None
        at = f"{sid[:8] if sid else ' ' * 8} {at}"
    text = safe_text(str(entry.get("text", "")))
    if entry.get("kind") == "removed":
        who = safe_text(me or "me") if entry.get("dir") == "out" else safe_text(peer_name)
        console.print(
            f"[dim]{at}[/] [dim italic]{who}: message {removed_by(entry.get('removed_by'))}[/]"
        )
    elif entry.get("dir") == "out":
        status = entry.get("status", "")
        console.print(
            f"[dim]{at}[/] [bold green]{safe_text(me or 'me')}[/]: {text} [dim]({status})[/]"
        )
    elif entry.get("dir") == "system":
        console.print(f"[dim]{at}[/] [bold yellow]{text}[/]")
    elif entry.get("kind") == "error":
        console.print(f"[dim]{at}[/] [red]{safe_text(peer_name)}: {text}[/]")
    else:
        console.print(f"[dim]{at}[/] [bold cyan]{safe_text(peer_name)}[/]: {text}")


@app.command()
def history(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Contact's username, or '#room'")],
    limit: Annotated[int, typer.Option("--limit", "-n")] = 50,
    before: Annotated[
        int | None,
        typer.Option("--before", help="A public room: the page before this message number"),
    ] = None,
    ids: Annotated[
        bool, typer.Option("--ids", help="Show each message's id (for report and unsend)")
    ] = False,
) -> None:
    """Show the stored conversation with a contact (no network), or a room's messages
    (a private room's as this device stored them; a public room's timeline, paged)."""
    opts = _options(ctx)
    if cli_rooms.is_room(user):
        _run(cli_rooms.room_history(opts, user, limit, before, ids))
        return

    async def run() -> None:
        async with _client(opts) as client:
            known = [
                p
                for p in client.store.read().peers()
                if user.lower() in (p.get("username"), p["user_id"])
            ]
            peer_id, name = (known[0]["user_id"], user) if known else await client.resolve(user)
            for entry in client.history(peer_id, limit):
                _print_entry(entry, name, client.username, client.user_id if ids else None)

    _run(run())


_MESSAGE_HELP = (
    "The message: its id as `parley history USER --ids` shows it (at least 4 characters), "
    "or 'last' with --with; a private room's message needs --with '#room'"
)


async def _peer(client: Client, user: str | None) -> str | None:
    """The conversation ``--with`` names: a contact's id, or ``room:<id>`` for '#room'."""
    if user is None:
        return None
    if cli_rooms.is_room(user):
        return f"room:{(await client.rooms.resolve(user))['room_id']}"
    known = [p for p in client.store.read().peers() if user.lower() in (p.get("username"),
             p["user_id"])]  # fmt: skip
    return str(known[0]["user_id"]) if known else (await client.resolve(user))[0]


@app.command()
def report(
    ctx: typer.Context,
    message: Annotated[str, typer.Argument(help=_MESSAGE_HELP)],
    user: Annotated[
        str | None, typer.Option("--with", help="The contact (or '#room') it came from")
    ] = None,
) -> None:
    """Report a message you received to the server's admins. Its text goes with the
    report (and only that message's), with the proof that it is what the sender sent."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            peer = await _peer(client, user)
            answer = await _with_status("Reporting...", client.report(message, peer))
        again = " (you had reported it already)" if answer.get("duplicate") else ""
        console.print(
            f"Reported{again}: the admins will review it (report {safe_text(answer['id'][:8])})."
        )

    _run(run())


@app.command()
def unsend(
    ctx: typer.Context,
    message: Annotated[str, typer.Argument(help=_MESSAGE_HELP)],
    user: Annotated[str | None, typer.Option("--with", help="The contact you sent it to")] = None,
) -> None:
    """Delete a message you sent, for everyone: it is removed from the server and every
    device of the conversation shows "removed" instead."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            peer = await _peer(client, user)
            await _with_status("Removing...", client.unsend(message, peer))
        console.print("Message removed: every device of the conversation will hide it.")

    _run(run())


@app.command()
def chat(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Contact's username, or '#room'")],
    no_typing: Annotated[
        bool,
        typer.Option(
            "--no-typing",
            help="In a room: do not tell its members (and the server) when you type.",
        ),
    ] = False,
) -> None:
    """Chat interactively: incoming messages appear as they arrive while you type.
    /help lists the commands; /quit (or Ctrl-D) leaves.  In a room ('#name'):
    /members, /invite USER, /leave; who is typing shows at the right of the prompt."""
    opts = _options(ctx)
    if cli_rooms.is_room(user):
        _run(cli_rooms.room_chat(opts, user, tell_typing=not no_typing))
        return
    _run(_chat(opts, user))


async def _chat(opts: Options, user: str) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    async with _client(opts) as client:
        peer_id, name = await client.resolve(user)
        for entry in client.history(peer_id, 20):
            _print_entry(entry, name, client.username)

        def show(event: Event) -> None:
            if isinstance(event, Message) and event.peer_id != peer_id:
                console.print(f"[dim](new message from {safe_text(event.username)})[/]")
            elif isinstance(event, Receipt):
                if event.status == "failed":
                    console.print(f"[red]Not sent:[/] {safe_text(event.detail)}")
            elif isinstance(event, ConnectionEvent) and event.state == "connected":
                console.print("[dim]Connected.[/]")
            else:
                _print_event(event, client.username, peer_id)

        session: PromptSession[str] = PromptSession()
        with patch_stdout(raw=True):
            client.add_listener(show)
            await _with_status("Connecting...", client.connect())
            await client.mark_read(peer_id)
            console.print(
                f"Chatting with [bold]{safe_text(name)}[/]. Type a message and press Enter; "
                "/quit to leave."
            )
            while True:
                try:
                    line = await session.prompt_async(plain_text(f"{client.username}> "))
                except (EOFError, KeyboardInterrupt):
                    break
                text = line.strip()
                if not text:
                    console.print("[yellow]Empty messages are not sent.[/] /help lists commands.")
                    continue
                if text.startswith("//"):
                    text = text[1:]  # a literal leading slash
                elif text.startswith("/"):
                    command = text.split()[0].lower()
                    if command in ("/quit", "/exit", "/q"):
                        break
                    if command == "/safety":
                        await _chat_safety(client, peer_id, name)
                    elif command in ("/report", "/unsend"):
                        await _chat_moderate(client, peer_id, command, text.split()[1:])
                    elif command in ("/help", "/?"):
                        console.print(CHAT_HELP)
                    else:
                        console.print(
                            f"[red]Unknown command {safe_text(command)}[/] (not sent). /help lists "
                            "the commands; start with // to send a line that begins with /."
                        )
                    continue
                await _chat_send(client, session, peer_id, text)
            await client.mark_read(peer_id)


async def _chat_safety(client: Client, peer_id: str, name: str) -> None:
    try:
        _, number = await client.safety_number(peer_id)
    except ParleyError as exc:  # offline, say: the chat goes on
        console.print(f"[red]Error:[/] {safe_text(str(exc))}")
        return
    if number is None:
        console.print(
            f"No safety number with {safe_text(name)} yet: they have no account key in the "
            "directory (they have not logged in on a device since signing up)."
        )
    else:
        console.print(f"Safety number with {safe_text(name)}: [bold]{number}[/]")


async def _chat_moderate(client: Client, peer_id: str, command: str, args: list[str]) -> None:
    """/report [ID] (default: their last message), /unsend [ID] (default: your last)."""
    try:
        if command == "/report":
            answer = await client.report(args[0] if args else "last-in", peer_id)
            console.print(f"Reported to the admins (report {safe_text(answer['id'][:8])}).")
        else:
            await client.unsend(args[0] if args else "last-out", peer_id)
            console.print("Removing it for everyone...")
    except ParleyError as exc:
        console.print(f"[red]Error:[/] {safe_text(str(exc))}")


CHAT_HELP = """Commands (anything else is sent as a message):
  /help      this list
  /safety    the safety number with this contact (compare it with theirs)
  /report [ID]  report their last message (or message ID) to the admins
  /unsend [ID]  delete your last message (or message ID) for everyone
  /quit      leave (also /exit, /q or Ctrl-D)
  //text     send "/text" (a message that starts with a slash)"""


async def _chat_send(client: Client, session: Any, peer_id: str, text: str) -> None:
    accept = False
    for _ in range(2):
        try:
            await client.send(
                peer_id, text, wait="accepted", timeout=15, accept_new_identity=accept
            )
        except TimeoutError:
            console.print(f"[yellow]{QUEUED}[/]")
        except SafetyNumberChanged as exc:
            if exc.verified or accept:
                console.print(f"[red]Not sent:[/] {safe_text(str(exc))}")
                return
            console.print(
                f"[bold yellow]{safe_text(exc.username)}'s safety number changed.[/] "
                f"New safety number: [bold]{exc.new_safety_number}[/]"
            )
            try:
                answer = await session.prompt_async(
                    plain_text(f"Send to {exc.username}'s new key anyway? [y/N] ")
                )
            except (EOFError, KeyboardInterrupt):
                answer = ""  # Ctrl-D or Ctrl-C at the question: no
            if answer.strip().lower() not in ("y", "yes"):
                console.print("Not sent.")
                return
            accept = True
            continue
        except ParleyError as exc:
            console.print(f"[red]Error:[/] {safe_text(str(exc))}")
        return


# -- keys and sessions -----------------------------------------------------------------------------


@app.command("safety-number")
def safety_number(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Contact's username")],
) -> None:
    """Show the safety number with a contact: compare it with theirs in person."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            name, number = await client.safety_number(user)
        if number is None:
            console.print(f"{safe_text(name)} has no keys yet.")
            return
        console.print(f"Safety number with [bold]{safe_text(name)}[/]:")
        console.print(f"[bold]{number}[/]")
        console.print("[dim]It is the same on both sides if no one is in the middle.[/]")

    _run(run())


@app.command()
def verify(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Contact's username")],
    yes: Annotated[
        bool, typer.Option("--yes", help="The numbers match: mark verified without asking")
    ] = False,
) -> None:
    """Compare the safety number with a contact and mark them verified: if their key
    changes later, nothing is sent to them until you verify again (or accept it)."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            name, number = await client.safety_number(user)
            if number is None:
                raise ParleyError(f"{name} has no keys yet: nothing to verify.")
            console.print(f"Safety number with [bold]{safe_text(name)}[/]:")
            console.print(f"[bold]{number}[/]")
            console.print(
                f"Compare it with the one {safe_text(name)} sees (parley safety-number "
                "<your name>), in person or by a call."
            )
            if not yes:
                answer = await _ask("Do the numbers match? [y/N]", default="", show_default=False)
                if answer.strip().lower() not in ("y", "yes"):
                    raise ParleyError(f"{name} was not marked verified.")
            await client.verify(user, number)
        console.print(f"{safe_text(name)} is verified.")

    _run(run())


@app.command("accept-identity")
def accept_identity(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Contact's username")],
) -> None:
    """Accept a contact's changed identity key without comparing safety numbers:
    sending to them resumes (they are no longer verified)."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            number = await client.accept_identity(user)
        if number is None:  # no key of theirs seen yet: nothing changed, nothing to accept
            raise ParleyError(
                f"No key of {user} has been seen yet: there is nothing to accept. "
                f"`parley verify {user}` fetches it and shows the safety number."
            )
        console.print(f"Accepted {safe_text(user)}'s current key (safety number {number}).")
        console.print(f"[dim]Not verified: compare it with parley verify {safe_text(user)}.[/]")

    _run(run())


outbox_app = typer.Typer(
    help="Messages waiting to be accepted by the server: list them, drop one.",
    no_args_is_help=False,
    invoke_without_command=True,
)
app.add_typer(outbox_app, name="outbox")


@outbox_app.callback()
def outbox(ctx: typer.Context) -> None:
    """Messages not yet accepted by the server (they are resent at every connect)."""
    if ctx.invoked_subcommand is not None:
        return
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            waiting = client.outbox()
            names = {p["user_id"]: p.get("username") for p in client.store.read().peers()}
            limit = client.max_frame_bytes
        if not waiting:
            console.print("The outbox is empty.")
            return
        table = Table("id", "to", "size", "message")
        for q in waiting:
            text = str(q.get("text") or "")
            size = f"{q['bytes']:,} B" + (" (too large)" if q["bytes"] > limit else "")
            table.add_row(
                str(q["client_id"])[:12],
                safe_text(str(names.get(q["peer"]) or q["peer"])),
                size,
                safe_text(text if len(text) <= 40 else text[:39] + "…"),
            )
        console.print(table)
        console.print("[dim]parley outbox drop ID removes one (it is never sent).[/]")

    _run(run())


@outbox_app.command("drop")
def outbox_drop(
    ctx: typer.Context,
    client_id: Annotated[str, typer.Argument(help="The message's id (or its first characters)")],
) -> None:
    """Remove a message from the outbox without sending it."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            dropped = await client.drop_outbox(client_id.strip())
        console.print(
            f"Dropped {dropped['client_id'][:12]} from the outbox: it will not be sent again "
            "(if the server took it just before a connection dropped, it was delivered)."
        )

    _run(run())


devices_app = typer.Typer(
    help="This account's devices: list, link a new one, approve, rename, remove.",
    no_args_is_help=False,
    invoke_without_command=True,
)
app.add_typer(devices_app, name="devices")


@devices_app.callback()
def devices(ctx: typer.Context) -> None:
    """This account's devices (from the device list signed by the account key)."""
    if ctx.invoked_subcommand is not None:
        return
    devices_list(ctx)


@devices_app.command("list")
def devices_list(ctx: typer.Context) -> None:
    """List this account's devices."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            found = await client.devices()
        table = Table(
            Column("device", no_wrap=True, overflow="fold"), "name",
            Column("fingerprint", overflow="fold"), "this device",
        )  # fmt: skip
        for d in found:
            table.add_row(
                safe_text(d["device_id"]), safe_text(d["name"]), safe_text(d["fingerprint"]),
                "yes" if d["this_device"] else "",
            )  # fmt: skip
        console.print(table)

    _run(run())


@devices_app.command("link")
def devices_link(
    ctx: typer.Context,
    username: Annotated[str | None, typer.Argument(help="Your username")] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for this device")] = None,
    password: Annotated[
        str | None, typer.Option("--password", envvar="PARLEY_PASSWORD", hidden=True)
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the approval")] = 600.0,
) -> None:
    """On a new device: log in and show a link code to approve on an existing device."""
    opts = _options(ctx)
    username = _username(username or typer.prompt("Username"))
    password = password or typer.prompt("Password", hide_input=True)

    async def run() -> None:
        async def link(client: Client) -> None:
            client.add_listener(
                lambda e: _print_event(e, None) if isinstance(e, ErrorEvent) else None
            )
            code = await client.link_device(
                username, password, second_factor=_second_factor, name=name
            )
            console.print("On a device already linked to this account, run:")
            # "--": a code can start with "-" (base64url), which click would take for an
            # option; one line, never wrapped (80 characters), so that it copies whole.
            console.print(f"[bold]parley devices approve -- {safe_text(code)}[/]", soft_wrap=True)
            # What the approving device must show: the fingerprint of this device's keys
            # (anyone with the password could otherwise get other keys shown there).
            console.print(
                "and check that it shows this device's fingerprint: "
                f"[bold]{safe_text(client.fingerprint())}[/]"
            )
            console.print("[dim]Waiting for the approval (Ctrl-C to give up)...[/]")
            await client.wait_linked(timeout)

        await _fresh_account(opts, username, "Logging in...", link, keep_pending=True)
        console.print(f"This device is now linked to [bold]{safe_text(username)}[/].")

    _run(run())


@devices_app.command("approve")
def devices_approve(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="The code the new device shows")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Link the new device that shows CODE to this account."""
    opts = _options(ctx)

    async def run() -> None:
        async def confirm(pending: PendingDevice) -> bool:
            console.print(
                f"Link device [bold]{safe_text(pending.name)}[/] (id "
                f"{safe_text(pending.device_id)}, fingerprint {safe_text(pending.fingerprint)}) "
                "to this account?"
            )
            if yes:
                return True
            answer = await _ask("Approve? [y/N]")
            return answer.strip().lower() in ("y", "yes")

        async with _client(opts) as client:
            pending = await client.approve_device(code.strip(), confirm)
        console.print(f"Linked {safe_text(pending.name)} (device {safe_text(pending.device_id)}).")

    _run(run())


@devices_app.command("rename")
def devices_rename(
    ctx: typer.Context,
    device_id: Annotated[int, typer.Argument(help="The device's id (see `parley devices`)")],
    name: Annotated[str, typer.Argument(help="Its new name")],
) -> None:
    """Rename one of this account's devices."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            await client.rename_device(device_id, name)
        console.print(f"Device {device_id} is now called {safe_text(name)}.")

    _run(run())


@devices_app.command("remove")
def devices_remove(
    ctx: typer.Context,
    device_id: Annotated[int, typer.Argument(help="The device's id (see `parley devices`)")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Remove a device from this account: it can no longer log in or receive messages."""
    opts = _options(ctx)
    if not yes and not typer.confirm(f"Remove device {device_id} from this account?"):
        raise typer.Exit(1)

    async def run() -> None:
        async with _client(opts) as client:
            await client.remove_device(device_id)
        console.print(f"Device {device_id} removed.")

    _run(run())


@app.command()
def sessions(
    ctx: typer.Context,
    revoke: Annotated[str | None, typer.Option("--revoke", help="End this session id")] = None,
) -> None:
    """This account's login sessions (and end one with --revoke)."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            if revoke:
                await client.access_token()
                await client.api.revoke_session(revoke)
                console.print(f"Session {safe_text(revoke)} ended.")
                return
            found = await client.auth_sessions()
        # The id whole on any terminal (`--revoke` needs it): the other columns give way.
        table = Table(
            Column("session", no_wrap=True, overflow="fold"), "device", "ip", "last used",
            "current",
        )  # fmt: skip
        for s in found:
            table.add_row(
                safe_text(s["session_id"]),
                safe_text(s.get("device") or ""),
                safe_text(s.get("ip") or ""),
                safe_text(str(s.get("last_used_at", ""))[:19]),
                "yes" if s.get("current") else "",
            )
        console.print(table)

    _run(run())
