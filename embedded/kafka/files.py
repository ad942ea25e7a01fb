"""File handles, atomic small files, and the fsync schedule.

Every write goes straight to the kernel (``os.write``/``os.writev``, no
user-space buffer) before the broker answers, so a killed process loses
nothing it acknowledged: the page cache belongs to the kernel. What a machine
crash may lose is bounded by the fsync schedule: :class:`Syncer` fsyncs the
files written since its last pass every ``fsync_interval_ms`` in a worker
thread, or, with an interval of 0, before every answer that wrote: that answer
waits for a pass that began after its write and succeeded, and is an error if
the pass failed (a failed pass's files stay dirty and are fsynced again).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable
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


# At most this many pieces per writev (more is EINVAL): Linux's IOV_MAX is 1024.
try:
    IOV_MAX = max(int(os.sysconf("SC_IOV_MAX")), 16)
except (AttributeError, OSError, ValueError):  # pragma: no cover - not Linux
    IOV_MAX = 1024


def write_all(fd: int, pieces: list[bytes | memoryview], total: int) -> None:
    """Write every piece (one ``writev`` in the usual case); raise ``OSError`` on failure."""
    if len(pieces) <= IOV_MAX:
        written = os.writev(fd, pieces)
        if written != total:
            _finish(fd, pieces, written)
        return
    for i in range(0, len(pieces), IOV_MAX):  # a record set of more than IOV_MAX/2 batches
        chunk = pieces[i : i + IOV_MAX]
        size = sum(map(len, chunk))
        written = os.writev(fd, chunk)
        if written != size:
            _finish(fd, chunk, written)


def _finish(fd: int, pieces: list[bytes | memoryview], written: int) -> None:
    """After a short write (rare on regular files): the rest, piece by piece."""
    rest = memoryview(b"".join(pieces))[written:]
    while rest:
        rest = rest[os.write(fd, rest) :]


class Syncer:
    """Tracks what was written since the last fsync and fsyncs it on schedule.

    Writers add the handles they wrote to ``dirty`` (and directories whose entries
    they changed to ``dirty_dirs``). A *pass* takes both sets and fsyncs them in a
    worker thread. Passes run one at a time in a task of the syncer's own, never in
    a caller's: a caller that is cancelled (its client disconnected) stops waiting,
    not the pass. A pass that fails puts its sets back, so the next one fsyncs them
    again, and fails its waiters with the ``OSError``.

    A handle given to :meth:`retire` (a rolled segment's: it is not written again)
    is closed once nothing needs it: at once if it is clean, else after the
    first pass that fsyncs it *succeeds*, so a failed pass can retry it. Closing it
    earlier would lose that fsync (a pass skips closed handles); never closing it
    kept one fd per segment until its deletion, and at ``RLIMIT_NOFILE`` rolling
    failed with ``EMFILE``.

    :meth:`sync` returns once everything written before it was called is on disk.
    While something is dirty it waits for the *next* pass, which starts after the
    call and so covers those writes (callers that arrive during a pass share the
    next one: a group commit). While nothing is dirty, what was written went to the
    pass under way (it waits for that one) or to passes that succeeded (a failed
    pass puts its files back).
    """

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self.dirty: set[FileHandle] = set()
        self.dirty_dirs: set[Path] = set()
        self._retired: set[FileHandle] = set()  # to close once fsynced
        self._task: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._current: asyncio.Future[None] | None = None  # the pass under way
        self._next: asyncio.Future[None] | None = None  # the pass that starts after it

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
        try:
            await self.sync()
        except OSError:
            pass  # logged by the pass

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_ms / 1000)
            with contextlib.suppress(OSError):  # logged; the files stay dirty: retried
                await self.sync()

    def retire(self, handle: FileHandle) -> None:
        """Close ``handle``, which will not be written again, once it is fsynced."""
        if handle in self.dirty or handle.pins:  # dirty, or in the pass under way
            self._retired.add(handle)
        else:
            handle.close()

    def _close_retired(self) -> None:
        """After a pass succeeded: what it fsynced and nobody wrote since is done with."""
        done = [h for h in self._retired if h not in self.dirty]
        for h in done:
            h.close()  # if the thread still pins it, once it unpins
            self._retired.discard(h)

    async def after_sync(self, answer: bytes, failed: Callable[[], bytes]) -> bytes:
        """``answer`` once what was written so far is fsynced (``--fsync-interval-ms 0``);
        ``failed()`` if the fsync failed: a write not known to be on disk is not
        acknowledged."""
        try:
            await self.sync()
        except OSError:
            return failed()
        return answer

    async def sync(self) -> None:
        """Return once everything written so far is fsynced; raise ``OSError`` if the
        fsync covering it failed. The loop keeps serving meanwhile."""
        if self.dirty or self.dirty_dirs:
            loop = asyncio.get_running_loop()
            if self._next is None:
                self._next = loop.create_future()
            waited = self._next
            if self._runner is None:
                self._runner = loop.create_task(self._run())
        elif self._current is not None:
            waited = self._current
        else:
            return
        await asyncio.shield(waited)

    async def _run(self) -> None:
        """Run passes back to back while someone waits for one."""
        try:
            while self._next is not None:
                done = self._current = self._next
                self._next = None
                try:
                    await self._pass()
                except OSError as exc:
                    done.set_exception(exc)
                    done.exception()  # retrieved: a pass nobody waits for any more is no error
                except BaseException:
                    done.cancel()
                    raise
                else:
                    done.set_result(None)
                    self._close_retired()
                finally:
                    self._current = None
        finally:
            self._runner = None
            if self._next is not None:  # cancelled (the loop is shutting down)
                self._next.cancel()
                self._next = None

    async def _pass(self) -> None:
        handles, self.dirty = self.dirty, set()
        dirs, self.dirty_dirs = self.dirty_dirs, set()
        pinned = [h for h in handles if h.fd >= 0]  # a closed file is gone or superseded
        fds = [h.pin() for h in pinned]
        work = asyncio.get_running_loop().run_in_executor(None, _fsync_all, fds, dirs)
        try:
            await asyncio.shield(work)
        except BaseException as exc:
            # Not known to be on disk: the next pass fsyncs them again.
            self.dirty.update(pinned)
            self.dirty_dirs.update(dirs)
            if isinstance(exc, OSError):
                log.critical(
                    "fsync failed: %r; %d files and %d directories stay dirty and are "
                    "fsynced again by the next pass; writes not yet acknowledged are "
                    "answered with an error; with --fsync-interval-ms > 0 the writes of "
                    "the last interval may not be on disk",
                    exc, len(pinned), len(dirs),
                )  # fmt: skip
            raise
        finally:
            # Unpin (a closed handle's fd is closed then) only once the thread is done.
            if work.done():
                _unpin_all(pinned, work)
            else:
                work.add_done_callback(functools.partial(_unpin_all, pinned))


def _unpin_all(handles: list[FileHandle], work: asyncio.Future[None]) -> None:
    if not work.cancelled():
        work.exception()  # retrieved (the pass reported it)
    for h in handles:
        h.unpin()


def _fsync_all(fds: Iterable[int], dirs: Iterable[Path]) -> None:
    for fd in fds:
        os.fsync(fd)
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):  # a topic deleted meanwhile
            fsync_dir(d)
