"""The fsync schedule (files.Syncer) and what an answer means when an fsync is slow or fails.

The disk is stood in for by replacing ``files._fsync_all`` (what a pass runs in its
worker thread): one that blocks until the test lets it go, or raises ``EIO``; or, where
the order of fsyncs and renames is what matters, by recording ``os.fsync`` and
``os.replace``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka.protocol.admin import DeleteTopicsRequest_v0, DeleteTopicsResponse_v0
from aiokafka.protocol.commit import OffsetCommitRequest_v2, OffsetCommitResponse_v2
from aiokafka.protocol.produce import ProduceRequest_v7, ProduceResponse_v7

from embedded.kafka import files, offsets
from embedded.kafka.files import FileHandle, Syncer
from tests.embedded.inproc import ask, batch, running
from tests.support.aio import eventually

KAFKA_STORAGE_ERROR, COORDINATOR_NOT_AVAILABLE = 56, 15
T = TypeVar("T")


class Disk:
    """``_fsync_all`` under the test's control: every call recorded, held or failed."""

    def __init__(self) -> None:
        self.real = files._fsync_all
        self.calls: list[list[int]] = []
        self.synced: list[list[int]] = []  # calls that succeeded
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.failures = 0  # fail this many calls next

    def __call__(self, fds: Iterable[int], dirs: Iterable[Path]) -> None:
        fds = list(fds)
        self.calls.append(fds)
        self.started.set()
        self.release.wait(30)
        for fd in fds:
            os.fstat(fd)  # still open: raises EBADF if it was closed under the thread
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EIO, "I/O error")
        self.real(fds, dirs)
        self.synced.append(fds)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    d = Disk()
    monkeypatch.setattr(files, "_fsync_all", d)
    yield d
    d.release.set()


