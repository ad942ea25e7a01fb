"""``parley``: the command-line client (Typer + rich; ``chat`` uses prompt_toolkit).

Every command opens the account's encrypted store (passphrase from
``$PARLEY_PASSPHRASE`` or a hidden prompt), does its work through
:class:`parley.Client` and prints a sentence for every error.  See
docs/client.md for a walkthrough.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from parley import paths
from parley.api import DEFAULT_SERVER
from parley.client import (
    Client,
    ConnectionEvent,
    DecryptFailed,
    ErrorEvent,
    Event,
    KeyChanged,
    Message,
    PendingDevice,
    Receipt,
    SecondFactor,
)
from parley.errors import NotLoggedIn, ParleyError, WrongPassphrase

app = typer.Typer(
    name="parley",
    help="Parley: end-to-end-encrypted chat from the command line.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# NO_COLOR (no-color.org): plain text, no styles at all (also handy for scripts).
_PLAIN = bool(os.environ.get("NO_COLOR"))
console = Console(highlight=False, color_system=None if _PLAIN else "auto")
err = Console(stderr=True, highlight=False, color_system=None if _PLAIN else "auto")
T = TypeVar("T")


@dataclass
class Options:
    server: str
    home: Path
    user: str | None


def _options(ctx: typer.Context) -> Options:
    opts: Options = ctx.obj
    return opts


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
    ctx.obj = Options(server.rstrip("/"), paths.data_home(data_dir), user)


# -- helpers ---------------------------------------------------------------------------


def _passphrase(new: bool) -> str:
    env = os.environ.get("PARLEY_PASSPHRASE")
    if env:
        return env
    if new:
        console.print(
            "Choose a passphrase for this device's local store (it encrypts your keys and "
            "history on disk; it is never sent anywhere)."
        )
        return str(typer.prompt("Local passphrase", hide_input=True, confirmation_prompt=True))
    return str(typer.prompt("Local passphrase", hide_input=True))


def _account_dir(opts: Options, username: str | None = None) -> Path:
    name = username or opts.user or paths.current_user(opts.home, opts.server)
    if not name:
        raise NotLoggedIn("No account yet: run `parley signup` or `parley login` first.")
    return paths.account_dir(opts.home, opts.server, name)


def _client(opts: Options, username: str | None = None, *, create: bool = False) -> Client:
    directory = _account_dir(opts, username)
    exists = (directory / paths.STORE_FILE).exists()
    if not exists and not create:
        raise NotLoggedIn(
            f"No local account {directory.name!r} for {opts.server}: run `parley login` first."
        )
    return Client(opts.server, data_dir=directory, passphrase=_passphrase(new=not exists))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except WrongPassphrase:
        err.print("[red]Error:[/] wrong passphrase for the local store.")
    except ParleyError as exc:
        err.print(f"[red]Error:[/] {escape(str(exc))}")
    except TimeoutError:
        err.print("[red]Error:[/] the server did not answer in time.")
    except KeyboardInterrupt:
        err.print("Interrupted.")
    raise typer.Exit(1)


def _time(ms: int | None) -> str:
    if not ms:
        return "--:--"
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M")


def _print_event(event: Event, me: str | None, peer: str | None = None) -> None:
    """How events look on screen (every command that connects shows them)."""
    if isinstance(event, Message):
        console.print(
            f"[dim]{_time(event.sent_at)}[/] [bold cyan]{escape(event.username)}[/]: "
            f"{escape(event.text)}"
        )
    elif isinstance(event, KeyChanged):
        name = escape(event.username)
        console.print(
            f"[bold yellow]Warning: {name}'s safety number changed.[/] Their identity key is "
            "new: a reinstall, a new device, or someone in the middle."
        )
        console.print(f"New safety number: [bold]{event.safety_number}[/]")
        console.print(f"Compare it with {name} (in person, or by a call) before trusting it.")
    elif isinstance(event, DecryptFailed):
        console.print(
            f"[red]Could not decrypt a message from {escape(event.username)} "
            f"({event.reason}).[/] It may have been sent to an earlier install of yours."
        )
    elif isinstance(event, ErrorEvent):
        console.print(f"[red]Error:[/] {escape(event.message)}")
    elif isinstance(event, ConnectionEvent):
        if event.state == "reconnecting":
            console.print(f"[dim]Connection lost; reconnecting {event.detail}...[/]")
        elif event.state == "failed":
            console.print(f"[red]Disconnected:[/] {escape(event.detail)}")


async def _second_factor(challenge: SecondFactor) -> tuple[str, str]:
    methods = challenge.methods
    method = methods[0]
    if len(methods) > 1:
        method = await _ask(
            f"Second factor ({'/'.join(methods)})",
            default="totp" if "totp" in methods else methods[0],
        )
        if method not in methods:
            raise ParleyError(f"Choose one of: {', '.join(methods)}.")
    if method == "email" and not challenge.email_code_sent:
        return "email", ""  # the client asks the server to e-mail a code, then asks again
    prompts = {
        "totp": "Code from your authenticator app",
        "email": "Code from the e-mail we sent",
        "recovery": "Recovery code",
    }
    code = await _ask(prompts.get(method, "Code"))
    return method, code.strip()


_status: list[Status] = []


async def _with_status(message: str, work: Awaitable[T]) -> T:
    """Show a spinner while ``work`` runs (prompts pause it: see :func:`_ask`)."""
    with console.status(message) as status:
        _status.append(status)
        try:
            return await work
        finally:
            _status.remove(status)


async def _ask(text: str, **kwargs: Any) -> str:
    """A prompt in the middle of slow work: stop the spinner while the user types."""
    for status in _status:
        status.stop()
    try:
        return str(await asyncio.to_thread(typer.prompt, text, **kwargs))
    finally:
        for status in _status:
            status.start()


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
    username = (username or typer.prompt("Username")).strip().lower()
    email = email or typer.prompt("E-mail")
    password = password or typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    directory = paths.account_dir(opts.home, opts.server, username)

    async def run() -> None:
        await _fresh_account(
            opts,
            username,
            "Creating the account and publishing keys...",
            lambda client: client.signup(username, password, email),
        )
        console.print(f"Signed up as [bold]{escape(username)}[/] on {opts.server}.")
        console.print(f"[dim]Keys and history are kept encrypted in {directory}[/]")

    _run(run())


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
                shutil.rmtree(directory, ignore_errors=True)
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
    username = (username or typer.prompt("Username")).strip().lower()
    password = password or typer.prompt("Password", hide_input=True)

    async def run() -> None:
        await _fresh_account(
            opts,
            username,
            "Logging in and checking this device's keys...",
            lambda client: _login(client, username, password, new_identity),
        )
        console.print(f"Logged in as [bold]{escape(username)}[/].")

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
        console.print(f"{escape(me['username'])} ({me['user_id']}) on {opts.server}")

    _run(run())


# -- messages ------------------------------------------------------------------------------


@app.command()
def send(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Recipient's username")],
    message: Annotated[str, typer.Argument(help="The message text")],
) -> None:
    """Send one end-to-end-encrypted message."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            news: list[Message] = []
            client.add_listener(lambda e: _on_background(e, news, client.username))
            await _with_status("Connecting...", client.connect())
            client_id = await _with_status(
                f"Encrypting and sending to {user}...", client.send(user, message, wait="accepted")
            )
            stored = False
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError, ParleyError):
                await asyncio.wait_for(_wait_status(client, client_id, "stored"), 10)
                stored = True
            where = "stored for" if stored else "accepted by the server for"
            console.print(f"Message {where} [bold]{escape(user)}[/] (end-to-end encrypted).")
            if news:
                console.print(
                    f"You have {len(news)} new message(s): run [bold]parley inbox[/] to read them."
                )

    _run(run())


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
                console.rule(f"{escape(conv['username'])} ({count} unread)")
                for entry in entries:
                    _print_entry(entry, conv["username"], client.username)
                await client.mark_read(conv["user_id"])
            if conversations and not any(c["unread"] for c in conversations) and not all_:
                console.print("No unread messages.")

    _run(run())


