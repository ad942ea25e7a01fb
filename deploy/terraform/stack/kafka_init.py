# Creates Parley's Kafka topics on MSK with the cluster's replication before
# the services start (they would otherwise create them with replication 1).
# Run by the `kafka-init` task (deploy/terraform/stack/services.tf) with the
# same image and the same PARLEY_* variables as the services. Idempotent.
import asyncio
import os
import ssl

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

TOPICS = ("messages", "events", "dead-letters", "rooms", "room-messages", "notifications")


async def main() -> None:
    env = os.environ
    opts = {"bootstrap_servers": env["PARLEY_KAFKA_BOOTSTRAP"], "request_timeout_ms": 30000}
    if env.get("PARLEY_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT") == "SASL_SSL":
        opts.update(
            security_protocol="SASL_SSL",
            sasl_mechanism=env.get("PARLEY_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            sasl_plain_username=env["PARLEY_KAFKA_SASL_USERNAME"],
            sasl_plain_password=env["PARLEY_KAFKA_SASL_PASSWORD"],
            ssl_context=ssl.create_default_context(),
        )
    prefix = env.get("PARLEY_TOPIC_PREFIX", "parley.")
    partitions = int(env["PARLEY_KAFKA_PARTITIONS"])
    # The messages topic keeps ciphertext only this long (services/common/config.py).
    retention = env.get("PARLEY_KAFKA_MESSAGE_RETENTION_MS", str(6 * 3600 * 1000))
    configs = {"messages": {"retention.ms": retention}, "room-messages": {"retention.ms": retention}}
    replication = int(env["KAFKA_REPLICATION_FACTOR"])
    admin = AIOKafkaAdminClient(**opts)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [prefix + t for t in TOPICS if prefix + t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(prefix + t, partitions, replication,
                                 topic_configs=configs.get(t, {}))
                        for t in TOPICS if prefix + t in missing
                    ]
                )  # fmt: skip
            except TopicAlreadyExistsError:
                pass
        # A topic created before (or by hand) gets the retention too: MSK applies it.
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, prefix + t, c) for t, c in configs.items()]
        )
        print(f"kafka-init: created {missing or 'nothing'}; topics {[prefix + t for t in TOPICS]}")
    finally:
        await admin.close()


asyncio.run(main())
