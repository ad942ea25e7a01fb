"""Fixtures: the embedded Kafka broker as a real process on a free port and a tmp data dir."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.kafka_broker import KafkaBroker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One broker shared by a test module (each test uses its own topics)."""
    b = KafkaBroker(tmp_path_factory.mktemp("kafka") / "data").start()
    yield b
    b.stop()


BrokerFactory = Callable[..., KafkaBroker]


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Brokers of the test's own (started; stopped at the end), with extra command-line args."""
    started: list[KafkaBroker] = []

    def make(*args: str, data_dir: Path | None = None) -> KafkaBroker:
        b = KafkaBroker(data_dir or tmp_path / f"data{len(started)}", *args).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def topic() -> str:
    return f"t-{secrets.token_hex(4)}"
