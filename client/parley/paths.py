"""Where the client keeps its files.

``<data home>/<server>/<username>/store.db`` (the encrypted store) and
``<data home>/<server>/current`` (the username last logged in, so commands
need no ``--user``).  The data home is, in order: ``--data-dir``,
``$PARLEY_DATA_HOME``, or the platform's user data directory
(``~/.local/share/parley`` on Linux, ``~/Library/Application Support/parley``
on macOS, ``%LOCALAPPDATA%\\parley`` on Windows).  ``<server>`` is the
server's host and port (``127.0.0.1_8080``), so accounts on different
servers never mix.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from parley.errors import ParleyError

__all__ = [
    "BadUsername", "account_dir", "check_username", "current_user", "data_home",
    "private_dir", "server_dir", "set_current_user",
]  # fmt: skip

STORE_FILE = "store.db"
# A name that is one directory: what usernames (and e-mail addresses or user ids, as
# some callers pass) are made of; never "." or "..", never a separator.
_NAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,127}")


class BadUsername(ParleyError, ValueError):
    """A username that cannot name an account's directory."""


def check_username(username: str) -> str:
    """``username`` as its directory is named (lower case), or :class:`BadUsername`.
    A name such as ``..`` made the account's directory the data home itself (and a
    failed login then deleted it, every account's keys with it)."""
    name = username.strip().lower()
    if not _NAME.fullmatch(name) or ".." in name:
        raise BadUsername(
            f"{username!r} is not a username (letters, digits, '.', '_' or '-', starting "
            "with a letter or digit)."
        )
    return name


def check_home(home: Path) -> Path:
    """``home`` if it is, or can be made, a directory; else a :class:`ParleyError` that
    names it (a file given as ``--data-dir``, or one on its path, failed with a
    traceback at the first store opened)."""
    for path in (home, *home.parents):
        if path.exists():
            if not path.is_dir():
                what = "is" if path == home else f"is under {path}, which is"
                raise ParleyError(f"The data directory {home} {what} a file, not a directory.")
            break
    return home


def data_home(explicit: Path | str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("PARLEY_DATA_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("parley", appauthor=False))


def server_dir(home: Path, server: str) -> Path:
    parts = urlsplit(server if "//" in server else f"//{server}")
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return home / re.sub(r"[^A-Za-z0-9.-]", "_", f"{host}_{port}")


def account_dir(home: Path, server: str, username: str) -> Path:
    return server_dir(home, server) / check_username(username)


def private_dir(path: Path) -> None:
    """Make ``path`` and every missing directory above it readable by the owner only
    (``mkdir(parents=True, mode=0o700)`` gives the parents the umask's mode: the data
    home and the server's directory were 0755, naming the servers and accounts)."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission, a read-only disk
            raise ParleyError(
                f"Cannot create the directory {directory}: {exc.strerror or exc}."
            ) from None


def current_user(home: Path, server: str) -> str | None:
    path = server_dir(home, server) / "current"
    try:
        name = path.read_text().strip()
    except OSError:
        return None
    return name or None


def set_current_user(home: Path, server: str, username: str | None) -> None:
    directory = server_dir(home, server)
    private_dir(directory)
    # One an older version left 0755 (the data home is left as it is: it may be a
    # directory the user chose, --data-dir, with its own reasons for its mode).
    with contextlib.suppress(OSError):
        if directory.stat().st_uid == os.getuid():
            directory.chmod(0o700)
    path = directory / "current"
    if username is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(check_username(username) + "\n")
    os.chmod(tmp, 0o600)  # one left by an older version kept its mode
    os.replace(tmp, path)  # atomic
