"""The local store: sealed at rest, passphrase-bound, atomic, safe against a crash."""

from __future__ import annotations

import asyncio
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


def test_a_conversation_is_in_place_order_then_in_the_order_entries_came(
    tmp_path: Path,
) -> None:
    """A room's messages are placed by their number in the room's log: one that came
    late (it waited for its key) shows in its place; an entry without a place (this
    device's message before the log numbered it) goes after the last placed one, and
    moves when it is placed. A 1:1 conversation is in the order entries came."""
    store = open_store(tmp_path / "store.db")
    with store.transaction_sync() as tx:
        tx.add_message("room", {"text": "1"}, ref="r1", pos=1)
        tx.add_message("room", {"text": "4"}, ref="r4", pos=4)
        tx.add_message("room", {"text": "mine"}, ref="mine")  # not numbered yet: after 4
        tx.add_message("room", {"text": "2"}, ref="r2", pos=2)  # came late
        tx.add_message("room", {"text": "5"}, ref="r5", pos=5)
        for i in range(3):
            tx.add_message("dm", {"text": f"dm {i}"}, ref=f"d{i}")
    read = store.read()
    assert [e["text"] for e in read.history("room")] == ["1", "2", "4", "mine", "5"]
    assert [e["text"] for e in read.history("room", 2)] == ["mine", "5"]
    with store.transaction_sync() as tx:
        tx.place_message("mine", 6)
        tx.add_message("room", {"text": "error at 3"}, ref="r3", pos=3)
    assert [e["text"] for e in store.read().history("room")] == [
        "1", "2", "error at 3", "4", "5", "mine",
    ]  # fmt: skip
    assert [e["text"] for e in store.read().history("dm")] == ["dm 0", "dm 1", "dm 2"]
    store.close()


def test_a_schema_1_store_opens_and_keeps_its_order(tmp_path: Path) -> None:
    """A store written before entries had a place (schema 1) is moved to schema 2 (then
    3) when opened: what it held keeps its order, and new entries are placed after it."""
    path = tmp_path / "store.db"
    store = open_store(path)
    with store.transaction_sync() as tx:
        for i in range(3):
            tx.add_message("room", {"text": f"old {i}"}, ref=f"o{i}")
    store.close()
    db = sqlite3.connect(path)  # what schema 1 looked like
    db.executescript(
        """
        DROP INDEX messages_pos;
        CREATE TABLE old (id INTEGER PRIMARY KEY AUTOINCREMENT, conv TEXT NOT NULL,
                          ref TEXT UNIQUE, value BLOB NOT NULL);
        INSERT INTO old SELECT id, conv, ref, value FROM messages;
        DROP TABLE messages;
        ALTER TABLE old RENAME TO messages;
        CREATE INDEX messages_conv ON messages (conv, id);
        UPDATE meta SET value = CAST('1' AS BLOB) WHERE key = 'schema';
        """
    )
    db.close()
    store = open_store(path)
    with store.transaction_sync() as tx:
        tx.add_message("room", {"text": "new 7"}, ref="n7", pos=7)
        tx.add_message("room", {"text": "new 5"}, ref="n5", pos=5)
    assert [e["text"] for e in store.read().history("room")] == [
        "old 0", "old 1", "old 2", "new 5", "new 7",
    ]  # fmt: skip
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == b"3"
    indexes = {r[1] for r in db.execute("PRAGMA index_list(messages)")}
    assert "messages_pos" in indexes and "messages_conv" not in indexes
    db.close()


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


# -- group commit (Store.transaction) ------------------------------------------------------


