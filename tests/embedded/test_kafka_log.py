"""Partition logs and the offsets journal, in-process: index, reads, recovery, retention."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from pathlib import Path

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from embedded.kafka.config import BrokerConfig, TopicConfig
from embedded.kafka.files import Syncer
from embedded.kafka.log import OffsetOutOfRange, PartitionLog
from embedded.kafka.offsets import COMPACT_MIN_BYTES, OffsetStore
from embedded.kafka.records import split_batches, stamped_header


def batch(*values: bytes, timestamp: int = 1_700_000_000_000) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=timestamp + i, key=None, value=value, headers=[])
    return bytes(builder.build())


def config(**kw: int) -> TopicConfig:
    return (
        BrokerConfig()
        .topic_defaults()
        .with_overrides({k.replace("_", "."): str(v) for k, v in kw.items()})
    )


def open_log(d: Path, cfg: TopicConfig | None = None) -> PartitionLog:
    return PartitionLog.open(d, "t", 0, cfg or config(), Syncer(1000))


def append(plog: PartitionLog, data: bytes) -> int:
    return plog.append(data, split_batches(data, 1 << 20))


def offsets_in(data: bytes) -> list[int]:
    records, out = MemoryRecords(data), []
    while records.has_next():
        b = records.next_batch()
        assert b is not None
        out.extend(r.offset for r in b)
    return out


def test_offsets_are_assigned_and_reads_return_whole_batches(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    sizes = [1, 3, 2, 5, 1]
    bases = [append(plog, batch(*[b"v%d" % i for i in range(n)])) for n in sizes]
    assert bases == [0, 1, 4, 6, 11]
    assert plog.next_offset == 12
    # From the batch holding the offset (5 is inside the batch at 4), whole batches on.
    assert offsets_in(plog.read(5, 1 << 20, min_one=True))[0] == 4
    assert offsets_in(plog.read(0, 1 << 20, min_one=True)) == list(range(12))
    one = len(batch(b"v0"))
    # A limit smaller than the first batch: one whole batch when min_one, else nothing.
    assert offsets_in(plog.read(0, 10, min_one=True)) == [0]
    assert plog.read(0, 10, min_one=False) == b""
    # A limit that covers exactly the first batch and part of the next: only the first.
    assert offsets_in(plog.read(0, one + 20, min_one=False)) == [0]
    assert plog.read(12, 1000, min_one=True) == b""
    with pytest.raises(OffsetOutOfRange):
        plog.read(13, 1000, min_one=True)
    plog.close()


def test_reads_are_found_by_bisect_in_a_long_log(tmp_path: Path) -> None:
    plog = open_log(tmp_path, config(segment_bytes=100_000))
    for i in range(20_000):
        append(plog, batch(b"%d" % i))
    assert len(plog.segments) > 10
    rng = random.Random(7)
    for offset in [0, 19_999, *rng.sample(range(20_000), 200)]:
        got = offsets_in(plog.read(offset, 200, min_one=True))
        assert got[0] == offset
    plog.close()


def test_recovery_rebuilds_the_index_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    plog = open_log(tmp_path, config(segment_bytes=300))
    for i in range(30):
        append(plog, batch(b"r%d" % i))
    segs = [s.path for s in plog.segments]
    plog.close()
    assert len(segs) > 3

    again = open_log(tmp_path, config(segment_bytes=300))
    assert (again.log_start, again.next_offset) == (0, 30)
    assert offsets_in(again.read(17, 1 << 20, min_one=True))[0] == 17
    again.close()

    # Corrupt a batch in the middle of the second segment: that segment is cut
    # there and every later one dropped (their offsets would not follow).
    data = bytearray(segs[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    segs[1].write_bytes(bytes(data))
    cut = open_log(tmp_path, config(segment_bytes=300))
    assert len(cut.segments) == 2
    assert cut.next_offset < 30
    assert offsets_in(cut.read(0, 1 << 20, min_one=True))[-1] < cut.next_offset
    assert all(not p.exists() for p in segs[2:])
    assert append(cut, batch(b"next")) == cut.next_offset - 1
    cut.close()


def test_retention_by_time_and_by_bytes_deletes_whole_old_segments(tmp_path: Path) -> None:
    plog = open_log(tmp_path / "a", config(segment_bytes=1, retention_ms=1000))
    for i in range(5):
        append(plog, batch(b"old", timestamp=1_000 + i))
    append(plog, batch(b"new", timestamp=10_000))
    assert plog.apply_retention(now_ms=10_500) == 5
    assert (plog.log_start, plog.next_offset) == (5, 6)
    assert plog.apply_retention(now_ms=20_000) == 1  # all expired: an empty segment stays
    assert (plog.log_start, plog.next_offset, len(plog.segments)) == (6, 6, 1)
    plog.close()

    sized = open_log(tmp_path / "b", config(segment_bytes=1, retention_bytes=300))
    for _ in range(10):
        append(sized, batch(b"x" * 50))
    sized.apply_retention(now_ms=0)
    # As Kafka: the oldest segment goes while the rest would still reach retention.bytes.
    assert sized.size_bytes() - sized.segments[0].size < 300 <= sized.size_bytes()
    assert sized.log_start > 0 and sized.next_offset == 10
    sized.close()


def test_offsets_journal_keeps_the_latest_and_drops_a_torn_tail(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path, Syncer(1000))
    store.load()
    for i in range(100):
        store.commit("g", [("t", 0, i, ""), ("u", 1, i * 2, "meta")])
    store.forget_topic("u")
    store.close()
    journal = tmp_path / "offsets.journal"
    with open(journal, "ab") as f:
        f.write(b"\x00\x00\x00\x30torn")

    again = OffsetStore(tmp_path, Syncer(1000))
    again.load()
    assert again.of_group("g") == {("t", 0): (99, "")}
    assert journal.stat().st_size < 100  # compacted on start: one record
    again.close()


async def test_the_offsets_journal_is_compacted_while_running(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path, Syncer(1000))
    store.load()
    written = 0
    for i in range(200_000):  # ~14 MB of commits of the same two partitions
        store.commit("group", [("topic", 0, i, ""), ("topic", 1, i, "")])
        written += 70
        if i % 1000 == 0:
            await asyncio.sleep(0)  # the compaction runs meanwhile (its fsync in a thread)
    assert written > 3 * COMPACT_MIN_BYTES
    if store._compacting is not None:
        await store._compacting
    assert store.size <= 2 * COMPACT_MIN_BYTES
    store.close()
    # Commits made while a compaction was under way were kept.
    again = OffsetStore(tmp_path, Syncer(1000))
    again.load()
    assert again.get("group", "topic", 1) == (199_999, "")
    again.close()


async def test_a_deleted_topics_offsets_go_before_its_files(tmp_path: Path) -> None:
    """DeleteTopics forgot the groups' offsets only after the files were removed (a
    worker thread, seconds for a large log): a topic created again meanwhile (the
    services do, from /readyz) lost its new commits when the old ones were forgotten,
    or inherited them if the removal failed or the broker was killed first."""
    from embedded.kafka.topics import TopicStore

    store = TopicStore(BrokerConfig(data_dir=tmp_path), Syncer(1000))
    store.load()
    await store.create("t", 1)
    seen: list[tuple[bool, bool]] = []

    def forgotten() -> None:  # the name is free, the old files not yet removed
        seen.append(((tmp_path / "topics" / "t").exists(), any(store.trash.iterdir())))

    await store.delete("t", forgotten)
    assert seen == [(False, True)]
    assert not any(store.trash.iterdir())


def test_a_committed_offset_past_its_recovered_log_is_lowered(tmp_path: Path) -> None:
    """The journal and the segments are fsynced in no set order: after a machine crash
    a commit can outlive the records it went past, and the group resumed past records
    produced again under those offsets, skipping them. It is lowered to the log's end."""
    store = OffsetStore(tmp_path, Syncer(1000))
    store.load()
    store.commit("g", [("t", 0, 50, "m"), ("t", 1, 7, ""), ("gone", 0, 9, "")])
    store.close()
    again = OffsetStore(tmp_path, Syncer(1000))
    again.load({("t", 0): 10, ("t", 1): 20})  # as the segments recovered
    assert again.of_group("g") == {("t", 0): (10, "m"), ("t", 1): (7, ""), ("gone", 0): (9, "")}
    again.close()
    third = OffsetStore(tmp_path, Syncer(1000))
    third.load()
    assert third.of_group("g")[("t", 0)] == (10, "m")  # written back by the compaction
    third.close()


