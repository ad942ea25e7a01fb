"""The local store: sealed at rest, passphrase-bound, atomic, safe against a crash."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from parley.errors import StoreError, WrongPassphrase
from parley.store import KdfParams, Store

KDF = KdfParams(n=2**10)
ROOT = Path(__file__).resolve().parents[2]


PASSPHRASE = "pass phrase"


def open_store(path: Path, passphrase: str = PASSPHRASE) -> Store:
    return Store.open(path, passphrase, kdf=KDF)


def test_values_round_trip_and_need_the_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "s" / "store.db"
    store = open_store(path)
    with store.transaction_sync() as tx:
        tx.put("account", {"user_id": "u1", "token": "t"})
        tx.put_bytes("device", b"\x00secret device\xff")
        tx.put_peer("peer-1", {"user_id": "peer-1", "sessions": []})
        assert tx.add_message("peer-1", {"text": "hello"}, ref="m1")
        assert not tx.add_message("peer-1", {"text": "hello"}, ref="m1")  # deduplicated
        tx.queue("c1", {"op": "send", "id": "c1"})
    store.close()
    with pytest.raises(WrongPassphrase):
        Store.open(path, "another passphrase")
    store = open_store(path)
    read = store.read()
    assert read.get("account") == {"user_id": "u1", "token": "t"}
    assert read.get_bytes("device") == b"\x00secret device\xff"
    assert read.peer("peer-1") == {"user_id": "peer-1", "sessions": []}
    assert read.history("peer-1") == [{"text": "hello"}]
    assert read.queued() == [{"op": "send", "id": "c1"}]
    store.close()
    assert path.stat().st_mode & 0o077 == 0  # only the owner can read it


def test_nothing_is_readable_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(path)
    with store.transaction_sync() as tx:
        tx.put("account", {"username": "zanzibar-user"})
        tx.put_peer("peer-zanzibar", {"user_id": "peer-zanzibar"})
        tx.add_message("peer-zanzibar", {"text": "the zanzibar plaintext"}, ref="ref-zanzibar")
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"zanzibar" not in raw


def test_a_sealed_value_cannot_be_moved_to_another_row(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(path)
    with store.transaction_sync() as tx:
        tx.put("a", "first")
        tx.put("b", "second")
    store.close()
    db = sqlite3.connect(path)
    value = db.execute("SELECT value FROM kv WHERE key = 'a'").fetchone()[0]
    db.execute("UPDATE kv SET value = ? WHERE key = 'b'", (value,))
    db.commit()
    db.close()
    store = open_store(path)
    with pytest.raises(StoreError):
        store.read().get("b")
    store.close()


def test_a_failed_change_leaves_nothing_behind(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store.db")
    with store.transaction_sync() as tx:
        tx.put("ratchet", 1)
    with pytest.raises(RuntimeError), store.transaction_sync() as tx:
        tx.put("ratchet", 2)
        tx.add_message("p", {"text": "half"}, ref="x")
        raise RuntimeError("crash in the middle")
    assert store.read().get("ratchet") == 1
    assert store.read().history("p") == []
    store.close()


def test_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        open_store(path)


def test_a_process_killed_mid_write_leaves_the_last_committed_state(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(path)
    with store.transaction_sync() as tx:
        tx.put("ratchet", 0)
        tx.add_message("p", {"n": 0}, ref="m0")
    store.close()
    # A child commits changes 1..5, then dies (no cleanup at all) in the middle of
    # change 6, after writing the ratchet state but before the history entry.
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from parley.store import KdfParams, Store
        store = Store.open(Path({str(path)!r}), "pass phrase", kdf=KdfParams(n=2**10))
        for n in range(1, 7):
            with store.transaction_sync() as tx:
                tx.put("ratchet", n)
                if n == 6:
                    os._exit(9)
                tx.add_message("p", {{"n": n}}, ref=f"m{{n}}")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'client'}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 9, proc.stderr
    store = open_store(path)
    assert store.read().get("ratchet") == 5
    assert [e["n"] for e in store.read().history("p")] == [0, 1, 2, 3, 4, 5]
    store.close()
