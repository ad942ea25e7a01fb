"""Test-side view of the embedded stack: processes, settings and the running system."""

from __future__ import annotations

import os
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from scripts.stack import SERVERS, SERVICES, Processes, StackConfig, _free_ports, command
from services.common.config import Settings, load_settings

# Not a secret: only the test stacks' throw-away databases are sealed with it.
TEST_KEY_ENCRYPTION_SECRET = "test-only-key-encryption-secret-0123456789"


def unique_prefix(kind: str = "t") -> str:
    return f"{kind}{secrets.token_hex(4)}"


@dataclass
class Stack:
    """The backing servers (MongoDB, Kafka, Redis, SMTP) on free loopback ports."""

    cfg: StackConfig
    procs: Processes | None

    def settings(self, **overrides: object) -> Settings:
        """Settings for an in-process app, isolated by fresh db/topic/redis prefixes."""
        prefix = unique_prefix()
        base: dict[str, object] = {
            "mongo_url": self.cfg.url("mongo"),
            "redis_url": self.cfg.url("redis"),
            "kafka_bootstrap": self.cfg.url("kafka"),
            "smtp_host": self.cfg.host,
            "smtp_port": self.cfg.smtp_port,
            "db_prefix": f"{prefix}_",
            "redis_prefix": prefix,
            "topic_prefix": f"{prefix}.",
            "kafka_partitions": 2,
            "kafka_session_timeout_ms": 3000,
            "dependency_timeout_ms": 3000,
            "log_format": "console",
            # Production's path: signing keys and TOTP seeds sealed (issue #20).
            "key_encryption_secret": TEST_KEY_ENCRYPTION_SECRET,
        }
        base.update(overrides)
        return load_settings(**base)

    @property
    def maildir(self) -> Path:
        return self.cfg.data_dir / "mail"


def start_stack(data_dir: Path) -> Stack:
    if os.environ.get("PARLEY_TEST_REUSE_STACK") == "1":
        # A stack already running (e.g. `make run`), described by PARLEY_* ports.
        return Stack(StackConfig.from_env(), None)
    cfg = StackConfig.free_ports(data_dir)
    procs = Processes(cfg)
    try:
        for name in SERVERS:
            procs.start(name)
    except BaseException:
        procs.stop_all()
        raise
    return Stack(cfg, procs)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def wait_until(predicate: object, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll a condition (not a sleep-and-hope): fail with a clear error at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met after {timeout}s")
        time.sleep(interval)


@dataclass
class System:
    """All Parley services and HAProxy, running as real processes on the stack."""

    stack: Stack
    cfg: StackConfig
    procs: Processes
    prefix: str
    web_origin: str = ""
    """An origin the services let call them (PARLEY_CORS_ORIGINS), as the web apps'
    on AWS: a test serves the web client there (tests/web/test_cross_origin.py)."""
    lb: str = field(init=False)

    def __post_init__(self) -> None:
        self.lb = self.cfg.url("lb")

    @property
    def ws_url(self) -> str:
        return self.lb.replace("http://", "ws://") + "/ws"

    def wait_ready(self, timeout: float = 60.0) -> None:
        paths = ["/auth/readyz", "/keys/readyz", "/delivery/readyz", "/rooms/readyz"]
        ops = self.cfg.url("ops")  # readiness is on HAProxy's internal port
        wait_until(lambda: all(http_status(ops + p) == 200 for p in paths), timeout)
        for name in ("gateway1", "gateway2", "notifier"):
            module = "gateway" if name.startswith("gateway") else name
            url = self.cfg.url(name) + f"/{module}/readyz"
            wait_until(lambda url=url: http_status(url) == 200, timeout)

    def restart(self, name: str) -> None:
        self.procs.start(name)

    def auth_env(self) -> dict[str, str]:
        """The auth service's environment, key-encryption secret included (for its CLI)."""
        return command(self.cfg, "auth")[1]


def start_system(stack: Stack) -> System:
    prefix = unique_prefix("e")
    ports = StackConfig.free_ports(stack.cfg.data_dir)
    web_origin = f"http://127.0.0.1:{_free_ports(1)[0]}"
    cfg = StackConfig(
        data_dir=stack.cfg.data_dir / prefix,
        mongo_port=stack.cfg.mongo_port,
        kafka_port=stack.cfg.kafka_port,
        redis_port=stack.cfg.redis_port,
        smtp_port=stack.cfg.smtp_port,
        lb_port=ports.lb_port,
        stats_port=ports.stats_port,
        prometheus_port=ports.prometheus_port,
        auth_port=ports.auth_port,
        keys_port=ports.keys_port,
        gateway1_port=ports.gateway1_port,
        gateway2_port=ports.gateway2_port,
        delivery_port=ports.delivery_port,
        web_port=ports.web_port,
        rooms_port=ports.rooms_port,
        notifier_port=ports.notifier_port,
        extra_env={
            "PARLEY_DB_PREFIX": f"{prefix}_",
            "PARLEY_REDIS_PREFIX": prefix,
            "PARLEY_TOPIC_PREFIX": f"{prefix}.",
            "PARLEY_KAFKA_PARTITIONS": "2",
            "PARLEY_KAFKA_SESSION_TIMEOUT_MS": "3000",
            "PARLEY_LOG_FORMAT": "json",
            # Test profile: cheap password hashing and generous per-IP limits,
            # since every test user signs up from 127.0.0.1 (docs/auth.md).
            "PARLEY_ARGON2_TIME_COST": "1",
            "PARLEY_ARGON2_MEMORY_KIB": "1024",
            "PARLEY_ARGON2_PARALLELISM": "1",
            "PARLEY_LIMIT_SIGNUP_IP": "100000/3600",
            "PARLEY_LIMIT_LOGIN_IP": "100000/300",
            # Resets, codes and refreshes too: the fuzzers call them hundreds of
            # times from the same address, and later tests must not inherit that.
            "PARLEY_LIMIT_RESET_IP": "100000/3600",
            "PARLEY_LIMIT_CODE_IP": "100000/300",
            "PARLEY_LIMIT_REFRESH_IP": "100000/60",
            "PARLEY_PRESENCE_REFRESH_S": "2",
            "PARLEY_KAFKA_LAG_INTERVAL_S": "1",
            # Mention digests (docs/notifier.md): short, so that a test sees one.
            "PARLEY_NOTIFIER_DIGEST_INTERVAL_S": "4",
            "PARLEY_NOTIFIER_TICK_S": "0.25",
            "PARLEY_CORS_ORIGINS": web_origin,
            # The console's address there (tests/web/test_cross_origin.py), as on AWS.
            "PARLEY_ADMIN_CONSOLE_URL": f"{web_origin}/admin/",
        },
    )
    procs = Processes(cfg)
    try:
        for name in (*SERVICES, "haproxy"):
            procs.start(name)
        system = System(stack, cfg, procs, prefix, web_origin)
        system.wait_ready()
    except BaseException:
        procs.stop_all()
        raise
    STARTED.append(system)
    return system


STARTED: list[System] = []
"""The systems this test process started (its session's)."""
