"""A `--server` that is not an http(s) URL, or a `--data-dir` that cannot be a
directory, is one sentence and exit status 1 (docs/client.md, "Errors"), not a
traceback (aiohttp's NonHttpUrlClientError, yarl's ValueError, NotADirectoryError).

Real `parley` processes; nothing here reaches a server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from parley import Client, ParleyError
from parley.api import check_server

from tests.client.conftest import CHEAP_KDF

ROOT = Path(__file__).resolve().parents[2]


def parley(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PARLEY_PASSWORD": "correct horse battery staple",
        "PARLEY_PASSPHRASE": "test passphrase",
        "NO_COLOR": "1",
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client"), str(ROOT / "contract")]),
    }
    env.pop("PARLEY_SERVER", None)
    env.pop("PARLEY_DATA_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "parley", "--data-dir", str(home), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("server", "says"),
    [
        ("localhost:1", "starts with http:// or https://"),
        ("ftp://127.0.0.1:1", "starts with http:// or https://"),
        ("http://", "names a host"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://exa mple.org", "no spaces"),
    ],
)
def test_a_bad_server_url_is_one_sentence_and_exit_1(
    tmp_path: Path, server: str, says: str
) -> None:
    for args in (("-s", server, "login", "bob"), ("-s", server, "whoami")):
        done = parley(tmp_path / "home", *args)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        text = " ".join(done.stderr.split())
        assert text.startswith(f"Error: {server!r} is not a server URL"), text
        assert says in text, text
    assert not (tmp_path / "home").exists()  # nothing was made for it


def test_a_data_dir_that_is_a_file_is_one_sentence_and_exit_1(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    cases = {
        a_file: f"The data directory {a_file} is a file, not a directory.",
        a_file / "sub": f"The data directory {a_file / 'sub'} is under {a_file}, which is a file",
    }
    for home, says in cases.items():
        for args in (("-s", "http://127.0.0.1:1", "login", "bob"), ("whoami",)):
            done = parley(home, *args)
            assert done.returncode == 1, done.stderr
            assert "Traceback" not in done.stderr, done.stderr
            assert " ".join(done.stderr.split()).startswith(f"Error: {says}"), done.stderr
    assert a_file.read_text() == "not a directory\n"


def test_the_sdk_says_so_too(tmp_path: Path) -> None:
    assert check_server("https://chat.example.org/") == "https://chat.example.org"
    with pytest.raises(ParleyError, match="not a server URL"):
        check_server("localhost:8080")


async def test_the_sdk_refuses_a_url_it_cannot_request(tmp_path: Path) -> None:
    client = Client("localhost:1", data_dir=tmp_path, passphrase="pw", kdf=CHEAP_KDF)
    async with client:
        with pytest.raises(ParleyError, match="is not a server URL"):
            await client.signup("bob", "correct horse battery staple", "bob@example.test")
