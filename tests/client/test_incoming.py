"""Reading a 1:1 message parses this device's private state (every prekey it holds)
only when the message starts a session: a message in a session the contact already
has needs none of it (a backlog of 3,000 took 5.0 ms a message with the parse, 0.8 ms
without). A real client on a scripted gateway (tests/client/scripted.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from parley.crypto import Binding, Device, Session

from tests.client.scripted import BOB, ME, Rig, probe, scripted_client
from tests.support.aio import eventually


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with scripted_client(tmp_path) as rig:
        yield rig


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every parse of a device's private state from here on (its size, one a parse)."""
    seen: list[int] = []
    parse = Device.from_bytes

    def counted(data: bytes, *args: object, **kwargs: object) -> Device:
        seen.append(len(data))
        return parse(data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Device, "from_bytes", staticmethod(counted))
    yield seen


async def test_messages_in_a_session_do_not_parse_the_device_keys(
    rig: Rig, parses: list[int]
) -> None:
    for seq in range(101, 111):
        rig.gateway.push(rig.message(seq, f"hello {seq}"))
    await eventually(probe(rig.texts), lambda texts: len(texts) == 11)
    assert rig.texts() == [f"hello {seq}" for seq in range(100, 111)]
    assert parses == []
    await eventually(probe(rig.last_seq), lambda seq: seq == 110)


async def test_a_first_message_still_reads_and_keeps_the_device_keys(
    rig: Rig, parses: list[int]
) -> None:
    bundle = await rig.bundle()  # (parses once, to add the prekeys)
    assert rig.device().one_time_prekey_count == 1
    before = len(parses)
    # Bob's device starts a new session (it lost the old one): a first message again.
    _, first = Session.initiate(rig.bob_device, bundle, b"again", binding=Binding(BOB, 1, ME, 1))
    rig.gateway.push(rig.message(101, "", first))
    await eventually(probe(rig.texts), lambda texts: texts[-1:] == ["again"])
    assert len(parses) - before == 1  # the device, for the handshake
    kept = rig.device()
    assert kept.one_time_prekey_count == 0  # consumed, and the changed state stored
    assert kept.kem_prekey_count == 0
