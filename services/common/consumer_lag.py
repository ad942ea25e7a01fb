"""Kafka consumer lag, per group, topic and partition, sampled periodically.

Lag is what a consumer group still has to read: the partition's end offset
(the next offset the broker will write) minus the group's committed offset
(the next offset the group will read). A group that never committed on a
partition starts from the beginning (``auto_offset_reset="earliest"``), so
its lag there is the end minus the beginning offset.

:class:`ConsumerLag` asks the broker, every ``PARLEY_KAFKA_LAG_INTERVAL_S``
seconds, for the end offsets of the watched topics (one ``ListOffsets``) and
the committed offsets of each group (one ``OffsetFetch`` per group, with
explicit partitions, which the embedded broker needs): a few small requests
whatever the traffic, and nothing on the consumers' own path. It exports:

- ``parley_kafka_consumer_lag{group,topic,partition}`` (records);
- ``parley_kafka_consumer_committed_offset{group,topic,partition}``, whose
  ``changes()`` show progress (the "no delivery progress" alert);
- ``parley_kafka_partition_end_offset{topic,partition}``, whose ``rate()``
  is the topic's write rate;
- ``parley_kafka_lag_sample_errors_total``: samples that failed (the broker
  was unreachable); the gauges keep their last value meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.clients import kafka_security, started
from services.common.config import Settings
from services.common.state import CHECKS, REGISTRY
from services.common.tasks import cancel_all

log = logging.getLogger(__name__)


def watch_consumers(
    app: web.Application,
    settings: Settings,
    groups: Mapping[str, Sequence[str]],
    running: asyncio.Event,
    check: str = "consumer",
) -> ConsumerLag:
    """What every service that consumes Kafka has: its groups' lag sampled while the app
    runs (:class:`ConsumerLag`), and ``/readyz`` failing ``check`` while ``running`` is
    not set (the consumers are not consuming)."""
    lag = ConsumerLag(settings, app[REGISTRY], groups)

    async def sample_lag(_: web.Application) -> AsyncIterator[None]:
        await lag.start()
        yield
        await lag.stop()

    app.cleanup_ctx.append(sample_lag)

    async def consuming() -> None:
        if not running.is_set():
            raise ConnectionError("consumer not running")

    app[CHECKS][check] = consuming
    return lag


class ConsumerLag:
    """Samples the lag of ``groups`` (group id -> the topics it consumes)."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        groups: Mapping[str, Sequence[str]],
    ) -> None:
        self.settings = settings
        self.groups = {g: list(t) for g, t in groups.items()}
        self.interval_s = settings.kafka_lag_interval_s
        labels = ["group", "topic", "partition"]
        self.lag = Gauge(
            "parley_kafka_consumer_lag",
            "Records a consumer group has still to read, per partition (end - committed).",
            labels, registry=registry,
        )  # fmt: skip
        self.committed = Gauge(
            "parley_kafka_consumer_committed_offset",
            "The group's committed offset (the next record it will read), per partition.",
            labels, registry=registry,
        )  # fmt: skip
        self.end = Gauge(
            "parley_kafka_partition_end_offset",
            "The partition's end offset (the next offset the broker will write).",
            ["topic", "partition"], registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "parley_kafka_lag_sample_errors_total",
            "Lag samples that failed (broker unreachable).",
            registry=registry,
        )
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="consumer-lag")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
        await self._close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors.inc()
                log.info("consumer lag not sampled", extra={"error": repr(exc)})
                await self._close()  # reconnect next time (the broker may have restarted)
            await asyncio.sleep(self.interval_s)

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        timeout = max(self.settings.dependency_timeout_ms, 5000)
        if self._admin is None:
            self._admin = await started(AIOKafkaAdminClient(
                **kafka_security(self.settings), bootstrap_servers=self.settings.kafka_bootstrap,
                request_timeout_ms=timeout, client_id="parley-lag",
            ))  # fmt: skip
        if self._consumer is None:
            # No group: it only asks for offsets, it never joins or commits.
            self._consumer = await started(AIOKafkaConsumer(
                **kafka_security(self.settings), bootstrap_servers=self.settings.kafka_bootstrap,
                enable_auto_commit=False,
                request_timeout_ms=timeout, client_id="parley-lag",
            ))  # fmt: skip
        return self._admin, self._consumer

    async def _close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    async def sample(self) -> dict[tuple[str, str, int], int]:
        """One sample: sets the gauges and returns {(group, topic, partition): lag}."""
        admin, consumer = await self._clients()
        topics = sorted({t for ts in self.groups.values() for t in ts})
        metadata = await consumer._client.fetch_all_metadata()
        parts = {t: sorted(metadata.partitions_for_topic(t) or ()) for t in topics}
        tps = [TopicPartition(t, p) for t in topics for p in parts[t]]
        if not tps:
            return {}
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            self.end.labels(tp.topic, str(tp.partition)).set(ends[tp])
        out: dict[tuple[str, str, int], int] = {}
        for group, group_topics in self.groups.items():
            mine = [tp for tp in tps if tp.topic in group_topics]
            offsets = await admin.list_consumer_group_offsets(group, partitions=mine)
            for tp in mine:
                meta = offsets.get(tp)
                committed = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
                lag = max(ends[tp] - committed, 0)
                labels = (group, tp.topic, str(tp.partition))
                self.lag.labels(*labels).set(lag)
                self.committed.labels(*labels).set(committed)
                out[(group, tp.topic, tp.partition)] = lag
        return out
