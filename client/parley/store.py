"""The client's local state: an SQLite file whose every value is sealed at rest.

Layout (one file, ``store.db``, in WAL mode):

- ``meta``: what is needed to open the store, in the clear: the schema
  version, the scrypt salt and parameters, and ``check`` (a known value
  sealed under the derived key, so a wrong passphrase is told apart from a
  damaged file).
- ``kv``: named values (account and tokens, the device's private keys, the
  last processed sequence number ...).
- ``peers``: per contact, the known identity (trust on first use) and the
  pairwise sessions.
- ``messages``: the history, one row per message.
- ``ids``: a message found by the start of its id (``parley report 1a2b3c4d``):
  per history row, ``HMAC(index key, first 4 characters)`` of its server id and of
  its client id, so a look-up reads the few rows that share them, not every
  conversation (:meth:`Transaction.find_messages`).
- ``outbox``: sent frames not yet ``accepted`` by the server (resent with
  the same id after a reconnect).
- ``aside``: received messages kept aside to be read later (a sender's device
  not seen yet whose device list could not be read then), in arrival order;
  ``who`` keys a sending device's rows (:meth:`Transaction.keep_aside`).
- ``pending``: private rooms' messages waiting for their sender's key, one row
  a message in the order they were kept; ``room`` keys a room's rows and
  ``chain`` a sending device's in it, so keeping one, counting a room's and
  taking a device's are index reads (:meth:`Transaction.keep_pending`). Until
  2026-12 they were one ``kv`` row per room (``room_pending:...``), read and
  written whole for every message and every key; such a row is moved here when
  the store opens (:meth:`Store._move_pending_rows`).

Every value is sealed with AES-256-GCM under a key derived from the
passphrase with scrypt (then HKDF-SHA256 into an encryption key and an index
key); the associated data is the table and row name, so a row cannot be
moved to another place. Rows that must be found by peer are keyed by
``HMAC-SHA256(index key, peer id)``: the file does not show who one talks to.
Only sizes, row counts and the order of writes are visible on disk.

Crash safety: every state change is one SQLite transaction (``BEGIN
IMMEDIATE`` ... ``COMMIT``; changes that wait for one another are committed
together, each in a savepoint: :meth:`Store.transaction`), so a ratchet step and
the history entry it produced are written together or not at all. A process killed mid-write
leaves the previous state (SQLite's journal). The same file may be used by
several processes (the CLI's ``chat`` and ``send``): a transaction locks out
the others (busy timeout), and state is read inside the transaction that
changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from parley.errors import StoreError, WrongPassphrase
from parley.paths import private_dir

log = logging.getLogger(__name__)

__all__ = ["SCHEMA_VERSION", "KdfParams", "Store", "Transaction"]

SCHEMA_VERSION = 3
"""1 → 2: ``messages.pos``, an entry's place in its conversation (``add_message``).
2 → 3: the ``ids`` table (:meth:`Transaction.find_messages`); the rows written before
are indexed once, by the first look-up (``ids_pending`` in ``meta``)."""
ID_PREFIX = 4
"""The characters of an id the ``ids`` table keys (the shortest id prefix one may give)."""
GROUP_MAX = 64
"""Transactions committed together at most (:meth:`Store.transaction`)."""
_OPEN_GROUPS: dict[str, Store] = {}
"""This process's stores with a group open, by file (:meth:`Store._end_others_group`)."""
_CHECK = b"parley-store-v1-check"
_NONCE = 12

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS peers (ref TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conv TEXT NOT NULL,
    ref TEXT UNIQUE,
    value BLOB NOT NULL,
    pos INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT UNIQUE NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS aside (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT UNIQUE NOT NULL,
    who TEXT NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS aside_who ON aside (who, n);
CREATE TABLE IF NOT EXISTS pending (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT UNIQUE NOT NULL,
    room TEXT NOT NULL,
    chain TEXT NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_room ON pending (room, n);
CREATE INDEX IF NOT EXISTS pending_chain ON pending (chain, n);
CREATE TABLE IF NOT EXISTS ids (
    key TEXT NOT NULL,
    msg INTEGER NOT NULL,
    PRIMARY KEY (key, msg)
) WITHOUT ROWID;
"""
_LEGACY_PENDING = "room_pending:"
"""The ``kv`` rows that held a room's pending messages, one list per room, before the
``pending`` table (the key's rest is ``Store.ref("room_pending", room id)``, as
:meth:`Transaction._pending_room` makes it)."""


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost: n=2^15, r=8, p=1 is 32 MiB and ~0.1 s (the interactive profile
    recommended by the scrypt paper and RFC 7914 section 2)."""

    n: int = 2**15
    r: int = 8
    p: int = 1

    def to_json(self) -> str:
        return json.dumps({"alg": "scrypt", "n": self.n, "r": self.r, "p": self.p})

    @classmethod
    def from_json(cls, text: str) -> KdfParams:
        obj = json.loads(text)
        if obj.get("alg") != "scrypt":
            raise StoreError("unknown key derivation in the local store")
        return cls(int(obj["n"]), int(obj["r"]), int(obj["p"]))


def _derive(passphrase: str, salt: bytes, params: KdfParams) -> tuple[bytes, bytes]:
    master = Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(
        passphrase.encode("utf-8")
    )
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=b"parley-store-v1").derive(
        master
    )
    return okm[:32], okm[32:]


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Schema 1 had no ``messages.pos``: every entry so far keeps the order it was
    added in (place 0), the entries added from now on are placed."""
    db.execute("ALTER TABLE messages ADD COLUMN pos INTEGER NOT NULL DEFAULT 0")
    db.execute("DROP INDEX IF EXISTS messages_conv")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"2",))


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """Schema 2 had no ``ids`` (made by ``_SCHEMA``): the rows so far are indexed by the
    first look-up (:meth:`Transaction.index_ids`), which knows how to name them."""
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('ids_pending', x'31')")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"3",))


def _entry_ids(entry: dict[str, Any]) -> list[str]:
    """The ids a history entry holds (``Transaction.find_messages``)."""
    return [str(entry[k]) for k in ("server_id", "client_id") if entry.get(k)]


class Transaction:
    """Reads and writes inside one SQLite transaction (use :meth:`Store.transaction`)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store._db

    # -- named values -------------------------------------------------------
    def get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(self._store._open(row[0], f"kv:{key}"))

    def put(self, key: str, value: Any) -> None:
        sealed = self._store._seal(json.dumps(value).encode(), f"kv:{key}")
        self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, sealed))

    def get_bytes(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (f"b:{key}",)).fetchone()
        return None if row is None else self._store._open(row[0], f"kv:b:{key}")

    def put_bytes(self, key: str, value: bytes) -> None:
        sealed = self._store._seal(value, f"kv:b:{key}")
        self._db.execute(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (f"b:{key}", sealed)
        )

    def delete(self, key: str) -> None:
        self._db.execute("DELETE FROM kv WHERE key IN (?, ?)", (key, f"b:{key}"))

    # -- peers ----------------------------------------------------------------
    def peer(self, peer_id: str) -> dict[str, Any] | None:
        ref = self._store.ref("peer", peer_id)
        row = self._db.execute("SELECT value FROM peers WHERE ref = ?", (ref,)).fetchone()
        if row is None:
            return None
        value: dict[str, Any] = json.loads(self._store._open(row[0], f"peers:{ref}"))
        return value

    def put_peer(self, peer_id: str, value: dict[str, Any]) -> None:
        ref = self._store.ref("peer", peer_id)
        sealed = self._store._seal(json.dumps(value).encode(), f"peers:{ref}")
        self._db.execute("INSERT OR REPLACE INTO peers (ref, value) VALUES (?, ?)", (ref, sealed))

    def peers(self) -> list[dict[str, Any]]:
        out = []
        for ref, value in self._db.execute("SELECT ref, value FROM peers"):
            out.append(json.loads(self._store._open(value, f"peers:{ref}")))
        return out

    # -- history --------------------------------------------------------------
    def add_message(
        self,
        peer_id: str,
        entry: dict[str, Any],
        ref: str | None = None,
        pos: int | None = None,
        ids: Iterable[str] = (),
    ) -> bool:
        """Add to the conversation with ``peer_id``; False if ``ref`` is already there.
        It is found by the start of its ``server_id`` and ``client_id`` and of ``ids``
        (the server id of what this device sends, which its entry does not hold:
        :meth:`find_messages`).

        The history is in ``pos`` order, then in the order entries were added: a room's
        message is placed by its number in the room's log (``pos``), so a message that
        waited for its sender's key shows where the room had it, and every device of
        every member has the room in one order. Without ``pos`` (a 1:1 conversation,
        this device's message before its number is known) an entry goes after the
        conversation's last placed one."""
        conv = self._store.ref("conv", peer_id)
        dedupe = None if ref is None else self._store.ref("msg", ref)
        if dedupe is not None:
            found = self._db.execute("SELECT 1 FROM messages WHERE ref = ?", (dedupe,)).fetchone()
            if found:
                return False
        if pos is None:
            last = self._db.execute(
                "SELECT pos FROM messages WHERE conv = ? ORDER BY pos DESC LIMIT 1", (conv,)
            ).fetchone()
            pos = 0 if last is None else int(last[0])
        cur = self._db.execute(
            "INSERT INTO messages (conv, ref, value, pos) VALUES (?, ?, x'', ?)",
            (conv, dedupe, pos),
        )
        row_id = cur.lastrowid
        assert row_id is not None  # an INSERT's
        sealed = self._store._seal(json.dumps(entry).encode(), f"messages:{row_id}:{conv}")
        self._db.execute("UPDATE messages SET value = ? WHERE id = ?", (sealed, row_id))
        self._index(row_id, [*_entry_ids(entry), *ids])
        return True

    def has_message(self, ref: str) -> bool:
        dedupe = self._store.ref("msg", ref)
        return bool(self._db.execute("SELECT 1 FROM messages WHERE ref = ?", (dedupe,)).fetchone())

    def update_message(
        self,
        ref: str,
        only_if: Callable[[dict[str, Any]], bool] | None = None,
        apply: Callable[[dict[str, Any]], None] | None = None,
        **changes: Any,
    ) -> None:
        """Change fields of the message added with ``ref`` (if ``only_if(entry)`` holds),
        and let ``apply`` change the entry in place."""
        dedupe = self._store.ref("msg", ref)
        row = self._db.execute(
            "SELECT id, conv, value FROM messages WHERE ref = ?", (dedupe,)
        ).fetchone()
        if row is None:
            return
        row_id, conv, value = row
        entry = json.loads(self._store._open(value, f"messages:{row_id}:{conv}"))
        if only_if is not None and not only_if(entry):
            return
        entry.update(changes)
        if apply is not None:
            apply(entry)
        sealed = self._store._seal(json.dumps(entry).encode(), f"messages:{row_id}:{conv}")
        self._db.execute("UPDATE messages SET value = ? WHERE id = ?", (sealed, row_id))
        self._index(int(row_id), _entry_ids(entry))

    def _index(self, row_id: int, ids: Iterable[str]) -> None:
        keys = {self._store.ref("id", i[:ID_PREFIX].lower()) for i in ids if len(i) >= ID_PREFIX}
        self._db.executemany(
            "INSERT OR IGNORE INTO ids (key, msg) VALUES (?, ?)", [(k, row_id) for k in keys]
        )

    def find_messages(self, prefix: str, peer_id: str | None = None) -> list[dict[str, Any]]:
        """The entries (of the conversation with ``peer_id``, or of any) one of whose ids
        (:meth:`add_message`) starts with the first ``ID_PREFIX`` characters of
        ``prefix`` (any case; the caller matches the rest): an index read of those rows
        only, whatever the size of the history. Nothing for a shorter prefix."""
        if len(prefix) < ID_PREFIX:
            return []
        key = self._store.ref("id", prefix[:ID_PREFIX].lower())
        query = (
            "SELECT m.id, m.conv, m.value FROM ids JOIN messages AS m ON m.id = ids.msg"
            " WHERE ids.key = ?"
        )
        args = [key]
        if peer_id is not None:
            query += " AND m.conv = ?"
            args.append(self._store.ref("conv", peer_id))
        rows = self._db.execute(query + " ORDER BY m.id", args).fetchall()
        return [
            json.loads(self._store._open(value, f"messages:{row_id}:{conv}"))
            for row_id, conv, value in rows
        ]

    def ids_pending(self) -> bool:
        """Whether history rows written before the ``ids`` table are to be indexed
        (:meth:`index_ids`)."""
        found = self._db.execute("SELECT 1 FROM meta WHERE key = 'ids_pending'").fetchone()
        return found is not None

    def index_ids(self, ids_of: Callable[[dict[str, Any]], Iterable[str]]) -> int:
        """Index every history row by ``ids_of(entry)`` (and its ``server_id`` and
        ``client_id``), once: the rows a schema 2 store held (``ids_pending``). Returns
        the rows read."""
        if not self.ids_pending():
            return 0
        n = 0
        for row_id, conv, value in self._db.execute("SELECT id, conv, value FROM messages"):
            entry = json.loads(self._store._open(value, f"messages:{row_id}:{conv}"))
            self._index(int(row_id), [*_entry_ids(entry), *ids_of(entry)])
            n += 1
        self._db.execute("DELETE FROM meta WHERE key = 'ids_pending'")
        return n

    def place_message(self, ref: str, pos: int) -> None:
        """Move the entry added with ``ref`` to ``pos`` (this device's room message, once
        the room's log numbered it)."""
        self._db.execute(
            "UPDATE messages SET pos = ? WHERE ref = ?", (pos, self._store.ref("msg", ref))
        )

    def history(self, peer_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` entries of the conversation, oldest first (in ``pos``
        order: :meth:`add_message`)."""
        conv = self._store.ref("conv", peer_id)
        rows = self._db.execute(
            "SELECT id, value FROM messages WHERE conv = ? ORDER BY pos DESC, id DESC LIMIT ?",
            (conv, -1 if limit is None else limit),
        ).fetchall()
        return [
            json.loads(self._store._open(value, f"messages:{row_id}:{conv}"))
            for row_id, value in reversed(rows)
        ]

    def last_message_id(self, peer_id: str) -> int:
        """The row id of the conversation's newest entry by arrival (0: none): a read
        marker (:meth:`history_since`). Ids grow with every entry added, whatever any
        clock says."""
        row = self._db.execute(
            "SELECT MAX(id) FROM messages WHERE conv = ?", (self._store.ref("conv", peer_id),)
        ).fetchone()
        return int(row[0] or 0)

    def history_since(self, peer_id: str, after_id: int) -> list[dict[str, Any]]:
        """The entries added to the conversation after the one whose row id is
        ``after_id`` (:meth:`last_message_id`), in history order: an index read, only
        those rows opened."""
        conv = self._store.ref("conv", peer_id)
        rows = self._db.execute(
            "SELECT id, value FROM messages WHERE conv = ? AND id > ? ORDER BY pos, id",
            (conv, after_id),
        ).fetchall()
        return [json.loads(self._store._open(value, f"messages:{row_id}:{conv}"))
                for row_id, value in rows]  # fmt: skip

    # -- outbox ---------------------------------------------------------------
    def queue(self, client_id: str, frame: dict[str, Any]) -> None:
        ref = self._store.ref("out", client_id)
        sealed = self._store._seal(json.dumps(frame).encode(), f"outbox:{ref}")
        self._db.execute("INSERT OR REPLACE INTO outbox (ref, value) VALUES (?, ?)", (ref, sealed))

    def is_queued(self, client_id: str) -> bool:
        """Whether the outbox holds this message (one primary-key look-up)."""
        ref = self._store.ref("out", client_id)
        return self._db.execute("SELECT 1 FROM outbox WHERE ref = ?", (ref,)).fetchone() is not None

    def unqueue(self, client_id: str) -> bool:
        cur = self._db.execute(
            "DELETE FROM outbox WHERE ref = ?", (self._store.ref("out", client_id),)
        )
        return cur.rowcount > 0

    def queued(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT ref, value FROM outbox ORDER BY n").fetchall()
        return [json.loads(self._store._open(value, f"outbox:{ref}")) for ref, value in rows]

    # -- kept aside -------------------------------------------------------------
    def _who(self, sender: str, device: int) -> str:
        return self._store.ref("aside-who", f"{sender}\x00{device}")

    def keep_aside(self, server_id: str, sender: str, device: int, frame: dict[str, Any]) -> bool:
        """Keep a received frame to read later, after those of its sending device kept
        before it; False if it is kept already."""
        ref = self._store.ref("aside", server_id)
        sealed = self._store._seal(json.dumps(frame).encode(), f"aside:{ref}")
        cur = self._db.execute(
            "INSERT OR IGNORE INTO aside (ref, who, value) VALUES (?, ?, ?)",
            (ref, self._who(sender, device), sealed),
        )
        return cur.rowcount > 0

    def is_aside(self, server_id: str) -> bool:
        ref = self._store.ref("aside", server_id)
        return self._db.execute("SELECT 1 FROM aside WHERE ref = ?", (ref,)).fetchone() is not None

    def has_aside(self, sender: str, device: int) -> bool:
        """Whether frames of this sending device are kept aside (one index look-up)."""
        who = self._who(sender, device)
        return self._db.execute("SELECT 1 FROM aside WHERE who = ?", (who,)).fetchone() is not None

    def aside_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM aside").fetchone()[0])

    def aside(self, sender: str | None = None, device: int = 0) -> list[dict[str, Any]]:
        """The frames kept aside, oldest first: all, or those of one sending device."""
        if sender is None:
            rows = self._db.execute("SELECT ref, value FROM aside ORDER BY n").fetchall()
        else:
            rows = self._db.execute(
                "SELECT ref, value FROM aside WHERE who = ? ORDER BY n",
                (self._who(sender, device),),
            ).fetchall()
        return [json.loads(self._store._open(value, f"aside:{ref}")) for ref, value in rows]

    def take_aside(self, server_id: str) -> None:
        """Forget a frame kept aside (read now)."""
        self._db.execute("DELETE FROM aside WHERE ref = ?", (self._store.ref("aside", server_id),))

    # -- room messages waiting for their sender key ------------------------------
    def _pending_room(self, room_id: str) -> str:
        return self._store.ref("room_pending", room_id)

    def keep_pending(
        self, room_id: str, sender: str, device: int, server_id: str, item: dict[str, Any]
    ) -> bool:
        """Keep a room's message until its sending device's key comes, after those kept
        before it (one row: the others are neither read nor written); False if it is
        kept already."""
        return self._store._keep_pending(
            self._pending_room(room_id), sender, device, server_id, json.dumps(item).encode()
        )

    def is_pending(self, room_id: str, server_id: str) -> bool:
        """Whether this room message is kept (one primary-key look-up)."""
        ref = self._store._pending_ref(self._pending_room(room_id), server_id)
        found = self._db.execute("SELECT 1 FROM pending WHERE ref = ?", (ref,)).fetchone()
        return found is not None

    def pending_count(self, room_id: str) -> int:
        """How many of the room's messages are kept (the room's index entries, no value)."""
        room = self._pending_room(room_id)
        return int(
            self._db.execute("SELECT COUNT(*) FROM pending WHERE room = ?", (room,)).fetchone()[0]
        )

    def pending(
        self, room_id: str, sender: str | None = None, device: int = 0
    ) -> list[dict[str, Any]]:
        """The room's kept messages, oldest first: all, or those of one sending device
        (only its rows are read)."""
        room = self._pending_room(room_id)
        if sender is None:
            rows = self._db.execute(
                "SELECT ref, chain, value FROM pending WHERE room = ? ORDER BY n", (room,)
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT ref, chain, value FROM pending WHERE chain = ? ORDER BY n",
                (self._store._pending_chain(room, sender, device),),
            ).fetchall()
        return [
            json.loads(self._store._open(value, f"pending:{room}:{chain}:{ref}"))
            for ref, chain, value in rows
        ]

    def take_pending(self, room_id: str, server_id: str) -> None:
        """Forget a kept room message (opened now)."""
        ref = self._store._pending_ref(self._pending_room(room_id), server_id)
        self._db.execute("DELETE FROM pending WHERE ref = ?", (ref,))


class Store:
    """An open local store.  Create or open with :meth:`open`."""

    def __init__(self, path: Path, db: sqlite3.Connection, enc_key: bytes, index_key: bytes):
        self.path = path
        self._db = db
        self._aead = AESGCM(enc_key)
        self._index_key = index_key
        self._lock = asyncio.Lock()
        self._entering = 0  # transactions waiting for the lock
        self._group: asyncio.Future[None] | None = None  # the open group's commit
        self._key = str(path.resolve())
        self._grouped = 0

    @classmethod
    def exists(cls, path: Path) -> bool:
        return path.exists() and path.stat().st_size > 0

    @classmethod
    def open(cls, path: Path, passphrase: str, *, kdf: KdfParams | None = None) -> Store:
        """Open the store at ``path``, creating it (with ``kdf`` cost) if it does not exist.

        Raises :class:`WrongPassphrase` if the passphrase does not open an
        existing store, :class:`StoreError` if the file is not a Parley store.
        """
        if not passphrase:
            raise StoreError("the local store needs a passphrase")
        private_dir(path.parent)
        db = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    db.execute(statement)
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("schema") == b"1":
                    _migrate_1_to_2(db)
                    meta["schema"] = b"2"
                if meta.get("schema") == b"2":
                    _migrate_2_to_3(db)
                    meta["schema"] = b"3"
                db.execute("CREATE INDEX IF NOT EXISTS messages_pos ON messages (conv, pos, id)")
                if not meta:
                    params = kdf or KdfParams()
                    salt = secrets.token_bytes(16)
                    enc_key, index_key = _derive(passphrase, salt, params)
                    nonce = secrets.token_bytes(_NONCE)
                    check = nonce + AESGCM(enc_key).encrypt(nonce, _CHECK, b"meta:check")
                    db.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [
                            ("schema", str(SCHEMA_VERSION).encode()),
                            ("kdf", params.to_json().encode()),
                            ("salt", salt),
                            ("check", check),
                            ("created_at", str(int(time.time())).encode()),
                        ],
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(f"{path} is not a Parley store ({exc})") from exc
        if not meta:
            return cls(path, db, enc_key, index_key)
        try:
            if int(meta["schema"]) != SCHEMA_VERSION:
                raise StoreError(f"{path} has schema {int(meta['schema'])}, not {SCHEMA_VERSION}")
            params = KdfParams.from_json(bytes(meta["kdf"]).decode())
            enc_key, index_key = _derive(passphrase, bytes(meta["salt"]), params)
            check = bytes(meta["check"])
            AESGCM(enc_key).decrypt(check[:_NONCE], check[_NONCE:], b"meta:check")
        except InvalidTag:
            db.close()
            raise WrongPassphrase("wrong passphrase for the local store") from None
        except (KeyError, ValueError) as exc:
            db.close()
            raise StoreError(f"{path} is damaged ({exc})") from exc
        store = cls(path, db, enc_key, index_key)
        try:
            store._move_pending_rows()
        except BaseException:
            db.close()
            raise
        return store

    def close(self) -> None:
        self._commit_group()
        self._db.close()

    # -- sealing --------------------------------------------------------------
    def _seal(self, plaintext: bytes, where: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, where.encode())

    def _open(self, sealed: bytes, where: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], where.encode())
        except InvalidTag:
            raise StoreError(f"a value of the local store is damaged ({where})") from None

    # -- room messages waiting for their sender key (``pending``) -------------------
    def _pending_ref(self, room: str, server_id: str) -> str:
        return self.ref("pending", f"{room}\x00{server_id}")

    def _pending_chain(self, room: str, sender: str, device: int) -> str:
        return self.ref("pending-chain", f"{room}\x00{sender}\x00{int(device)}")

    def _keep_pending(
        self, room: str, sender: str, device: int, server_id: str, plaintext: bytes
    ) -> bool:
        ref = self._pending_ref(room, server_id)
        chain = self._pending_chain(room, sender, device)
        sealed = self._seal(plaintext, f"pending:{room}:{chain}:{ref}")
        cur = self._db.execute(
            "INSERT OR IGNORE INTO pending (ref, room, chain, value) VALUES (?, ?, ?, ?)",
            (ref, room, chain, sealed),
        )
        return cur.rowcount > 0

    def _move_pending_rows(self) -> None:
        """Move the rooms' pending messages kept as one ``kv`` row per room (written
        before the ``pending`` table) into it, in their order, each row once: at every
        open (one look-up when there are none, so a row an older client wrote since is
        moved too). A row that does not open (damaged) is left where it is (nothing
        reads it); an item without its sender or number is dropped (it could never be
        opened: its key is asked by sender and device)."""
        bounds = (_LEGACY_PENDING, _LEGACY_PENDING[:-1] + chr(ord(_LEGACY_PENDING[-1]) + 1))
        select = "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key"
        if self._db.execute(select + " LIMIT 1", bounds).fetchone() is None:
            return
        self._end_others_group()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for key, value in self._db.execute(select, bounds).fetchall():
                try:
                    items = json.loads(self._open(value, f"kv:{key}"))
                except (StoreError, ValueError) as exc:
                    log.warning("a room's pending messages could not be moved: %s", exc)
                    continue
                room = key[len(_LEGACY_PENDING) :]
                for item in items if isinstance(items, list) else ():
                    try:
                        sender, device = str(item["from"]), int(item["device"])
                        server_id = str(item["server_id"])
                    except (KeyError, TypeError, ValueError):
                        continue
                    plaintext = json.dumps(item).encode()
                    self._keep_pending(room, sender, device, server_id, plaintext)
                self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def ref(self, kind: str, name: str) -> str:
        """An opaque row key for ``name`` (the file does not show peer ids)."""
        mac = hmac.new(self._index_key, f"{kind}\x00{name}".encode(), hashlib.sha256)
        return mac.hexdigest()

    # -- transactions ---------------------------------------------------------
    @contextlib.contextmanager
    def transaction_sync(self) -> Iterator[Transaction]:
        """One atomic change (blocking; for code outside the event loop). A group of
        :meth:`transaction` left open for the next one waiting is committed first."""
        if not self._lock.locked():
            self._commit_group()
        self._end_others_group()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield Transaction(self)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One atomic change; transactions of one process run one at a time.

        **Group commit**: those waiting when one ends join its SQLite transaction,
        each in a savepoint of its own (one that raises is rolled back alone), and it
        commits once none is waiting, or ready to run when the last one ends (it
        yields once to let them in), or ``GROUP_MAX`` have joined: a room's key
        distribution is a thousand transactions, each a durable commit before. Each
        returns only once its group is committed (as durable as before); a failed
        commit fails every one of the group. The group holds SQLite's write lock
        from its first ``BEGIN`` to its ``COMMIT`` (other processes wait, as for one
        transaction)."""
        self._entering += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._entering -= 1
            if not self._lock.locked():
                self._commit_group()  # it was to join a group: nobody else will end it
            raise
        self._entering -= 1
        try:
            if self._group is None:
                self._end_others_group()
                self._db.execute("BEGIN IMMEDIATE")
                self._group = asyncio.get_running_loop().create_future()
                self._grouped = 0
                _OPEN_GROUPS[self._key] = self
            group = self._group
            self._grouped += 1
            self._db.execute("SAVEPOINT tx")
            try:
                yield Transaction(self)
            except BaseException:
                self._db.execute("ROLLBACK TO tx")
                self._db.execute("RELEASE tx")
                if not self._entering:
                    self._commit_group()  # the members before it, if any
                raise
            self._db.execute("RELEASE tx")
            if self._grouped >= GROUP_MAX:
                self._commit_group()
        finally:
            self._lock.release()
        if self._group is group:
            try:
                await asyncio.sleep(0)  # those ready to follow join the group
            finally:
                if self._group is group and not self._lock.locked() and not self._entering:
                    self._commit_group()  # nobody followed: this one ends it
        await asyncio.shield(group)

    def _end_others_group(self) -> None:
        """Another store of this process on the same file with a group open (as an SDK
        user may open two clients on one data directory): commit it first, as this
        ``BEGIN`` would wait for its lock on this very thread (its owner cannot run to
        commit meanwhile). One in the middle of a change is left to SQLite's timeout."""
        other = _OPEN_GROUPS.get(self._key)
        if other is not None and other is not self and not other._lock.locked():
            other._commit_group()

    def _commit_group(self) -> None:
        """Commit the open group, if any, and tell its members."""
        group, self._group = self._group, None
        if group is None:
            return
        if _OPEN_GROUPS.get(self._key) is self:
            del _OPEN_GROUPS[self._key]
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            group.set_exception(StoreError(f"the local store could not commit ({exc})"))
            group.exception()  # retrieved: each member raises it
        else:
            group.set_result(None)

    def read(self) -> Transaction:
        """Read without a transaction (each statement sees what this process wrote:
        committed, or in a group about to commit, :meth:`transaction`)."""
        return Transaction(self)
