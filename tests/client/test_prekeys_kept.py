"""The one-time prekeys this device keeps the private halves of are bounded: what the
key directory still holds, and a batch of claimed ones waiting for their initial
messages; older claimed ones are forgotten at the next top-up. Before, every claimed
prekey never used was kept for ever, so anyone claiming a user's bundles within the
directory's per-target budget (30, then 60 an hour) grew that user's device state by
~1,440 keys of each kind a day, parsed for every first message (docs/crypto.md,
"One-time prekeys kept").

No server runs: the directory is a stand-in that hands one-time prekeys out in id
order, as the key service does (docs/keys.md, "Claims: ids counted out")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from parley import Client
from parley.crypto import Binding, Device, PrekeyBundle, PrekeyReused, Session

from tests.client.conftest import CHEAP_KDF

ME, CLAIMER = "a" * 32, "c" * 32
BATCH = 10
ROUNDS = 30


class Directory:
    """The key directory's side of one device: the one-time prekeys it holds."""

    def __init__(self, device: Device) -> None:
        self.device = device  # its public parts, for bundles
        self.one_time: dict[int, dict[str, Any]] = {}
        self.kem: dict[int, dict[str, Any]] = {}

    async def counts(self, _device_id: int) -> dict[str, int]:
        return {"one_time": len(self.one_time), "kem_one_time": len(self.kem)}

    async def upload_one_time(self, _device_id: int, prekeys: list[dict[str, Any]]) -> None:
        self.one_time.update((int(p["id"]), p) for p in prekeys)

    async def upload_kem(self, _device_id: int, prekeys: list[dict[str, Any]]) -> None:
        self.kem.update((int(p["id"]), p) for p in prekeys)

    def claim(self) -> PrekeyBundle:
        """A bundle with the lowest one-time prekeys (each handed out once)."""
        one_time = self.one_time.pop(min(self.one_time))
        if self.kem:
            kem = dict(self.kem.pop(min(self.kem)), last_resort=False)
        else:  # none left: the last-resort one, as the directory does
            kem = dict(self.device.last_resort_kem_prekey(), last_resort=True)
        return PrekeyBundle.from_json({
            "user_id": ME, "device_id": 1,
            "identity": self.device.public_identity(),
            "signed_prekey": self.device.signed_prekey(),
            "one_time_prekey": one_time,
            "kem_prekey": kem,
        })  # fmt: skip


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    client = Client(
        "http://127.0.0.1:9", data_dir=tmp_path, passphrase="test passphrase", kdf=CHEAP_KDF,
        prekey_batch=BATCH,
    )  # fmt: skip
    await client.open()
    async with client.store.transaction() as tx:
        tx.put("device_id", 1)
        tx.put_bytes("device", Device.generate().to_bytes())
    try:
        yield client
    finally:
        await client.close()


def _device(client: Client) -> Device:
    device = client.keys.device()
    assert device is not None
    return device


def _first_message(client: Client, bundle: PrekeyBundle) -> bytes:
    """Read an initial message built on ``bundle`` with the device as stored (not kept)."""
    _, wire = Session.initiate(Device.generate(), bundle, b"hi", binding=Binding(CLAIMER, 1, ME, 1))
    _, message = Session.respond_message(_device(client), wire, binding=Binding(CLAIMER, 1, ME, 1))
    return message.plaintext


async def test_claimed_prekeys_never_used_are_not_kept_for_ever(client: Client) -> None:
    directory = Directory(_device(client))
    client.keys.api = directory  # type: ignore[assignment]
    assert await client.keys.top_up() == (BATCH, BATCH)
    claimed: list[PrekeyBundle] = []
    for _ in range(ROUNDS):
        # Someone claims every bundle the directory has and never writes; the device
        # tops up (on prekeys_low, or at its next connect).
        claimed += [directory.claim() for _ in range(BATCH)]
        assert await client.keys.top_up() == (BATCH, BATCH)

    device = _device(client)
    # What the directory holds, and a batch of claimed ones: not (ROUNDS + 1) batches.
    assert device.one_time_prekey_count == 2 * BATCH
    assert device.kem_prekey_count == 2 * BATCH
    # The last batch claimed can still start sessions, and so can what is still held.
    for bundle in claimed[-BATCH:]:
        assert _first_message(client, bundle) == b"hi"
    assert _first_message(client, directory.claim()) == b"hi"
    # The trade-off: a first message to a prekey claimed longer ago cannot be read.
    with pytest.raises(PrekeyReused):
        _first_message(client, claimed[-BATCH - 1])
    with pytest.raises(PrekeyReused):
        _first_message(client, claimed[0])


async def test_what_the_directory_still_holds_is_never_forgotten(client: Client) -> None:
    directory = Directory(_device(client))
    client.keys.api = directory  # type: ignore[assignment]
    client.keys.prekey_batch = 3 * BATCH  # an earlier, larger batch
    await client.keys.top_up()
    client.keys.prekey_batch = BATCH
    directory.kem.clear()  # the ML-KEM ones were claimed, the X25519 ones are all there
    assert await client.keys.top_up() == (0, BATCH)
    assert _device(client).one_time_prekey_count == 3 * BATCH  # none forgotten
    for _ in range(3 * BATCH):  # the last 2 batches with the last-resort ML-KEM prekey
        assert _first_message(client, directory.claim()) == b"hi"
