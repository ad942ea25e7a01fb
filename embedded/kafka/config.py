"""Broker settings (command line) and per-topic settings (CreateTopics ``configs``)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class BrokerConfig:
    """Everything the broker reads from its command line; defaults suit the embedded stack."""

    data_dir: Path = Path("var/kafka")
    host: str = "127.0.0.1"
    port: int = 9092
    advertised_host: str | None = None
    node_id: int = 0
    # Topics: defaults for CreateTopics without a value and for auto-creation.
    partitions: int = 1
    auto_create_topics: bool = True
    retention_ms: int = 24 * HOUR_MS
    retention_bytes: int = -1
    segment_bytes: int = 64 * 1024 * 1024
    segment_ms: int = HOUR_MS
    max_message_bytes: int = 1_048_588  # Kafka's default: 1 MiB plus the batch overhead
    retention_check_ms: int = 5_000
    # Durability: fsync every this often (0: before every answer).
    fsync_interval_ms: int = 1_000
    # Network. A request is decoded and answered in one go on the event loop, so what
    # one request may ask is bounded: Produce (the only API carrying bulk data) up to
    # Kafka's socket.request.max.bytes, any other API far less, and every request to a
    # number of array items in all (topics, partitions, group ids...). Beyond: closed.
    max_request_bytes: int = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes
    max_other_request_bytes: int = 1024 * 1024
    max_request_entries: int = 20_000  # twice the partitions a topic may have
    # The most a Fetch answer holds, whatever the request asks (Kafka's fetch.max.bytes):
    # only the first batch of the answer may go past it, so a consumer always progresses.
    fetch_max_bytes: int = 55 * 1024 * 1024
    # Groups.
    group_initial_rebalance_delay_ms: int = 100
    group_min_session_timeout_ms: int = 500
    group_max_session_timeout_ms: int = 1_800_000
    offset_metadata_max_bytes: int = 4096
    log_level: str = "warning"
    # Security (sasl.py): SASL users (``user:password`` lines) and a TLS certificate
    # chain and key (PEM); without them, plaintext and no authentication.
    sasl_users_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def advertised(self) -> str:
        return self.advertised_host or self.host

    def topic_defaults(self) -> TopicConfig:
        return TopicConfig(
            retention_ms=self.retention_ms,
            retention_bytes=self.retention_bytes,
            segment_bytes=self.segment_bytes,
            segment_ms=self.segment_ms,
            max_message_bytes=self.max_message_bytes,
        )


@dataclass(frozen=True)
class TopicConfig:
    """The topic settings the broker acts on; anything else given is stored and reported only."""

    retention_ms: int
    retention_bytes: int
    segment_bytes: int
    segment_ms: int
    max_message_bytes: int
    overrides: Mapping[str, str] = field(default_factory=dict)

    def with_overrides(self, configs: Mapping[str, str]) -> TopicConfig:
        """Apply CreateTopics configs; raise :class:`ConfigError` for a bad or unsupported one."""
        values: dict[str, int] = {}
        for key, raw in configs.items():
            if key in _INT_CONFIGS:
                attr, minimum = _INT_CONFIGS[key]
                try:
                    number = int(raw)
                except (TypeError, ValueError):
                    raise ConfigError(f"{key} must be an integer, not {raw!r}") from None
                if number < minimum:
                    raise ConfigError(f"{key} must be at least {minimum}")
                values[attr] = number
            elif key in _FIXED_CONFIGS:
                if raw not in _FIXED_CONFIGS[key]:
                    allowed = ", ".join(sorted(_FIXED_CONFIGS[key]))
                    raise ConfigError(f"{key}={raw} is not implemented (only {allowed})")
            elif key not in _STORED_CONFIGS:
                raise ConfigError(f"unknown topic config {key!r}")
        return replace(self, overrides=dict(configs), **values)

    def describe(self) -> dict[str, tuple[str, bool]]:
        """Every config with its value and whether it was set on the topic."""
        out = {
            key: (str(getattr(self, attr)), key in self.overrides)
            for key, (attr, _) in _INT_CONFIGS.items()
        }
        for key, allowed in _FIXED_CONFIGS.items():
            out[key] = (self.overrides.get(key, sorted(allowed)[0]), key in self.overrides)
        for key, value in self.overrides.items():
            out.setdefault(key, (value, True))
        return out


class ConfigError(ValueError):
    """A topic config the broker refuses (INVALID_CONFIG)."""


# name -> (attribute, minimum)
_INT_CONFIGS: dict[str, tuple[str, int]] = {
    "retention.ms": ("retention_ms", -1),
    "retention.bytes": ("retention_bytes", -1),
    "segment.bytes": ("segment_bytes", 1),
    "segment.ms": ("segment_ms", 1),
    "max.message.bytes": ("max_message_bytes", 0),
}
# Configs with one implemented value: anything else would silently mean something else.
_FIXED_CONFIGS: dict[str, frozenset[str]] = {
    "cleanup.policy": frozenset({"delete"}),
    "message.timestamp.type": frozenset({"CreateTime"}),
    "compression.type": frozenset({"producer"}),
}
# Standard Kafka topic configs that matter only to replication, compaction or
# tiered storage: accepted (so that a client written for Kafka works), stored,
# reported by DescribeConfigs, without effect on a single-node broker.
_STORED_CONFIGS = frozenset(
    {
        "min.insync.replicas",
        "unclean.leader.election.enable",
        "flush.messages",
        "flush.ms",
        "delete.retention.ms",
        "min.compaction.lag.ms",
        "max.compaction.lag.ms",
        "min.cleanable.dirty.ratio",
        "file.delete.delay.ms",
        "index.interval.bytes",
        "segment.index.bytes",
        "segment.jitter.ms",
        "preallocate",
        "message.format.version",
        "message.downconversion.enable",
        "message.timestamp.difference.max.ms",
        "message.timestamp.before.max.ms",
        "message.timestamp.after.max.ms",
        "leader.replication.throttled.replicas",
        "follower.replication.throttled.replicas",
        "local.retention.ms",
        "local.retention.bytes",
        "remote.storage.enable",
    }
)


def parse_args(argv: Sequence[str] | None = None) -> BrokerConfig:
    d = BrokerConfig()
    p = argparse.ArgumentParser(
        prog="python -m embedded.kafka",
        description="A small, durable Kafka-protocol broker for the embedded stack "
        "(docs/embedded-kafka.md).",
    )
    p.add_argument("--host", default=d.host, help="address to listen on")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--advertised-host", default=None, help="host given to clients (--host)")
    p.add_argument("--data-dir", type=Path, default=d.data_dir, help="where the logs live")
    p.add_argument("--node-id", type=int, default=d.node_id)
    p.add_argument(
        "--partitions",
        type=_positive,
        default=d.partitions,
        help="partitions of a topic created without a count or auto-created",
    )
    p.add_argument(
        "--no-auto-create-topics",
        dest="auto_create_topics",
        action="store_false",
        help="never create a topic from a metadata request",
    )
    p.add_argument(
        "--retention-ms",
        type=int,
        default=d.retention_ms,
        help="default retention.ms (-1: keep forever)",
    )
    p.add_argument(
        "--retention-bytes",
        type=int,
        default=d.retention_bytes,
        help="default retention.bytes per partition (-1: no limit)",
    )
    p.add_argument("--segment-bytes", type=_positive, default=d.segment_bytes)
    p.add_argument("--segment-ms", type=_positive, default=d.segment_ms)
    p.add_argument("--max-message-bytes", type=_positive, default=d.max_message_bytes)
    p.add_argument("--retention-check-ms", type=_positive, default=d.retention_check_ms)
    p.add_argument(
        "--fsync-interval-ms",
        type=_non_negative,
        default=d.fsync_interval_ms,
        help="fsync this often; 0: fsync before answering every write",
    )
    p.add_argument(
        "--max-request-bytes",
        type=_positive,
        default=d.max_request_bytes,
        help="the longest Produce request; a longer frame closes the connection",
    )
    p.add_argument(
        "--max-other-request-bytes",
        type=_positive,
        default=d.max_other_request_bytes,
        help="the longest request of any other API; a longer frame closes the connection",
    )
    p.add_argument(
        "--max-request-entries",
        type=_positive,
        default=d.max_request_entries,
        help="the most array items (topics, partitions, ids...) in all in one request",
    )
    p.add_argument(
        "--fetch-max-bytes",
        type=_positive,
        default=d.fetch_max_bytes,
        help="the most a Fetch answer holds (Kafka's fetch.max.bytes)",
    )
    p.add_argument(
        "--group-initial-rebalance-delay-ms",
        type=_non_negative,
        default=d.group_initial_rebalance_delay_ms,
    )
    p.add_argument(
        "--group-min-session-timeout-ms", type=_positive, default=d.group_min_session_timeout_ms
    )
    p.add_argument(
        "--group-max-session-timeout-ms", type=_positive, default=d.group_max_session_timeout_ms
    )
    p.add_argument(
        "--log-level", default=d.log_level, choices=["debug", "info", "warning", "error"]
    )
    p.add_argument(
        "--sasl-users-file", type=Path, default=None,
        help="require SASL (SCRAM-SHA-512/256, PLAIN) with these user:password lines",
    )  # fmt: skip
    p.add_argument("--tls-cert", type=Path, default=None, help="serve TLS with this PEM chain")
    p.add_argument("--tls-key", type=Path, default=None, help="... and this PEM key")
    ns = p.parse_args(argv)
    if (ns.tls_cert is None) != (ns.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    return BrokerConfig(**vars(ns))


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value