def test_a_log_start_past_the_recovered_end_is_lowered_to_it_on_disk_too(
    tmp_path: Path,
) -> None:
    """After a machine crash that lost records below the log start (DeleteRecords fsynced
    its file at once, the segment waited for the interval), recovery kept the file: the
    records produced again under those offsets were below the log start at the next
    restart, never to be read."""
    plog = open_log(tmp_path)
    sizes = []
    for i in range(10):
        append(plog, batch(b"old%d" % i))
        sizes.append(plog.segments[-1].size)
    [segment] = [s.path for s in plog.segments]
    plog.close()
    (tmp_path / "log-start").write_text("5\n")  # as DeleteRecords(5) left it, fsynced
    os.truncate(segment, sizes[2])  # the crash: its last 7 batches never reached the disk

    crashed = open_log(tmp_path)
    assert (crashed.log_start, crashed.next_offset) == (3, 3)
    assert [append(crashed, batch(b"new%d" % i)) for i in range(4)] == [3, 4, 5, 6]
    crashed.close()
    again = open_log(tmp_path)  # an ordinary restart
    assert (again.log_start, again.next_offset) == (3, 7)
    assert offsets_in(again.read(3, 1 << 20, min_one=True)) == [3, 4, 5, 6]
    again.close()


async def test_delete_records_fsyncs_the_records_first_and_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeleteRecords wrote and fsynced its file (and directory) in the event loop, before
    the records below it reached the disk (they wait for the interval)."""
    from aiokafka.protocol.admin import DeleteRecordsRequest_v0

    from embedded.kafka import log as log_module
    from tests.embedded.inproc import ask, running

    async with running(tmp_path, fsync_interval_ms=3_600_000) as broker:
        topic = await broker.topics.create("t", 1)
        plog = topic.logs[0]
        for i in range(10):
            append(plog, batch(b"%d" % i))
        seen: list[tuple[bool, bool]] = []
        real = log_module.atomic_write

        def atomic_write(path: Path, data: bytes) -> None:
            on_loop = threading.current_thread() is threading.main_thread()
            seen.append((on_loop, bool(broker.syncer.dirty)))
            real(path, data)

        monkeypatch.setattr(log_module, "atomic_write", atomic_write)
        assert broker.syncer.dirty  # the segment waits for the interval
        resp = await ask(broker, DeleteRecordsRequest_v0([("t", [(0, 6)])], 10_000))
        assert resp.topics[0][1][0][1:] == (6, 0)  # low watermark, no error
        assert seen == [(False, False)]  # in a worker thread, once the segment was fsynced
        assert offsets_in(plog.read(6, 1 << 20, min_one=True)) == [6, 7, 8, 9]
        assert await asyncio.to_thread((plog.dir / "log-start").read_text) == "6\n"


IOV_MAX = os.sysconf("SC_IOV_MAX")


def test_a_record_set_of_more_batches_than_writev_takes_is_written_whole(
    tmp_path: Path,
) -> None:
    """Two pieces a batch: more than 512 batches in one partition's record set made one
    writev of more than IOV_MAX (1024) pieces, EINVAL, answered as a storage error."""
    plog = open_log(tmp_path)
    records = b"".join(batch(b"v%d" % i) for i in range(IOV_MAX + 100))
    assert append(plog, records) == 0
    assert plog.next_offset == IOV_MAX + 100
    got = plog.read(0, 1 << 24, min_one=True)
    assert got == _stamped(records, 0) and offsets_in(got) == list(range(IOV_MAX + 100))
    plog.close()
    again = open_log(tmp_path)
    assert again.next_offset == IOV_MAX + 100
    again.close()


def test_short_writes_are_finished_in_every_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.writev

    def short_writev(fd: int, pieces: list[bytes | memoryview]) -> int:
        first = bytes(pieces[0])
        return real(fd, [first[: len(first) // 2 or 1]])  # the kernel took less

    monkeypatch.setattr(os, "writev", short_writev)
    plog = open_log(tmp_path)
    records = b"".join(batch(b"w%d" % i) for i in range(IOV_MAX))  # two chunks
    assert append(plog, records) == 0
    monkeypatch.setattr(os, "writev", real)
    assert offsets_in(plog.read(0, 1 << 24, min_one=True)) == list(range(IOV_MAX))
    plog.close()


def _stamped(records: bytes, base: int) -> bytes:
    """The record set as stored: each batch's base offset set, as the broker does."""
    out, offset = bytearray(), base
    for b in split_batches(records, 1 << 20):
        out += stamped_header(records, b, offset) + records[b.start + 16 : b.start + b.size]
        offset += b.last_offset_delta + 1
    return bytes(out)


