"""The soak's options, and when each process is killed."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.common import HEADER
from scripts.run import PROCESSES

# The order of the kills: a gateway first (the most common crash), the broker
# and the database in the middle of the run, the load balancer late.
KILL_ORDER = (
    "gateway1", "delivery", "kafka", "auth", "redis", "gateway2",
    "mongo", "keys", "rooms", "haproxy", "web", "smtp", "prometheus", "notifier",
)  # fmt: skip


@dataclass(frozen=True)
class Options:
    minutes: float = 60.0
    rate: float = 50.0
    clients: int = 40
    window_minutes: float = 10.0
    kills: tuple[str, ...] = KILL_ORDER
    resend_every: float = 30.0
    resend_count: int = 20
    retry_after: float = 5.0
    ack_interval: float = 0.5
    body_bytes: int = 162
    sample_every: float = 5.0
    drain_seconds: float = 300.0
    idle_seconds: float = 60.0
    cheap_kdf: bool = False
    token_ttl: int | None = None
    results: Path | None = None
    data_dir: Path | None = None
    seed: int | None = None


def parse_args(argv: list[str] | None = None) -> Options:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=d.minutes, help="length of the paced run")
    p.add_argument("--rate", type=float, default=d.rate, help="messages per second, in total")
    p.add_argument("--clients", type=int, default=d.clients, help="users (an even number)")
    p.add_argument("--window-minutes", type=float, default=d.window_minutes,
                   help="length of a report window")  # fmt: skip
    p.add_argument("--kills", default="all",
                   help="'all', 'none', or a comma-separated list of processes to kill -9 "
                        f"in that order (of: {', '.join(KILL_ORDER)})")  # fmt: skip
    p.add_argument("--resend-every", type=float, default=d.resend_every,
                   help="seconds between forced reconnects with resends (0: none)")  # fmt: skip
    p.add_argument("--resend-count", type=int, default=d.resend_count,
                   help="accepted ids sent again after a forced reconnect")  # fmt: skip
    p.add_argument("--retry-after", type=float, default=d.retry_after,
                   help="seconds without `accepted` before a message is sent again")  # fmt: skip
    p.add_argument("--ack-interval", type=float, default=d.ack_interval)
    p.add_argument("--body-bytes", type=int, default=d.body_bytes, help="ciphertext bytes")
    p.add_argument("--sample-every", type=float, default=d.sample_every,
                   help="seconds between CPU samples")  # fmt: skip
    p.add_argument("--drain-seconds", type=float, default=d.drain_seconds,
                   help="how long the end waits for acceptances and deliveries")  # fmt: skip
    p.add_argument("--idle-seconds", type=float, default=d.idle_seconds,
                   help="first measure the idle stack's CPU (sockets open)")  # fmt: skip
    p.add_argument("--cheap-kdf", action="store_true",
                   help="cheap argon2id for sign-ups (tests)")  # fmt: skip
    p.add_argument("--token-ttl", type=int, help="access token lifetime, s (default: make run's)")
    p.add_argument("--results", type=Path, help="write the results as JSON to this file")
    p.add_argument("--data-dir", type=Path, help="keep logs and data here (default: a temp dir)")
    p.add_argument("--seed", type=int, help="seed of the random choices (jitter)")
    a = p.parse_args(argv)
    if a.clients < 2 or a.clients % 2:
        p.error("--clients must be even and at least 2")
    if a.body_bytes < HEADER.size or a.body_bytes % 3:
        p.error(f"--body-bytes must be a multiple of 3, at least {HEADER.size}")
    if a.rate <= 0 or a.minutes <= 0 or a.window_minutes <= 0:
        p.error("--rate, --minutes and --window-minutes must be positive")
    return Options(
        minutes=a.minutes, rate=a.rate, clients=a.clients, window_minutes=a.window_minutes,
        kills=parse_kills(a.kills, p.error), resend_every=a.resend_every,
        resend_count=a.resend_count, retry_after=a.retry_after, ack_interval=a.ack_interval,
        body_bytes=a.body_bytes, sample_every=a.sample_every, drain_seconds=a.drain_seconds,
        idle_seconds=a.idle_seconds,
        cheap_kdf=a.cheap_kdf, token_ttl=a.token_ttl, results=a.results, data_dir=a.data_dir,
        seed=a.seed,
    )  # fmt: skip


def parse_kills(text: str, error: Callable[[str], Any]) -> tuple[str, ...]:
    if text == "all":
        return KILL_ORDER
    if text in ("none", ""):
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    known = {name for name, _ in PROCESSES}
    unknown = [n for n in names if n not in known]
    if unknown:
        error(f"unknown process(es) for --kills: {', '.join(unknown)}")
    return names


def kill_times(names: Iterable[str], seconds: float) -> list[tuple[float, str]]:
    """When each kill happens (seconds after the start): evenly spread, none at the edges."""
    names = list(names)
    return [(seconds * (i + 0.5) / len(names), name) for i, name in enumerate(names)]
