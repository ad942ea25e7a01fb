"""Several devices per account, end to end through HAProxy (issue #12, docs/devices.md).

Real SDK clients (one per device, each with its own store), the real key
directory, gateways and delivery: linking with a code, fan-out to every device
exactly once, the safety number unchanged when devices come and go, removal,
a stale device list recovered by the SDK, a malicious directory refused, and
``kill -9`` of delivery in the middle of a fan-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from parley import ApiError, Client, DeviceRemoved, NotLoggedIn, ParleyError
from parley.events import MessageRemoved, SentElsewhere

from tests.client.conftest import CHEAP_KDF, PASSWORD
from tests.support.aio import eventually
from tests.support.stack import System, http_status

NewDevice = Callable[..., Awaitable[Client]]


@pytest.fixture
async def device(system: System, tmp_path: Path) -> AsyncIterator[NewDevice]:
    """``await device(username, first=True)`` signs up; otherwise links a new device of
    ``username``, approved by ``approver``."""
    clients: list[Client] = []

    async def make(
        username: str, *, first: bool = False, approver: Client | None = None, name: str = ""
    ) -> Client:
        client = Client(
            system.lb, data_dir=tmp_path / username / secrets.token_hex(4),
            passphrase="test passphrase", kdf=CHEAP_KDF, backoff_start=0.1, backoff_max=1.0,
        )  # fmt: skip
        await client.open()
        clients.append(client)
        if first:
            await client.signup(username, PASSWORD, f"{username}@example.test")
            return client
        assert approver is not None
        code = await client.link_device(username, PASSWORD, name=name or None)
        waiting = asyncio.create_task(client.wait_linked(60))
        pending = await approver.approve_device(code)
        assert pending.device_id == client.device_id
        await waiting
        return client

    yield make
    for client in clients:
        await client.close()


def username(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


async def texts(client: Client, peer: str, n: int, timeout: float = 60) -> list[str]:
    """The texts of the first ``n`` entries of a conversation, once there are ``n``."""

    async def probe() -> list[dict[str, Any]]:
        return [e for e in client.history(peer) if e.get("kind") == "message"]

    entries = await eventually(probe, lambda es: len(es) >= n, timeout=timeout)
    return [str(e["text"]) for e in entries]


@contextlib.asynccontextmanager
async def new_install(system: System, tmp_path: Path) -> AsyncIterator[Client]:
    """A new install of the SDK (its own store), opened, closed after."""
    new = Client(system.lb, data_dir=tmp_path / "new", passphrase="test passphrase", kdf=CHEAP_KDF)
    await new.open()
    try:
        yield new
    finally:
        await new.close()


async def test_every_message_reaches_every_device_once_and_safety_numbers_hold(
    device: NewDevice,
) -> None:
    alice_name, bob_name = username("alice"), username("bob")
    a1 = await device(alice_name, first=True)
    a2 = await device(alice_name, approver=a1, name="alice laptop")
    b1 = await device(bob_name, first=True)
    b2 = await device(bob_name, approver=b1, name="bob phone")
    for c in (a1, a2, b1, b2):
        await c.connect()
    assert {d["device_id"] for d in await a1.devices()} == {a1.device_id, a2.device_id}
    assert b1.user_id and a1.user_id
    before = (await a1.safety_number(bob_name))[1]
    assert before is not None
    assert (await b2.safety_number(alice_name))[1] == before

    await a1.send(bob_name, "one from a1", wait="stored")
    await b2.send(alice_name, "two from b2", wait="stored")
    for client, peer in ((b1, a1.user_id), (b2, a1.user_id), (a2, b1.user_id)):
        assert await texts(client, peer, 2) == ["one from a1", "two from b2"]
    assert await texts(a1, b1.user_id, 2) == ["one from a1", "two from b2"]
    # The sender's per-device detail: each of bob's devices acknowledged its copy.
    sent = await eventually(
        lambda: asyncio.sleep(0, [e for e in a1.history(b1.user_id or "") if e.get("client_id")]),
        lambda es: (
            len(es) == 1
            and es[0].get("devices")
            == {str(b1.device_id): "delivered", str(b2.device_id): "delivered"}
        ),
        timeout=60,
    )
    assert sent[0]["status"] == "delivered"

    # Bob links a third device: alice's next message reaches it (her SDK is told the
    # list changed and recovers on its own), and no safety number changes.
    b3 = await device(bob_name, approver=b2, name="bob tablet")
    await b3.connect()
    await a2.send(bob_name, "three from a2", wait="stored")
    assert await texts(b3, a1.user_id, 1) == ["three from a2"]
    for client in (b1, b2):
        assert (await texts(client, a1.user_id, 3))[2] == "three from a2"
    assert (await a1.safety_number(bob_name))[1] == before
    assert (await a2.safety_number(bob_name))[1] == before
    assert (await b3.safety_number(alice_name))[1] == before
    # Exactly once on every device: no duplicate of any message anywhere.
    for client, peer in ((b1, a1.user_id), (b2, a1.user_id), (a2, b1.user_id)):
        got = await texts(client, peer, 3)
        assert len(got) == len(set(got)) == 3


async def test_a_note_to_self_reaches_my_other_devices_and_is_delivered(
    device: NewDevice,
) -> None:
    """``send`` to your own username: your other devices get it (and say so), the
    sending device keeps it once; with no other device it is refused, nothing sent."""
    alice_name = username("alice")
    a1 = await device(alice_name, first=True)
    await a1.connect()
    assert a1.user_id
    with pytest.raises(ParleyError, match="other devices"):
        await a1.send(alice_name, "nobody to tell", wait="accepted")
    assert a1.history(a1.user_id) == [] and a1.outbox() == []

    a2 = await device(alice_name, approver=a1, name="alice laptop")
    await a2.connect()
    await a1.send(alice_name, "buy milk", wait="stored")
    assert await texts(a2, a1.user_id, 1) == ["buy milk"]
    shown = await a2.next_event(SentElsewhere, timeout=30)  # what a live view shows
    assert isinstance(shown, SentElsewhere)
    assert (shown.peer_id, shown.text, shown.device) == (a1.user_id, "buy milk", a1.device_id)
    mine = await eventually(
        lambda: asyncio.sleep(0, a1.history(a1.user_id or "")),
        lambda es: len(es) == 1 and es[0].get("status") == "delivered",
        timeout=60,
    )
    assert mine[0]["text"] == "buy milk" and mine[0]["dir"] == "out"
    assert mine[0]["devices"] == {str(a2.device_id): "delivered"}
    await a2.send(alice_name, "and eggs", wait="stored")
    assert await texts(a1, a1.user_id, 2) == ["buy milk", "and eggs"]
    assert await texts(a2, a1.user_id, 2) == ["buy milk", "and eggs"]
    assert [c["user_id"] for c in a1.conversations()] == [a1.user_id]
    assert [c["username"] for c in a2.conversations()] == [alice_name]
    # A third device: a1's list is behind, the gateway says so, a1 sends again.
    a3 = await device(alice_name, approver=a2, name="alice tablet")
    await a3.connect()
    await a1.send(alice_name, "and bread", wait="stored")
    assert await texts(a3, a1.user_id, 1) == ["and bread"]
    assert (await texts(a2, a1.user_id, 3))[-1] == "and bread"
    # Unsent: every other device shows it removed.
    bread = next(e for e in a1.history(a1.user_id) if e.get("text") == "and bread")
    await a1.unsend(str(bread["client_id"])[:8])
    for other in (a2, a3):
        removed = await other.next_event(MessageRemoved, timeout=30)
        assert isinstance(removed, MessageRemoved) and removed.peer_id == a1.user_id
    assert [e["kind"] for e in a3.history(a1.user_id)] == ["removed"]


async def test_keys_swapped_after_they_were_shown_are_not_approved(
    device: NewDevice, tmp_path: Path, system: System
) -> None:
    """A directory shows the approving device one new device's keys, then hands other
    keys (mallory's) to the approval: refused, and the account's list is unchanged."""
    alice_name = username("alice")
    a1 = await device(alice_name, first=True)
    mallory = await device(username("mallory"), first=True)
    before = {d["device_id"] for d in await a1.devices()}
    async with new_install(system, tmp_path) as new:
        code = await new.link_device(alice_name, PASSWORD)
        real_get_link = a1.api.get_link
        reads = 0
        forged = (await mallory.api.claim_bundles(mallory.user_id or "", None))["bundles"][0]

        async def swapping(link_id: str) -> dict[str, Any]:
            nonlocal reads
            reads += 1
            link = await real_get_link(link_id)
            if reads > 1:  # after the user compared the first answer
                link["identity"] = forged["identity"]
            return link

        a1.api.get_link = swapping  # type: ignore[method-assign]
        shown = []

        async def confirm(pending: Any) -> bool:
            shown.append(pending)
            return True

        with pytest.raises(ParleyError, match="changed after they were shown"):
            await a1.approve_device(code, confirm)
        assert len(shown) == 1 and reads == 2
        assert {d["device_id"] for d in await a1.devices()} == before


async def test_a_link_given_up_cannot_be_approved_later(
    device: NewDevice, tmp_path: Path, system: System
) -> None:
    """The new device stops waiting (its time ran out; Ctrl-C does the same): its code
    is withdrawn, so an approval later finds nothing, and the list is unchanged."""
    alice_name = username("alice")
    a1 = await device(alice_name, first=True)
    before = {d["device_id"] for d in await a1.devices()}
    async with new_install(system, tmp_path) as new:
        code = await new.link_device(alice_name, PASSWORD)
        assert (await a1.keys.pending(code)).device_id == new.device_id  # it is there
        with pytest.raises(ParleyError, match="not approved in time"):
            await new.wait_linked(timeout=0.1)
        with pytest.raises(ApiError) as exc:
            await a1.approve_device(code)
        assert exc.value.code == "not_found"
        assert {d["device_id"] for d in await a1.devices()} == before


async def test_an_approval_just_as_the_new_device_gives_up_still_links_it(
    device: NewDevice, tmp_path: Path, system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approval lands between the new device's last look and its withdrawal (its
    time ran out, or Ctrl-C): the withdrawal is refused (approved already), which it
    ignored, forgetting the key that opens the approval. The account then listed a
    device that never got the account key. Now it opens the approval instead."""
    alice_name = username("alice")
    a1 = await device(alice_name, first=True)
    async with new_install(system, tmp_path) as new:
        code = await new.link_device(alice_name, PASSWORD)
        cancel = new.keys.api.cancel_link

        async def approved_first(link_id: str) -> Any:
            await a1.approve_device(code)  # just before the withdrawal reaches the server
            return await cancel(link_id)

        monkeypatch.setattr(new.keys.api, "cancel_link", approved_first)
        await new.wait_linked(timeout=0.1)  # no "not approved in time": it is linked
        assert new.keys.linked()
        assert new.device_id in {d["device_id"] for d in await a1.devices()}


async def test_a_new_device_that_died_after_its_approval_finishes_the_link_when_run_again(
    device: NewDevice, tmp_path: Path, system: System
) -> None:
    """The new install is approved, then dies before it opened the account key (it is
    listed, but cannot read anything). Run again on the same store, it takes its link
    up again (the same code), opens the approval and is a working device, instead of
    being refused as already listed."""
    alice_name, bob_name = username("alice"), username("bob")
    a1 = await device(alice_name, first=True)
    bob = await device(bob_name, first=True)
    store = tmp_path / "new"
    first = Client(system.lb, data_dir=store, passphrase="test passphrase", kdf=CHEAP_KDF)
    await first.open()
    try:
        code = await first.link_device(alice_name, PASSWORD)
        did = first.device_id
        await a1.approve_device(code)
    finally:
        await first.close()  # dies: never waited for the approval
    again = Client(system.lb, data_dir=store, passphrase="test passphrase", kdf=CHEAP_KDF)
    await again.open()
    try:
        assert await again.link_device(alice_name, PASSWORD) == code
        await again.wait_linked(timeout=10)
        assert again.keys.linked() and again.device_id == did
        for c in (again, bob):
            await c.connect()
        await bob.send(alice_name, "to every device of alice", wait="stored")
        assert bob.user_id is not None
        assert await texts(again, bob.user_id, 1) == ["to every device of alice"]
        # Done with: a later link (after a removal, say) starts a new one.
        assert again.keys._saved_link() is None
    finally:
        await again.close()


async def test_a_removed_device_gets_nothing_more_and_its_token_is_refused(
    device: NewDevice, system: System
) -> None:
    alice_name, bob_name = username("alice"), username("bob")
    a1 = await device(alice_name, first=True)
    b1 = await device(bob_name, first=True)
    b2 = await device(bob_name, approver=b1)
    for c in (a1, b1, b2):
        await c.connect()
    await a1.send(bob_name, "before", wait="stored")
    assert await texts(b2, a1.user_id or "", 1) == ["before"]

    await b1.remove_device(b2.device_id)
    assert {d["device_id"] for d in await b1.devices()} == {b1.device_id}
    await a1.send(bob_name, "after", wait="stored")
    assert await texts(b1, a1.user_id or "", 2) == ["before", "after"]
    assert await texts(b2, a1.user_id or "", 1) == ["before"]
    # Its session is over: the token is refused and no new one is issued.
    async with aiohttp.ClientSession() as http:
        token = b2.api.token
        async with http.get(
            f"{system.lb}/keys/v1/devices/{b2.device_id}/counts",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "token_revoked"
    with pytest.raises(NotLoggedIn):
        await b2.access_token(force=True)
    # Signing in again as that device is refused, and said as what to do on this install
    # (the server's "link it again as a new device" cannot be done with its device id).
    for again in (b2.login(bob_name, PASSWORD), b2.link_device(bob_name, PASSWORD)):
        with pytest.raises(DeviceRemoved, match="move its data directory"):
            await again


async def test_a_device_the_account_did_not_sign_is_refused(device: NewDevice) -> None:
    """A malicious directory slips its own device into bob's bundles: alice refuses."""
    alice_name, bob_name = username("alice"), username("bob")
    a1 = await device(alice_name, first=True)
    b1 = await device(bob_name, first=True)
    mallory = await device(username("mallory"), first=True)
    await a1.connect()
    real_claim = a1.api.claim_bundles

    async def forged(user_id: str, device_ids: list[int] | None = None) -> dict[str, Any]:
        answer = await real_claim(user_id, device_ids)
        fake = await real_claim(mallory.user_id or "", None)
        # Mallory's device, under bob's name, in bob's signed answer.
        for bundle in fake["bundles"]:
            bundle["user_id"] = user_id
            bundle["device_id"] = b1.device_id
        answer["bundles"] = fake["bundles"]
        return answer

    a1.api.claim_bundles = forged  # type: ignore[method-assign]
    with pytest.raises(ParleyError):
        await a1.send(bob_name, "for bob only", wait="stored")
    assert a1.history(b1.user_id or "") == [] or all(
        e.get("status") in ("queued", None) for e in a1.history(b1.user_id or "")
    )


async def test_kill_9_delivery_during_a_fan_out_to_four_devices(
    device: NewDevice, system: System
) -> None:
    alice_name, bob_name = username("alice"), username("bob")
    a1 = await device(alice_name, first=True)
    a2 = await device(alice_name, approver=a1)
    b1 = await device(bob_name, first=True)
    b2 = await device(bob_name, approver=b1)
    for c in (a1, a2, b1, b2):
        await c.connect()
    n = 40
    sending = asyncio.create_task(_send_all(a1, bob_name, [f"m{i}" for i in range(n)]))
    await eventually(
        lambda: asyncio.sleep(0, len(b1.history(a1.user_id or ""))), lambda k: k >= 5, timeout=60
    )
    system.procs.kill("delivery")
    system.restart("delivery")
    try:
        await asyncio.wait_for(sending, 120)
        await eventually(
            lambda: asyncio.sleep(0, http_status(system.cfg.url("delivery") + "/delivery/readyz")),
            lambda s: s == 200,
            timeout=60,
        )
        expected = [f"m{i}" for i in range(n)]
        for client, peer in ((b1, a1.user_id), (b2, a1.user_id), (a2, b1.user_id)):
            got = await texts(client, peer or "", n, timeout=120)
            assert got == expected, "lost, duplicated or out of order on a device"
    finally:
        system.wait_ready()


async def _send_all(client: Client, to: str, texts_: list[str]) -> None:
    for text in texts_:
        await client.send(to, text, wait="accepted", timeout=60)


async def test_a_link_cannot_be_withdrawn_once_the_list_names_its_device(
    device: NewDevice, tmp_path: Path, system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An audit's finding: the new device gave up between the approver's new list and
    its approval: the approval found no link, and the device stayed listed without the
    account key (contacts wrote to a device that could read nothing; a new link was
    refused; taking it off the list again revokes its id). The key directory now refuses
    the withdrawal once the list names the device, and the device opens the approval."""
    alice_name = username("alice")
    a1 = await device(alice_name, first=True)
    async with new_install(system, tmp_path) as new:
        code = await new.link_device(alice_name, PASSWORD)
        approve = a1.keys.api.approve_link
        refused: list[str] = []

        async def withdrawn_first(link_id: str, sealed: str) -> None:
            try:  # the new device's Ctrl-C lands first
                await new.keys.api.cancel_link(link_id)
            except ApiError as exc:
                refused.append(exc.code)
            await approve(link_id, sealed)

        monkeypatch.setattr(a1.keys.api, "approve_link", withdrawn_first)
        await a1.approve_device(code)
        assert refused == ["conflict"]
        await new.wait_linked(timeout=30)
        assert new.keys.linked()
        assert new.device_id in {d["device_id"] for d in await a1.devices()}
        # A second approval of the same code is refused before anything is published.
        with pytest.raises(ParleyError, match="approved already"):
            await a1.approve_device(code)


async def test_a_code_mistyped_after_its_link_id_is_refused_before_anything_changes(
    device: NewDevice, tmp_path: Path, system: System
) -> None:
    """An audit's finding: the approver finds the link by the code's first 11
    characters; a typo after them sealed the account key to a wrong key, and the device
    was listed but could never open it. The new device registers the key part with its
    link, and the approver refuses a code whose key part differs."""
    alice_name = username("alice")
    a1 = await device(alice_name, first=True)
    before = {d["device_id"] for d in await a1.devices()}
    async with new_install(system, tmp_path) as new:
        code = await new.link_device(alice_name, PASSWORD)
        i = 30
        typo = code[:i] + ("A" if code[i] != "A" else "B") + code[i + 1 :]
        with pytest.raises(ParleyError, match="does not match"):
            await a1.approve_device(typo)
        assert {d["device_id"] for d in await a1.devices()} == before
        await a1.approve_device(code)  # the right one still links it
        await new.wait_linked(timeout=30)
        assert new.keys.linked()