def _print_entry(entry: dict[str, Any], peer_name: str, me: str | None) -> None:
    at = _time(entry.get("at"))
    text = escape(str(entry.get("text", "")))
    if entry.get("dir") == "out":
        status = entry.get("status", "")
        console.print(
            f"[dim]{at}[/] [bold green]{escape(me or 'me')}[/]: {text} [dim]({status})[/]"
        )
    elif entry.get("dir") == "system":
        console.print(f"[dim]{at}[/] [bold yellow]{text}[/]")
    elif entry.get("kind") == "error":
        console.print(f"[dim]{at}[/] [red]{escape(peer_name)}: {text}[/]")
    else:
        console.print(f"[dim]{at}[/] [bold cyan]{escape(peer_name)}[/]: {text}")


@app.command()
def history(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Contact's username")],
    limit: Annotated[int, typer.Option("--limit", "-n")] = 50,
) -> None:
    """Show the stored conversation with a contact (no network)."""
    opts = _options(ctx)

    async def run() -> None:
        async with _client(opts) as client:
            known = [
                p
                for p in client.store.read().peers()
                if user.lower() in (p.get("username"), p["user_id"])
            ]
            peer_id, name = (known[0]["user_id"], user) if known else await client.resolve(user)
            for entry in client.history(peer_id, limit):
                _print_entry(entry, name, client.username)

    _run(run())


