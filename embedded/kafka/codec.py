"""Hand-written codecs for what every message goes through: Produce in, Produce and Fetch out.

They read and write exactly the bytes of aiokafka's structs for the same
versions (``tests/embedded/test_kafka_codec.py`` checks them against those
structs), without a Python object per field or a copy per nesting level: a
produced record set stays a slice of the request frame, and a fetch answer,
records included, is joined once. Every other request and answer goes
through aiokafka's structs (protocol.py).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from embedded.kafka.protocol import ProtocolError

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_ACKS_TIMEOUT = struct.Struct(">hi")
# Produce answer, per partition: partition, error_code, offset, timestamp[, log_start_offset].
_PRODUCE_PART_V3 = struct.Struct(">ihqq")
_PRODUCE_PART_V5 = struct.Struct(">ihqqq")
# Fetch answer, per partition, before the aborted transactions: partition, error_code,
# highwater, last_stable[, log_start].
_FETCH_PART_V4 = struct.Struct(">ihqq")
_FETCH_PART_V5 = struct.Struct(">ihqqq")
_NULL_ARRAY = _I32.pack(-1)
_EMPTY_ARRAY = _I32.pack(0)
_NO_REPLICA = _I32.pack(-1)
_THROTTLE_0 = _I32.pack(0)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ProtocolError("request ends early")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def int16(self) -> int:
        return int(_I16.unpack(self.take(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack(self.take(4))[0])

    def string(self) -> str | None:
        n = self.int16()
        if n < 0:
            return None
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("a string is not UTF-8") from None

    def nullable_bytes(self) -> memoryview | None:
        n = self.int32()
        return None if n < 0 else self.take(n)

    def count(self) -> int:
        n = self.int32()
        if n > len(self.buf) - self.pos:  # every item takes at least a byte
            raise ProtocolError(f"array of {n} items in a shorter request")
        return max(n, 0)


class ProduceRequest(NamedTuple):
    """A decoded Produce v3-v7 (the same fields as aiokafka's ProduceRequest_v3..v7)."""

    transactional_id: str | None
    required_acks: int
    timeout: int
    topics: list[tuple[str, list[tuple[int, memoryview | None]]]]


def decode_produce(frame: bytes, pos: int, max_entries: int = sys.maxsize) -> ProduceRequest:
    """``max_entries``: the most topics and partitions in all; more is a ``ProtocolError``,
    known from the array lengths before their items are read."""
    r = _Reader(memoryview(frame), pos)
    transactional_id = r.string()
    acks, timeout = _ACKS_TIMEOUT.unpack(r.take(6))
    topics = []
    entries = count = r.count()
    for _ in range(count):
        if entries > max_entries:
            break
        name = r.string()
        if name is None:
            raise ProtocolError("a null topic name")
        n = r.count()
        entries += n
        if entries > max_entries:
            break
        partitions = [(r.int32(), r.nullable_bytes()) for _ in range(n)]
        topics.append((name, partitions))
    if entries > max_entries:
        raise ProtocolError(f"more than {max_entries} topics and partitions in a Produce")
    return ProduceRequest(transactional_id, acks, timeout, topics)


def encode_produce_response(version: int, topics: Sequence[tuple[str, Sequence[Any]]]) -> bytes:
    """``topics``: (name, [(partition, error_code, offset, timestamp, log_start_offset)])."""
    out = [_I32.pack(len(topics))]
    for name, partitions in topics:
        out.append(_string(name))
        out.append(_I32.pack(len(partitions)))
        if version >= 5:
            out.extend(_PRODUCE_PART_V5.pack(*p) for p in partitions)
        else:
            out.extend(_PRODUCE_PART_V3.pack(*p[:4]) for p in partitions)
    out.append(_THROTTLE_0)
    return b"".join(out)


def encode_fetch_response(
    version: int,
    error_code: int,
    topics: Sequence[tuple[str, Sequence[tuple[int, int, int, int, bytes]]]],
) -> bytes:
    """Fetch v4-v11. ``topics``: (name, [(partition, error_code, highwater, log_start,
    records)]); the last stable offset is the high watermark, no aborted transactions
    (null), no preferred read replica (-1)."""
    out = [_THROTTLE_0]
    if version >= 7:
        out.append(_I16.pack(error_code) + _I32.pack(0))  # error_code, session_id
    out.append(_I32.pack(len(topics)))
    for name, partitions in topics:
        out.append(_string(name))
        out.append(_I32.pack(len(partitions)))
        for partition, error, hw, log_start, records in partitions:
            if version >= 5:
                out.append(_FETCH_PART_V5.pack(partition, error, hw, hw, log_start))
            else:
                out.append(_FETCH_PART_V4.pack(partition, error, hw, hw))
            out.append(_NULL_ARRAY)  # aborted transactions
            if version >= 11:
                out.append(_NO_REPLICA)
            out.append(_I32.pack(len(records)))
            out.append(records)
    return b"".join(out)


def _string(value: str) -> bytes:
    data = value.encode()
    return _I16.pack(len(data)) + data
