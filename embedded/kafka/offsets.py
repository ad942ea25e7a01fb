"""Committed group offsets, durable in one append-only journal compacted on start.

Each commit appends one record ``[length u32][crc32c u32][JSON]`` with
``os.write`` before the commit is answered (the fsync schedule is the one of
the logs: files.py). At start the journal is read up to its first torn or
corrupt record and rewritten with only the latest offset of each partition
(write, fsync, rename); it is also rewritten while running whenever it grows
well past that live size, so its size stays flat however long the broker runs
(with ``--fsync-interval-ms 0``: the new journal is fsynced whole before it
replaces the old one, and its directory fsynced before the old one is dropped).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka.record.util import calc_crc32c

from embedded.kafka.files import FileHandle, Syncer, fsync_dir

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">II")
JOURNAL = "offsets.journal"
COMPACT_MIN_BYTES = 4 * 1024 * 1024

Key = tuple[str, int]  # (topic, partition)


class OffsetStore:
    def __init__(self, data_dir: Path, syncer: Syncer) -> None:
        self.path = data_dir / JOURNAL
        self.syncer = syncer
        self.groups: dict[str, dict[Key, tuple[int, str]]] = {}
        self.handle: FileHandle | None = None
        self.size = 0
        self._live_bytes = 0
        self._tmp = self.path.with_name(f".{JOURNAL}.tmp")
        self._tail: list[bytes] | None = None  # commits made while compacting
        self._compacting: asyncio.Task[None] | None = None

    # Start --------------------------------------------------------------------------
    def load(self, ends: Mapping[Key, int] | None = None) -> None:
        """Read the journal (and compact it). ``ends``: each partition's log end as its
        log recovered; a committed offset past it is lowered to it. The journal and the
        segments are fsynced in no set order, so after a machine crash (not a kill: the
        kernel has the writes) a commit can outlive the records it went past: the group
        would resume past records produced again under those offsets, and skip them."""
        if self.path.exists():
            data = self.path.read_bytes()
            pos = 0
            while pos + _HEAD.size <= len(data):
                length, crc = _HEAD.unpack_from(data, pos)
                body = data[pos + _HEAD.size : pos + _HEAD.size + length]
                if len(body) != length or calc_crc32c(body) != crc:
                    break
                try:
                    self._apply(json.loads(body))
                except (ValueError, KeyError, TypeError):
                    break
                pos += _HEAD.size + length
            if pos != len(data):
                log.warning("offsets journal: dropping a torn tail (%d bytes)", len(data) - pos)
        for group_id, group in self.groups.items():
            for key, (offset, meta) in group.items():
                end = (ends or {}).get(key)
                if end is not None and offset > end:
                    log.warning(
                        "group %s: offset %d of %s[%d] is past its log's end %d: lowered",
                        group_id, offset, key[0], key[1], end,
                    )  # fmt: skip
                    group[key] = (end, meta)
        self._compact()

    def _apply(self, rec: dict[str, Any]) -> None:
        if "g" in rec:
            group = self.groups.setdefault(rec["g"], {})
            for topic, partition, offset, meta in rec["c"]:
                group[(topic, int(partition))] = (int(offset), meta)
        elif "d" in rec:
            self._forget(rec["d"])

    def _forget(self, topic: str) -> None:
        for group in self.groups.values():
            for key in [k for k in group if k[0] == topic]:
                del group[key]

    def _snapshot(self) -> bytes:
        return b"".join(
            _frame({"g": g, "c": [[t, p, o, m] for (t, p), (o, m) in offs.items()]})
            for g, offs in self.groups.items()
            if offs
        )

    def _compact(self) -> None:
        """Rewrite the journal with the live offsets only (atomically; at start)."""
        data = self._snapshot()
        _write_synced(self._tmp, data)
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        self.handle = FileHandle(self.path, os.O_WRONLY | os.O_APPEND)
        self.size = self._live_bytes = len(data)

    async def _compact_while_running(self) -> None:
        """The same while serving: the snapshot is written and fsynced in a worker
        thread; commits made meanwhile are appended to it before it replaces the
        journal (in the loop, with no await in between, so none is lost).

        With ``--fsync-interval-ms 0`` the new journal is fsynced after that tail,
        then renamed, then its directory fsynced, all before the old journal is
        dropped (two fsyncs in the loop, once per compaction). Else a commit of the
        tail acknowledged by a pass that fsynced the *old* journal would be lost if a
        machine crash kept the rename but not the tail's data. With an interval the
        new file and the directory are fsynced by the next pass, as any write.
        """
        data = self._snapshot()
        every_write = self.syncer.every_write
        try:
            await asyncio.to_thread(_write_synced, self._tmp, data)
            tail = b"".join(self._tail or [])
            fd = os.open(self._tmp, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                _write(fd, tail)
                if every_write:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
        except OSError as exc:
            log.error("compacting the offsets journal failed: %r", exc)
            return  # the old journal, which has every commit, stays
        finally:
            self._tail = None
        if every_write:
            try:
                fsync_dir(self.path.parent)
            except OSError as exc:  # the next pass fsyncs it again (dirty below)
                log.critical("fsync of %s failed: %r", self.path.parent, exc)
        old, self.handle = self.handle, FileHandle(self.path, os.O_WRONLY | os.O_APPEND)
        if old is not None:
            old.close()
        self.syncer.dirty.add(self.handle)
        self.syncer.dirty_dirs.add(self.path.parent)
        self.size = len(data) + len(tail)
        self._live_bytes = len(data)

    # Use ----------------------------------------------------------------------------
    def commit(self, group_id: str, offsets: list[tuple[str, int, int, str]]) -> None:
        """Make the offsets durable (written before this returns) and current."""
        self._append({"g": group_id, "c": [list(o) for o in offsets]})
        group = self.groups.setdefault(group_id, {})
        for topic, partition, offset, meta in offsets:
            group[(topic, partition)] = (offset, meta)

    def forget_topic(self, topic: str) -> None:
        self._append({"d": topic})
        self._forget(topic)

    def _append(self, rec: dict[str, Any]) -> None:
        assert self.handle is not None
        data = _frame(rec)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.handle.fd, view) :]
        except OSError:
            # No torn record may stay: the ones after it would be lost at start.
            os.ftruncate(self.handle.fd, self.size)
            raise
        self.size += len(data)
        self.syncer.dirty.add(self.handle)
        if self._tail is not None:
            self._tail.append(data)
        elif self.size > max(COMPACT_MIN_BYTES, 4 * self._live_bytes):
            self._tail = []
            self._compacting = asyncio.get_running_loop().create_task(self._compact_while_running())

    def get(self, group_id: str, topic: str, partition: int) -> tuple[int, str] | None:
        return self.groups.get(group_id, {}).get((topic, partition))

    def of_group(self, group_id: str) -> dict[Key, tuple[int, str]]:
        return self.groups.get(group_id, {})

    def close(self) -> None:
        if self._compacting is not None:
            self._compacting.cancel()
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _frame(rec: dict[str, Any]) -> bytes:
    body = json.dumps(rec, separators=(",", ":")).encode()
    return _HEAD.pack(len(body), calc_crc32c(body)) + body