def written(path: Path) -> FileHandle:
    h = FileHandle(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(h.fd, b"data")
    return h


async def started(disk: Disk) -> None:
    await asyncio.to_thread(disk.started.wait, 30)
    disk.started.clear()


async def test_a_waiter_behind_a_cancelled_pass_waits_for_the_fsync_of_its_writes(
    disk: Disk, tmp_path: Path
) -> None:
    """sync() emptied the dirty set before its fsync: a second caller found nothing
    dirty and returned at once, though its writes were in the first pass, whose caller
    was cancelled (a client that disconnected) while the fsync still ran."""
    syncer = Syncer(0)
    a, b = written(tmp_path / "a"), written(tmp_path / "b")
    syncer.dirty |= {a, b}
    disk.release.clear()
    first = asyncio.create_task(syncer.sync())
    await started(disk)
    second = asyncio.create_task(syncer.sync())  # its writes went to the pass under way
    first.cancel()
    await asyncio.sleep(0.1)
    assert not second.done()  # the fsync is still held
    disk.release.set()
    await asyncio.wait_for(second, 30)
    assert sorted(disk.synced[0]) == sorted([a.fd, b.fd])
    with pytest.raises(asyncio.CancelledError):
        await first
    a.close()
    b.close()


async def test_a_file_closed_during_its_fsync_stays_open_until_the_thread_is_done(
    disk: Disk, tmp_path: Path
) -> None:
    """The pass unpinned its handles when its caller was cancelled, while the worker
    thread still fsynced them: a closed (even reused) descriptor under the thread."""
    syncer = Syncer(0)
    h = written(tmp_path / "a")
    fd = h.fd
    syncer.dirty.add(h)
    disk.release.clear()
    caller = asyncio.create_task(syncer.sync())
    await started(disk)
    h.close()  # retention deletes the segment meanwhile
    caller.cancel()
    await asyncio.sleep(0.1)
    assert h.fd == fd  # still pinned by the pass
    disk.release.set()
    await eventually(_async(lambda: h.fd), lambda v: v == -1)
    assert disk.synced == [[fd]]


async def test_a_failed_fsync_fails_its_waiters_and_its_files_are_fsynced_again(
    disk: Disk, tmp_path: Path
) -> None:
    syncer = Syncer(0)
    h = written(tmp_path / "a")
    syncer.dirty.add(h)
    disk.failures = 1
    disk.release.clear()
    first = asyncio.create_task(syncer.sync())
    await started(disk)
    second = asyncio.create_task(syncer.sync())  # behind it: the same writes
    disk.release.set()
    for waiter in (first, second):
        with pytest.raises(OSError):
            await asyncio.wait_for(waiter, 30)
    assert h in syncer.dirty  # not known to be on disk: kept for the next pass
    await syncer.sync()
    assert disk.synced == [[h.fd]]
    assert not syncer.dirty
    h.close()


async def test_in_interval_mode_a_failed_fsync_is_retried_until_it_succeeds(
    disk: Disk, tmp_path: Path
) -> None:
    """The loop logged the error and dropped the files: a rolled segment was then
    never fsynced again."""
    syncer = Syncer(20)
    h = written(tmp_path / "a")
    syncer.dirty.add(h)
    disk.failures = 2
    syncer.start()
    try:
        await eventually(_async(lambda: disk.synced), lambda s: [h.fd] in s)
        assert len(disk.calls) >= 3
    finally:
        await syncer.stop()
        h.close()


async def test_a_retired_file_is_closed_only_once_a_pass_fsynced_it(
    disk: Disk, tmp_path: Path
) -> None:
    """A rolled segment's handle (retired) stays open while its writes wait for a pass,
    and through a pass that fails, so that the next pass fsyncs it; then it is closed.
    A pass skips closed handles: closing it at the roll would lose its fsync."""
    syncer = Syncer(0)
    clean, dirty, in_pass = (written(tmp_path / n) for n in ("clean", "dirty", "in-pass"))
    syncer.retire(clean)
    assert clean.fd == -1  # nothing to fsync: closed at once
    syncer.dirty.add(in_pass)
    disk.failures = 1
    disk.release.clear()
    first = asyncio.create_task(syncer.sync())
    await started(disk)
    syncer.retire(in_pass)  # taken by the pass under way, which fails
    syncer.dirty.add(dirty)  # written after that pass began
    syncer.retire(dirty)
    disk.release.set()
    with pytest.raises(OSError):
        await asyncio.wait_for(first, 30)
    assert dirty.fd >= 0 and in_pass.fd >= 0 and {dirty, in_pass} <= syncer.dirty
    fds = sorted([dirty.fd, in_pass.fd])
    await syncer.sync()
    assert [sorted(call) for call in disk.synced] == [fds]
    assert dirty.fd == in_pass.fd == -1


def _async(f: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def probe() -> T:
        return f()

    return probe


# Through the broker, --fsync-interval-ms 0 ---------------------------------------------
async def test_a_produce_whose_fsync_fails_is_answered_with_a_storage_error(
    disk: Disk, tmp_path: Path
) -> None:
    async with running(tmp_path, fsync_interval_ms=0) as broker:
        await broker.topics.create("t", 1)
        disk.failures = 1
        produce = ProduceRequest_v7(None, -1, 5000, [("t", [(0, batch(b"one"))])])
        resp = await ask(broker, produce)
        assert isinstance(resp, ProduceResponse_v7)
        [(_, [(partition, error, offset, *_)])] = resp.topics
        assert (partition, error, offset) == (0, KAFKA_STORAGE_ERROR, -1)
        # The disk is back: the retry is acknowledged once it is fsynced.
        resp = await ask(broker, produce)
        [(_, [(_, error, offset, *_)])] = resp.topics
        assert (error, offset) == (0, 1)
        topic = broker.topics.get("t")
        assert topic is not None
        segment = topic.logs[0].segments[-1].handle
        assert segment is not None and segment.fd in disk.synced[-1]


async def test_an_offset_commit_whose_fsync_fails_is_not_acknowledged(
    disk: Disk, tmp_path: Path
) -> None:
    async with running(tmp_path, fsync_interval_ms=0) as broker:
        await broker.topics.create("t", 1)
        disk.failures = 1
        commit = OffsetCommitRequest_v2("g", -1, "", -1, [("t", [(0, 5, "")])])
        resp = await ask(broker, commit)
        assert isinstance(resp, OffsetCommitResponse_v2)
        assert resp.topics[0][1][0][1] == COORDINATOR_NOT_AVAILABLE
        resp = await ask(broker, commit)
        assert resp.topics[0][1][0][1] == 0


async def test_delete_topics_fsyncs_the_forgotten_offsets_before_it_answers(
    disk: Disk, tmp_path: Path
) -> None:
    """The journal's record that a deleted topic's offsets are gone waited for the
    interval (or was never fsynced in mode 0) while the deletion itself was at once."""
    async with running(tmp_path, fsync_interval_ms=3_600_000) as broker:
        await broker.topics.create("t", 1)
        resp = await ask(broker, OffsetCommitRequest_v2("g", -1, "", -1, [("t", [(0, 5, "")])]))
        assert resp.topics[0][1][0][1] == 0
        journal = broker.offsets.handle
        assert journal is not None and journal in broker.syncer.dirty
        resp = await ask(broker, DeleteTopicsRequest_v0(["t"], 10_000))
        assert isinstance(resp, DeleteTopicsResponse_v0)
        assert resp.topic_error_codes == [("t", 0)]
        assert any(journal.fd in fds for fds in disk.synced)
        assert journal not in broker.syncer.dirty


async def test_in_mode_0_a_compaction_fsyncs_the_whole_new_journal_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running compaction appended the commits made meanwhile (its tail) to the new
    journal without an fsync, renamed it over the old one and only marked it for a later
    pass: a commit of the tail, acknowledged once the *old* journal was fsynced, was lost
    if a machine crash kept the rename but not the tail. Now the new journal is fsynced
    whole before the rename, and its directory right after it, before the old journal is
    dropped. (A power cut cannot be simulated: the fsyncs and the rename are recorded.)"""
    async with running(tmp_path, fsync_interval_ms=0) as broker:
        await broker.topics.create("t", 1)
        store = broker.offsets
        old = store.handle
        monkeypatch.setattr(offsets, "COMPACT_MIN_BYTES", 500)
        # The snapshot's write waits (in its worker thread) until the tail is made.
        hold = threading.Event()
        write_synced = offsets._write_synced

        def held(path: Path, data: bytes) -> None:
            hold.wait(30)
            write_synced(path, data)

        monkeypatch.setattr(offsets, "_write_synced", held)
        # (what, inode, size then, whether the old journal was still the broker's)
        events: list[tuple[str, int, int, bool]] = []
        fsync, replace = os.fsync, os.replace

        def recorded_fsync(fd: int) -> None:
            st = os.fstat(fd)
            events.append(("fsync", st.st_ino, st.st_size, store.handle is old))
            fsync(fd)

        def recorded_replace(src: Any, dst: Any) -> None:
            st = os.stat(src)
            events.append(("replace", st.st_ino, st.st_size, store.handle is old))
            replace(src, dst)

        monkeypatch.setattr(os, "fsync", recorded_fsync)
        monkeypatch.setattr(os, "replace", recorded_replace)

        async def commit(offset: int) -> None:
            request = OffsetCommitRequest_v2("g", -1, "", -1, [("t", [(0, offset, "")])])
            resp = await ask(broker, request)
            assert resp.topics[0][1][0][1] == 0

        offset = 0
        while store._compacting is None:  # until the journal is long enough to compact
            offset += 1
            await commit(offset)
        for _ in range(3):  # answered while the compaction runs: its tail
            offset += 1
            await commit(offset)
        hold.set()
        await asyncio.wait_for(store._compacting, 30)
        assert store.handle is not old
        journal = os.stat(tmp_path / offsets.JOURNAL)
        [renamed] = [i for i, e in enumerate(events) if e[0] == "replace"]
        assert events[renamed][1:3] == (journal.st_ino, journal.st_size)
        # The new journal was fsynced with everything it holds, tail included, before
        # it took the old one's place.
        assert ("fsync", journal.st_ino, journal.st_size, True) in events[:renamed]
        # Its directory after the rename, while the old journal was still the broker's.
        directory = os.stat(tmp_path).st_ino
        after = [e[:2] + e[3:] for e in events[renamed + 1 :]]
        assert ("fsync", directory, True) in after, events[renamed:]
        # What the disk holds now (what a kill -9 would leave) has every commit.
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copy(tmp_path / offsets.JOURNAL, copy / offsets.JOURNAL)
        again = offsets.OffsetStore(copy, Syncer(1000))
        again.load()
        assert again.get("g", "t", 0) == (offset, "")
        again.close()
