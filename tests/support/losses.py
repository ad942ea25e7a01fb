"""What the delivery tests do to lose Redis and to read what Kafka has committed."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.common.clients import Topics
from services.common.config import Settings


async def lose_redis(redis: Any, prefix: str) -> int:
    """What a Redis restart without persistence leaves of a deployment's keys
    (``<prefix>:*``): nothing. Returns how many there were."""
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=10_000)]
    if keys:
        await redis.delete(*keys)
    return len(keys)


async def committed(settings: Settings) -> int:
    """Offsets the delivery group committed on the messages topic, summed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{settings.topic_prefix}delivery")
    finally:
        await admin.close()
    topic = Topics(settings).messages
    return sum(m.offset for tp, m in offsets.items() if isinstance(tp, TopicPartition)
               and tp.topic == topic and m.offset > 0)  # fmt: skip