class CountingDb:
    """The store's connection, counting COMMITs (and failing the next one when told)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.commits = 0
        self.fail_next_commit = False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT":
            if self.fail_next_commit:
                self.fail_next_commit = False
                raise sqlite3.OperationalError("disk I/O error")
            self.commits += 1
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def counting(store: Store) -> CountingDb:
    db = CountingDb(store._db)
    store._db = db  # type: ignore[assignment]
    return db


async def test_transactions_waiting_behind_one_commit_together_each_once_durable(
    tmp_path: Path,
) -> None:
    """A hundred transactions asked at once (a room's key sends): each sees the ones
    before it, all are written, in a few commits; each returns only once another
    connection to the file sees its write."""
    path = tmp_path / "store.db"
    store = open_store(path)
    db = counting(store)
    other = sqlite3.connect(path)

    async def one(n: int) -> int:
        async with store.transaction() as tx:
            count = int(tx.get("count") or 0)
            tx.put("count", count + 1)
            tx.add_message("p", {"n": n}, ref=f"m{n}")
        # Returned: committed, visible to another connection.
        rows = other.execute("SELECT count(*) FROM messages").fetchone()[0]
        assert rows >= count + 1
        return count

    seen = await asyncio.gather(*(one(n) for n in range(100)))
    assert sorted(seen) == list(range(100))  # each saw every one before it
    assert store.read().get("count") == 100
    assert len(store.read().history("p")) == 100
    assert db.commits <= 100 // 64 + 2, db.commits  # GROUP_MAX a commit at most
    other.close()
    store.close()


async def test_one_that_raises_is_rolled_back_alone_and_its_group_is_kept(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "store.db")
    counting(store)

    async def put(name: str, fail: bool = False) -> None:
        async with store.transaction() as tx:
            tx.put(name, 1)
            if fail:
                raise RuntimeError("refused")

    results = await asyncio.gather(put("a"), put("b", fail=True), put("c"), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType", "RuntimeError", "NoneType"]
    assert (store.read().get("a"), store.read().get("b"), store.read().get("c")) == (1, None, 1)
    store.close()


async def test_a_failed_commit_fails_every_member_and_keeps_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store.db")
    async with store.transaction() as tx:
        tx.put("kept", 1)
    db = counting(store)
    db.fail_next_commit = True

    async def put(name: str) -> None:
        async with store.transaction() as tx:
            tx.put(name, 1)

    results = await asyncio.gather(put("x"), put("y"), put("z"), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results), results
    assert [store.read().get(n) for n in ("kept", "x", "y", "z")] == [1, None, None, None]
    await put("after")  # the store is still usable
    assert store.read().get("after") == 1
    store.close()


async def test_a_waiter_cancelled_before_its_turn_leaves_no_group_open(tmp_path: Path) -> None:
    """The first transaction ends while another waits (so it leaves its group open for
    it); that one is cancelled before its turn: the group is committed anyway."""
    store = open_store(tmp_path / "store.db")
    db = counting(store)
    go = asyncio.Event()

    async def first() -> None:
        async with store.transaction() as tx:
            tx.put("first", 1)
            await go.wait()

    async def second() -> None:
        async with store.transaction() as tx:
            tx.put("second", 1)

    a = asyncio.create_task(first())
    await asyncio.sleep(0)
    b = asyncio.create_task(second())
    await asyncio.sleep(0)  # b waits for the lock
    go.set()
    await asyncio.sleep(0)  # a ends, leaving its group to b
    b.cancel()
    await asyncio.wait_for(a, 5)  # committed, not left waiting for b
    assert db.commits == 1 and store.read().get("first") == 1
    await asyncio.gather(b, return_exceptions=True)
    assert b.cancelled() and store.read().get("second") is None
    store.close()


async def test_two_stores_on_one_file_in_one_process_do_not_wait_on_each_other(
    tmp_path: Path,
) -> None:
    """Two clients on one data directory in one process (two stores, two connections):
    one's group is open for the next change when the other begins; the other's
    ``BEGIN`` would wait for SQLite's lock on this very thread (30 s, then an error)
    while the group's owner cannot run to commit. It is committed first."""
    path = tmp_path / "store.db"
    a, b = open_store(path), open_store(path)

    async def put(store: Store, name: str) -> None:
        async with store.transaction() as tx:
            tx.put(name, 1)

    await asyncio.gather(put(a, "a"), put(b, "b"), put(a, "a2"))  # "database is locked"
    assert [b.read().get(n) for n in ("a", "b", "a2")] == [1, 1, 1]
    a.close()
    b.close()
