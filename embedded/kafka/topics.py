"""Topics: their durable metadata, their partition logs, creation, deletion and retention.

Layout under the data directory::

    topics/<name>/topic.json     name, partition count, configs (replaced atomically)
    topics/<name>/<partition>/   that partition's segments (log.py)
    trash/                       deleted topics on their way out

A topic exists once its ``topic.json`` does: creation writes the partition
directories first and that file last (write, fsync, rename, fsync the
directory); a directory without it (a crash mid-creation) is removed at start.
Deletion renames the topic's directory into ``trash/`` (atomic) before
removing the files, so a crash never resurrects half a topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from embedded.kafka.config import BrokerConfig, ConfigError, TopicConfig
from embedded.kafka.files import Syncer, atomic_write, fsync_dir
from embedded.kafka.log import PartitionLog

log = logging.getLogger(__name__)

META = "topic.json"
LEGAL_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


class TopicError(Exception):
    """A refused topic operation; ``code`` is the Kafka error code to answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


INVALID_TOPIC = 17
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_REPLICA_ASSIGNMENT = 39
INVALID_CONFIG = 40
UNKNOWN_TOPIC_OR_PARTITION = 3


@dataclass
class Topic:
    name: str
    topic_id: str
    config: TopicConfig
    logs: list[PartitionLog]

    def log(self, partition: int) -> PartitionLog | None:
        return self.logs[partition] if 0 <= partition < len(self.logs) else None


def check_name(name: str) -> None:
    if not LEGAL_NAME.match(name) or name in (".", ".."):
        raise TopicError(INVALID_TOPIC, f"illegal topic name {name!r}")


class TopicStore:
    def __init__(self, config: BrokerConfig, syncer: Syncer) -> None:
        self.config = config
        self.syncer = syncer
        self.root = config.data_dir / "topics"
        self.trash = config.data_dir / "trash"
        self.topics: dict[str, Topic] = {}
        self.creating: set[str] = set()

    def load(self) -> None:
        """Open every topic and recover its partitions (see log.py)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.trash.exists():
            shutil.rmtree(self.trash)
        for d in sorted(self.root.iterdir()):
            meta = d / META
            if not meta.is_file():
                log.warning("removing %s: a topic whose creation did not finish", d)
                shutil.rmtree(d)
                continue
            info = json.loads(meta.read_text())
            cfg = self.config.topic_defaults().with_overrides(info.get("configs", {}))
            logs = [
                PartitionLog.open(d / str(p), info["name"], p, cfg, self.syncer)
                for p in range(int(info["partitions"]))
            ]
            self.topics[info["name"]] = Topic(info["name"], info["id"], cfg, logs)

    def get(self, name: str) -> Topic | None:
        return self.topics.get(name)

    def __iter__(self) -> Iterator[Topic]:
        return iter(self.topics.values())

    def validate(
        self, name: str, partitions: int, replication: int, configs: Mapping[str, str]
    ) -> TopicConfig:
        """Check a creation without doing it; return the topic's config. Raises TopicError."""
        check_name(name)
        if name in self.topics or name in self.creating:
            raise TopicError(TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        if partitions < 1:
            raise TopicError(INVALID_PARTITIONS, "the number of partitions must be at least 1")
        if partitions > 10_000:
            raise TopicError(INVALID_PARTITIONS, "at most 10000 partitions per topic")
        if replication not in (-1, 1):
            raise TopicError(
                INVALID_REPLICATION_FACTOR,
                f"replication factor {replication}: this broker is one node",
            )
        try:
            return self.config.topic_defaults().with_overrides(configs)
        except ConfigError as exc:
            raise TopicError(INVALID_CONFIG, str(exc)) from None

    async def create(
        self,
        name: str,
        partitions: int,
        replication: int = -1,
        configs: Mapping[str, str] | None = None,
    ) -> Topic:
        """Create a topic; its files are written and fsynced in a worker thread, so the
        broker keeps serving meanwhile. Raises TopicError."""
        configs = dict(configs or {})
        cfg = self.validate(name, partitions, replication, configs)
        self.creating.add(name)
        try:
            topic = await asyncio.to_thread(self._create_files, name, partitions, cfg, configs)
        finally:
            self.creating.discard(name)
        self.topics[name] = topic
        return topic

    def _create_files(
        self, name: str, partitions: int, cfg: TopicConfig, configs: dict[str, str]
    ) -> Topic:
        d = self.root / name
        if d.exists():  # left by a crash between mkdir and topic.json
            shutil.rmtree(d)
        d.mkdir(parents=True)
        logs = [PartitionLog.open(d / str(p), name, p, cfg, self.syncer) for p in range(partitions)]
        topic_id = uuid.uuid4().hex
        meta = {
            "name": name,
            "id": topic_id,
            "partitions": partitions,
            "configs": configs,
            "created_ms": int(time.time() * 1000),
        }
        for p in range(partitions):
            fsync_dir(d / str(p))
        atomic_write(d / META, json.dumps(meta, sort_keys=True).encode())
        fsync_dir(self.root)
        return Topic(name, topic_id, cfg, logs)

    async def delete(self, name: str, forgotten: Callable[[], None] = lambda: None) -> None:
        """Forget the topic at once; its files go in a worker thread. ``forgotten`` runs
        as soon as the name is free (before the files go): what else the broker keeps
        of the topic (its groups' offsets) must go then, not after the files, or a
        topic created again meanwhile (the services do, from /readyz) lost its new
        commits, or inherited the old ones if the removal failed or was cut short."""
        topic = self.topics.pop(name, None)
        if topic is None:
            raise TopicError(UNKNOWN_TOPIC_OR_PARTITION, f"unknown topic {name!r}")
        for plog in topic.logs:
            plog.close()
        self.trash.mkdir(exist_ok=True)
        gone = self.trash / f"{name}-{topic.topic_id}"
        # The rename is what deletes (atomically): the name is free again at once.
        (self.root / name).rename(gone)
        forgotten()
        try:
            # What ``forgotten`` wrote (the journal's record that the topic's offsets are
            # gone) is on disk before the answer in every fsync mode, as the deletion is:
            # else a crash could keep the offsets of a topic whose deletion was answered,
            # and a topic created again under its name would inherit them.
            self.syncer.dirty_dirs.update((self.root, self.trash))  # and the rename
            await self.syncer.sync()
        finally:
            await asyncio.to_thread(_remove, self.root, gone)

    def apply_retention(self) -> int:
        now = int(time.time() * 1000)
        return sum(
            plog.apply_retention(now) for topic in self.topics.values() for plog in topic.logs
        )

    def close(self) -> None:
        for topic in self.topics.values():
            for plog in topic.logs:
                plog.close()


def _remove(root: Path, gone: Path) -> None:
    fsync_dir(root)
    shutil.rmtree(gone, ignore_errors=True)
