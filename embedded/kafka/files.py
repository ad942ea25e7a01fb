"""File handles, atomic small files, and the fsync schedule.

Every write goes straight to the kernel (``os.write``/``os.writev``, no
user-space buffer) before the broker answers, so a killed process loses
nothing it acknowledged: the page cache belongs to the kernel. What a machine
crash may lose is bounded by the fsync schedule: :class:`Syncer` fsyncs the
files written since its last pass every ``fsync_interval_ms`` in a worker
thread, or, with an interval of 0, before every answer that wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


class FileHandle:
    """An fd that a worker thread may be fsyncing: closing waits until it is done."""

    __slots__ = ("closing", "fd", "path", "pins")

    def __init__(self, path: Path, flags: int) -> None:
        self.path = path
        self.fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        self.pins = 0
        self.closing = False

    def close(self) -> None:
        if self.pins:
            self.closing = True
        elif self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def pin(self) -> int:
        self.pins += 1
        return self.fd

    def unpin(self) -> None:
        self.pins -= 1
        if self.closing and not self.pins:
            self.closing = False
            self.close()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader (or a crash) sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_all(fd: int, pieces: list[bytes | memoryview], total: int) -> None:
    """Write every piece (one ``writev`` in the usual case); raise ``OSError`` on failure."""
    written = os.writev(fd, pieces)
    if written == total:
        return
    # A short write (rare on regular files): finish piece by piece.
    rest = memoryview(b"".join(bytes(p) for p in pieces))[written:]
    while rest:
        rest = rest[os.write(fd, rest) :]


class Syncer:
    """Tracks what was written since the last fsync and fsyncs it on schedule."""

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self.dirty: set[FileHandle] = set()
        self.dirty_dirs: set[Path] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def every_write(self) -> bool:
        return self.interval_ms == 0

    def start(self) -> None:
        if self.interval_ms > 0:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.sync()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_ms / 1000)
            try:
                await self.sync()
            except OSError as exc:  # a failing disk must not stop the broker answering
                log.error("fsync failed: %r", exc)

    async def after_sync(self, answer: bytes) -> bytes:
        """``answer``, once what was written so far is fsynced (``--fsync-interval-ms 0``)."""
        await self.sync()
        return answer

    async def sync(self) -> None:
        """Fsync everything written so far (in a worker thread; the loop keeps serving)."""
        async with self._lock:
            handles, self.dirty = self.dirty, set()
            dirs, self.dirty_dirs = self.dirty_dirs, set()
            if not handles and not dirs:
                return
            pinned = [(h, h.pin()) for h in handles if h.fd >= 0]
            try:
                await asyncio.to_thread(_fsync_all, [fd for _, fd in pinned], dirs)
            finally:
                for h, _ in pinned:
                    h.unpin()


def _fsync_all(fds: Iterable[int], dirs: Iterable[Path]) -> None:
    for fd in fds:
        os.fsync(fd)
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):  # a topic deleted meanwhile
            fsync_dir(d)
