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

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

__all__ = ["account_dir", "current_user", "data_home", "server_dir", "set_current_user"]

STORE_FILE = "store.db"


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
    return server_dir(home, server) / username.lower()


def current_user(home: Path, server: str) -> str | None:
    path = server_dir(home, server) / "current"
    try:
        name = path.read_text().strip()
    except OSError:
        return None
    return name or None


def set_current_user(home: Path, server: str, username: str | None) -> None:
    directory = server_dir(home, server)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "current"
    if username is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(username.lower() + "\n")
    os.replace(tmp, path)  # atomic
