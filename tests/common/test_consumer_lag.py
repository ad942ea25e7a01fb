"""Consumer lag from the broker: end offsets minus committed offsets, per partition,
against the embedded Kafka."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from services.common.clients import ensure_topics, kafka_consumer
from services.common.config import Settings
from services.common.consumer_lag import ConsumerLag


async def test_lag_is_end_minus_committed_per_partition(settings: Settings) -> None:
    topic, group = f"{settings.topic_prefix}lag", f"{settings.topic_prefix}g"
    await ensure_topics(settings, [topic])  # 2 partitions in tests
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False
    )
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, b"x", partition=i % 2)
    finally:
        await producer.stop()
    registry = CollectorRegistry()
    lag = ConsumerLag(settings, registry, {group: [topic]})
    try:
        # The group never committed: it would start from the beginning.
        assert await lag.sample() == {(group, topic, 0): 5, (group, topic, 1): 5}
        consumer = kafka_consumer(settings, [topic], group)
        await consumer.start()
        try:
            read = 0
            while read < 10:
                batch = await consumer.getmany(timeout_ms=2000)
                read += sum(len(r) for r in batch.values())
            await consumer.commit()
        finally:
            await consumer.stop()
        assert await lag.sample() == {(group, topic, 0): 0, (group, topic, 1): 0}
        labels = {"group": group, "topic": topic, "partition": "1"}
        assert registry.get_sample_value("parley_kafka_consumer_lag", labels) == 0
        assert registry.get_sample_value("parley_kafka_consumer_committed_offset", labels) == 5
        end = {"topic": topic, "partition": "0"}
        assert registry.get_sample_value("parley_kafka_partition_end_offset", end) == 5
    finally:
        await lag.stop()


async def test_an_unreachable_broker_is_counted_not_raised(settings: Settings) -> None:
    bad = settings.model_copy(
        update={"kafka_bootstrap": "127.0.0.1:1", "dependency_timeout_ms": 300}
    )
    registry = CollectorRegistry()
    lag = ConsumerLag(bad.model_copy(update={"kafka_lag_interval_s": 0.05}), registry, {"g": ["t"]})
    await lag.start()
    try:
        from tests.support.aio import eventually

        async def errors() -> float:
            return registry.get_sample_value("parley_kafka_lag_sample_errors_total") or 0.0

        await eventually(errors, lambda n: n >= 1, timeout=20)
    finally:
        await lag.stop()
