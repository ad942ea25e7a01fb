"""The worker's retry rules, with a stand-in handler (no broker needed)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from services.common.config import load_settings
from services.delivery.store import SequenceCollision
from services.delivery.worker import Worker


async def test_a_sequence_clash_is_retried_at_once_with_atomic_reservations() -> None:
    worker = Worker(load_settings(), None, CollectorRegistry(), None)  # type: ignore[arg-type]
    calls: list[bool] = []

    async def handler(records: list[Any], *, atomic_reserve: bool) -> None:
        calls.append(atomic_reserve)
        if len(calls) == 1:
            raise SequenceCollision("u|0000000000000001")

    await worker._process(handler, [])
    assert calls == [False, True]


async def test_malformed_and_unknown_envelopes_are_skipped_and_counted() -> None:
    from aiokafka import ConsumerRecord

    worker = Worker(load_settings(), None, CollectorRegistry(), None)  # type: ignore[arg-type]

    def record(value: bytes) -> Any:
        return ConsumerRecord("t", 0, 1, 0, 0, None, value, None, 0, len(value), ())

    assert worker._parse(record(b"{not json")) is None
    assert worker._parse(record(b'{"kind": "teleport", "to": "u"}')) is None
    assert worker._parse(record(b'{"kind": "message", "to": "u"}')) is None
    ok = b'{"kind":"key_changed","server_id":"s","from":"a","to":"b","client_id":"c"}'
    assert worker._parse(record(ok)) is not None
    assert worker.rejected._value.get() == 3
