"""The one-time prekeys this device keeps the private halves of are bounded: what the
key directory still holds, and a batch of claimed ones waiting for their initial
messages; older claimed ones are forgotten at the next top-up. Before, every claimed
prekey never used was kept for ever, so anyone claiming a user's bundles within the
directory's per-target budget (30, then 60 an hour) grew that user's device state by
~1,440 keys of each kind a day, parsed for every first message (docs/crypto.md,
"One-time prekeys kept").

A top-up's batch is only relied on once its upload is confirmed: until then it is
kept as unsent and sent again, unchanged, by the next top-up, and nothing is retired
(a batch that never reached the directory counted among the newest, and a failed
upload or two made the device forget prekeys claimed by honest senders, or still
handed out).

No server runs: the directory is a stand-in that hands one-time prekeys out in id
order, and takes a batch again as a retry or refuses it as the key service does
(docs/keys.md, "Claims: ids counted out", "Batches are all or nothing")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from parley import ApiError, Client
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
        self._store(self.one_time, prekeys)

    async def upload_kem(self, _device_id: int, prekeys: list[dict[str, Any]]) -> None:
        self._store(self.kem, prekeys)

    @staticmethod
    def _store(held: dict[int, dict[str, Any]], prekeys: list[dict[str, Any]]) -> None:
        """All or nothing; the same batch again, all of it still held as sent, is a
        retry; ids still held otherwise are ``duplicate_prekey`` (services/keys)."""
        stored = [held[int(p["id"])] for p in prekeys if int(p["id"]) in held]
        if stored and stored != prekeys:
            ids = [int(p["id"]) for p in stored]
            raise ApiError("duplicate_prekey", "nothing stored", 409, details={"ids": ids})
        held.update((int(p["id"]), p) for p in prekeys)

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


class Flaky(Directory):
    """A directory whose next uploads fail: ``fail`` of each kind (a timeout, a 5xx, the
    network gone); ``lost`` ones store the batch and lose the answer."""

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self.fail = {"one_time": 0, "kem": 0}
        self.lost = {"one_time": 0, "kem": 0}
        self.sent: list[tuple[str, list[dict[str, Any]]]] = []

    async def upload_one_time(self, device_id: int, prekeys: list[dict[str, Any]]) -> None:
        await self._upload("one_time", super().upload_one_time, device_id, prekeys)

    async def upload_kem(self, device_id: int, prekeys: list[dict[str, Any]]) -> None:
        await self._upload("kem", super().upload_kem, device_id, prekeys)

    async def _upload(self, kind: str, upload: Any, device_id: int, prekeys: Any) -> None:
        self.sent.append((kind, prekeys))
        if self.fail[kind]:
            self.fail[kind] -= 1
            raise TimeoutError("upload lost")
        await upload(device_id, prekeys)
        if self.lost[kind]:
            self.lost[kind] -= 1
            raise TimeoutError("answer lost")


def _initial(bundle: PrekeyBundle) -> bytes:
    _, wire = Session.initiate(Device.generate(), bundle, b"hi", binding=Binding(CLAIMER, 1, ME, 1))
    return wire


def _read(client: Client, wire: bytes) -> bytes:
    _, message = Session.respond_message(_device(client), wire, binding=Binding(CLAIMER, 1, ME, 1))
    return message.plaintext


def _unreadable(client: Client, waiting: list[bytes]) -> int:
    lost = 0
    for wire in waiting:
        try:
            assert _read(client, wire) == b"hi"
        except PrekeyReused:
            lost += 1
    return lost


@pytest.mark.parametrize("failing", ["one_time", "kem"])
async def test_a_failed_upload_costs_no_first_message_waiting(client: Client, failing: str) -> None:
    directory = Flaky(_device(client))
    client.keys.api = directory  # type: ignore[assignment]
    await client.keys.top_up()
    # Offline: honest senders claim the whole stock; their first messages wait in the inbox.
    waiting = [_initial(directory.claim()) for _ in range(BATCH)]
    # Back: connect's top-up fails to upload (only the ML-KEM part, or all), then works.
    directory.fail[failing] = 1
    with pytest.raises(TimeoutError):
        await client.keys.top_up()
    uploaded = await client.keys.top_up()
    assert _unreadable(client, waiting) == 0
    assert uploaded == (0 if failing == "kem" else BATCH, BATCH)  # X25519 ones: in already
    assert _device(client).one_time_prekey_count == 2 * BATCH  # held, and the batch claimed


async def test_failed_uploads_retire_nothing_the_directory_holds(client: Client) -> None:
    directory = Flaky(_device(client))
    client.keys.api = directory  # type: ignore[assignment]
    await client.keys.top_up()
    waiting = [_initial(directory.claim()) for _ in range(BATCH - 2)]  # 2 left
    directory.fail["one_time"] = 2
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await client.keys.top_up()
    await client.keys.top_up()
    device = _device(client)
    assert sorted(directory.one_time) == [9, 10, *range(11, 19)]
    assert all(i in device._one_time for i in directory.one_time)
    assert all(i in device._kem for i in directory.kem)
    assert _unreadable(client, waiting) == 0
    while directory.one_time:  # every prekey the directory hands out still works
        assert _first_message(client, directory.claim()) == b"hi"


async def test_an_unsent_batch_is_sent_again_unchanged(client: Client, tmp_path: Path) -> None:
    directory = Flaky(_device(client))
    client.keys.api = directory  # type: ignore[assignment]
    directory.fail["kem"] = 1
    with pytest.raises(TimeoutError):
        await client.keys.top_up()
    first = list(directory.sent)
    assert [kind for kind, _ in first] == ["one_time", "kem"]
    # The app is closed and opened again: the batch is in the store.
    await client.close()
    again = Client(
        "http://127.0.0.1:9", data_dir=tmp_path, passphrase="test passphrase", kdf=CHEAP_KDF,
        prekey_batch=BATCH,
    )  # fmt: skip
    await again.open()
    try:
        again.keys.api = directory  # type: ignore[assignment]
        directory.sent.clear()
        directory.fail["kem"] = 1  # and fails again: still nothing new
        with pytest.raises(TimeoutError):
            await again.keys.top_up()
        assert directory.sent == first[1:]  # the X25519 half got in: not sent again
        directory.sent.clear()
        assert await again.keys.top_up() == (0, BATCH)  # counted as sent now
        assert directory.sent == first[1:]
        device = _device(again)
        assert device._next_one_time_id == BATCH + 1  # never generated again
        assert device._next_kem_id == BATCH + 2  # (the last-resort one took id 1)
        assert again.store.read().get("prekeys_unsent") is None
        directory.sent.clear()
        assert await again.keys.top_up() == (0, 0)
        assert directory.sent == []
    finally:
        await again.close()
        await client.open()  # for the fixture's close


async def test_a_batch_stored_then_partly_claimed_counts_as_sent(client: Client) -> None:
    directory = Flaky(_device(client))
    client.keys.api = directory  # type: ignore[assignment]
    await client.keys.top_up()
    for _ in range(BATCH):
        directory.claim()
    # The directory stores the next batch but the answer is lost; claims follow.
    directory.lost["one_time"] = 1
    with pytest.raises(TimeoutError):
        await client.keys.top_up()
    assert sorted(directory.one_time) == list(range(BATCH + 1, 2 * BATCH + 1))
    waiting = [_initial(directory.claim()) for _ in range(3)]
    # Sent again: part of it was claimed, so the directory refuses it (duplicate_prekey):
    # it was stored, so the top-up goes on, and tops up what was claimed since.
    assert await client.keys.top_up() == (BATCH + 3, BATCH)  # (ML-KEM: last resort used)
    assert client.store.read().get("prekeys_unsent") is None
    assert len(directory.one_time) == len(directory.kem) == BATCH
    assert _unreadable(client, waiting) == 0


async def test_two_top_ups_at_once_upload_one_batch(client: Client) -> None:
    directory = Directory(_device(client))
    client.keys.api = directory  # type: ignore[assignment]
    client.keys.on_prekeys_low()  # prekeys_low, while connect tops up
    await asyncio.gather(client.keys.top_up(), client.top_up_prekeys())
    task = client.keys._topping_up
    assert task is not None
    await task
    assert len(directory.one_time) == len(directory.kem) == BATCH
    assert _device(client).one_time_prekey_count == BATCH
