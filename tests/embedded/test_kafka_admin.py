"""Topic administration: create (idempotent), list, describe, delete; auto-creation rules."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest

from services.common.clients import Topics, ensure_topics
from services.common.config import load_settings
from tests.embedded.conftest import BrokerFactory
from tests.support.kafka_broker import KafkaBroker, admin_client, consumer, create_topic, producer

NONE, UNKNOWN_TOPIC, INVALID_TOPIC, TOPIC_EXISTS = 0, 3, 17, 36
INVALID_PARTITIONS, INVALID_REPLICATION, INVALID_CONFIG = 37, 38, 40


async def test_create_is_idempotent_list_and_delete(broker: KafkaBroker, topic: str) -> None:
    async with admin_client(broker.bootstrap) as admin:
        first = await admin.create_topics([NewTopic(topic, 3, 1)])
        again = await admin.create_topics([NewTopic(topic, 3, 1)])
        assert [e[:2] for e in first.topic_errors] == [(topic, NONE)]
        assert [e[:2] for e in again.topic_errors] == [(topic, TOPIC_EXISTS)]
        assert topic in await admin.list_topics()
        [described] = await admin.describe_topics([topic])
        assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]

        deleted = await admin.delete_topics([topic])
        assert deleted.topic_error_codes == [(topic, NONE)]
        assert topic not in await admin.list_topics()
        missing = await admin.delete_topics([topic])
        assert missing.topic_error_codes == [(topic, UNKNOWN_TOPIC)]
        # The name is free again, and the new topic starts empty.
        await admin.create_topics([NewTopic(topic, 1, 1)])
    async with consumer(broker.bootstrap) as c:
        tp = TopicPartition(topic, 0)
        assert await c.end_offsets([tp]) == {tp: 0}


async def test_the_services_ensure_topics_creates_only_what_is_missing(
    broker: KafkaBroker, topic: str
) -> None:
    settings = load_settings(kafka_bootstrap=broker.bootstrap, kafka_partitions=2)
    assert await ensure_topics(settings, [topic, topic + ".b"]) == [topic, topic + ".b"]
    assert await ensure_topics(settings, [topic, topic + ".b"]) == []


async def test_the_messages_topic_keeps_ciphertext_only_for_its_retention(
    broker: KafkaBroker, topic: str
) -> None:
    """Before: created with the broker's default (24 h, or for ever on Kafka's), though
    docs/client.md said the server deletes what was delivered (#20)."""
    settings = load_settings(
        kafka_bootstrap=broker.bootstrap, kafka_partitions=1, topic_prefix=topic + ".",
        kafka_message_retention_ms=7_200_000,
    )  # fmt: skip
    topics = Topics(settings)
    await ensure_topics(settings, topics.all())
    async with admin_client(broker.bootstrap) as admin:
        replies = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics.all()]
        )
    given = {res[3]: {e[0]: (e[1], e[3]) for e in res[4]} for r in replies for res in r.resources}
    assert given[topics.messages]["retention.ms"] == ("7200000", 1)  # set on the topic
    assert given[topics.events]["retention.ms"][1] != 1  # the broker's default
    assert given[topics.dead_letters]["retention.ms"][1] != 1


@pytest.mark.parametrize(
    ("name", "partitions", "replication", "configs", "code"),
    [
        ("bad/name", 1, 1, {}, INVALID_TOPIC),
        ("..", 1, 1, {}, INVALID_TOPIC),
        ("x" * 250, 1, 1, {}, INVALID_TOPIC),
        ("ok-name", 0, 1, {}, INVALID_PARTITIONS),
        ("ok-name", 1, 3, {}, INVALID_REPLICATION),
        ("ok-name", 1, 1, {"no.such.config": "1"}, INVALID_CONFIG),
        ("ok-name", 1, 1, {"retention.ms": "soon"}, INVALID_CONFIG),
        ("ok-name", 1, 1, {"cleanup.policy": "compact"}, INVALID_CONFIG),
    ],
)
async def test_invalid_creations_are_refused_with_their_code_and_create_nothing(
    broker: KafkaBroker,
    topic: str,
    name: str,
    partitions: int,
    replication: int,
    configs: dict[str, str],
    code: int,
) -> None:
    name = name.replace("ok-name", topic)
    async with admin_client(broker.bootstrap) as admin:
        resp = await admin.create_topics(
            [NewTopic(name, partitions, replication, topic_configs=configs)]
        )
        assert [e[1] for e in resp.topic_errors] == [code]
        assert name not in await admin.list_topics()


async def test_validate_only_creates_nothing(broker: KafkaBroker, topic: str) -> None:
    async with admin_client(broker.bootstrap) as admin:
        resp = await admin.create_topics([NewTopic(topic, 2, 1)], validate_only=True)
        assert [e[1] for e in resp.topic_errors] == [NONE]
        assert topic not in await admin.list_topics()


async def test_describe_configs_reports_what_the_topic_was_given(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(
        broker.bootstrap, topic, 1, {"retention.ms": "3600000", "min.insync.replicas": "1"}
    )
    async with admin_client(broker.bootstrap) as admin:
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    error, _, _, name, entries = resp.resources[0]
    assert (error, name) == (NONE, topic)
    values = {e[0]: (e[1], e[3]) for e in entries}  # name -> (value, source)
    assert values["retention.ms"] == ("3600000", 1)  # set on the topic
    assert values["min.insync.replicas"] == ("1", 1)
    assert values["segment.bytes"][1] == 5  # the broker's default


async def metadata(broker: KafkaBroker, topics: list[str], allow: bool) -> Any:
    client = AIOKafkaClient(bootstrap_servers=broker.bootstrap)
    await client.bootstrap()
    try:
        return await client.send(0, MetadataRequest(topics, allow_auto_topic_creation=allow))
    finally:
        await client.close()


async def test_auto_creation_happens_only_when_the_request_allows_it(
    broker: KafkaBroker, topic: str
) -> None:
    refused = await metadata(broker, [topic], allow=False)
    assert [(t[0], t[1]) for t in refused.topics] == [(UNKNOWN_TOPIC, topic)]
    allowed = await metadata(broker, [topic], allow=True)
    assert [(t[0], t[1], len(t[3])) for t in allowed.topics] == [(NONE, topic, 1)]


async def test_a_broker_without_auto_creation_never_creates(
    make_broker: BrokerFactory, topic: str
) -> None:
    b = make_broker("--no-auto-create-topics")
    resp = await metadata(b, [topic], allow=True)
    assert [(t[0], t[1]) for t in resp.topics] == [(UNKNOWN_TOPIC, topic)]
    async with admin_client(b.bootstrap) as admin:
        assert topic not in await admin.list_topics()


async def test_producing_to_a_deleted_topic_fails_cleanly(broker: KafkaBroker, topic: str) -> None:
    await create_topic(broker.bootstrap, topic, 1)
    async with producer(broker.bootstrap) as p:
        await p.send_and_wait(topic, b"before", partition=0)
    async with admin_client(broker.bootstrap) as admin:
        await admin.delete_topics([topic])
    async with consumer(broker.bootstrap) as c:
        # Listing all topics never creates one.
        assert topic not in await c.topics()
