"""RecordBatch v2 headers: the only bytes of a batch the broker reads or rewrites.

A batch (Kafka's "message format v2") starts with a fixed 61-byte header::

    0  baseOffset            int64    rewritten by the broker
    8  batchLength           int32    bytes after this field
    12 partitionLeaderEpoch  int32    rewritten by the broker (0: one node, one epoch)
    16 magic                 int8     must be 2
    17 crc                   uint32   CRC-32C of everything from ``attributes`` on
    21 attributes            int16
    23 lastOffsetDelta       int32
    27 baseTimestamp         int64
    35 maxTimestamp          int64
    43 producerId / producerEpoch / baseSequence
    57 recordCount           int32
    61 records (compressed or not: opaque here)

The CRC does not cover the two rewritten fields, so a stored batch keeps the
producer's CRC and the consumer checks it as usual. Records are never parsed
on the produce or fetch path.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from aiokafka.record.util import calc_crc32c

HEADER_SIZE = 61
LOG_OVERHEAD = 12  # baseOffset + batchLength
MAGIC = 2
CRC_START = 21

# batchLength, partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta,
# baseTimestamp, maxTimestamp: bytes 8..43.
_FIELDS = struct.Struct(">iibIhiqq")
_COUNT = struct.Struct(">i")
_OFFSET = struct.Struct(">q")
_EPOCH_ZERO = b"\x00\x00\x00\x00"


class BatchError(ValueError):
    """A record set the broker refuses; ``code`` is the Kafka error code to answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.parsed = 0  # the batches read (their CRC checked) before this one


class Batch(NamedTuple):
    """Where one batch sits in a buffer, and what the index needs of it."""

    start: int
    size: int
    last_offset_delta: int
    max_timestamp: int


CORRUPT_MESSAGE = 2
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43

# The most batches one Produce request may carry, all its partitions together. Kafka
# itself refuses more than one batch per partition, and aiokafka and the Java client
# send one, so a request of as many partitions as it may name (--max-request-entries,
# 20,000) stays within it. Checking and indexing a batch costs the loop a few
# microseconds whatever its size, and within --max-request-bytes (100 MiB) a request
# held 1.5 million minimal batches: 6 s of the loop, longer than group members' session
# timeouts.
MAX_PRODUCE_BATCHES = 20_000


def parse_batch(buf: bytes | memoryview, start: int, *, check_crc: bool = True) -> Batch:
    """Read and check the batch at ``start``; raise :class:`BatchError` if it is not whole."""
    if len(buf) - start < HEADER_SIZE:
        raise BatchError(CORRUPT_MESSAGE, "truncated record batch header")
    length, _, magic, crc, _, delta, _, max_ts = _FIELDS.unpack_from(buf, start + 8)
    if magic != MAGIC:
        raise BatchError(UNSUPPORTED_FOR_MESSAGE_FORMAT, f"record batch magic {magic}, not 2")
    size = length + LOG_OVERHEAD
    if size < HEADER_SIZE or start + size > len(buf):
        raise BatchError(CORRUPT_MESSAGE, "record batch length out of bounds")
    (count,) = _COUNT.unpack_from(buf, start + 57)
    if count < 1 or delta != count - 1:
        raise BatchError(CORRUPT_MESSAGE, "record count and last offset delta disagree")
    if check_crc:
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        if calc_crc32c(view[start + CRC_START : start + size]) != crc:
            raise BatchError(CORRUPT_MESSAGE, "record batch CRC-32C mismatch")
    return Batch(start, size, delta, max_ts)


def split_batches(
    records: bytes | memoryview, max_batch_bytes: int, max_batches: int = MAX_PRODUCE_BATCHES
) -> list[Batch]:
    """The batches of a produced record set, each checked (CRC included), at most
    ``max_batches`` of them (``CORRUPT_MESSAGE``, as Kafka answers a record set of more
    than one batch before Produce v8: the rest is not read). A :class:`BatchError`
    says in ``parsed`` how many batches were read before it."""
    out: list[Batch] = []
    pos, end = 0, len(records)
    if end == 0:
        raise BatchError(CORRUPT_MESSAGE, "empty record set")
    view = memoryview(records)
    try:
        while pos < end:
            if len(out) >= max_batches:
                raise BatchError(CORRUPT_MESSAGE, f"more than {max_batches} record batches")
            batch = parse_batch(view, pos)
            if batch.size > max_batch_bytes:
                raise BatchError(MESSAGE_TOO_LARGE, f"record batch of {batch.size} bytes")
            out.append(batch)
            pos += batch.size
    except BatchError as exc:
        exc.parsed = len(out)
        raise
    return out


def stamped_header(records: bytes | memoryview, batch: Batch, base_offset: int) -> bytes:
    """The first 16 bytes of ``batch`` as stored: its offset and leader epoch set by us."""
    start = batch.start
    return _OFFSET.pack(base_offset) + records[start + 8 : start + 12] + _EPOCH_ZERO


def base_offset_of(buf: bytes | memoryview, start: int) -> int:
    (offset,) = _OFFSET.unpack_from(buf, start)
    return int(offset)
