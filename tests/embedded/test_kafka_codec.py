"""The hand-written Produce/Fetch codecs write and read exactly aiokafka's bytes."""

from __future__ import annotations

import pytest
from aiokafka.protocol import fetch, produce

from embedded.kafka.codec import decode_produce, encode_fetch_response, encode_produce_response
from embedded.kafka.protocol import ProtocolError

TOPICS = [
    ("t.one", [(0, b"\x00" * 70), (3, None), (7, b"")]),
    ("t-two_\u00e9", [(1, b"records" * 9)]),
]


@pytest.mark.parametrize("version", range(3, 8))
@pytest.mark.parametrize("txn", [None, "txn-id"])
def test_produce_requests_decode_as_aiokafka_encodes_them(version: int, txn: str | None) -> None:
    cls = getattr(produce, f"ProduceRequest_v{version}")
    frame = b"HEADER" + cls(txn, -1, 30000, TOPICS).encode()
    got = decode_produce(frame, 6)
    assert (got.transactional_id, got.required_acks, got.timeout) == (txn, -1, 30000)
    as_bytes = [
        (name, [(p, None if r is None else bytes(r)) for p, r in parts])
        for name, parts in got.topics
    ]
    assert as_bytes == TOPICS


@pytest.mark.parametrize("cut", [1, 5, 9, 20, 40])
def test_a_truncated_produce_request_is_a_protocol_error(cut: int) -> None:
    frame = produce.ProduceRequest_v7(None, -1, 30000, TOPICS).encode()
    with pytest.raises(ProtocolError):
        decode_produce(frame[:-cut], 0)


def test_an_array_longer_than_the_request_is_a_protocol_error() -> None:
    frame = b"\xff\xff" + b"\xff\xff" + b"\x00\x00\x75\x30" + b"\x7f\xff\xff\xff"
    with pytest.raises(ProtocolError):
        decode_produce(frame, 0)


@pytest.mark.parametrize("version", range(3, 8))
def test_produce_responses_encode_as_aiokafka(version: int) -> None:
    parts = [(0, 0, 41, -1, 3), (5, 3, -1, -1, -1)]
    mine = encode_produce_response(version, [("a", parts), ("b", [])])
    cls = getattr(produce, f"ProduceResponse_v{version}")
    width = 5 if version >= 5 else 4
    theirs = cls([("a", [p[:width] for p in parts]), ("b", [])], 0).encode()
    assert mine == theirs
    assert cls.decode(mine).topics[0][1][0][2] == 41


@pytest.mark.parametrize("version", range(4, 12))
@pytest.mark.parametrize("error", [0, 70])
def test_fetch_responses_encode_as_aiokafka(version: int, error: int) -> None:
    rows = [(0, 0, 120, 7, b"batch-bytes" * 5), (1, 1, 9, 9, b"")]
    mine = encode_fetch_response(version, error, [("topic", rows), ("other", [])])
    cls = getattr(fetch, f"FetchResponse_v{version}")

    def part(p: int, err: int, hw: int, start: int, data: bytes) -> tuple[object, ...]:
        fields: list[object] = [p, err, hw, hw]
        if version >= 5:
            fields.append(start)
        fields.append(None)  # aborted transactions
        if version >= 11:
            fields.append(-1)
        return (*fields, data)

    topics = [("topic", [part(*r) for r in rows]), ("other", [])]
    args: list[object] = [0]
    if version >= 7:
        args += [error, 0]
    theirs = cls(*args, topics).encode()
    assert mine == theirs