@app.command()
def chat(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Contact's username")],
) -> None:
    """Chat interactively: incoming messages appear as they arrive while you type.
    /quit (or Ctrl-D) leaves; /safety shows the safety number."""
    opts = _options(ctx)
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
                console.print(f"[dim](new message from {escape(event.username)})[/]")
            elif isinstance(event, Receipt):
                if event.status == "failed":
                    console.print(f"[red]Not sent:[/] {escape(event.detail)}")
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
                f"Chatting with [bold]{escape(name)}[/]. Type a message and press Enter; "
                "/quit to leave."
            )
            while True:
                try:
                    line = await session.prompt_async(f"{client.username}> ")
                except (EOFError, KeyboardInterrupt):
                    break
                line = line.strip()
                if not line:
                    continue
                if line in ("/quit", "/exit", "/q"):
                    break
                if line == "/safety":
                    _, number = await client.safety_number(peer_id)
                    console.print(f"Safety number with {escape(name)}: [bold]{number}[/]")
                    continue
                try:
                    await client.send(peer_id, line, wait="accepted", timeout=15)
                except TimeoutError:
                    console.print("[yellow]Not yet accepted by the server; it will be resent.[/]")
                except ParleyError as exc:
                    console.print(f"[red]Error:[/] {escape(str(exc))}")
            await client.mark_read(peer_id)


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
            console.print(f"{escape(name)} has no keys yet.")
            return
        console.print(f"Safety number with [bold]{escape(name)}[/]:")
        console.print(f"[bold]{number}[/]")
        console.print("[dim]It is the same on both sides if no one is in the middle.[/]")

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
        table = Table("device", "name", "fingerprint", "this device")
        for d in found:
            table.add_row(
                str(d["device_id"]), escape(d["name"]), d["fingerprint"],
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
    username = (username or typer.prompt("Username")).strip().lower()
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
            console.print(f"    [bold]parley devices approve {code}[/]")
            console.print("[dim]Waiting for the approval (Ctrl-C to give up)...[/]")
            await client.wait_linked(timeout)

        await _fresh_account(opts, username, "Logging in...", link, keep_pending=True)
        console.print(f"This device is now linked to [bold]{escape(username)}[/].")

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
                f"Link device [bold]{escape(pending.name)}[/] (id {pending.device_id}, "
                f"fingerprint {pending.fingerprint}) to this account?"
            )
            if yes:
                return True
            answer = await _ask("Approve? [y/N]")
            return answer.strip().lower() in ("y", "yes")

        async with _client(opts) as client:
            pending = await client.approve_device(code.strip(), confirm)
        console.print(f"Linked {escape(pending.name)} (device {pending.device_id}).")

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
        console.print(f"Device {device_id} is now called {escape(name)}.")

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
                console.print(f"Session {escape(revoke)} ended.")
                return
            found = await client.auth_sessions()
        table = Table("session", "device", "ip", "last used", "current")
        for s in found:
            table.add_row(
                s["session_id"],
                s.get("device") or "",
                s.get("ip") or "",
                str(s.get("last_used_at", ""))[:19],
                "yes" if s.get("current") else "",
            )
        console.print(table)

    _run(run())
