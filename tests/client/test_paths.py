"""The CLI's files: a username names one directory under the server's, never a path
out of it; what a failed login made is removed, nothing else; the directories and the
`current` file are the owner's only (an audit of the local state, 2026-12-07)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from parley import cli, paths
from typer.testing import CliRunner

# Nothing listens here: a login fails after the store was made.
DOWN = "http://127.0.0.1:9"


def _parley(home: Path, *args: str) -> tuple[int, str]:
    env = {
        "PARLEY_SERVER": DOWN,
        "PARLEY_DATA_HOME": str(home),
        "PARLEY_PASSPHRASE": "test passphrase",
        "PARLEY_PASSWORD": "correct horse battery",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(cli.app, list(args), env=env)
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize("name", [".", "..", "../..", "../../../..", "a/b", "a\\b", "", " "])
def test_a_username_that_is_a_path_is_refused(name: str) -> None:
    with pytest.raises(paths.BadUsername):
        paths.account_dir(Path("/data"), DOWN, name)


def test_usernames_name_one_directory() -> None:
    for name in ("alice", "Bob.Smith", "a_b-c", "0123456789abcdef0123456789abcdef"):
        directory = paths.account_dir(Path("/data"), DOWN, name)
        assert directory.parent == paths.server_dir(Path("/data"), DOWN)
        assert directory.name == name.lower()


@pytest.mark.parametrize("name", [".", "..", "../.."])
def test_a_failed_login_as_a_path_deletes_nothing(tmp_path: Path, name: str) -> None:
    """Audit finding: `parley login ..` built its store in the data home itself (`..`
    of the server's directory), and the failed login then removed that directory:
    every account's keys, and with `../../../..` the user's home."""
    home = tmp_path / "home"
    keep = paths.server_dir(home, DOWN) / "alice" / "store.db"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"another account's keys")
    (tmp_path / "precious.txt").write_text("mine")
    code, out = _parley(home, "login", name)
    assert code == 1, out
    assert "is not a username" in out, out
    assert keep.read_bytes() == b"another account's keys"
    assert (tmp_path / "precious.txt").read_text() == "mine"


def test_a_failed_login_removes_only_the_store_it_made(tmp_path: Path) -> None:
    home = tmp_path / "home"
    directory = paths.account_dir(home, DOWN, "alice")
    directory.mkdir(parents=True)
    (directory / "notes.txt").write_text("not parley's")
    code, out = _parley(home, "login", "alice")
    assert code != 0, out
    assert not (directory / paths.STORE_FILE).exists()
    assert (directory / "notes.txt").read_text() == "not parley's"
    # A directory the login made goes whole.
    code, out = _parley(home, "login", "bob")
    assert code != 0, out
    assert not paths.account_dir(home, DOWN, "bob").exists()


def test_the_data_directories_and_current_are_the_owners_only(tmp_path: Path) -> None:
    """Audit finding: only the last directory was 0700 (mkdir's parents take the umask:
    the data home and the server's directory were 0755, naming servers and accounts)
    and `current` was 0644."""
    home = tmp_path / "home"
    old = os.umask(0o022)
    try:
        paths.set_current_user(home, DOWN, "alice")
    finally:
        os.umask(old)
    server = paths.server_dir(home, DOWN)
    for path in (home, server):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE((server / "current").stat().st_mode) == 0o600
    assert paths.current_user(home, DOWN) == "alice"
    # Made 0755 by a version before: tightened when written again.
    server.chmod(0o755)
    paths.set_current_user(home, DOWN, "bob")
    assert stat.S_IMODE(server.stat().st_mode) == 0o700