def open_files_under(directory: Path) -> int:
    """The process's open file descriptors on files under ``directory``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the fd listing /proc/self/fd itself, closed meanwhile
        count += target.startswith(f"{directory}/")
    return count


async def test_a_partition_keeps_few_files_open_however_many_segments_it_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each segment's handle stayed open until the segment was deleted: retention /
    segment.ms + 1 files a partition (25 with the defaults), and at RLIMIT_NOFILE rolling
    failed with EMFILE (a produce answered KAFKA_STORAGE_ERROR). A rolled segment's handle
    is closed once the fsync pass that covers its last writes succeeded; an older
    segment is read through one read handle a partition."""
    from embedded.kafka import files

    synced: list[int] = []
    real_fsync_all = files._fsync_all

    def fsync_all(fds: list[int], dirs: list[Path]) -> None:
        synced.extend(fds)
        real_fsync_all(fds, dirs)

    monkeypatch.setattr(files, "_fsync_all", fsync_all)
    syncer = Syncer(1000)  # not started: a pass runs only when asked for
    plog = PartitionLog.open(tmp_path / "p", "t", 0, config(segment_bytes=100), syncer)
    for i in range(30):  # a segment a batch
        append(plog, batch(b"v%d" % i, timestamp=1_700_000_000_000 + 10 * i))
    assert len(plog.segments) == 30
    # Not fsynced yet: every segment's handle stays open for the pass, which fsyncs it.
    dirty = list(syncer.dirty)
    assert len(dirty) == 30 and all(h.fd >= 0 for h in dirty)
    fds = sorted(h.fd for h in dirty)
    await syncer.sync()
    assert sorted(synced) == fds
    assert open_files_under(tmp_path) == 1  # the active segment
    for i in range(30):  # a consumer reading from the start
        assert offsets_in(plog.read(i, 1 << 20, min_one=True))[0] == i
        assert open_files_under(tmp_path) <= 2
    for i in range(30):
        hit, _ = plog.offset_for_timestamp(1_700_000_000_000 + 10 * i)
        assert hit == (i, 1_700_000_000_000 + 10 * i)
        assert open_files_under(tmp_path) <= 2
    plog.apply_retention(1_700_000_000_000 + 10 * 29 + 1_000_000_000)  # all expired
    assert open_files_under(tmp_path) <= 2
    plog.close()
    await syncer.sync()
    assert open_files_under(tmp_path) == 0
