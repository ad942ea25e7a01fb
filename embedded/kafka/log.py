"""Partition logs: segment files of RecordBatch v2 bytes, an in-memory index, retention, recovery.

A partition is a directory of segments named by the offset of their first
batch (``00000000000000001234.log``). Batches are stored exactly as produced,
with only their base offset and leader epoch rewritten (see records.py).

The index of each segment holds, per batch, its base offset, its position in
the file and the largest timestamp seen so far; a fetch finds its start with
two binary searches (segment, then batch) and reads one contiguous range with
``os.pread``: the cost of a fetch does not depend on the length of the log.
The index is rebuilt at start by scanning the segments, checking every
batch's CRC-32C and the continuity of offsets; a torn or corrupt tail (a
write cut short by a crash) is truncated, and any later segment dropped; a
log start (DeleteRecords) past the recovered end is lowered to it.

Open files stay few whatever the number of segments: a partition holds the
active segment's handle (read and written), the read handle of one older
segment (the last one read: a consumer catching up reads one segment after the
other), and, until the fsync pass that covers its last writes, the write handle
of a segment just rolled. Keeping every segment's handle open until its deletion
held retention / segment.ms + 1 files a partition (25 with the defaults), and
at ``RLIMIT_NOFILE`` rolling failed with ``EMFILE``.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import time
from array import array
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import NamedTuple

from aiokafka.record.memory_records import MemoryRecords

from embedded.kafka.config import TopicConfig
from embedded.kafka.files import FileHandle, Syncer, atomic_write, write_all
from embedded.kafka.records import Batch, BatchError, base_offset_of, parse_batch, stamped_header

log = logging.getLogger(__name__)

SUFFIX = ".log"
LOG_START_FILE = "log-start"


def segment_name(base: int) -> str:
    return f"{base:020d}{SUFFIX}"


class OffsetOutOfRange(Exception):
    """A fetch below the log start or above the log end."""


class Segment:
    """One segment file and the index of its batches."""

    __slots__ = (
        "base",
        "created_ms",
        "handle",
        "max_ts",
        "next_offset",
        "offsets",
        "path",
        "positions",
        "reader",
        "size",
    )

    def __init__(self, path: Path, base: int) -> None:
        self.path = path
        self.base = base
        self.next_offset = base
        self.size = 0
        self.offsets = array("q")  # base offset of each batch
        self.positions = array("q")  # file position of each batch
        self.max_ts = array("q")  # largest timestamp up to and including each batch
        self.handle: FileHandle | None = None  # the active segment's (read and write)
        self.reader = -1  # an older segment's read-only fd, while it is the one read
        self.created_ms = int(time.time() * 1000)

    @property
    def largest_timestamp(self) -> int:
        return self.max_ts[-1] if self.max_ts else -1

    def fd(self) -> int:
        """The active segment's handle, opened (and the file created) on first use."""
        if self.handle is None:
            self.handle = FileHandle(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        return self.handle.fd

    def add(self, offset: int, position: int, max_timestamp: int) -> None:
        self.offsets.append(offset)
        self.positions.append(position)
        previous = self.max_ts[-1] if self.max_ts else -1
        self.max_ts.append(max_timestamp if max_timestamp > previous else previous)

    def read_fd(self) -> int:
        if self.reader < 0:
            self.reader = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self.reader

    def close_reader(self) -> None:
        if self.reader >= 0:
            os.close(self.reader)
            self.reader = -1

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        self.close_reader()

    def delete(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class PartitionLog:
    """The log of one partition: append, read by offset, find by timestamp, retention."""

    def __init__(
        self, directory: Path, topic: str, partition: int, config: TopicConfig, syncer: Syncer
    ) -> None:
        self.dir = directory
        self.topic = topic
        self.partition = partition
        self.config = config
        self.syncer = syncer
        self.segments: list[Segment] = []
        self.bases: list[int] = []  # segment base offsets, for bisect
        self.log_start = 0
        self.next_offset = 0  # log end offset = high watermark (one replica)
        self.waiters: set[asyncio.Future[None]] = set()
        self.closed = False
        self._moving = asyncio.Lock()  # DeleteRecords
        self._reading: Segment | None = None  # the older segment whose read handle is open

    # Opening and recovery -------------------------------------------------------
    @classmethod
    def open(
        cls, directory: Path, topic: str, partition: int, config: TopicConfig, syncer: Syncer
    ) -> PartitionLog:
        directory.mkdir(parents=True, exist_ok=True)
        plog = cls(directory, topic, partition, config, syncer)
        plog._recover()
        return plog

    def _recover(self) -> None:
        files = sorted(
            (int(p.name[: -len(SUFFIX)]), p)
            for p in self.dir.iterdir()
            if p.name.endswith(SUFFIX) and p.name[: -len(SUFFIX)].isdigit()
        )
        expected: int | None = None
        for i, (base, path) in enumerate(files):
            if expected is not None and base != expected:
                log.warning(
                    "%s-%d: segment %s does not follow offset %d; dropping it and later ones",
                    self.topic,
                    self.partition,
                    path.name,
                    expected,
                )
                for _, later in files[i:]:
                    later.unlink()
                break
            seg, whole = self._scan(path, base)
            self.segments.append(seg)
            expected = seg.next_offset
            if not whole:
                for _, later in files[i + 1 :]:
                    log.warning(
                        "%s-%d: dropping %s after a torn segment",
                        self.topic,
                        self.partition,
                        later.name,
                    )
                    later.unlink()
                break
        self.bases = [s.base for s in self.segments]
        if self.segments:
            self.log_start = self.segments[0].base
            self.next_offset = self.segments[-1].next_offset
        stored = self._read_log_start()
        if stored is not None:
            if not self.segments:
                self.next_offset = stored
            elif stored > self.next_offset:
                # Records below it were lost (a machine crash before their fsync). Kept,
                # it would hide the records produced again under those offsets at the
                # next start: it is lowered to the end, on disk too.
                log.warning(
                    "%s-%d: log start %d is past the recovered end %d: lowered to it",
                    self.topic, self.partition, stored, self.next_offset,
                )  # fmt: skip
                stored = self.next_offset
                atomic_write(self.dir / LOG_START_FILE, f"{stored}\n".encode())
            self.log_start = max(self.log_start, stored)

    def _scan(self, path: Path, base: int) -> tuple[Segment, bool]:
        """Index one segment file; truncate it at the first batch that is not whole."""
        seg = Segment(path, base)
        expected, pos = base, 0
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size:
                with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
                    view = memoryview(mm)
                    try:
                        while pos < size:
                            try:
                                batch = parse_batch(view, pos)
                            except BatchError:
                                break
                            if base_offset_of(view, pos) != expected:
                                break
                            seg.add(expected, pos, batch.max_timestamp)
                            expected += batch.last_offset_delta + 1
                            pos += batch.size
                    finally:
                        view.release()
        whole = pos == size
        if not whole:
            log.warning(
                "%s-%d: %s has a torn or corrupt tail at byte %d of %d; truncating it",
                self.topic,
                self.partition,
                path.name,
                pos,
                size,
            )
            os.truncate(path, pos)
        seg.size = pos
        seg.next_offset = expected
        if seg.max_ts:
            seg.created_ms = seg.max_ts[0]  # as Kafka: segment.ms counts from the first batch
        return seg, whole

    def _read_log_start(self) -> int | None:
        try:
            return int((self.dir / LOG_START_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    # Writing ---------------------------------------------------------------------
    def append(self, records: bytes | memoryview, batches: list[Batch]) -> int:
        """Write the batches, offsets assigned; return the first offset. Raises ``OSError``."""
        total = sum(b.size for b in batches)
        seg = self._segment_for(total)
        fd = seg.fd()
        view = memoryview(records)
        offset = base = self.next_offset
        pieces: list[bytes | memoryview] = []
        for b in batches:
            pieces.append(stamped_header(records, b, offset))
            pieces.append(view[b.start + 16 : b.start + b.size])
            offset += b.last_offset_delta + 1
        try:
            write_all(fd, pieces, total)
        except OSError:
            # Leave no partial batch behind; what was written is not acknowledged.
            os.ftruncate(fd, seg.size)
            raise
        offset, pos = base, seg.size
        for b in batches:
            seg.add(offset, pos, b.max_timestamp)
            offset += b.last_offset_delta + 1
            pos += b.size
        seg.size = pos
        seg.next_offset = self.next_offset = offset
        assert seg.handle is not None
        self.syncer.dirty.add(seg.handle)
        self.wake()
        return base

    def _segment_for(self, size: int) -> Segment:
        if self.segments:
            seg = self.segments[-1]
            if seg.size == 0:
                return seg
            full = seg.size + size > self.config.segment_bytes
            old = int(time.time() * 1000) - seg.created_ms >= self.config.segment_ms
            if not (full or old):
                return seg
        return self._roll()

    def _roll(self) -> Segment:
        """Start a new (empty) active segment at the log end offset. The previous one is
        not written again: its handle is closed once its last writes are fsynced, and it
        is read through a read handle (``_fd_to_read``) from now on."""
        previous = self.segments[-1] if self.segments else None
        if previous is not None and previous.handle is not None:
            self.syncer.retire(previous.handle)
            previous.handle = None
        seg = Segment(self.dir / segment_name(self.next_offset), self.next_offset)
        seg.fd()  # create the file now: its name keeps the log end offset across restarts
        self.syncer.dirty_dirs.add(self.dir)
        self.segments.append(seg)
        self.bases.append(seg.base)
        return seg

    def wake(self) -> None:
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters.clear()

    # Reading ---------------------------------------------------------------------
    def read(self, offset: int, max_bytes: int, min_one: bool) -> bytes:
        """Whole batches from the one holding ``offset``, up to ``max_bytes``
        (at least one batch if ``min_one``). Raises :class:`OffsetOutOfRange`."""
        if offset < self.log_start or offset > self.next_offset:
            raise OffsetOutOfRange
        if offset == self.next_offset:
            return b""
        i = bisect_right(self.bases, offset) - 1
        while True:
            seg = self.segments[i]
            if offset < seg.next_offset:
                break
            i += 1  # an empty active segment, or the offset is just past this one
            if i == len(self.segments):
                return b""
        offsets, positions = seg.offsets, seg.positions
        first = max(bisect_right(offsets, offset) - 1, 0)
        start = positions[first]
        limit = start + max_bytes
        if seg.size <= limit:
            end = seg.size
        else:
            last = bisect_right(positions, limit) - 1  # batches before ``last`` fit
            if last > first:
                end = positions[last]
            elif min_one:
                end = positions[first + 1] if first + 1 < len(positions) else seg.size
            else:
                return b""
        return os.pread(self._fd_to_read(seg), end - start, start)

    def _fd_to_read(self, seg: Segment) -> int:
        """The active segment's own handle; for an older one, its read handle, kept open
        until another older segment is read (so at most one a partition)."""
        if seg is self.segments[-1]:
            return seg.fd()
        if self._reading is not seg:
            if self._reading is not None:
                self._reading.close_reader()
            self._reading = seg
        return seg.read_fd()

    def offset_for_timestamp(
        self, timestamp: int, known: BatchTimes | None = None
    ) -> tuple[tuple[int, int] | None, BatchTimes | None]:
        """The first offset whose record timestamp is at least ``timestamp`` and that
        timestamp (``None`` if there is none), and the batch decoded to find it.

        Only the one batch that holds it is read and decoded: the first whose largest
        timestamp so far reaches ``timestamp`` (the index says which). ``known``, a
        batch returned by an earlier call, is used again if it is that batch: a caller
        looking up many timestamps in ascending order decodes each batch once."""
        for seg in self.segments:
            if seg.largest_timestamp < timestamp:
                continue
            i = bisect_left(seg.max_ts, timestamp)
            start = seg.positions[i]
            times = known
            if times is None or times.segment is not seg or times.position != start:
                end = seg.positions[i + 1] if i + 1 < len(seg.positions) else seg.size
                data = os.pread(self._fd_to_read(seg), end - start, start)
                times = _decode_times(seg, start, data)
            found = times.first_at(timestamp)
            if found is not None and found[0] < self.log_start:
                found = self.log_start, found[1]
            return found, times
        return None, known

    # Retention ---------------------------------------------------------------------
    def apply_retention(self, now_ms: int) -> int:
        """Delete whole segments past retention.ms / retention.bytes; return how many."""
        removed = 0
        retention_ms = self.config.retention_ms
        retention_bytes = self.config.retention_bytes
        if retention_ms >= 0 and self.segments:
            active = self.segments[-1]
            if active.size and now_ms - active.largest_timestamp > retention_ms:
                self._roll()  # everything is expired: keep an empty segment at the log end
            while len(self.segments) > 1:
                seg = self.segments[0]
                if now_ms - seg.largest_timestamp <= retention_ms:
                    break
                self._drop_first()
                removed += 1
        if retention_bytes >= 0:
            total = sum(s.size for s in self.segments)
            while len(self.segments) > 1 and total - self.segments[0].size >= retention_bytes:
                total -= self.segments[0].size
                self._drop_first()
                removed += 1
        return removed

    def _drop_first(self) -> None:
        seg = self.segments.pop(0)
        if self._reading is seg:
            self._reading = None
        self.bases.pop(0)
        self.log_start = max(self.log_start, self.segments[0].base)
        seg.delete()
        self.syncer.dirty_dirs.add(self.dir)

    async def delete_records(self, before: int) -> int:
        """Move the log start to ``before`` (DeleteRecords); whole segments below it go.
        Raises :class:`OffsetOutOfRange`, ``OSError``.

        The records below ``before`` are fsynced (with everything else written so far)
        before the ``log-start`` file is written, so that file never reaches the disk
        ahead of them; both in a worker thread, the loop keeps serving meanwhile."""
        async with self._moving:  # one move at a time: they write the same file
            if before < 0:
                before = self.next_offset
            if before > self.next_offset:
                raise OffsetOutOfRange
            if before <= self.log_start:
                return self.log_start
            if before == self.next_offset and self.segments and self.segments[-1].size:
                self._roll()
            await self.syncer.sync()
            data = f"{before}\n".encode()
            await asyncio.to_thread(atomic_write, self.dir / LOG_START_FILE, data)
            if self.closed:  # the topic was deleted meanwhile
                return before
            self.log_start = max(self.log_start, before)  # retention may have moved it on
            while len(self.segments) > 1 and self.segments[1].base <= self.log_start:
                self._drop_first()
            return self.log_start

    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def close(self) -> None:
        self.closed = True
        self.wake()
        for seg in self.segments:
            seg.close()


class BatchTimes(NamedTuple):
    """The offsets and timestamps of one decoded batch, for lookups by timestamp."""

    segment: Segment
    position: int
    offsets: array[int]
    timestamps: array[int]
    running_max: array[int]  # the largest timestamp up to and including each record

    def first_at(self, timestamp: int) -> tuple[int, int] | None:
        """The first record at or after ``timestamp`` (where the running maximum reaches
        it: timestamps need not grow), its offset and timestamp."""
        i = bisect_left(self.running_max, timestamp)
        if i == len(self.offsets):
            return None  # the batch header's max timestamp is not its records' (a bad producer)
        return self.offsets[i], self.timestamps[i]


def _decode_times(segment: Segment, position: int, batch_bytes: bytes) -> BatchTimes:
    """The one place a batch is parsed (decompressed): ListOffsets by timestamp."""
    offsets, timestamps, running_max = array("q"), array("q"), array("q")
    records = MemoryRecords(batch_bytes)
    top = -1 << 63
    while records.has_next():
        batch = records.next_batch()
        if batch is None:
            break
        for record in batch:
            offsets.append(record.offset)
            timestamps.append(record.timestamp)
            top = max(top, record.timestamp)
            running_max.append(top)
    return BatchTimes(segment, position, offsets, timestamps, running_max)
