"""Shared pieces of the ``parley`` CLI (:mod:`parley.cli`, :mod:`parley.cli_rooms`):
the consoles, the options, opening the account's store, running a command and
printing its errors, spinners and prompts, how events look, and :func:`safe_text`,
through which every text the CLI did not write itself reaches the terminal."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.status import Status

from parley import paths
from parley.client import (
    Client,
    ConnectionEvent,
    DecryptFailed,
    ErrorEvent,
    Event,
    KeyChanged,
    Message,
    MessageRemoved,
    SecondFactor,
    SentElsewhere,
)
from parley.crypto.errors import InvalidSafetyNumber, MalformedDeviceList, MalformedLinkCode
from parley.errors import NotLoggedIn, ParleyError, WrongPassphrase

# NO_COLOR (no-color.org): plain text, no styles at all (also handy for scripts).
_PLAIN = bool(os.environ.get("NO_COLOR"))
# emoji=False: ":warning:" in a message shows as typed (the CLI's own text has no codes).
console = Console(highlight=False, emoji=False, color_system=None if _PLAIN else "auto")
err = Console(stderr=True, highlight=False, emoji=False, color_system=None if _PLAIN else "auto")
T = TypeVar("T")


# -- untrusted text on the terminal ------------------------------------------------------

PLACEHOLDER = "\ufffd"
"""What a control or bidi-override character of untrusted text is shown as."""

# Every control character (Unicode category Cc: C0, DEL, C1) but newline and tab, and
# the bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069).
_UNSAFE = {
    code: PLACEHOLDER
    for code in [*range(0x00, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    if chr(code) not in "\n\t" and (unicodedata.category(chr(code)) == "Cc" or code >= 0x2000)
}


def plain_text(value: object) -> str:
    """``value`` as text that cannot drive the terminal: each control character
    (category Cc: C0 such as ESC, DEL, C1 such as U+009B CSI) but newline and tab, and
    each bidi embedding, override or isolate (which make a line read other than it
    is), becomes U+FFFD. For sinks that take no rich markup (prompts, the log)."""
    return str(value).translate(_UNSAFE)


# What rich's markup parser (rich.markup.render) takes for a tag: "[" and a letter, "#",
# "/" or "@", up to the next "]" with no "[" between (its RE_TAGS).
_TAG = re.compile(r"\[[a-z#/@][^\[]*?\]")
_BRACKET = re.compile(r"(\\*)\[")
# An empty pair of tags with no style: what follows text that ends with backslashes.
_END = "[none][/none]"


def _escape_markup(text: str) -> str:
    """``text`` as rich markup that prints exactly ``text``, wherever it is put in a
    template. rich reads ``\\[`` before a tag as an escaped tag (n backslashes before
    it: ``n // 2`` of them printed, the tag printed if n is odd), and drops the
    backslash of ``\\[`` elsewhere; text ending with backslashes takes them in front of
    whatever follows it in the template. So: before a tag, 2n + 1 backslashes; before
    another "[", n + 1; at the end, 2n and an empty tag. (rich.markup.escape did the first
    only, and doubled one trailing backslash in the hope that a tag follows: ``ops\\``
    was printed ``ops\\\\``, ``a\\[1]`` as ``a[1]``.)"""

    def bracket(match: re.Match[str]) -> str:
        slashes = match.group(1)
        if _TAG.match(text, match.end() - 1):
            return slashes * 2 + "\\["
        return slashes + ("\\[" if slashes else "[")

    body = text.rstrip("\\")
    trailing = len(text) - len(body)
    escaped = _BRACKET.sub(bracket, body)
    return escaped + ("\\" * (2 * trailing) + _END if trailing else "")


def safe_text(value: object) -> str:
    """``value`` (text the CLI did not write: a message, a name, a server's words) made
    safe to interpolate into rich markup: :func:`plain_text`, then markup-escaped so that
    it prints exactly as sent (``[bold]`` and backslashes as typed; the consoles do not
    replace ``:emoji:`` codes) (docs/client.md, "Untrusted text on the terminal")."""
    return _escape_markup(plain_text(value))


class _SafeLog(logging.Handler):
    """The SDK's warnings on stderr (as Python's last-resort handler prints them),
    through :func:`plain_text`: they may quote a server's or a peer's words."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(plain_text(self.format(record)) + "\n")
            sys.stderr.flush()
        except Exception:  # as logging.StreamHandler.emit
            self.handleError(record)


def safe_logging() -> None:
    """Route the ``parley`` loggers' warnings through :class:`_SafeLog` (once)."""
    logger = logging.getLogger("parley")
    if not any(isinstance(h, _SafeLog) for h in logger.handlers):
        logger.addHandler(_SafeLog())


@dataclass
class Options:
    server: str
    home: Path
    user: str | None


def _options(ctx: typer.Context) -> Options:
    opts: Options = ctx.obj
    return opts


# -- helpers ---------------------------------------------------------------------------


# The auth service's length rules (services/auth: PARLEY_AUTH_PASSWORD_MIN_LENGTH and
# _MAX_LENGTH defaults), checked as soon as the password is typed; the list of common
# passwords stays on the server.
PASSWORD_MIN = 10
PASSWORD_MAX = 256
PASSPHRASE_MIN = 8  # the local passphrase (docs/client.md, "Local state")


def _check_password(value: str) -> str:
    """The account password's length rules, counted after NFKC as the server does."""
    n = len(unicodedata.normalize("NFKC", value))
    if n < PASSWORD_MIN:
        raise typer.BadParameter(
            f"The account password must have at least {PASSWORD_MIN} characters (this one has {n})."
        )
    if n > PASSWORD_MAX:
        raise typer.BadParameter(
            f"The account password must have at most {PASSWORD_MAX} characters (this one has {n})."
        )
    return value


def _check_passphrase(value: str) -> str:
    if len(value) < PASSPHRASE_MIN:
        raise typer.BadParameter(
            f"The local passphrase must have at least {PASSPHRASE_MIN} characters (this one "
            f"has {len(value)})."
        )
    return value


def _new_secret(label: str, check: Callable[[str], str]) -> str:
    """A hidden prompt for a new secret, checked as soon as it is typed (click does not
    show a hidden value's error), then asked again for confirmation."""
    while True:
        value = str(typer.prompt(label, hide_input=True))
        try:
            check(value)
        except typer.BadParameter as exc:
            err.print(f"[red]Error:[/] {safe_text(exc.message)}")
            continue
        if str(typer.prompt("Repeat for confirmation", hide_input=True)) == value:
            return value
        err.print("[red]Error:[/] the two entries do not match; try again.")


def _passphrase(new: bool) -> str:
    env = os.environ.get("PARLEY_PASSPHRASE")
    if env:
        if new:
            try:
                _check_passphrase(env)
            except typer.BadParameter as exc:
                raise ParleyError(f"PARLEY_PASSPHRASE: {exc.message}") from None
        return env
    if new:
        console.print(
            "Choose a passphrase for this device's local store (it encrypts your keys and "
            f"history on disk; it is never sent anywhere; at least {PASSPHRASE_MIN} "
            "characters)."
        )
        return _new_secret("Local passphrase", _check_passphrase)
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
    client = Client(opts.server, data_dir=directory, passphrase=_passphrase(new=not exists))
    client.flush_on_close = FLUSH_ON_CLOSE_S
    return client


FLUSH_ON_CLOSE_S = 10.0  # a command's last resends get their `accepted` before it exits


QUEUED = (
    "Not yet accepted by the server; it stays in the outbox and is sent again (same id, "
    "so never twice) at the next connection."
)
EXIT_QUEUED = 3


def stays_queued(client: Client) -> NoReturn:
    """A one-shot send timed out after queuing: say so (sending it again would deliver
    it twice) and exit 3, not 1 (docs/client.md). The client closes at once: it waited
    long enough for an answer."""
    client.flush_on_close = 0
    err.print(f"[yellow]{QUEUED}[/] `parley outbox` lists it; `parley outbox drop ID` cancels it.")
    raise typer.Exit(EXIT_QUEUED)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command: its errors are one sentence and exit 1 (the SDK's, and the crypto
    library's that what the user typed can cause: a link code, a device name, a safety
    number; anything else is a bug and keeps its traceback)."""
    try:
        return asyncio.run(coro)
    except WrongPassphrase:
        err.print("[red]Error:[/] wrong passphrase for the local store.")
    except ParleyError as exc:
        err.print(f"[red]Error:[/] {safe_text(str(exc))}")
    except MalformedLinkCode as exc:  # `devices approve` with a code mistyped or cut
        err.print(
            f"[red]Error:[/] That is not a link code ({safe_text(str(exc))}): copy it whole "
            "from the new device, where `parley devices link` shows it."
        )
    except (MalformedDeviceList, InvalidSafetyNumber) as exc:  # what was typed, refused
        err.print(f"[red]Error:[/] {safe_text(str(exc))}.")
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
            f"[dim]{_time(event.sent_at)}[/] [bold cyan]{safe_text(event.username)}[/]: "
            f"{safe_text(event.text)}"
        )
    elif isinstance(event, SentElsewhere):
        if peer is None or event.peer_id == peer:
            console.print(
                f"[dim]{_time(event.sent_at)}[/] [bold green]{safe_text(me or 'me')}[/] "
                f"[dim](device {event.device})[/]: {safe_text(event.text)}"
            )
    elif isinstance(event, KeyChanged):
        name = safe_text(event.username)
        console.print(
            f"[bold yellow]Warning: {name}'s safety number changed.[/] Their identity key is "
            "new: a reinstall, a new device, or someone in the middle."
        )
        console.print(f"New safety number: [bold]{event.safety_number}[/]")
        console.print(f"Compare it with {name} (in person, or by a call) before trusting it.")
        console.print(
            f"Sending to {name} is paused until you compare it (parley verify {name}) or "
            f"accept the new key (parley accept-identity {name})."
        )
    elif isinstance(event, DecryptFailed):
        console.print(
            f"[red]Could not decrypt a message from {safe_text(event.username)} "
            f"({safe_text(event.reason)}).[/] It may have been sent to an earlier install of yours."
        )
    elif isinstance(event, MessageRemoved):
        if peer is None or event.peer_id == peer:
            console.print(f"[dim italic]A message was {removed_by(event.by)}.[/]")
    elif isinstance(event, ErrorEvent):
        console.print(f"[red]Error:[/] {safe_text(event.message)}")
    elif isinstance(event, ConnectionEvent):
        if event.state == "reconnecting":
            console.print(f"[dim]Connection lost; reconnecting {safe_text(event.detail)}...[/]")
        elif event.state == "failed":
            console.print(f"[red]Disconnected:[/] {safe_text(event.detail)}")


def removed_by(by: object) -> str:
    """How a tombstone's remover reads: "removed by its sender" / "removed by an admin"."""
    return "removed by an admin" if by == "admin" else "removed by its sender"


async def _second_factor(challenge: SecondFactor) -> tuple[str, str]:
    methods = challenge.methods
    method = methods[0]
    if len(methods) > 1:
        method = await _ask(
            plain_text(f"Second factor ({'/'.join(methods)})"),
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
