"""Typed configuration from the environment, in one place.

Every option is a ``PARLEY_*`` environment variable (see docs/configuration.md).
Defaults make the embedded setup (``make run``) work without any variable set.
Secrets are ``SecretStr``: they never appear in a repr, a log line or an error.
"""

from __future__ import annotations

import re
import sys
from typing import Literal, NoReturn, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pymongo import uri_parser
from pymongo.errors import PyMongoError

FRANKING_KEY_ID = r"^[A-Za-z0-9_-]{1,16}$"
"""A franking key id: it names the key in every tag (``<kid>.<mac>``) and tombstone."""


class Settings(BaseSettings):
    """All of Parley's settings; each service reads the part it needs."""

    # No infinity nor NaN: ``inf`` passed ``gt=0`` and went to clients as JSON null
    # (PARLEY_WS_SENDS_PER_S=inf: no SDK could read the gateway's ready frame).
    model_config = SettingsConfigDict(
        env_prefix="PARLEY_", extra="ignore", frozen=True, validate_default=True,
        allow_inf_nan=False,
    )  # fmt: skip

    # "production" (the default) or "development": outside development the
    # auth service refuses to start without key_encryption_secret.
    env: Literal["production", "development"] = "production"

    # Where this process listens.
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    # Where people open the web client (the link in mention e-mails): the API's
    # public_url unless the web client has an origin of its own (Terraform:
    # CloudFront's). Unset: public_url.
    web_url: str | None = Field(default=None, pattern=r"^https?://[^?#]+$")
    # Browser origins (comma-separated, e.g. https://app.example.com) whose pages may
    # call the APIs: the web client and admin console when they are served from
    # another origin than the API (Terraform: CloudFront's). Empty: the same origin
    # only, as HAProxy serves everything (docs/configuration.md).
    cors_origins: str = Field(
        default="",
        pattern=r"^(https?://[A-Za-z0-9.\[\]:-]+/?(,\s*https?://[A-Za-z0-9.\[\]:-]+/?)*)?$",
    )

    # Backing servers.
    mongo_url: str = "mongodb://127.0.0.1:27017"
    db_prefix: str = Field(default="parley_", pattern=r"^[A-Za-z0-9_]{1,40}$")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = Field(default="parley", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="parley.", pattern=r"^[A-Za-z0-9_.-]{0,40}$")
    kafka_partitions: int = Field(default=4, ge=1, le=1024)
    # How long the messages topic keeps a record (its ciphertext): long enough
    # to re-deliver after an outage, short enough that acknowledged messages
    # do not linger (docs/delivery.md, "What is deleted when"). Applied when
    # the topic is created.
    kafka_message_retention_ms: int = Field(default=6 * 3600 * 1000, ge=60_000)
    kafka_session_timeout_ms: int = Field(default=6000, ge=1000)
    # How long a fetch waits for data when there is none. Real Kafka and the
    # embedded broker answer as soon as a record arrives, so a long wait costs
    # no latency; a short one costs idle fetches (20 ms: 50 a second per
    # consumer, a tenth of a core between delivery and the broker at rest).
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=1, le=10_000)
    # A fetch is answered once this many bytes wait (or at the wait above); and a
    # producer waits this long to fill a batch. Larger batches cost less per
    # message and add up to the wait in latency (docs/BENCHMARKS.md, "Messaging").
    # 0: a producer sends at once, and batches what comes while a request is in
    # flight: the same saturation as 1 ms, and half the latency at a low rate
    # (docs/BENCHMARKS.md, "Producers linger 0 ms").
    kafka_fetch_min_bytes: int = Field(default=1, ge=1, le=16 * 1024 * 1024)
    kafka_linger_ms: int = Field(default=0, ge=0, le=1000)
    # How the services reach the brokers (clients.kafka_security): PLAINTEXT (the
    # embedded broker, docker-compose), or TLS and SASL as managed Kafka asks (MSK:
    # SASL_SSL with SCRAM-SHA-512, which Terraform sets). TLS trusts the system's
    # CAs, or kafka_ssl_cafile's. A SASL protocol needs the username and password.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None

    @model_validator(mode="after")
    def _wait_before_the_socket_gives_up(self) -> Settings:
        # A WAIT still owed when the socket times out is sent again (redis-py's retry)
        # and never answered short: writes would stall instead of going on unconfirmed.
        if self.redis_wait_replicas and self.redis_wait_timeout_ms >= self.dependency_timeout_ms:
            raise ValueError(
                f"redis_wait_timeout_ms ({self.redis_wait_timeout_ms}) must be below "
                f"dependency_timeout_ms ({self.dependency_timeout_ms})"
            )
        return self

    @model_validator(mode="after")
    def _presence_refreshed_before_it_lapses(self) -> Settings:
        # An entry not refreshed within its lifetime lapses between refreshes: connected
        # users look offline (no live pushes, mention e-mails to people who are online).
        if self.presence_refresh_s >= self.presence_ttl_s:
            raise ValueError(
                f"presence_refresh_s ({self.presence_refresh_s}) must be below "
                f"presence_ttl_s ({self.presence_ttl_s})"
            )
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, value: str) -> str:
        # Checked here, not at the first connection (a traceback then), and without
        # echoing the value (it may hold a password).
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise ValueError("not a URL (redis://host:port/db)") from None
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            raise ValueError("not a Redis URL (redis://host:port/db, rediss:// or unix://)")
        return value

    @field_validator("mongo_url")
    @classmethod
    def _mongo_url_parses(cls, value: str) -> str:
        if value.startswith("mongodb+srv://"):
            return value  # its hosts come from DNS, at the first connection
        if not value.startswith("mongodb://"):
            raise ValueError("not a MongoDB URL (mongodb://host:port or mongodb+srv://host)")
        try:
            # warn=True: an option the driver does not know is only a warning, as for the
            # client itself (refused, a URL that worked stopped every service).
            uri_parser.parse_uri(value, warn=True)
        except (ValueError, PyMongoError, OSError):  # OSError: a TLS file it names is missing
            raise ValueError("not a valid MongoDB URL (mongodb://host:port,...)") from None
        return value

    @field_validator("franking_key")
    @classmethod
    def _franking_key_is_a_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Empty (an empty export passed through by compose): unset, never a key derived
        # from nothing that anyone can compute; set: as long as the other secrets.
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < 32:
            raise ValueError("PARLEY_FRANKING_KEY must be at least 32 characters")
        return value

    @field_validator("franking_retired_keys")
    @classmethod
    def _retired_keys_are_well_formed(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        # Each entry parsed as ModerationKeys reads it: a malformed one was dropped or
        # kept under a mangled id, and one under the current id replaced by the current
        # key, so older tags and tombstones stopped verifying without a word.
        if value is None or not value.get_secret_value().strip():
            return None
        kids = retired_franking_keys(value.get_secret_value())
        current = info.data.get("franking_key_id")
        if current in kids:
            raise ValueError(
                f"names the current key id {current!r} "
                "(PARLEY_FRANKING_KEY_ID): give the new key a new id"
            )
        return value

    @field_validator("kafka_sasl_password")
    @classmethod
    def _sasl_has_credentials(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        protocol = info.data.get("kafka_security_protocol", "")
        if str(protocol).startswith("SASL") and not (
            info.data.get("kafka_sasl_username") and value and value.get_secret_value()
        ):
            raise ValueError(
                f"{protocol} needs PARLEY_KAFKA_SASL_USERNAME and PARLEY_KAFKA_SASL_PASSWORD"
            )
        return value

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    smtp_from: str = "Parley <no-reply@parley.invalid>"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: bool = False
    # How long the notifier waits for the SMTP server's answer to a message's end (DATA):
    # RFC 5321 4.5.3.2.6 says ten minutes (a shorter wait sends copies again).
    smtp_data_timeout_s: float = Field(default=600.0, ge=1, le=3600)

    # Service discovery (internal URLs of the other services).
    auth_url: str = "http://127.0.0.1:8101"
    keys_url: str = "http://127.0.0.1:8102"
    delivery_url: str = "http://127.0.0.1:8105"
    rooms_url: str = "http://127.0.0.1:8107"

    # Tokens.
    jwt_issuer: str = "parley"
    jwt_audience: str = "parley"
    access_token_ttl_s: int = Field(default=900, ge=30, le=86400)
    refresh_token_ttl_s: int = Field(default=30 * 86400, ge=300)
    jwks_cache_s: int = Field(default=300, ge=1)
    # Encrypts the auth service's signing keys and TOTP seeds at rest. Required
    # unless env is "development" (then unset = stored unencrypted, with a
    # warning); `make run` generates one into its data directory.
    key_encryption_secret: SecretStr | None = None

    # Gateway (limits are documented in docs/protocol.md).
    gateway_id: str = Field(default="gw-1", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ws_max_frame_bytes: int = Field(default=64 * 1024, ge=1024)
    ws_sends_per_s: float = Field(default=50.0, gt=0)
    # A device's first message to a private room is one pairwise send per other
    # member (its sender key, docs/crypto.md), and so is every member's next message
    # after someone leaves (the key rotates): the burst is a room's largest size
    # (services/rooms/config.py max_members). At 100, a first message to a room of
    # 1,000 waited ~18 s on this bucket alone (loadtest/bench_web_room.py).
    ws_send_burst: int = Field(default=5000, ge=1)
    ws_auth_timeout_s: float = Field(default=10.0, gt=0)
    ws_outbound_queue: int = Field(default=1000, ge=1)
    ws_outbound_queue_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    ws_max_sockets_per_user: int = Field(default=16, ge=1)
    ws_max_sockets_per_address: int = Field(default=256, ge=1)
    ws_heartbeat_s: float = Field(default=30.0, gt=0)
    # Acks of hot items written by the gateway itself (services/gateway/acks.py);
    # False: every ack through delivery's HTTP API, as before.
    ws_direct_acks: bool = True
    # While big rooms are busy, a room-wide frame (a private room's message, a public
    # room's post) for at least ws_room_coalesce_users users waits up to this long on
    # each socket, so that the next ones go out in the same write (docs/gateway.md,
    # "Routing"; docs/BENCHMARKS.md, "The room log"). 0: every frame at once.
    ws_room_write_delay_ms: float = Field(default=100.0, ge=0, le=1000)
    ws_room_coalesce_users: int = Field(default=64, ge=1)
    presence_ttl_s: int = Field(default=60, ge=5)
    presence_refresh_s: float = Field(default=20.0, gt=0)
    recipient_cache_s: float = Field(default=60.0, ge=0)
    # Open sockets one pod is sized for: exported as
    # parley_gateway_connection_capacity, the threshold of the capacity alert
    # (docs/operations.md). Not enforced; autoscaling keeps pods below it.
    ws_capacity: int = Field(default=10_000, ge=1)

    # Delivery.
    delivery_batch_max: int = Field(default=500, ge=1, le=10_000)
    delivery_consumers: int = Field(default=1, ge=1, le=64)
    # Attempts at a batch while MongoDB and Redis answer, before it is split
    # to find the records at fault (an outage waits without counting).
    delivery_max_attempts: int = Field(default=3, ge=1, le=100)
    sync_page_max: int = Field(default=200, ge=1, le=1000)
    # A page (an inbox's, a room log's, POST /delivery/v1/rooms/logs' whole answer)
    # also stops once its messages' bodies reach this many bytes (the first message
    # always goes): 200 items of 64 KiB would be 12.8 MiB, past what the gateway lets
    # wait for one socket (ws_outbound_queue_bytes), and so never synced.
    sync_page_bytes: int = Field(default=1024 * 1024, ge=64 * 1024)
    # The hot inbox (docs/delivery.md, "The hot path"): items still
    # unacknowledged this long after they were stored move from Redis to
    # MongoDB; the persister looks every hot_persist_interval_s, moving up to
    # hot_persist_batch items per round trip. A resent or redelivered message
    # is recognised in Redis for hot_dedup_s.
    hot_persist_after_s: float = Field(default=5.0, ge=0, le=3600)
    hot_persist_interval_s: float = Field(default=0.5, gt=0, le=60)
    hot_persist_batch: int = Field(default=1000, ge=1, le=10_000)
    # The inbox counters (Redis) are copied to MongoDB at most this often: one
    # upsert per inbox that moved (docs/delivery.md, "Inbox counters").
    counters_checkpoint_s: float = Field(default=5.0, gt=0, le=3600)
    hot_dedup_s: int = Field(default=86400, ge=60)
    # A batch's hot items count as stored (pushed, their records left for the
    # persister to settle) once this many Redis replicas hold them (WAIT, in the
    # pipeline that writes them): a failover then cannot promote a replica that
    # lacks them. 0: no wait (a Redis without replicas). Replicas that do not
    # answer within redis_wait_timeout_ms: the write goes on unconfirmed, counted
    # and logged, and writes do not wait for 30 s (docs/delivery.md, "Redis failover").
    redis_wait_replicas: int = Field(default=0, ge=0, le=5)
    redis_wait_timeout_ms: int = Field(default=500, ge=1, le=60_000)
    # Inbox caps (docs/security.md): items waiting in one device inbox, and
    # items from one sender waiting in it; past either, a send is refused
    # (`inbox_full`, `too_many_pending`).
    inbox_max_pending: int = Field(default=100_000, ge=1)
    inbox_max_pending_per_sender: int = Field(default=10_000, ge=1)
    # A gateway re-reads an inbox's counts at most this often while it is
    # under half of both caps (0: on every send).
    inbox_room_cache_s: float = Field(default=2.0, ge=0)
    # Unacknowledged items older than this are deleted by the purge job,
    # which runs every inbox_purge_interval_s.
    inbox_expiry_s: int = Field(default=30 * 86400, ge=60)
    inbox_purge_interval_s: float = Field(default=3600.0, gt=0)

    # Moderation of end-to-end encrypted messages (docs/moderation-messages.md):
    # the secret that the franking tags' HMAC key and the tombstones' Ed25519
    # signing key are derived from (HKDF, one label each), and its key id, which
    # every tag and tombstone names. franking_retired_keys ("<id>:<secret>,...")
    # are keys that verify and are published but do not sign: former keys, and
    # during a rotation the next one (two steps, docs/deployment.md, "Rotating the
    # franking key"). Checked at start: each entry well formed, its secret at least
    # 32 characters, no id twice and none the current id (it would silently
    # replace the former key of that id).
    # Unset: a random key per process (with a warning), so reports of messages
    # stored before a restart fail; `make run` generates one into its data dir.
    franking_key: SecretStr | None = None
    franking_key_id: str = Field(default="1", pattern=FRANKING_KEY_ID)
    franking_retired_keys: SecretStr | None = None
    # Reports one user may file (COUNT/SECONDS), counting only those stored (not a
    # repeat of a report already filed, nor a refused one); past it: 429
    # ``rate_limited``. Each stores a message's plaintext for the admins.
    limit_reports: str = Field(default="30/3600", pattern=r"^[1-9][0-9]{0,6}/[1-9][0-9]{0,6}$")

    # Notifier (docs/notifier.md): mentions of a user with no connected device
    # are collected for this long from the first one, then sent in one e-mail;
    # at most one digest per user per interval. Due digests are looked for
    # every notifier_tick_s.
    notifier_digest_interval_s: float = Field(default=900.0, ge=1, le=7 * 86400)
    notifier_tick_s: float = Field(default=5.0, gt=0, le=600)

    # Operations.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    readiness_timeout_s: float = Field(default=2.0, gt=0, le=30)
    dependency_timeout_ms: int = Field(default=5000, ge=100)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # How often consumer lag is sampled from the broker (services/common/consumer_lag.py).
    kafka_lag_interval_s: float = Field(default=15.0, gt=0, le=3600)


class ConfigError(Exception):
    """The environment does not describe a valid configuration."""


def retired_franking_keys(text: str) -> dict[str, str]:
    """``PARLEY_FRANKING_RETIRED_KEYS`` (``"<id>:<secret>,..."``) by key id; ``ValueError``
    (naming the entry by its position and id, never its secret) for an entry that is
    not ``<id>:<secret>`` with an id as ``PARLEY_FRANKING_KEY_ID``'s and a secret of at
    least 32 characters without surrounding spaces, or for an id given twice. Blank
    entries (a trailing comma) are skipped."""
    out: dict[str, str] = {}
    for n, entry in enumerate(text.split(","), 1):
        entry = entry.strip()
        if not entry:
            continue
        kid, sep, secret = entry.partition(":")
        where = f"entry {n}"
        if not sep or not re.fullmatch(FRANKING_KEY_ID, kid):
            raise ValueError(f"{where} is not <id>:<secret> with an id of 1-16 of A-Z a-z 0-9 _ -")
        if secret != secret.strip() or len(secret) < 32:
            raise ValueError(
                f"{where} (id {kid!r}): the secret must be at least 32 characters, "
                "without spaces around it"
            )
        if kid in out:
            raise ValueError(f"{where}: key id {kid!r} is given twice")
        out[kid] = secret
    return out


_S = TypeVar("_S", bound=BaseSettings)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; overrides win (used by tests).

    Raises ConfigError with one human line naming each bad variable and why,
    never echoing the value (it may be a secret).
    """
    return read_settings(Settings, **overrides)


def read_settings(cls: type[_S], **overrides: object) -> _S:
    """Read one service's settings class (``PARLEY_*``) as :func:`load_settings` reads
    the shared ones: ConfigError, one line naming each bad variable, no value echoed."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            field = ".".join(str(p) for p in err["loc"])
            problems.append(f"PARLEY_{field.upper()}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from None


def settings_or_exit(service: str, **overrides: object) -> Settings:
    """Entry-point helper: load settings, or print one line and exit(2)."""
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        exit_bad_config(service, exc)


def exit_bad_config(service: str, exc: ConfigError) -> NoReturn:
    """Print the one line that says what is wrong, and exit(2)."""
    print(f"parley-{service}: bad configuration: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
