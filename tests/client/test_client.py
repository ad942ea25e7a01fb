"""``parley.Client`` is a thin front: one store, one HTTP client and one event bus
shared by its account, keys and messenger parts (each tested in its own file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from parley import Client, ParleyError
from parley.events import ErrorEvent

from tests.client.conftest import CHEAP_KDF, MakeClient


def test_a_client_needs_a_data_dir_or_a_username() -> None:
    with pytest.raises(ValueError, match="data_dir"):
        Client("http://127.0.0.1:1", passphrase="x")


async def test_the_parts_share_one_store_one_api_and_one_bus(tmp_path: Path) -> None:
    client = Client("http://127.0.0.1:1", passphrase="pw", data_dir=tmp_path, kdf=CHEAP_KDF)
    with pytest.raises(ParleyError, match="not open"):
        _ = client.store
    async with client:
        assert client.keys.api is client.api and client.messenger.api is client.api
        assert client.account.events is client.bus is client.messenger.events
        assert client.keys.device() is None and not client.logged_in
        client.bus.emit(ErrorEvent("x", "y"))
        assert await client.next_event(ErrorEvent, timeout=1) == ErrorEvent("x", "y")
    with pytest.raises(ParleyError, match="not open"):
        _ = client.store


async def test_the_front_delegates_to_its_parts(make_client: MakeClient) -> None:
    alice = await make_client()
    assert alice.user_id == alice.account.user_id and alice.username == alice.account.username
    assert alice.device() is not None
    alice.rotate_after = 5.0
    assert alice.keys.rotate_after == 5.0
    assert [d["device_id"] for d in await alice.devices()] == [alice.device_id]
    assert alice.outbox() == [] and alice.conversations() == []
