"""Delivery's room fan-out produces to the partition Kafka's default partitioner picks
for each inbox, so an inbox's room copies and its 1:1 copies share one consumer."""

from __future__ import annotations

import uuid

from aiokafka.partitioner import DefaultPartitioner

from services.common.clients import key_partition, partitioner


def test_key_partition_is_the_default_partitioners_choice() -> None:
    for n in (1, 2, 3, 4, 12, 50):
        parts = list(range(n))
        for _ in range(500):
            key = f"{uuid.uuid4().hex}.{n}".encode()
            assert key_partition(key, sorted(set(parts))) == DefaultPartitioner()(key, parts, parts)


def test_the_producers_partitioner_chooses_as_the_default_one() -> None:
    for n in (1, 3, 12):
        parts = list(range(n))
        for _ in range(200):
            key = f"{uuid.uuid4().hex}.{n}".encode()
            expected = DefaultPartitioner()(key, parts, parts)
            assert partitioner(key, parts, parts) == expected
            assert partitioner(key, parts, parts) == expected  # remembered, same choice
    assert partitioner(None, [0, 1, 2], [1]) == 1  # no key: an available partition
